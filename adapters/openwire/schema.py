"""OpenWire type ids, the table of every command and data structure in wire order, and the
decoded object (:class:`Obj`).

``SCHEMA`` maps a type id to its class name, whether it carries the command prefix
(commandId, responseRequired) and its fields in wire order with their field kinds:
``z`` boolean, ``b`` byte, ``h`` short, ``i`` int, ``l`` long, ``s`` nullable string (Java
modified UTF-8), ``y`` nullable byte sequence (int32 length), ``o`` nullable nested object,
``c`` "cached" nullable nested object, ``O`` nullable object array (int16 count), ``t``
nullable throwable (class name and message only: stack traces are never negotiated).
"""

from __future__ import annotations

from typing import Any

from polymq.core.errors import ProtocolError

MAGIC = b"ActiveMQ"
MAX_NESTING = 8
MAX_MAP_NESTING = 16

# -- type ids ---------------------------------------------------------------------------------

WIREFORMAT_INFO = 1
BROKER_INFO = 2
CONNECTION_INFO = 3
SESSION_INFO = 4
CONSUMER_INFO = 5
PRODUCER_INFO = 6
TRANSACTION_INFO = 7
DESTINATION_INFO = 8
REMOVE_SUBSCRIPTION_INFO = 9
KEEP_ALIVE_INFO = 10
SHUTDOWN_INFO = 11
REMOVE_INFO = 12
CONTROL_COMMAND = 14
FLUSH_COMMAND = 15
CONNECTION_ERROR = 16
CONSUMER_CONTROL = 17
CONNECTION_CONTROL = 18
PRODUCER_ACK = 19
MESSAGE_PULL = 20
MESSAGE_DISPATCH = 21
MESSAGE_ACK = 22
MESSAGE = 23
BYTES_MESSAGE = 24
MAP_MESSAGE = 25
OBJECT_MESSAGE = 26
STREAM_MESSAGE = 27
TEXT_MESSAGE = 28
BLOB_MESSAGE = 29
RESPONSE = 30
EXCEPTION_RESPONSE = 31
DATA_RESPONSE = 32
DATA_ARRAY_RESPONSE = 33
INTEGER_RESPONSE = 34
MESSAGE_DISPATCH_NOTIFICATION = 90
QUEUE = 100
TOPIC = 101
TEMP_QUEUE = 102
TEMP_TOPIC = 103
MESSAGE_ID = 110
LOCAL_TRANSACTION_ID = 111
XA_TRANSACTION_ID = 112
CONNECTION_ID = 120
SESSION_ID = 121
CONSUMER_ID = 122
PRODUCER_ID = 123
BROKER_ID = 124

MESSAGE_TYPES = frozenset(range(MESSAGE, BLOB_MESSAGE + 1))
DESTINATION_TYPES = frozenset((QUEUE, TOPIC, TEMP_QUEUE, TEMP_TOPIC))

# -- the declarative table ------------------------------------------------------------------

_MESSAGE_FIELDS = (
    ("producer_id", "c"),
    ("destination", "c"),
    ("transaction_id", "c"),
    ("original_destination", "c"),
    ("message_id", "o"),
    ("original_transaction_id", "c"),
    ("group_id", "s"),
    ("group_sequence", "i"),
    ("correlation_id", "s"),
    ("persistent", "z"),
    ("expiration", "l"),
    ("priority", "b"),
    ("reply_to", "o"),
    ("timestamp", "l"),
    ("jms_type", "s"),
    ("content", "y"),
    ("marshalled_properties", "y"),
    ("data_structure", "o"),
    ("target_consumer_id", "c"),
    ("compressed", "z"),
    ("redelivery_counter", "i"),
    ("broker_path", "O"),
    ("arrival", "l"),
    ("user_id", "s"),
    ("received_by_dfbridge", "z"),
    ("droppable", "z"),
    ("cluster", "O"),
    ("broker_in_time", "l"),
    ("broker_out_time", "l"),
    ("jmsx_group_first_for_consumer", "z"),
)

_DEST = (("physical_name", "s"),)

# type id: (class name, has command prefix, fields)
SCHEMA: dict[int, tuple[str, bool, tuple[tuple[str, str], ...]]] = {
    BROKER_INFO: (
        "BrokerInfo",
        True,
        (
            ("broker_id", "c"),
            ("broker_url", "s"),
            ("peer_broker_infos", "O"),
            ("broker_name", "s"),
            ("slave_broker", "z"),
            ("master_broker", "z"),
            ("fault_tolerant_configuration", "z"),
            ("duplex_connection", "z"),
            ("network_connection", "z"),
            ("connection_id", "l"),
            ("broker_upload_url", "s"),
            ("network_properties", "s"),
        ),
    ),
    CONNECTION_INFO: (
        "ConnectionInfo",
        True,
        (
            ("connection_id", "c"),
            ("client_id", "s"),
            ("password", "s"),
            ("user_name", "s"),
            ("broker_path", "O"),
            ("broker_master_connector", "z"),
            ("manageable", "z"),
            ("client_master", "z"),
            ("fault_tolerant", "z"),
            ("failover_reconnect", "z"),
            ("client_ip", "s"),
        ),
    ),
    SESSION_INFO: ("SessionInfo", True, (("session_id", "c"),)),
    CONSUMER_INFO: (
        "ConsumerInfo",
        True,
        (
            ("consumer_id", "c"),
            ("browser", "z"),
            ("destination", "c"),
            ("prefetch_size", "i"),
            ("maximum_pending_message_limit", "i"),
            ("dispatch_async", "z"),
            ("selector", "s"),
            ("client_id", "s"),
            ("subscription_name", "s"),
            ("no_local", "z"),
            ("exclusive", "z"),
            ("retroactive", "z"),
            ("priority", "b"),
            ("broker_path", "O"),
            ("additional_predicate", "o"),
            ("network_subscription", "z"),
            ("optimized_acknowledge", "z"),
            ("no_range_acks", "z"),
            ("network_consumer_path", "O"),
        ),
    ),
    PRODUCER_INFO: (
        "ProducerInfo",
        True,
        (
            ("producer_id", "c"),
            ("destination", "c"),
            ("broker_path", "O"),
            ("dispatch_async", "z"),
            ("window_size", "i"),
        ),
    ),
    TRANSACTION_INFO: (
        "TransactionInfo",
        True,
        (
            ("connection_id", "c"),
            ("transaction_id", "c"),
            ("tx_type", "b"),
        ),
    ),
    DESTINATION_INFO: (
        "DestinationInfo",
        True,
        (
            ("connection_id", "c"),
            ("destination", "c"),
            ("operation_type", "b"),
            ("timeout", "l"),
            ("broker_path", "O"),
        ),
    ),
    REMOVE_SUBSCRIPTION_INFO: (
        "RemoveSubscriptionInfo",
        True,
        (
            ("connection_id", "c"),
            ("subscription_name", "s"),
            ("client_id", "s"),
        ),
    ),
    KEEP_ALIVE_INFO: ("KeepAliveInfo", True, ()),
    SHUTDOWN_INFO: ("ShutdownInfo", True, ()),
    REMOVE_INFO: (
        "RemoveInfo",
        True,
        (
            ("object_id", "c"),
            ("last_delivered_sequence_id", "l"),
        ),
    ),
    CONTROL_COMMAND: ("ControlCommand", True, (("command", "s"),)),
    FLUSH_COMMAND: ("FlushCommand", True, ()),
    CONNECTION_ERROR: (
        "ConnectionError",
        True,
        (
            ("exception", "t"),
            ("connection_id", "o"),
        ),
    ),
    CONSUMER_CONTROL: (
        "ConsumerControl",
        True,
        (
            ("destination", "o"),
            ("close", "z"),
            ("consumer_id", "o"),
            ("prefetch", "i"),
            ("flush", "z"),
            ("start", "z"),
            ("stop", "z"),
        ),
    ),
    CONNECTION_CONTROL: (
        "ConnectionControl",
        True,
        (
            ("close", "z"),
            ("exit", "z"),
            ("fault_tolerant", "z"),
            ("resume", "z"),
            ("suspend", "z"),
            ("connected_brokers", "s"),
            ("reconnect_to", "s"),
            ("rebalance_connection", "z"),
            ("token", "y"),
        ),
    ),
    PRODUCER_ACK: ("ProducerAck", True, (("producer_id", "o"), ("size", "i"))),
    MESSAGE_PULL: (
        "MessagePull",
        True,
        (
            ("consumer_id", "c"),
            ("destination", "c"),
            ("timeout", "l"),
            ("correlation_id", "s"),
            ("message_id", "o"),
        ),
    ),
    MESSAGE_DISPATCH: (
        "MessageDispatch",
        True,
        (
            ("consumer_id", "c"),
            ("destination", "c"),
            ("message", "o"),
            ("redelivery_counter", "i"),
        ),
    ),
    MESSAGE_ACK: (
        "MessageAck",
        True,
        (
            ("destination", "c"),
            ("transaction_id", "c"),
            ("consumer_id", "c"),
            ("ack_type", "b"),
            ("first_message_id", "o"),
            ("last_message_id", "o"),
            ("message_count", "i"),
            ("poison_cause", "t"),
        ),
    ),
    MESSAGE: ("ActiveMQMessage", True, _MESSAGE_FIELDS),
    BYTES_MESSAGE: ("ActiveMQBytesMessage", True, _MESSAGE_FIELDS),
    MAP_MESSAGE: ("ActiveMQMapMessage", True, _MESSAGE_FIELDS),
    OBJECT_MESSAGE: ("ActiveMQObjectMessage", True, _MESSAGE_FIELDS),
    STREAM_MESSAGE: ("ActiveMQStreamMessage", True, _MESSAGE_FIELDS),
    TEXT_MESSAGE: ("ActiveMQTextMessage", True, _MESSAGE_FIELDS),
    BLOB_MESSAGE: (
        "ActiveMQBlobMessage",
        True,
        _MESSAGE_FIELDS
        + (
            ("remote_blob_url", "s"),
            ("mime_type", "s"),
            ("deleted_by_broker", "z"),
        ),
    ),
    RESPONSE: ("Response", True, (("correlation_id", "i"),)),
    EXCEPTION_RESPONSE: (
        "ExceptionResponse",
        True,
        (
            ("correlation_id", "i"),
            ("exception", "t"),
        ),
    ),
    DATA_RESPONSE: ("DataResponse", True, (("correlation_id", "i"), ("data", "o"))),
    DATA_ARRAY_RESPONSE: (
        "DataArrayResponse",
        True,
        (
            ("correlation_id", "i"),
            ("data", "O"),
        ),
    ),
    INTEGER_RESPONSE: ("IntegerResponse", True, (("correlation_id", "i"), ("result", "i"))),
    MESSAGE_DISPATCH_NOTIFICATION: (
        "MessageDispatchNotification",
        True,
        (
            ("consumer_id", "c"),
            ("destination", "c"),
            ("delivery_sequence_id", "l"),
            ("message_id", "o"),
        ),
    ),
    QUEUE: ("ActiveMQQueue", False, _DEST),
    TOPIC: ("ActiveMQTopic", False, _DEST),
    TEMP_QUEUE: ("ActiveMQTempQueue", False, _DEST),
    TEMP_TOPIC: ("ActiveMQTempTopic", False, _DEST),
    MESSAGE_ID: (
        "MessageId",
        False,
        (
            ("text_view", "s"),
            ("producer_id", "c"),
            ("producer_sequence_id", "l"),
            ("broker_sequence_id", "l"),
        ),
    ),
    LOCAL_TRANSACTION_ID: (
        "LocalTransactionId",
        False,
        (
            ("value", "l"),
            ("connection_id", "c"),
        ),
    ),
    XA_TRANSACTION_ID: (
        "XATransactionId",
        False,
        (
            ("format_id", "i"),
            ("global_transaction_id", "y"),
            ("branch_qualifier", "y"),
        ),
    ),
    CONNECTION_ID: ("ConnectionId", False, (("value", "s"),)),
    SESSION_ID: ("SessionId", False, (("connection_id", "s"), ("value", "l"))),
    CONSUMER_ID: (
        "ConsumerId",
        False,
        (
            ("connection_id", "s"),
            ("session_id", "l"),
            ("value", "l"),
        ),
    ),
    PRODUCER_ID: (
        "ProducerId",
        False,
        (
            ("connection_id", "s"),
            ("value", "l"),
            ("session_id", "l"),
        ),
    ),
    BROKER_ID: ("BrokerId", False, (("value", "s"),)),
}

_DEFAULTS = {"z": False, "b": 0, "h": 0, "i": 0, "l": 0}


class Obj:
    """A decoded command or data structure: ``type`` plus the fields named in ``SCHEMA``."""

    # ``mark``: for a decoded message, the frame offset just after its MessageId (whose last
    # 8 bytes are the broker sequence id); ``raw``: the frame it was decoded from
    # ``cmark``: for a decoded message, the offsets after its original transaction id, and
    # before and after its target consumer id (the rest of the frame is the same in both forms)
    # ``cenc``: the cached form of an id or destination object, memoized
    # ``idstr``: for a producer id, the message id prefix its messages share (session.py)
    __slots__ = (
        "type",
        "command_id",
        "response_required",
        "mark",
        "cmark",
        "raw",
        "cenc",
        "idstr",
        "__dict__",
    )

    def __init__(self, type: int, **fields: Any) -> None:
        self.type = type
        self.command_id = fields.pop("command_id", 0)
        self.response_required = fields.pop("response_required", False)
        d = _DEFAULT_DICTS[type].copy()
        if fields:
            d.update(fields)
        self.__dict__ = d

    @property
    def name(self) -> str:
        return SCHEMA[self.type][0]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Obj)
            and self.type == other.type
            and self.command_id == other.command_id
            and self.response_required == other.response_required
            and self.__dict__ == other.__dict__
        )

    def __hash__(self) -> int:  # ids are used as dict keys
        return hash((self.type, tuple(_hashable(v) for v in self.__dict__.values())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if v not in (None, 0))
        return f"{self.name}({fields})"


_DEFAULT_DICTS = {
    t: {name: _DEFAULTS.get(kind) for name, kind in spec[2]} for t, spec in SCHEMA.items()
}


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


class DecodeError(ProtocolError):
    """The bytes are not a valid OpenWire loose-encoded frame (protocol violation)."""


# -- modified UTF-8 -----------------------------------------------------------------------------
