"""OpenWire type ids, the ``construct`` declarations of every command and data structure the
broker reads or writes (the single source of truth for the wire format), and the decoded
object (:class:`Obj`).

Each declaration is a ``cs.Struct`` of named fields in wire order; a command starts with
``command_id`` and ``response_required``. Every field is one of the field constructs below,
which say what the compiler of the fast paths (marshallers.py) needs besides the layout: the
field kind, and for a nested object the type ids it may hold (any other is a protocol error).
Kinds: ``z`` boolean, ``b`` byte, ``h`` short, ``i`` int, ``l`` long, ``s`` nullable string
(Java modified UTF-8), ``y`` nullable byte sequence (int32 length), ``o`` nullable nested
object, ``c`` "cached" nullable nested object, ``O`` nullable object array (int16 count),
``t`` nullable throwable (class name and message only: stack traces are never negotiated).

``construct`` parses and builds the plain form of every declaration (the tests check the
fast paths against it; strings are declared as UTF-8, which is modified UTF-8 for text
without NUL and supplementary characters). ``SCHEMA`` is the same information as a table:
type id -> (class name, has the command prefix, ((field, kind), ...)).
"""

from __future__ import annotations

from typing import Any

import construct as cs

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


# -- field constructs -------------------------------------------------------------------------


class Field(cs.Subconstruct):
    """A field of an OpenWire declaration: its construct, its kind and, for nested objects,
    the type ids it may hold (None: any declared type)."""

    def __init__(self, subcon: cs.Construct, kind: str, types: frozenset | None = None) -> None:
        super().__init__(subcon)
        self.kind = kind
        self.types = types


def _optional(value: cs.Construct) -> cs.Construct:
    return cs.Struct("present" / cs.Flag, "value" / cs.If(cs.this.present, value))


_UTF = cs.PascalString(cs.Int16ub, "utf8")
_CASES: dict[int, cs.Construct] = {}  # every declaration by type id (filled below)
_NESTED = cs.Struct("type" / cs.Int8ub, "body" / cs.Switch(cs.this.type, _CASES, cs.Error))

Bool = Field(cs.Flag, "z")
Byte = Field(cs.Int8sb, "b")
Short = Field(cs.Int16sb, "h")
Int = Field(cs.Int32sb, "i")
Long = Field(cs.Int64sb, "l")
String = Field(_optional(_UTF), "s")
Bytes = Field(_optional(cs.Prefixed(cs.Int32sb, cs.GreedyBytes)), "y")
Throwable = Field(_optional(cs.Struct("cls" / _optional(_UTF), "message" / _optional(_UTF))), "t")


def Nested(*types: int) -> Field:
    """A nullable nested object of one of ``types`` (none given: any)."""
    return Field(_optional(cs.LazyBound(lambda: _NESTED)), "o", frozenset(types) or None)


def Cached(*types: int) -> Field:
    """A nested object that goes through the marshalling cache when it is negotiated; without
    it, exactly a :func:`Nested` field."""
    return Field(_optional(cs.LazyBound(lambda: _NESTED)), "c", frozenset(types) or None)


def Array(*types: int) -> Field:
    """A nullable array (int16 count) of nullable nested objects of one of ``types``."""
    items = cs.PrefixedArray(cs.Int16sb, _optional(cs.LazyBound(lambda: _NESTED)))
    return Field(
        cs.Struct("present" / cs.Flag, "items" / cs.If(cs.this.present, items)),
        "O",
        frozenset(types) or None,
    )


def command(*fields: cs.Construct) -> cs.Struct:
    """A command: commandId and responseRequired, then its fields."""
    return cs.Struct("command_id" / Field(cs.Int32sb, "i"), "response_required" / Bool, *fields)


DEST = (QUEUE, TOPIC, TEMP_QUEUE, TEMP_TOPIC)
TX_ID = (LOCAL_TRANSACTION_ID, XA_TRANSACTION_ID)

# -- the declarations -------------------------------------------------------------------------

_MESSAGE_FIELDS = (
    "producer_id" / Cached(PRODUCER_ID),
    "destination" / Cached(*DEST),
    "transaction_id" / Cached(*TX_ID),
    "original_destination" / Cached(*DEST),
    "message_id" / Nested(MESSAGE_ID),
    "original_transaction_id" / Cached(*TX_ID),
    "group_id" / String,
    "group_sequence" / Int,
    "correlation_id" / String,
    "persistent" / Bool,
    "expiration" / Long,
    "priority" / Byte,
    "reply_to" / Nested(*DEST),
    "timestamp" / Long,
    "jms_type" / String,
    "content" / Bytes,
    "marshalled_properties" / Bytes,
    "data_structure" / Nested(),
    "target_consumer_id" / Cached(CONSUMER_ID),
    "compressed" / Bool,
    "redelivery_counter" / Int,
    "broker_path" / Array(BROKER_ID),
    "arrival" / Long,
    "user_id" / String,
    "received_by_dfbridge" / Bool,
    "droppable" / Bool,
    "cluster" / Array(BROKER_ID),
    "broker_in_time" / Long,
    "broker_out_time" / Long,
    "jmsx_group_first_for_consumer" / Bool,
)
_DESTINATION = cs.Struct("physical_name" / String)

# type id: (class name, declaration)
DECLARATIONS: dict[int, tuple[str, cs.Struct]] = {
    BROKER_INFO: (
        "BrokerInfo",
        command(
            "broker_id" / Cached(BROKER_ID),
            "broker_url" / String,
            "peer_broker_infos" / Array(BROKER_INFO),
            "broker_name" / String,
            "slave_broker" / Bool,
            "master_broker" / Bool,
            "fault_tolerant_configuration" / Bool,
            "duplex_connection" / Bool,
            "network_connection" / Bool,
            "connection_id" / Long,
            "broker_upload_url" / String,
            "network_properties" / String,
        ),
    ),
    CONNECTION_INFO: (
        "ConnectionInfo",
        command(
            "connection_id" / Cached(CONNECTION_ID),
            "client_id" / String,
            "password" / String,
            "user_name" / String,
            "broker_path" / Array(BROKER_ID),
            "broker_master_connector" / Bool,
            "manageable" / Bool,
            "client_master" / Bool,
            "fault_tolerant" / Bool,
            "failover_reconnect" / Bool,
            "client_ip" / String,
        ),
    ),
    SESSION_INFO: ("SessionInfo", command("session_id" / Cached(SESSION_ID))),
    CONSUMER_INFO: (
        "ConsumerInfo",
        command(
            "consumer_id" / Cached(CONSUMER_ID),
            "browser" / Bool,
            "destination" / Cached(*DEST),
            "prefetch_size" / Int,
            "maximum_pending_message_limit" / Int,
            "dispatch_async" / Bool,
            "selector" / String,
            "client_id" / String,
            "subscription_name" / String,
            "no_local" / Bool,
            "exclusive" / Bool,
            "retroactive" / Bool,
            "priority" / Byte,
            "broker_path" / Array(BROKER_ID),
            "additional_predicate" / Nested(),  # a BooleanExpression: never sent by a client
            "network_subscription" / Bool,
            "optimized_acknowledge" / Bool,
            "no_range_acks" / Bool,
            "network_consumer_path" / Array(CONSUMER_ID),
        ),
    ),
    PRODUCER_INFO: (
        "ProducerInfo",
        command(
            "producer_id" / Cached(PRODUCER_ID),
            "destination" / Cached(*DEST),
            "broker_path" / Array(BROKER_ID),
            "dispatch_async" / Bool,
            "window_size" / Int,
        ),
    ),
    TRANSACTION_INFO: (
        "TransactionInfo",
        command(
            "connection_id" / Cached(CONNECTION_ID),
            "transaction_id" / Cached(*TX_ID),
            "tx_type" / Byte,
        ),
    ),
    DESTINATION_INFO: (
        "DestinationInfo",
        command(
            "connection_id" / Cached(CONNECTION_ID),
            "destination" / Cached(*DEST),
            "operation_type" / Byte,
            "timeout" / Long,
            "broker_path" / Array(BROKER_ID),
        ),
    ),
    REMOVE_SUBSCRIPTION_INFO: (
        "RemoveSubscriptionInfo",
        command(
            "connection_id" / Cached(CONNECTION_ID),
            "subscription_name" / String,
            "client_id" / String,
        ),
    ),
    KEEP_ALIVE_INFO: ("KeepAliveInfo", command()),
    SHUTDOWN_INFO: ("ShutdownInfo", command()),
    REMOVE_INFO: (
        "RemoveInfo",
        command(
            "object_id" / Cached(CONNECTION_ID, SESSION_ID, CONSUMER_ID, PRODUCER_ID, *DEST),
            "last_delivered_sequence_id" / Long,
        ),
    ),
    CONTROL_COMMAND: ("ControlCommand", command("command" / String)),
    FLUSH_COMMAND: ("FlushCommand", command()),
    CONNECTION_ERROR: (
        "ConnectionError",
        command(
            "exception" / Throwable,
            "connection_id" / Nested(CONNECTION_ID),
        ),
    ),
    CONSUMER_CONTROL: (
        "ConsumerControl",
        command(
            "destination" / Nested(*DEST),
            "close" / Bool,
            "consumer_id" / Nested(CONSUMER_ID),
            "prefetch" / Int,
            "flush" / Bool,
            "start" / Bool,
            "stop" / Bool,
        ),
    ),
    CONNECTION_CONTROL: (
        "ConnectionControl",
        command(
            "close" / Bool,
            "exit" / Bool,
            "fault_tolerant" / Bool,
            "resume" / Bool,
            "suspend" / Bool,
            "connected_brokers" / String,
            "reconnect_to" / String,
            "rebalance_connection" / Bool,
            "token" / Bytes,
        ),
    ),
    PRODUCER_ACK: ("ProducerAck", command("producer_id" / Nested(PRODUCER_ID), "size" / Int)),
    MESSAGE_PULL: (
        "MessagePull",
        command(
            "consumer_id" / Cached(CONSUMER_ID),
            "destination" / Cached(*DEST),
            "timeout" / Long,
            "correlation_id" / String,
            "message_id" / Nested(MESSAGE_ID),
        ),
    ),
    MESSAGE_DISPATCH: (
        "MessageDispatch",
        command(
            "consumer_id" / Cached(CONSUMER_ID),
            "destination" / Cached(*DEST),
            "message" / Nested(*range(MESSAGE, BLOB_MESSAGE + 1)),
            "redelivery_counter" / Int,
        ),
    ),
    MESSAGE_ACK: (
        "MessageAck",
        command(
            "destination" / Cached(*DEST),
            "transaction_id" / Cached(*TX_ID),
            "consumer_id" / Cached(CONSUMER_ID),
            "ack_type" / Byte,
            "first_message_id" / Nested(MESSAGE_ID),
            "last_message_id" / Nested(MESSAGE_ID),
            "message_count" / Int,
            "poison_cause" / Throwable,
        ),
    ),
    MESSAGE: ("ActiveMQMessage", command(*_MESSAGE_FIELDS)),
    BYTES_MESSAGE: ("ActiveMQBytesMessage", command(*_MESSAGE_FIELDS)),
    MAP_MESSAGE: ("ActiveMQMapMessage", command(*_MESSAGE_FIELDS)),
    OBJECT_MESSAGE: ("ActiveMQObjectMessage", command(*_MESSAGE_FIELDS)),
    STREAM_MESSAGE: ("ActiveMQStreamMessage", command(*_MESSAGE_FIELDS)),
    TEXT_MESSAGE: ("ActiveMQTextMessage", command(*_MESSAGE_FIELDS)),
    BLOB_MESSAGE: (
        "ActiveMQBlobMessage",
        command(
            *_MESSAGE_FIELDS,
            "remote_blob_url" / String,
            "mime_type" / String,
            "deleted_by_broker" / Bool,
        ),
    ),
    RESPONSE: ("Response", command("correlation_id" / Int)),
    EXCEPTION_RESPONSE: (
        "ExceptionResponse",
        command(
            "correlation_id" / Int,
            "exception" / Throwable,
        ),
    ),
    DATA_RESPONSE: ("DataResponse", command("correlation_id" / Int, "data" / Nested())),
    DATA_ARRAY_RESPONSE: (
        "DataArrayResponse",
        command(
            "correlation_id" / Int,
            "data" / Array(),
        ),
    ),
    INTEGER_RESPONSE: ("IntegerResponse", command("correlation_id" / Int, "result" / Int)),
    MESSAGE_DISPATCH_NOTIFICATION: (
        "MessageDispatchNotification",
        command(
            "consumer_id" / Cached(CONSUMER_ID),
            "destination" / Cached(*DEST),
            "delivery_sequence_id" / Long,
            "message_id" / Nested(MESSAGE_ID),
        ),
    ),
    QUEUE: ("ActiveMQQueue", _DESTINATION),
    TOPIC: ("ActiveMQTopic", _DESTINATION),
    TEMP_QUEUE: ("ActiveMQTempQueue", _DESTINATION),
    TEMP_TOPIC: ("ActiveMQTempTopic", _DESTINATION),
    MESSAGE_ID: (
        "MessageId",
        cs.Struct(
            "text_view" / String,
            "producer_id" / Cached(PRODUCER_ID),
            "producer_sequence_id" / Long,
            "broker_sequence_id" / Long,
        ),
    ),
    LOCAL_TRANSACTION_ID: (
        "LocalTransactionId",
        cs.Struct(
            "value" / Long,
            "connection_id" / Cached(CONNECTION_ID),
        ),
    ),
    XA_TRANSACTION_ID: (
        "XATransactionId",
        cs.Struct(
            "format_id" / Int,
            "global_transaction_id" / Bytes,
            "branch_qualifier" / Bytes,
        ),
    ),
    CONNECTION_ID: ("ConnectionId", cs.Struct("value" / String)),
    SESSION_ID: ("SessionId", cs.Struct("connection_id" / String, "value" / Long)),
    CONSUMER_ID: (
        "ConsumerId",
        cs.Struct(
            "connection_id" / String,
            "session_id" / Long,
            "value" / Long,
        ),
    ),
    PRODUCER_ID: (
        "ProducerId",
        cs.Struct(
            "connection_id" / String,
            "value" / Long,
            "session_id" / Long,
        ),
    ),
    BROKER_ID: ("BrokerId", cs.Struct("value" / String)),
}
_CASES.update((t, decl) for t, (_, decl) in DECLARATIONS.items())


def fields_of(decl: cs.Struct) -> list[tuple[str, Field]]:
    """The (name, field construct) pairs of a declaration, in wire order."""
    return [(sc.name, sc.subcon) for sc in decl.subcons]


def _table_entry(name: str, decl: cs.Struct) -> tuple[str, bool, tuple[tuple[str, str], ...]]:
    fields = fields_of(decl)
    prefix = [n for n, _ in fields[:2]] == ["command_id", "response_required"]
    if prefix:
        fields = fields[2:]
    return name, prefix, tuple((n, f.kind) for n, f in fields)


# the declarations as a table: type id -> (class name, command prefix, ((field, kind), ...))
SCHEMA: dict[int, tuple[str, bool, tuple[tuple[str, str], ...]]] = {
    t: _table_entry(name, decl) for t, (name, decl) in DECLARATIONS.items()
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
    # ``rehead``: for a producer id, the re-encoding head of its last message (codec.py)
    __slots__ = (
        "type",
        "command_id",
        "response_required",
        "mark",
        "cmark",
        "raw",
        "cenc",
        "idstr",
        "rehead",
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
