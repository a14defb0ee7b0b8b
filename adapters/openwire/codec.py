"""OpenWire (ActiveMQ 5.x, protocol version 9–12) loose encoding, sans I/O.

The broker always negotiates loose encoding with the cache and stack traces off, so only the
loose form exists here. The wire format is described declaratively:

* ``FRAME_HEADER`` and ``WIRE_FORMAT_INFO`` are ``construct`` declarations (fixed layouts);
* ``SCHEMA`` is the table of every command and data structure the broker reads or writes: type
  id, class name, whether it carries the command prefix (commandId, responseRequired) and its
  fields in wire order with their field kinds. One generic marshaller (:func:`decode_object`,
  :func:`encode_object`) interprets the table; ``construct_for`` turns the same table into
  ``construct`` declarations, which the tests use to check the marshaller (the table is the
  single source of truth for field orders).

Field kinds: ``z`` boolean, ``b`` byte, ``h`` short, ``i`` int, ``l`` long, ``s`` nullable
string (Java modified UTF-8), ``y`` nullable byte sequence (int32 length), ``o`` nullable nested
object, ``c`` "cached" nullable nested object, ``O`` nullable object array (int16 count), ``t``
nullable throwable (class name and message only: stack traces are never negotiated).

The marshalling cache (``CacheEnabled``) changes only the ``c`` fields: each becomes
``bool new, int16 index`` followed, when new, by the nested object, which the receiver stores
at ``index`` of its unmarshalling cache (index -1: not stored); a reference (``new`` false)
names an index stored earlier. Without the cache a ``c`` field is exactly an ``o`` field. The
decoders of the cached form (``decode_command(frame, cache)``) check every index against the
negotiated cache size; the encoders of the cached form (``cached=True``) write every ``c`` field
as new with index -1 (valid for any receiver, shareable between connections), except the
per-consumer MessageDispatch head (:func:`dispatch_heads_cached`), whose consumer id and
destination are stored once in slots the connection allocates.

Every length is checked against what remains of the frame before anything is allocated, and
nesting is capped at :data:`MAX_NESTING`, so a client controls neither allocation sizes nor
recursion depth.
"""

from __future__ import annotations

import itertools
import re
import struct
import zlib
from typing import Any

import construct as cs

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
    BROKER_INFO: ("BrokerInfo", True, (
        ("broker_id", "c"), ("broker_url", "s"), ("peer_broker_infos", "O"),
        ("broker_name", "s"), ("slave_broker", "z"), ("master_broker", "z"),
        ("fault_tolerant_configuration", "z"), ("duplex_connection", "z"),
        ("network_connection", "z"), ("connection_id", "l"), ("broker_upload_url", "s"),
        ("network_properties", "s"),
    )),
    CONNECTION_INFO: ("ConnectionInfo", True, (
        ("connection_id", "c"), ("client_id", "s"), ("password", "s"), ("user_name", "s"),
        ("broker_path", "O"), ("broker_master_connector", "z"), ("manageable", "z"),
        ("client_master", "z"), ("fault_tolerant", "z"), ("failover_reconnect", "z"),
        ("client_ip", "s"),
    )),
    SESSION_INFO: ("SessionInfo", True, (("session_id", "c"),)),
    CONSUMER_INFO: ("ConsumerInfo", True, (
        ("consumer_id", "c"), ("browser", "z"), ("destination", "c"), ("prefetch_size", "i"),
        ("maximum_pending_message_limit", "i"), ("dispatch_async", "z"), ("selector", "s"),
        ("client_id", "s"), ("subscription_name", "s"), ("no_local", "z"), ("exclusive", "z"),
        ("retroactive", "z"), ("priority", "b"), ("broker_path", "O"),
        ("additional_predicate", "o"), ("network_subscription", "z"),
        ("optimized_acknowledge", "z"), ("no_range_acks", "z"), ("network_consumer_path", "O"),
    )),
    PRODUCER_INFO: ("ProducerInfo", True, (
        ("producer_id", "c"), ("destination", "c"), ("broker_path", "O"),
        ("dispatch_async", "z"), ("window_size", "i"),
    )),
    TRANSACTION_INFO: ("TransactionInfo", True, (
        ("connection_id", "c"), ("transaction_id", "c"), ("tx_type", "b"),
    )),
    DESTINATION_INFO: ("DestinationInfo", True, (
        ("connection_id", "c"), ("destination", "c"), ("operation_type", "b"),
        ("timeout", "l"), ("broker_path", "O"),
    )),
    REMOVE_SUBSCRIPTION_INFO: ("RemoveSubscriptionInfo", True, (
        ("connection_id", "c"), ("subscription_name", "s"), ("client_id", "s"),
    )),
    KEEP_ALIVE_INFO: ("KeepAliveInfo", True, ()),
    SHUTDOWN_INFO: ("ShutdownInfo", True, ()),
    REMOVE_INFO: ("RemoveInfo", True, (
        ("object_id", "c"), ("last_delivered_sequence_id", "l"),
    )),
    CONTROL_COMMAND: ("ControlCommand", True, (("command", "s"),)),
    FLUSH_COMMAND: ("FlushCommand", True, ()),
    CONNECTION_ERROR: ("ConnectionError", True, (
        ("exception", "t"), ("connection_id", "o"),
    )),
    CONSUMER_CONTROL: ("ConsumerControl", True, (
        ("destination", "o"), ("close", "z"), ("consumer_id", "o"), ("prefetch", "i"),
        ("flush", "z"), ("start", "z"), ("stop", "z"),
    )),
    CONNECTION_CONTROL: ("ConnectionControl", True, (
        ("close", "z"), ("exit", "z"), ("fault_tolerant", "z"), ("resume", "z"),
        ("suspend", "z"), ("connected_brokers", "s"), ("reconnect_to", "s"),
        ("rebalance_connection", "z"), ("token", "y"),
    )),
    PRODUCER_ACK: ("ProducerAck", True, (("producer_id", "o"), ("size", "i"))),
    MESSAGE_PULL: ("MessagePull", True, (
        ("consumer_id", "c"), ("destination", "c"), ("timeout", "l"),
        ("correlation_id", "s"), ("message_id", "o"),
    )),
    MESSAGE_DISPATCH: ("MessageDispatch", True, (
        ("consumer_id", "c"), ("destination", "c"), ("message", "o"),
        ("redelivery_counter", "i"),
    )),
    MESSAGE_ACK: ("MessageAck", True, (
        ("destination", "c"), ("transaction_id", "c"), ("consumer_id", "c"),
        ("ack_type", "b"), ("first_message_id", "o"), ("last_message_id", "o"),
        ("message_count", "i"), ("poison_cause", "t"),
    )),
    MESSAGE: ("ActiveMQMessage", True, _MESSAGE_FIELDS),
    BYTES_MESSAGE: ("ActiveMQBytesMessage", True, _MESSAGE_FIELDS),
    MAP_MESSAGE: ("ActiveMQMapMessage", True, _MESSAGE_FIELDS),
    OBJECT_MESSAGE: ("ActiveMQObjectMessage", True, _MESSAGE_FIELDS),
    STREAM_MESSAGE: ("ActiveMQStreamMessage", True, _MESSAGE_FIELDS),
    TEXT_MESSAGE: ("ActiveMQTextMessage", True, _MESSAGE_FIELDS),
    BLOB_MESSAGE: ("ActiveMQBlobMessage", True, _MESSAGE_FIELDS + (
        ("remote_blob_url", "s"), ("mime_type", "s"), ("deleted_by_broker", "z"),
    )),
    RESPONSE: ("Response", True, (("correlation_id", "i"),)),
    EXCEPTION_RESPONSE: ("ExceptionResponse", True, (
        ("correlation_id", "i"), ("exception", "t"),
    )),
    DATA_RESPONSE: ("DataResponse", True, (("correlation_id", "i"), ("data", "o"))),
    DATA_ARRAY_RESPONSE: ("DataArrayResponse", True, (
        ("correlation_id", "i"), ("data", "O"),
    )),
    INTEGER_RESPONSE: ("IntegerResponse", True, (("correlation_id", "i"), ("result", "i"))),
    MESSAGE_DISPATCH_NOTIFICATION: ("MessageDispatchNotification", True, (
        ("consumer_id", "c"), ("destination", "c"), ("delivery_sequence_id", "l"),
        ("message_id", "o"),
    )),
    QUEUE: ("ActiveMQQueue", False, _DEST),
    TOPIC: ("ActiveMQTopic", False, _DEST),
    TEMP_QUEUE: ("ActiveMQTempQueue", False, _DEST),
    TEMP_TOPIC: ("ActiveMQTempTopic", False, _DEST),
    MESSAGE_ID: ("MessageId", False, (
        ("text_view", "s"), ("producer_id", "c"), ("producer_sequence_id", "l"),
        ("broker_sequence_id", "l"),
    )),
    LOCAL_TRANSACTION_ID: ("LocalTransactionId", False, (
        ("value", "l"), ("connection_id", "c"),
    )),
    XA_TRANSACTION_ID: ("XATransactionId", False, (
        ("format_id", "i"), ("global_transaction_id", "y"), ("branch_qualifier", "y"),
    )),
    CONNECTION_ID: ("ConnectionId", False, (("value", "s"),)),
    SESSION_ID: ("SessionId", False, (("connection_id", "s"), ("value", "l"))),
    CONSUMER_ID: ("ConsumerId", False, (
        ("connection_id", "s"), ("session_id", "l"), ("value", "l"),
    )),
    PRODUCER_ID: ("ProducerId", False, (
        ("connection_id", "s"), ("value", "l"), ("session_id", "l"),
    )),
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
    __slots__ = ("type", "command_id", "response_required", "mark", "cmark", "raw", "cenc",
                 "idstr", "__dict__")

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


class DecodeError(Exception):
    """The bytes are not a valid OpenWire loose-encoded frame (protocol violation)."""


# -- modified UTF-8 -----------------------------------------------------------------------------


def decode_mutf8(data: bytes) -> str:
    """Java modified UTF-8 (NUL as C0 80, supplementary characters as surrogate pairs)."""
    if data.isascii():
        return data.decode("ascii")
    if max(data) >= 0xF0:
        raise DecodeError("invalid modified UTF-8: 4-byte sequence")
    try:
        s = data.replace(b"\xc0\x80", b"\x00").decode("utf-8", "surrogatepass")
        if _SURROGATE.search(s):
            s = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeError as e:
        raise DecodeError(f"invalid modified UTF-8: {e.reason}") from None
    return s


_SURROGATE = re.compile("[\ud800-\udfff]")
_SUPPLEMENTARY = re.compile("[\U00010000-\U0010ffff]")


def _split_pair(m: re.Match) -> str:
    o = ord(m.group()) - 0x10000
    return chr(0xD800 + (o >> 10)) + chr(0xDC00 + (o & 0x3FF))


def encode_mutf8(s: str) -> bytes:
    if s.isascii() and "\x00" not in s:
        return s.encode("ascii")
    s = _SUPPLEMENTARY.sub(_split_pair, s)
    return s.encode("utf-8", "surrogatepass").replace(b"\x00", b"\xc0\x80")


# -- reader / writer ---------------------------------------------------------------------------

_B = struct.Struct(">b")
_H = struct.Struct(">h")
_UH = struct.Struct(">H")
_I = struct.Struct(">i")
_Q = struct.Struct(">q")
_F = struct.Struct(">f")
_D = struct.Struct(">d")


class Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise DecodeError(f"length {n} exceeds the {self.end - self.pos} bytes left")
        p = self.pos
        self.pos = p + n
        return self.data[p : p + n]

    def _fixed(self, st: struct.Struct) -> Any:
        p = self.pos
        if p + st.size > self.end:
            raise DecodeError("truncated")
        self.pos = p + st.size
        return st.unpack_from(self.data, p)[0]

    def u8(self) -> int:
        if self.pos >= self.end:
            raise DecodeError("truncated")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def bool(self) -> bool:
        return self.u8() != 0

    def byte(self) -> int:
        return self._fixed(_B)

    def short(self) -> int:
        return self._fixed(_H)

    def ushort(self) -> int:
        return self._fixed(_UH)

    def int(self) -> int:
        return self._fixed(_I)

    def long(self) -> int:
        return self._fixed(_Q)

    def float(self) -> float:
        return self._fixed(_F)

    def double(self) -> float:
        return self._fixed(_D)

    def utf(self) -> str:
        return decode_mutf8(self.take(self.ushort()))

    def string(self) -> str | None:
        return self.utf() if self.bool() else None

    def byteseq(self) -> bytes | None:
        if not self.bool():
            return None
        return self.take(self.int())


class Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

    def raw(self, b: bytes) -> None:
        self.parts.append(b)

    def bool(self, v: bool) -> None:
        self.parts.append(b"\x01" if v else b"\x00")

    def byte(self, v: int) -> None:
        self.parts.append(_B.pack(v))

    def short(self, v: int) -> None:
        self.parts.append(_H.pack(v))

    def int(self, v: int) -> None:
        self.parts.append(_I.pack(v))

    def long(self, v: int) -> None:
        self.parts.append(_Q.pack(v))

    def float(self, v: float) -> None:
        self.parts.append(_F.pack(v))

    def double(self, v: float) -> None:
        self.parts.append(_D.pack(v))

    def utf(self, s: str) -> None:
        b = encode_mutf8(s)
        if len(b) > 0xFFFF:
            raise ValueError("string too long for writeUTF")
        self.parts.append(_UH.pack(len(b)))
        self.parts.append(b)

    def string(self, s: str | None) -> None:
        if s is None:
            self.parts.append(b"\x00")
        else:
            self.parts.append(b"\x01")
            self.utf(s)

    def byteseq(self, b: bytes | None) -> None:
        if b is None:
            self.parts.append(b"\x00")
        else:
            self.parts.append(b"\x01" + _I.pack(len(b)))
            self.parts.append(b)


# -- the generic marshaller -------------------------------------------------------------------


def decode_object(r: Reader, depth: int = 0) -> Obj | None:
    """A nullable nested object: bool present, type byte, body."""
    if not r.bool():
        return None
    return decode_body(r, r.u8(), depth)


def decode_body(r: Reader, type_id: int, depth: int = 0) -> Obj:
    if depth > MAX_NESTING:
        raise DecodeError("objects nested too deeply")
    spec = SCHEMA.get(type_id)
    if spec is None:
        raise DecodeError(f"unknown data type {type_id}")
    _, prefix, fields = spec
    obj = Obj.__new__(Obj)
    obj.type = type_id
    if prefix:
        obj.command_id = r.int()
        obj.response_required = r.bool()
    else:
        obj.command_id = 0
        obj.response_required = False
    d = obj.__dict__
    for name, kind in fields:
        if kind == "o" or kind == "c":
            d[name] = decode_object(r, depth + 1)
        elif kind == "s":
            d[name] = r.string()
        elif kind == "z":
            d[name] = r.bool()
        elif kind == "l":
            d[name] = r.long()
        elif kind == "i":
            d[name] = r.int()
        elif kind == "b":
            d[name] = r.byte()
        elif kind == "y":
            d[name] = r.byteseq()
        elif kind == "O":
            if r.bool():
                n = r.short()
                if n < 0 or n > r.remaining():
                    raise DecodeError(f"array count {n} exceeds the frame")
                d[name] = [decode_object(r, depth + 1) for _ in range(n)]
            else:
                d[name] = None
        elif kind == "t":
            if r.bool():
                d[name] = (r.string(), r.string())
            else:
                d[name] = None
        elif kind == "h":
            d[name] = r.short()
        else:  # pragma: no cover - table error
            raise AssertionError(kind)
    return obj


def encode_object(w: Writer, obj: Obj | None) -> None:
    if obj is None:
        w.parts.append(b"\x00")
        return
    w.parts.append(bytes((1, obj.type)))
    encode_body(w, obj)


def encode_body(w: Writer, obj: Obj) -> None:
    _, prefix, fields = SCHEMA[obj.type]
    parts = w.parts
    if prefix:
        parts.append(_I.pack(obj.command_id))
        parts.append(b"\x01" if obj.response_required else b"\x00")
    d = obj.__dict__
    for name, kind in fields:
        v = d.get(name)
        if kind == "o" or kind == "c":
            encode_object(w, v)
        elif kind == "s":
            w.string(v)
        elif kind == "z":
            parts.append(b"\x01" if v else b"\x00")
        elif kind == "l":
            parts.append(_Q.pack(v or 0))
        elif kind == "i":
            parts.append(_I.pack(v or 0))
        elif kind == "b":
            parts.append(_B.pack(v or 0))
        elif kind == "y":
            w.byteseq(v)
        elif kind == "O":
            if v is None:
                parts.append(b"\x00")
            else:
                parts.append(b"\x01" + _H.pack(len(v)))
                for x in v:
                    encode_object(w, x)
        elif kind == "t":
            if v is None:
                parts.append(b"\x00")
            else:
                parts.append(b"\x01")
                w.string(v[0])
                w.string(v[1])
        elif kind == "h":
            parts.append(_H.pack(v or 0))


def encode_frame_generic(obj: Obj) -> bytes:
    """One size-prefixed frame through the table interpreter (reference implementation)."""
    w = Writer()
    w.parts.append(bytes((obj.type,)))
    encode_body(w, obj)
    body = w.getvalue()
    return _I.pack(len(body)) + body


def decode_command_generic(frame: bytes) -> Obj:
    """:func:`decode_command` through the table interpreter (reference implementation)."""
    if not frame:
        raise DecodeError("empty frame")
    type_id = frame[0]
    r = Reader(frame, 1)
    if type_id == WIREFORMAT_INFO:
        raise DecodeError("unexpected WireFormatInfo")
    obj = decode_body(r, type_id)
    if r.pos != r.end:
        raise DecodeError(f"{r.end - r.pos} bytes left over after {obj.name}")
    return obj


# -- compiled fast paths ------------------------------------------------------------------
# The same SCHEMA, turned once at import into one straight-line decoder and encoder per type
# (consecutive fixed-width fields read/written with a single struct call). The tests check
# them against the interpreter above and the construct declarations below.

_FIXED = {"z": "?", "b": "b", "h": "h", "i": "i", "l": "q"}
_trunc = "truncated"


def _rs(data: bytes, pos: int, end: int) -> tuple[str | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 3 > end:
        raise DecodeError(_trunc)
    n = (data[pos + 1] << 8) | data[pos + 2]
    pos += 3
    if pos + n > end:
        raise DecodeError(f"string length {n} exceeds the frame")
    raw = data[pos : pos + n]
    return (raw.decode("ascii") if raw.isascii() else decode_mutf8(raw)), pos + n


def _ry(data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 5 > end:
        raise DecodeError(_trunc)
    n = _I.unpack_from(data, pos + 1)[0]
    pos += 5
    if n < 0 or pos + n > end:
        raise DecodeError(f"length {n} exceeds the frame")
    return data[pos : pos + n], pos + n


def _ro(data: bytes, pos: int, end: int, depth: int) -> tuple[Obj | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 2 > end:
        raise DecodeError(_trunc)
    dec = _DECODERS.get(data[pos + 1])
    if dec is None:
        raise DecodeError(f"unknown data type {data[pos + 1]}")
    if depth > MAX_NESTING:
        raise DecodeError("objects nested too deeply")
    return dec(data, pos + 2, end, depth)


def _rO(data: bytes, pos: int, end: int, depth: int) -> tuple[list | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 3 > end:
        raise DecodeError(_trunc)
    n = _H.unpack_from(data, pos + 1)[0]
    pos += 3
    if n < 0 or n > end - pos:
        raise DecodeError(f"array count {n} exceeds the frame")
    out = []
    for _ in range(n):
        v, pos = _ro(data, pos, end, depth)
        out.append(v)
    return out, pos


def _rt(data: bytes, pos: int, end: int) -> tuple[tuple | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    cls, pos = _rs(data, pos + 1, end)
    msg, pos = _rs(data, pos, end)
    return (cls, msg), pos


def _ws(v: str | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    elif v.isascii() and "\x00" not in v:
        parts.append(b"\x01" + _UH.pack(len(v)) + v.encode("ascii"))
    else:
        b = encode_mutf8(v)
        if len(b) > 0xFFFF:
            raise ValueError("string too long for writeUTF")
        parts.append(b"\x01" + _UH.pack(len(b)))
        parts.append(b)


def _wy(v: bytes | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01" + _I.pack(len(v)))
        parts.append(v)


def _wo(v: Obj | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(_OBJ_HEADER[v.type])
        _ENCODERS[v.type](v, parts)


def _wO(v: list | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01" + _H.pack(len(v)))
        for x in v:
            _wo(x, parts)


def _wt(v: tuple | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01")
        _ws(v[0], parts)
        _ws(v[1], parts)


def _runs(fields: tuple) -> list:
    """Group consecutive fixed-width fields: [(kind, [names])]."""
    out: list = []
    for name, kind in fields:
        if kind in _FIXED and out and out[-1][0] == "fixed":
            out[-1][1].append((name, kind))
        elif kind in _FIXED:
            out.append(("fixed", [(name, kind)]))
        else:
            out.append((kind, [(name, kind)]))
    return out


def _cro(data: bytes, pos: int, end: int, depth: int, uc: list) -> tuple[Obj | None, int]:
    """:func:`_ro` in the cached form (nested objects may hold cached fields)."""
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 2 > end:
        raise DecodeError(_trunc)
    dec = _CDECODERS.get(data[pos + 1])
    if dec is None:
        raise DecodeError(f"unknown data type {data[pos + 1]}")
    if depth > MAX_NESTING:
        raise DecodeError("objects nested too deeply")
    return dec(data, pos + 2, end, depth, uc)


def _crO(data: bytes, pos: int, end: int, depth: int, uc: list) -> tuple[list | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 3 > end:
        raise DecodeError(_trunc)
    n = _H.unpack_from(data, pos + 1)[0]
    pos += 3
    if n < 0 or n > end - pos:
        raise DecodeError(f"array count {n} exceeds the frame")
    out = []
    for _ in range(n):
        v, pos = _cro(data, pos, end, depth, uc)
        out.append(v)
    return out, pos


def _cwo(v: Obj | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(_OBJ_HEADER[v.type])
        _CENCODERS[v.type](v, parts)


def _cwO(v: list | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01" + _H.pack(len(v)))
        for x in v:
            _cwo(x, parts)


_UNCACHED = b"\x01\xff\xff"  # a cached field written as new, index -1 (receiver keeps nothing)


def _generate(cached: bool) -> tuple[dict, dict]:
    """Decoders and encoders of every type, for the plain form or the cached form."""
    env: dict[str, Any] = {
        "Obj": Obj, "DecodeError": DecodeError, "_rs": _rs, "_ry": _ry, "_ro": _ro,
        "_rO": _rO, "_rt": _rt, "_ws": _ws, "_wy": _wy, "_wo": _wo, "_wO": _wO, "_wt": _wt,
        "_crO": _crO, "_cwO": _cwO,
        "_new": object.__new__, "_PREFIX": struct.Struct(">i?"),
        "_UNCACHED": _UNCACHED,
    }
    src: list[str] = []
    x = "c" if cached else ""  # function name prefix
    uc = ", uc" if cached else ""
    for t, (_, prefix, fields) in SCHEMA.items():
        dec = [f"def _{x}d{t}(data, pos, end, depth{uc}):", "    o = _new(Obj)",
               f"    o.type = {t}"]
        enc = [f"def _{x}e{t}(o, parts):", "    d = o.__dict__"]
        if prefix:
            dec += ["    if pos + 5 > end:", "        raise DecodeError('truncated')",
                    "    o.command_id, o.response_required = _PREFIX.unpack_from(data, pos)",
                    "    pos += 5"]
            enc += ["    parts.append(_PREFIX.pack(o.command_id, o.response_required))"]
        else:
            dec += ["    o.command_id = 0", "    o.response_required = False"]
        names = []
        for i, (kind, group) in enumerate(_runs(fields)):
            if kind == "fixed":
                fmt = ">" + "".join(_FIXED[k] for _, k in group)
                st = struct.Struct(fmt)
                env[f"_S{t}_{i}"] = st
                vs = [f"v_{n}" for n, _ in group]
                dec += [f"    if pos + {st.size} > end:", "        raise DecodeError('truncated')",
                        f"    {', '.join(vs)}{',' if len(vs) == 1 else ''} = "
                        f"_S{t}_{i}.unpack_from(data, pos)",
                        f"    pos += {st.size}"]
                args = ", ".join(
                    f"d['{n}']" if k == "z" else f"d['{n}'] or 0" for n, k in group
                )
                enc.append(f"    parts.append(_S{t}_{i}.pack({args}))")
                names += [n for n, _ in group]
                continue
            n = group[0][0]
            names.append(n)
            if t in MESSAGE_TYPES and n == "target_consumer_id":
                dec.append("    m2 = pos")
            if kind == "s":  # inlined _rs / _ws
                dec += [
                    "    if pos >= end:", "        raise DecodeError('truncated')",
                    "    if data[pos]:",
                    "        if pos + 3 > end:", "            raise DecodeError('truncated')",
                    "        n = (data[pos + 1] << 8) | data[pos + 2]",
                    "        pos += 3",
                    "        if pos + n > end:",
                    "            raise DecodeError(f'string length {n} exceeds the frame')",
                    "        raw = data[pos : pos + n]",
                    "        pos += n",
                    f"        v_{n} = raw.decode('ascii') if raw.isascii() else _mutf8(raw)",
                    "    else:", f"        v_{n} = None", "        pos += 1",
                ]
                enc += [
                    f"    v = d['{n}']",
                    "    if v is None:", "        parts.append(b'\\x00')",
                    "    elif v.isascii() and '\\x00' not in v:",
                    "        parts.append(b'\\x01' + _UHpack(len(v)) + v.encode('ascii'))",
                    "    else:", "        _ws(v, parts)",
                ]
            elif kind == "o" or kind == "c":  # inlined _ro / _wo
                nested = [
                    "if pos >= end:", "    raise DecodeError('truncated')",
                    "if data[pos]:",
                    "    if pos + 2 > end:", "        raise DecodeError('truncated')",
                    "    dec = _DECODERS_get(data[pos + 1])",
                    "    if dec is None:",
                    "        raise DecodeError(f'unknown data type {data[pos + 1]}')",
                    f"    if depth + 1 > {MAX_NESTING}:",
                    "        raise DecodeError('objects nested too deeply')",
                    f"    v_{n}, pos = dec(data, pos + 2, end, depth + 1{uc})",
                    "else:", f"    v_{n} = None", "    pos += 1",
                ]
                if kind == "c" and cached:
                    # the index as unsigned: 0xFFFF is -1 (not stored); any other
                    # index of 0x8000 and up is negative, beyond every cache (at most 32767)
                    dec += [
                        "    if pos + 3 > end:", "        raise DecodeError('truncated')",
                        "    idx = (data[pos + 1] << 8) | data[pos + 2]",
                        "    if data[pos]:",
                        "        pos += 3",
                    ] + ["        " + ln for ln in nested] + [
                        "        if idx != 0xFFFF:",
                        "            if idx >= len(uc):",
                        "                raise DecodeError(f'cache index {idx} out of range')",
                        f"            uc[idx] = v_{n}",
                        "    else:",
                        "        pos += 3",
                        "        if idx >= len(uc):",
                        "            raise DecodeError(f'cache index {idx} out of range')",
                        f"        v_{n} = uc[idx]",
                    ]
                    enc += [
                        f"    v = d['{n}']",
                        "    if v is None:", "        parts.append(b'\\x01\\xff\\xff\\x00')",
                        "    else:", "        parts.append(_UNCACHED + _OBJ_HEADER[v.type])",
                        "        _ENCODERS[v.type](v, parts)",
                    ]
                else:
                    dec += ["    " + ln for ln in nested]
                    enc += [
                        f"    v = d['{n}']",
                        "    if v is None:", "        parts.append(b'\\x00')",
                        "    else:", "        parts.append(_OBJ_HEADER[v.type])",
                        "        _ENCODERS[v.type](v, parts)",
                    ]
                if t in MESSAGE_TYPES and n == "message_id":
                    dec.append("    o.mark = pos")
                if t in MESSAGE_TYPES and n == "original_transaction_id":
                    dec.append("    m1 = pos")
                if t in MESSAGE_TYPES and n == "target_consumer_id":
                    dec.append("    o.cmark = (m1, m2, pos)")
            elif kind == "O":
                dec.append(f"    v_{n}, pos = _{x}rO(data, pos, end, depth + 1{uc})")
                enc.append(f"    _{x}wO(d['{n}'], parts)")
            else:
                dec.append(f"    v_{n}, pos = _r{kind}(data, pos, end)")
                enc.append(f"    _w{kind}(d['{n}'], parts)")
        if len(names) > 16:  # see _generate_speculative: a presized copy, then the values
            env[f"_TMPL{t}"] = dict.fromkeys(names)
            dec.append(f"    d = _TMPL{t}.copy()")
            dec += [f"    d['{n}'] = v_{n}" for n in names]
            dec.append("    o.__dict__ = d")
        else:
            dec.append("    o.__dict__ = {" + ", ".join(f"'{n}': v_{n}" for n in names) + "}")
        dec.append("    return o, pos")
        if len(enc) == 2 and not prefix:
            enc.append("    pass")
        src += dec + [""] + enc + [""]
    exec(compile("\n".join(src), f"<openwire codec{' cached' if cached else ''}>", "exec"), env)
    decoders = {t: env[f"_{x}d{t}"] for t in SCHEMA}
    encoders = {t: env[f"_{x}e{t}"] for t in SCHEMA}
    env.update(_DECODERS_get=decoders.get, _ENCODERS=encoders, _OBJ_HEADER=_OBJ_HEADER,
               _mutf8=decode_mutf8, _UHpack=_UH.pack)
    return decoders, encoders


# -- speculative decoders (cached form) ---------------------------------------------------------
# The JMS client writes its hottest commands (messages and their acks) in one shape: cached
# fields as references, optional strings, objects and arrays absent, only the MessageIds
# present. For that shape everything but the byte arrays is a few fixed layouts: one struct
# call each, then one test that every flag holds what the shape assumes and one that every
# cache index is in range. Anything else, malformed frames included, is left to the decoders
# above (the speculative decoder returns None); the tests check both give the same object.

_SPEC_PRESENT = {MESSAGE_ACK: ("first_message_id", "last_message_id")}
_SPEC_PRESENT.update({t: ("message_id",) for t in MESSAGE_TYPES if t != BLOB_MESSAGE})


class _SpecBuilder:
    """Source of one speculative decoder: fixed layouts gathered field by field."""

    def __init__(self, t: int, env: dict) -> None:
        self.t = t
        self.env = env
        self.body: list[str] = ["    nuc = len(uc)"]
        self.run: list[tuple[str, str]] = []  # (struct code, variable) of the current layout
        self.checks: list[str] = []  # what the flags of the layout must hold
        self.idxs: list[str] = []  # its cache indexes
        self.after: list[str] = []  # lines run once it is unpacked (pos still at its start)
        self._names = itertools.count()

    def new(self) -> str:
        return f"x{next(self._names)}"

    def offset(self) -> int:
        """Where the next field starts, from the start of the current layout."""
        return struct.calcsize(">" + "".join(f for f, _ in self.run))

    def fixed(self, code: str) -> str:
        v = self.new()
        self.run.append((code, v))
        return v

    def ref(self) -> str:
        """A cached field written as a reference; the expression of its value."""
        f, i = self.new(), self.new()
        self.run.extend((("?", f), ("H", i)))
        self.checks.append(f"not {f}")
        self.idxs.append(i)
        return f"uc[{i}]"

    def absent(self) -> str:
        """An optional string, object, array or throwable left out."""
        f = self.fixed("?")
        self.checks.append(f"not {f}")
        return "None"

    def flush(self) -> None:
        run = self.run
        if not run:
            return
        st = struct.Struct(">" + "".join(f for f, _ in run))
        name = f"_SS{self.t}_{len(self.env)}"
        self.env[name] = st
        vs = [v for _, v in run]
        b = self.body
        b += [f"    if pos + {st.size} > end:", "        return None",
              f"    {', '.join(vs)}{',' if len(vs) == 1 else ''} = "
              f"{name}.unpack_from(data, pos)"]
        if self.checks:
            b += [f"    if not ({' and '.join(self.checks)}):", "        return None"]
        if self.idxs:
            top = f"max({', '.join(self.idxs)})" if len(self.idxs) > 1 else self.idxs[0]
            b += [f"    if {top} >= nuc:", "        return None"]
        b += ["    " + ln for ln in self.after]
        b.append(f"    pos += {st.size}")
        run.clear()
        self.checks.clear()
        self.idxs.clear()
        self.after.clear()

    def bytes_field(self) -> str:
        self.flush()
        v = self.new()
        self.body += [
            "    if pos >= end:", "        return None",
            "    if data[pos]:",
            "        if pos + 5 > end:", "            return None",
            "        n = _I.unpack_from(data, pos + 1)[0]",
            "        pos += 5",
            "        if n < 0 or pos + n > end:", "            return None",
            f"        {v} = data[pos : pos + n]",
            "        pos += n",
            "    else:", f"        {v} = None", "        pos += 1",
        ]
        return v

    def message_id(self) -> str:
        """A present MessageId without text view."""
        p, ty = self.new(), self.new()
        self.run.extend((("?", p), ("B", ty)))
        self.checks.extend((p, f"{ty} == {MESSAGE_ID}"))
        self.absent()
        pid = self.ref()
        seq, bseq = self.fixed("q"), self.fixed("q")
        mid = self.new()
        self.after += [
            f"{mid} = _new(Obj)", f"{mid}.type = {MESSAGE_ID}",
            f"{mid}.command_id = 0", f"{mid}.response_required = False",
            f"{mid}.__dict__ = {{'text_view': None, 'producer_id': {pid}, "
            f"'producer_sequence_id': {seq}, 'broker_sequence_id': {bseq}}}",
        ]
        return mid


def _generate_speculative() -> dict:
    env: dict[str, Any] = {"Obj": Obj, "_new": object.__new__, "_I": _I}
    src: list[str] = []
    for t, present in _SPEC_PRESENT.items():
        _, prefix, fields = SCHEMA[t]
        sb = _SpecBuilder(t, env)
        message = t in MESSAGE_TYPES
        values: dict[str, str] = {}
        if prefix:
            sb.run.extend((("i", "cid"), ("?", "rr")))
        for name, kind in fields:
            if message and name == "target_consumer_id":
                sb.after.append(f"m2 = pos + {sb.offset()}")
            if kind in _FIXED:
                values[name] = sb.fixed(_FIXED[kind])
            elif kind == "c":
                values[name] = sb.ref()
            elif kind == "o" and name in present:
                values[name] = sb.message_id()
            elif kind == "y":
                values[name] = sb.bytes_field()
            else:  # s, o, O, t
                values[name] = sb.absent()
            if message and name == "original_transaction_id":
                sb.after.append(f"m1 = pos + {sb.offset()}")
            if message and name == "target_consumer_id":
                sb.after.append(f"m3 = pos + {sb.offset()}")
        sb.flush()
        tail = ["    o = _new(Obj)", f"    o.type = {t}"]
        if prefix:
            tail += ["    o.command_id = cid", "    o.response_required = rr"]
        else:
            tail += ["    o.command_id = 0", "    o.response_required = False"]
        if message:
            tail += ["    o.mark = None", "    o.cmark = (m1, m2, m3)"]
        if len(values) > 16:
            # a copy of a dict of the absent fields, then the rest: a large dict display costs
            # twice that (about 1 against 0.55 us for thirty keys, measured)
            env[f"_TMPL{t}"] = {n: None for n, e in values.items() if e == "None"}
            tail.append(f"    d = _TMPL{t}.copy()")
            tail += [f"    d['{n}'] = {e}" for n, e in values.items() if e != "None"]
            tail.append("    o.__dict__ = d")
        else:
            tail.append("    o.__dict__ = {" + ", ".join(f"'{n}': {e}" for n, e in values.items())
                        + "}")
        tail.append("    return o, pos")
        src += [f"def _sd{t}(data, pos, end, uc):"] + sb.body + tail + [""]
    exec(compile("\n".join(src), "<openwire codec speculative>", "exec"), env)
    return {t: env[f"_sd{t}"] for t in _SPEC_PRESENT}


# The standard ack of the client's usual shape (see the speculative decoders), read without
# building any object: command id, response required, consumer id, transaction id, ack type,
# the last MessageId's broker sequence id. Checked against the decoders by the tests.
_ACK_SHAPE = struct.Struct(">i??H?H?Hb?B??Hqq?B??Hqqi?")
_ACK_FRAME_SIZE = 1 + _ACK_SHAPE.size


def ack_fields(frame: bytes, uc: list) -> tuple | None:
    """The fields of a cached-form MessageAck that the session's common case reads, or None
    when the frame is not a MessageAck of that shape (then decode it)."""
    if len(frame) != _ACK_FRAME_SIZE or frame[0] != MESSAGE_ACK:
        return None
    (cid, rr, dn, di, tn, ti, cn, ci, kind, fp, ft, ftv, fpn, fpi, _, _, lp, lt, ltv, lpn, lpi,
     _, last, _, poison) = _ACK_SHAPE.unpack_from(frame, 1)
    if (dn or tn or cn or not fp or ft != MESSAGE_ID or ftv or fpn or not lp
            or lt != MESSAGE_ID or ltv or lpn or poison):
        return None
    if max(di, ti, ci, fpi, lpi) >= len(uc):
        return None
    return cid, rr, uc[ci], uc[ti], kind, last


_OBJ_HEADER = {t: bytes((1, t)) for t in SCHEMA}
_DECODERS, _ENCODERS = _generate(False)
_CDECODERS, _CENCODERS = _generate(True)
_SPECULATIVE = _generate_speculative()
_TYPE_BYTE = {t: bytes((t,)) for t in SCHEMA}


def encode_frame(obj: Obj, cached: bool = False) -> bytes:
    """One size-prefixed frame: int32 size, type byte, body (``cached``: the cached form)."""
    parts = [_TYPE_BYTE[obj.type]]
    (_CENCODERS if cached else _ENCODERS)[obj.type](obj, parts)
    body = b"".join(parts)
    return _I.pack(len(body)) + body


def dispatch_head(consumer_id: Obj | None, destination: Obj | None) -> bytes:
    """The constant start of every MessageDispatch to one consumer (for :func:`encode_dispatch`):
    type byte, commandId 0, responseRequired false, ConsumerId, Destination."""
    parts = [bytes((MESSAGE_DISPATCH,)), b"\x00\x00\x00\x00\x00"]
    _wo(consumer_id, parts)
    _wo(destination, parts)
    return b"".join(parts)


def dispatch_heads_cached(consumer_id: Obj | None, destination: Obj | None,
                          slots: tuple[int, int] | None) -> tuple[bytes, bytes]:
    """The MessageDispatch head of one consumer in the cached form: (first, later). ``first``
    stores the consumer id and destination in the receiver's cache ``slots``; ``later``
    refers to them. Without slots both write the fields as new with index -1."""
    pre = bytes((MESSAGE_DISPATCH,)) + b"\x00\x00\x00\x00\x00"
    if slots is None:
        parts = [pre, _UNCACHED]
        _wo(consumer_id, parts)
        parts.append(_UNCACHED)
        _wo(destination, parts)
        head = b"".join(parts)
        return head, head
    ci, di = _H.pack(slots[0]), _H.pack(slots[1])
    parts = [pre, b"\x01", ci]
    _wo(consumer_id, parts)
    parts += [b"\x01", di]
    _wo(destination, parts)
    return b"".join(parts), b"".join((pre, b"\x00", ci, b"\x00", di))


def encode_dispatch(head: bytes, message: Obj | None, redelivery_counter: int,
                    cached: bool = False) -> bytes:
    """Hand-written fast path for the hottest frame, MessageDispatch; equal to
    ``encode_frame(Obj(MESSAGE_DISPATCH, consumer_id=.., destination=.., message=..,
    redelivery_counter=..))`` (checked by the tests)."""
    parts = [head]
    if message is None:
        parts.append(b"\x00")
    else:
        parts.append(_OBJ_HEADER[message.type])
        (_CENCODERS if cached else _ENCODERS)[message.type](message, parts)
    parts.append(_I.pack(redelivery_counter))
    body = b"".join(parts)
    return _I.pack(len(body)) + body


_RESPONSE_FRAME = struct.Struct(">iBi?i")


def encode_response(correlation_id: int) -> bytes:
    """Hand-written fast path for a plain Response (the answer to every synchronous send);
    equal to ``encode_frame(Obj(RESPONSE, correlation_id=..))`` in both forms (checked by the
    tests)."""
    return _RESPONSE_FRAME.pack(10, RESPONSE, 0, False, correlation_id)


def encode_message(message: Obj, cached: bool = False) -> bytes:
    """A message as a present nested object (flag, type, body), for :func:`encode_dispatch_raw`."""
    parts = [_OBJ_HEADER[message.type]]
    (_CENCODERS if cached else _ENCODERS)[message.type](message, parts)
    return b"".join(parts)


def encode_dispatch_raw(head: bytes, message: bytes, redelivery_counter: int) -> bytes:
    """:func:`encode_dispatch` with the message already encoded by :func:`encode_message`."""
    n = len(head) + len(message) + 4
    return b"".join((_I.pack(n), head, message, _I.pack(redelivery_counter)))


def decode_command(frame: bytes, cache: list | None = None) -> Obj:
    """A frame without its size prefix: type byte, body (must consume it exactly). With
    ``cache`` (the connection's unmarshalling cache, a list of the negotiated size) the frame
    is in the cached form."""
    if not frame:
        raise DecodeError("empty frame")
    type_id = frame[0]
    if type_id == WIREFORMAT_INFO:
        raise DecodeError("unexpected WireFormatInfo")
    end = len(frame)
    if cache is None:
        dec = _DECODERS.get(type_id)
        if dec is None:
            raise DecodeError(f"unknown data type {type_id}")
        obj, pos = dec(frame, 1, end, 0)
    else:
        spec = _SPECULATIVE.get(type_id)
        got = spec(frame, 1, end, cache) if spec is not None else None
        if got is not None:
            obj, pos = got
        else:
            dec = _CDECODERS.get(type_id)
            if dec is None:
                raise DecodeError(f"unknown data type {type_id}")
            obj, pos = dec(frame, 1, end, 0, cache)
            if type_id in MESSAGE_TYPES:
                obj.mark = None  # the cached form: no single slice makes the plain form
    if pos != end:
        raise DecodeError(f"{end - pos} bytes left over after {obj.name}")
    if type_id in MESSAGE_TYPES:
        obj.raw = frame
    return obj


def _cenc(v: Obj | None) -> bytes:
    """A cached field as new with index -1; memoized on id and destination objects, which
    are never changed once decoded (a cached one comes back as the same object)."""
    if v is None:
        return b"\x01\xff\xff\x00"
    try:
        return v.cenc
    except AttributeError:
        pass
    parts = [_UNCACHED, _OBJ_HEADER[v.type]]
    _CENCODERS[v.type](v, parts)
    b = b"".join(parts)
    if v.type in _VALUE_TYPES:
        v.cenc = b
    return b


_VALUE_TYPES = DESTINATION_TYPES | {CONNECTION_ID, SESSION_ID, CONSUMER_ID, PRODUCER_ID,
                                    BROKER_ID}
_MID_HEAD = _OBJ_HEADER[MESSAGE_ID]
_QQ = struct.Struct(">qq")
_REENCODE_HEADS: dict[tuple, tuple] = {}


def reencode_message(m: Obj, broker_sequence_id: int, cached: bool = False) -> bytes | None:
    """The message a client sent, as a nested object for :func:`encode_dispatch_raw`, taken
    from its frame instead of encoded again: commandId and responseRequired zeroed and the
    MessageId's broker sequence id set; ``cached`` gives the cached form (whatever the form
    of the frame). None when ``m`` was not decoded from a frame or has no MessageId, or when
    the forms differ and it carries a data structure."""
    frame = getattr(m, "raw", None)
    mid = m.message_id
    if frame is None or mid is None:
        return None
    mark = getattr(m, "mark", None)
    if not cached and mark is not None:
        # a plain frame into the plain form: one slice around the broker sequence id
        return b"".join((b"\x01", frame[:1], b"\x00\x00\x00\x00\x00", frame[6 : mark - 8],
                         _Q.pack(broker_sequence_id), frame[mark:]))
    if m.data_structure is not None:  # may hold cached fields: not the same in both forms
        return None
    m1, m2, m3 = m.cmark
    if cached and mark is None:
        # A cached-form frame into the cached form. Its ids and destination are the objects
        # of the connection's unmarshalling cache, the same for every message of a producer
        # to a destination, and so is everything up to the MessageId's sequence ids: built
        # once (the entry holds the objects themselves, so their ids stay theirs).
        key = (frame[0], id(m.producer_id), id(m.destination), id(m.transaction_id),
               id(m.original_destination), id(mid.producer_id), mid.text_view)
        entry = _REENCODE_HEADS.get(key)
        if entry is None:
            parts = [b"\x01", frame[:1], b"\x00\x00\x00\x00\x00", _cenc(m.producer_id),
                     _cenc(m.destination), _cenc(m.transaction_id),
                     _cenc(m.original_destination), _MID_HEAD]
            _ws(mid.text_view, parts)
            parts.append(_cenc(mid.producer_id))
            if len(_REENCODE_HEADS) >= 4096:
                _REENCODE_HEADS.clear()
            entry = _REENCODE_HEADS[key] = (b"".join(parts), m.producer_id, m.destination,
                                            m.transaction_id, m.original_destination,
                                            mid.producer_id)
        return b"".join((entry[0], _QQ.pack(mid.producer_sequence_id, broker_sequence_id),
                         _cenc(m.original_transaction_id), frame[m1:m2],
                         _cenc(m.target_consumer_id), frame[m3:]))
    if cached:
        enc = _cenc
        mparts = [_MID_HEAD]
        _ws(mid.text_view, mparts)
        mparts.append(enc(mid.producer_id))
    else:
        def enc(v: Obj | None) -> bytes:
            if v is None:
                return b"\x00"
            parts = [_OBJ_HEADER[v.type]]
            _ENCODERS[v.type](v, parts)
            return b"".join(parts)

        mparts = [_MID_HEAD]
        _ws(mid.text_view, mparts)
        mparts.append(enc(mid.producer_id))
    mparts.append(_QQ.pack(mid.producer_sequence_id, broker_sequence_id))
    return b"".join((b"\x01", frame[:1], b"\x00\x00\x00\x00\x00", enc(m.producer_id),
                     enc(m.destination), enc(m.transaction_id), enc(m.original_destination),
                     *mparts, enc(m.original_transaction_id), frame[m1:m2],
                     enc(m.target_consumer_id), frame[m3:]))


# -- construct declarations (fixed layouts; also derived from the table for the tests) ----------

FRAME_HEADER = cs.Struct("size" / cs.Int32sb, "type" / cs.Int8ub)

WIRE_FORMAT_INFO = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int32sb,
    "properties" / cs.Struct(
        "present" / cs.Flag,
        "data" / cs.If(cs.this.present, cs.Prefixed(cs.Int32sb, cs.GreedyBytes)),
    ),
)


def construct_for(type_id: int, depth: int = 3) -> cs.Construct:
    """A ``construct`` declaration of one type, built from ``SCHEMA`` (strings as raw bytes).

    ``depth`` bounds nested objects (they are declared through ``cs.Switch`` on the type byte).
    """
    _, prefix, fields = SCHEMA[type_id]
    members: list[cs.Construct] = []
    if prefix:
        members += ["command_id" / cs.Int32sb, "response_required" / cs.Flag]
    for name, kind in fields:
        members.append(name / _construct_kind(kind, depth))
    return cs.Struct(*members)


_STRING = cs.Struct(
    "present" / cs.Flag, "value" / cs.If(cs.this.present, cs.PascalString(cs.Int16ub, "utf8"))
)
_BYTESEQ = cs.Struct(
    "present" / cs.Flag, "value" / cs.If(cs.this.present, cs.Prefixed(cs.Int32sb, cs.GreedyBytes))
)


def _nested(depth: int) -> cs.Construct:
    if depth <= 0:
        return cs.Struct("present" / cs.Const(False, cs.Flag))
    cases = {t: construct_for(t, depth - 1) for t in SCHEMA}
    return cs.Struct(
        "present" / cs.Flag,
        "value" / cs.If(
            cs.this.present,
            cs.Struct("type" / cs.Int8ub, "body" / cs.Switch(cs.this.type, cases)),
        ),
    )


def _construct_kind(kind: str, depth: int) -> cs.Construct:
    if kind == "z":
        return cs.Flag
    if kind == "b":
        return cs.Int8sb
    if kind == "h":
        return cs.Int16sb
    if kind == "i":
        return cs.Int32sb
    if kind == "l":
        return cs.Int64sb
    if kind == "s":
        return _STRING
    if kind == "y":
        return _BYTESEQ
    if kind == "o" or kind == "c":
        return cs.LazyBound(lambda: _nested(depth))
    if kind == "O":
        return cs.Struct(
            "present" / cs.Flag,
            "items" / cs.If(
                cs.this.present, cs.PrefixedArray(cs.Int16sb, cs.LazyBound(lambda: _nested(depth)))
            ),
        )
    if kind == "t":
        return cs.Struct(
            "present" / cs.Flag,
            "value" / cs.If(cs.this.present, cs.Struct("cls" / _STRING, "message" / _STRING)),
        )
    raise AssertionError(kind)


# -- WireFormatInfo -------------------------------------------------------------------------------


def decode_wireformat(frame: bytes, max_size: int) -> tuple[int, dict]:
    """A WireFormatInfo frame (without size prefix): (version, properties)."""
    if not frame or frame[0] != WIREFORMAT_INFO:
        raise DecodeError("expected WireFormatInfo")
    r = Reader(frame, 1)
    if r.take(8) != MAGIC:
        raise DecodeError("bad magic")
    version = r.int()
    props: dict = {}
    raw = r.byteseq()
    if raw is not None:
        props = decode_primitive_map(Reader(raw), max_size)
    if r.remaining():
        raise DecodeError("bytes left over after WireFormatInfo")
    return version, props


def encode_wireformat(version: int, props: dict, types: dict[str, int]) -> bytes:
    body = WIRE_FORMAT_INFO.build(
        {
            "version": version,
            "properties": {"present": True, "data": encode_primitive_map(props, types)},
        }
    )
    return _I.pack(len(body) + 1) + bytes((WIREFORMAT_INFO,)) + body


# -- primitive maps (properties, MapMessage bodies, WireFormatInfo properties) -------------------

P_NULL, P_BOOL, P_BYTE, P_CHAR, P_SHORT, P_INT, P_LONG, P_DOUBLE, P_FLOAT, P_STRING = range(10)
P_BYTES, P_MAP, P_LIST, P_BIGSTRING = 10, 11, 12, 13

PTYPE_NAMES = {P_BYTE: "byte", P_CHAR: "char", P_SHORT: "short", P_INT: "int", P_LONG: "long",
               P_FLOAT: "float", P_DOUBLE: "double"}
PTYPE_CODES = {v: k for k, v in PTYPE_NAMES.items()}


def decode_primitive_map(
    r: Reader, max_entries: int, types: dict | None = None, depth: int = 0
) -> dict:
    """int32 count, then (writeUTF key, typed value) pairs. ``types`` collects the type codes
    of numeric values whose Java type a Python value does not keep (byte/short/char/float...)."""
    n = r.int()
    if n < 0:
        return {}
    if n > r.remaining() or n > max_entries:
        raise DecodeError(f"map of {n} entries exceeds the frame")
    out = {}
    for _ in range(n):
        key = r.utf()
        code, value = decode_primitive(r, depth)
        out[key] = value
        if types is not None and code in PTYPE_NAMES and code not in (P_INT, P_DOUBLE):
            types[key] = PTYPE_NAMES[code]
    return out


def decode_primitive(r: Reader, depth: int = 0) -> tuple[int, Any]:
    code = r.u8()
    if code == P_NULL:
        return code, None
    if code == P_BOOL:
        return code, r.bool()
    if code == P_BYTE:
        return code, r.byte()
    if code == P_CHAR:
        return code, chr(r.ushort())
    if code == P_SHORT:
        return code, r.short()
    if code == P_INT:
        return code, r.int()
    if code == P_LONG:
        return code, r.long()
    if code == P_DOUBLE:
        return code, r.double()
    if code == P_FLOAT:
        return code, r.float()
    if code == P_STRING:
        return code, r.utf()
    if code == P_BYTES:
        return code, r.take(r.int())
    if code == P_BIGSTRING:
        return code, decode_mutf8(r.take(r.int()))
    if depth >= MAX_MAP_NESTING:
        raise DecodeError("maps/lists nested too deeply")
    if code == P_MAP:
        return code, decode_primitive_map(r, r.remaining(), None, depth + 1)
    if code == P_LIST:
        n = r.int()
        if n < 0 or n > r.remaining():
            raise DecodeError(f"list of {n} items exceeds the frame")
        return code, [decode_primitive(r, depth + 1)[1] for _ in range(n)]
    raise DecodeError(f"unknown primitive type {code}")


def encode_primitive(w: Writer, value: Any, jtype: str | None = None, depth: int = 0) -> None:
    parts = w.parts
    if value is None:
        parts.append(b"\x00")
    elif isinstance(value, bool):
        parts.append(b"\x01\x01" if value else b"\x01\x00")
    elif isinstance(value, int):
        if jtype == "byte" and -128 <= value < 128:
            parts.append(b"\x02" + _B.pack(value))
        elif jtype == "short" and -32768 <= value < 32768:
            parts.append(b"\x04" + _H.pack(value))
        elif jtype == "char" and 0 <= value < 65536:
            parts.append(b"\x03" + _UH.pack(value))
        elif jtype != "long" and -(2**31) <= value < 2**31:
            parts.append(b"\x05" + _I.pack(value))
        elif -(2**63) <= value < 2**63:
            parts.append(b"\x06" + _Q.pack(value))
        else:
            encode_primitive(w, str(value))
    elif isinstance(value, float):
        if jtype == "float":
            parts.append(b"\x08" + _F.pack(value))
        else:
            parts.append(b"\x07" + _D.pack(value))
    elif isinstance(value, str):
        if jtype == "char" and len(value) == 1 and ord(value) < 65536:
            parts.append(b"\x03" + _UH.pack(ord(value)))
            return
        b = encode_mutf8(value)
        if len(b) <= 0xFFFF:
            parts.append(b"\x09" + _UH.pack(len(b)))
        else:
            parts.append(b"\x0d" + _I.pack(len(b)))
        parts.append(b)
    elif isinstance(value, bytes | bytearray | memoryview):
        b = bytes(value)
        parts.append(b"\x0a" + _I.pack(len(b)))
        parts.append(b)
    elif isinstance(value, dict) and depth < MAX_MAP_NESTING:
        parts.append(b"\x0b")
        _encode_map_into(w, value, None, depth + 1)
    elif isinstance(value, list | tuple) and depth < MAX_MAP_NESTING:
        parts.append(b"\x0c" + _I.pack(len(value)))
        for x in value:
            encode_primitive(w, x, None, depth + 1)
    else:
        encode_primitive(w, str(value))


def _encode_map_into(w: Writer, m: dict, types: dict | None, depth: int = 0) -> None:
    w.parts.append(_I.pack(len(m)))
    for k, v in m.items():
        w.utf(str(k))
        encode_primitive(w, v, types.get(k) if types else None, depth)


def encode_primitive_map(m: dict, types: dict | None = None) -> bytes:
    w = Writer()
    _encode_map_into(w, m, types)
    return w.getvalue()


# -- message bodies -------------------------------------------------------------------------


def inflate(data: bytes, limit: int) -> bytes:
    """zlib-inflate ``data``, refusing output larger than ``limit``."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise DecodeError(f"bad compressed body: {e}") from None
    if len(out) > limit:
        raise DecodeError("decompressed body exceeds the maximum message size")
    return out


def decode_text_body(content: bytes | None) -> str | None:
    """A TextMessage body: int32 length + modified UTF-8 (null content = null text)."""
    if content is None:
        return None
    r = Reader(content)
    n = r.int()
    if n < 0:
        return None
    return decode_mutf8(r.take(n))


def encode_text_body(text: str) -> bytes:
    b = encode_mutf8(text)
    return _I.pack(len(b)) + b
