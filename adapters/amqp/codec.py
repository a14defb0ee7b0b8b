"""AMQP 0-9-1 wire format, sans I/O.

The ``construct`` declarations below (:data:`METHODS`, :data:`FRAME`, :data:`CONTENT_HEADER`)
and in :mod:`~polymq.adapters.amqp.fieldtable` (:data:`FieldTablePure`) are the single source of
truth for the wire format. The broker parses the rare methods with them; the hot frames
(basic.publish, basic.deliver, basic.ack, content header, body) have hand-written fast paths
below and field tables theirs in ``fieldtable``, which the hypothesis tests in
tests/test_amqp_codec.py check against the declarations. Reply codes and :class:`FrameError`
are in :mod:`~polymq.adapters.amqp.errors`; all of these are reached as ``codec.<name>``.

Every length read from the wire is bounded by what remains of the frame before anything is
allocated; field tables nest at most :data:`MAX_TABLE_DEPTH` levels.
"""

from __future__ import annotations

import struct
from typing import Any

import construct as c

# the reply codes, FrameError and the field-table codec belong to the wire vocabulary that the
# rest of the adapter (and its tests) reach as codec.<name>
from .errors import *  # noqa: F403
from .errors import FRAME_ERROR, NOT_IMPLEMENTED, SYNTAX_ERROR, FrameError
from .fieldtable import *  # noqa: F403
from .fieldtable import FieldTable, LongStrBytes, ShortStr, decode_table, encode_table, need

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_MIN_SIZE = 4096


class _Bits(c.Adapter):
    """Consecutive AMQP bit fields packed into one octet, least significant bit first."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(c.Int8ub)
        self.names = names

    def _decode(self, obj, context, path):
        return {n: bool(obj >> i & 1) for i, n in enumerate(self.names)}

    def _encode(self, obj, context, path):
        v = 0
        for i, n in enumerate(self.names):
            if obj.get(n):
                v |= 1 << i
        return v


# ---------------------------------------------------------------------------------------------
# construct declarations: every method of AMQP 0-9-1 (with RabbitMQ's extensions)
# ---------------------------------------------------------------------------------------------

_TYPES = {
    "octet": c.Int8ub,
    "short": c.Int16ub,
    "long": c.Int32ub,
    "longlong": c.Int64ub,
    "shortstr": ShortStr,
    "longstr": LongStrBytes,
    "table": FieldTable,
}

# (class id, method id, name, [(field, type)], carries content)
_SPEC: list[tuple[int, int, str, list[tuple[str, str]], bool]] = [
    (
        10,
        10,
        "connection.start",
        [
            ("version_major", "octet"),
            ("version_minor", "octet"),
            ("server_properties", "table"),
            ("mechanisms", "longstr"),
            ("locales", "longstr"),
        ],
        False,
    ),
    (
        10,
        11,
        "connection.start-ok",
        [
            ("client_properties", "table"),
            ("mechanism", "shortstr"),
            ("response", "longstr"),
            ("locale", "shortstr"),
        ],
        False,
    ),
    (10, 20, "connection.secure", [("challenge", "longstr")], False),
    (10, 21, "connection.secure-ok", [("response", "longstr")], False),
    (
        10,
        30,
        "connection.tune",
        [("channel_max", "short"), ("frame_max", "long"), ("heartbeat", "short")],
        False,
    ),
    (
        10,
        31,
        "connection.tune-ok",
        [("channel_max", "short"), ("frame_max", "long"), ("heartbeat", "short")],
        False,
    ),
    (
        10,
        40,
        "connection.open",
        [("virtual_host", "shortstr"), ("capabilities", "shortstr"), ("insist", "bit")],
        False,
    ),
    (10, 41, "connection.open-ok", [("known_hosts", "shortstr")], False),
    (
        10,
        50,
        "connection.close",
        [
            ("reply_code", "short"),
            ("reply_text", "shortstr"),
            ("class_id", "short"),
            ("method_id", "short"),
        ],
        False,
    ),
    (10, 51, "connection.close-ok", [], False),
    (10, 60, "connection.blocked", [("reason", "shortstr")], False),
    (10, 61, "connection.unblocked", [], False),
    (
        10,
        70,
        "connection.update-secret",
        [("new_secret", "longstr"), ("reason", "shortstr")],
        False,
    ),
    (10, 71, "connection.update-secret-ok", [], False),
    (20, 10, "channel.open", [("out_of_band", "shortstr")], False),
    (20, 11, "channel.open-ok", [("channel_id", "longstr")], False),
    (20, 20, "channel.flow", [("active", "bit")], False),
    (20, 21, "channel.flow-ok", [("active", "bit")], False),
    (
        20,
        40,
        "channel.close",
        [
            ("reply_code", "short"),
            ("reply_text", "shortstr"),
            ("class_id", "short"),
            ("method_id", "short"),
        ],
        False,
    ),
    (20, 41, "channel.close-ok", [], False),
    (
        30,
        10,
        "access.request",
        [
            ("realm", "shortstr"),
            ("exclusive", "bit"),
            ("passive", "bit"),
            ("active", "bit"),
            ("write", "bit"),
            ("read", "bit"),
        ],
        False,
    ),
    (30, 11, "access.request-ok", [("ticket", "short")], False),
    (
        40,
        10,
        "exchange.declare",
        [
            ("ticket", "short"),
            ("exchange", "shortstr"),
            ("type", "shortstr"),
            ("passive", "bit"),
            ("durable", "bit"),
            ("auto_delete", "bit"),
            ("internal", "bit"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (40, 11, "exchange.declare-ok", [], False),
    (
        40,
        20,
        "exchange.delete",
        [("ticket", "short"), ("exchange", "shortstr"), ("if_unused", "bit"), ("nowait", "bit")],
        False,
    ),
    (40, 21, "exchange.delete-ok", [], False),
    (
        40,
        30,
        "exchange.bind",
        [
            ("ticket", "short"),
            ("destination", "shortstr"),
            ("source", "shortstr"),
            ("routing_key", "shortstr"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (40, 31, "exchange.bind-ok", [], False),
    (
        40,
        40,
        "exchange.unbind",
        [
            ("ticket", "short"),
            ("destination", "shortstr"),
            ("source", "shortstr"),
            ("routing_key", "shortstr"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (40, 51, "exchange.unbind-ok", [], False),
    (
        50,
        10,
        "queue.declare",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("passive", "bit"),
            ("durable", "bit"),
            ("exclusive", "bit"),
            ("auto_delete", "bit"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (
        50,
        11,
        "queue.declare-ok",
        [("queue", "shortstr"), ("message_count", "long"), ("consumer_count", "long")],
        False,
    ),
    (
        50,
        20,
        "queue.bind",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (50, 21, "queue.bind-ok", [], False),
    (50, 30, "queue.purge", [("ticket", "short"), ("queue", "shortstr"), ("nowait", "bit")], False),
    (50, 31, "queue.purge-ok", [("message_count", "long")], False),
    (
        50,
        40,
        "queue.delete",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("if_unused", "bit"),
            ("if_empty", "bit"),
            ("nowait", "bit"),
        ],
        False,
    ),
    (50, 41, "queue.delete-ok", [("message_count", "long")], False),
    (
        50,
        50,
        "queue.unbind",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
            ("arguments", "table"),
        ],
        False,
    ),
    (50, 51, "queue.unbind-ok", [], False),
    (
        60,
        10,
        "basic.qos",
        [("prefetch_size", "long"), ("prefetch_count", "short"), ("global_", "bit")],
        False,
    ),
    (60, 11, "basic.qos-ok", [], False),
    (
        60,
        20,
        "basic.consume",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("consumer_tag", "shortstr"),
            ("no_local", "bit"),
            ("no_ack", "bit"),
            ("exclusive", "bit"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (60, 21, "basic.consume-ok", [("consumer_tag", "shortstr")], False),
    (60, 30, "basic.cancel", [("consumer_tag", "shortstr"), ("nowait", "bit")], False),
    (60, 31, "basic.cancel-ok", [("consumer_tag", "shortstr")], False),
    (
        60,
        40,
        "basic.publish",
        [
            ("ticket", "short"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
            ("mandatory", "bit"),
            ("immediate", "bit"),
        ],
        True,
    ),
    (
        60,
        50,
        "basic.return",
        [
            ("reply_code", "short"),
            ("reply_text", "shortstr"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
        ],
        True,
    ),
    (
        60,
        60,
        "basic.deliver",
        [
            ("consumer_tag", "shortstr"),
            ("delivery_tag", "longlong"),
            ("redelivered", "bit"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
        ],
        True,
    ),
    (60, 70, "basic.get", [("ticket", "short"), ("queue", "shortstr"), ("no_ack", "bit")], False),
    (
        60,
        71,
        "basic.get-ok",
        [
            ("delivery_tag", "longlong"),
            ("redelivered", "bit"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
            ("message_count", "long"),
        ],
        True,
    ),
    (60, 72, "basic.get-empty", [("cluster_id", "shortstr")], False),
    (60, 80, "basic.ack", [("delivery_tag", "longlong"), ("multiple", "bit")], False),
    (60, 90, "basic.reject", [("delivery_tag", "longlong"), ("requeue", "bit")], False),
    (60, 100, "basic.recover-async", [("requeue", "bit")], False),
    (60, 110, "basic.recover", [("requeue", "bit")], False),
    (60, 111, "basic.recover-ok", [], False),
    (
        60,
        120,
        "basic.nack",
        [("delivery_tag", "longlong"), ("multiple", "bit"), ("requeue", "bit")],
        False,
    ),
    (85, 10, "confirm.select", [("nowait", "bit")], False),
    (85, 11, "confirm.select-ok", [], False),
    (90, 10, "tx.select", [], False),
    (90, 11, "tx.select-ok", [], False),
    (90, 20, "tx.commit", [], False),
    (90, 21, "tx.commit-ok", [], False),
    (90, 30, "tx.rollback", [], False),
    (90, 31, "tx.rollback-ok", [], False),
]


class MethodSpec:
    __slots__ = ("class_id", "method_id", "name", "fields", "content", "struct", "prefix")

    def __init__(self, class_id: int, method_id: int, name: str, fields: list, content: bool):
        self.class_id = class_id
        self.method_id = method_id
        self.name = name
        self.fields = [f for f, _ in fields]
        self.content = content
        self.prefix = struct.pack(">HH", class_id, method_id)
        members: list = []
        bits: list[str] = []
        for fname, ftype in fields + [("", "end")]:
            if ftype == "bit":
                bits.append(fname)
                continue
            if bits:
                members.append(("_bits_" + bits[0]) / _Bits(bits))
                bits = []
            if ftype != "end":
                members.append(fname / _TYPES[ftype])
        self.struct = c.Struct(*members)

    def parse(self, payload: bytes) -> dict:
        """Decode the arguments (``payload`` without class and method ids)."""
        try:
            obj = self.struct.parse(payload)
        except FrameError:
            raise
        except (c.ConstructError, UnicodeDecodeError, ValueError) as e:
            raise FrameError(
                SYNTAX_ERROR, f"malformed {self.name}", self.class_id, self.method_id
            ) from e
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if k.startswith("_"):
                if k.startswith("_bits_"):
                    out.update(v)
                continue
            out[k] = v
        return out

    def build(self, args: dict) -> bytes:
        """Encode the payload (class and method ids included)."""
        obj = dict(args)
        for sub in self.struct.subcons:
            if isinstance(sub, c.Renamed) and isinstance(sub.subcon, _Bits):
                obj[sub.name] = {n: args.get(n, False) for n in sub.subcon.names}
        for f in self.fields:
            obj.setdefault(f, _default_for(self, f))
        return self.prefix + self.struct.build(obj)


def _default_for(spec: MethodSpec, field: str) -> Any:
    for sub in spec.struct.subcons:
        if sub.name == field:
            inner = sub.subcon
            if inner is FieldTable:
                return {}
            if inner is ShortStr:
                return ""
            if inner is LongStrBytes:
                return b""
            return 0
    return False


METHODS: dict[tuple[int, int], MethodSpec] = {}
BY_NAME: dict[str, MethodSpec] = {}
for _cid, _mid, _name, _fields, _content in _SPEC:
    _m = MethodSpec(_cid, _mid, _name, _fields, _content)
    METHODS[(_cid, _mid)] = _m
    BY_NAME[_name] = _m
CLASS_IDS = frozenset(cid for cid, _ in METHODS)

FRAME = c.Struct(
    "type" / c.Int8ub,
    "channel" / c.Int16ub,
    "payload" / c.Prefixed(c.Int32ub, c.GreedyBytes),
    "frame_end" / c.Const(FRAME_END_BYTE),
)

PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)
PROPERTY_TYPES = (
    "shortstr",
    "shortstr",
    "table",
    "octet",
    "octet",
    "shortstr",
    "shortstr",
    "shortstr",
    "shortstr",
    "longlong",
    "shortstr",
    "shortstr",
    "shortstr",
    "shortstr",
)

CONTENT_HEADER = c.Struct(
    "class_id" / c.Int16ub,
    "weight" / c.Int16ub,
    "body_size" / c.Int64ub,
    "flags" / c.Int16ub,
    *[
        name / c.If(lambda ctx, bit=15 - i: ctx.flags >> bit & 1, _TYPES[t])
        for i, (name, t) in enumerate(zip(PROPERTY_NAMES, PROPERTY_TYPES, strict=True))
    ],
)


# ---------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------

_pack_frame_head = struct.Struct(">BHI").pack
_pack_H = struct.Struct(">H").pack
_pack_Q = struct.Struct(">Q").pack
_unpack_Q = struct.Struct(">Q").unpack_from
_unpack_frame_head = struct.Struct(">BHI").unpack_from
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return _pack_frame_head(ftype, channel, len(payload)) + payload + FRAME_END_BYTE


def method_frame(channel: int, name: str, **args: Any) -> bytes:
    """A whole method frame, built from the declaration (for the rare methods)."""
    return frame(FRAME_METHOD, channel, BY_NAME[name].build(args))


def decode_method(payload: bytes) -> tuple[MethodSpec, dict]:
    """Decode a method frame's payload."""
    if len(payload) < 4:
        raise FrameError(FRAME_ERROR, "method frame too short")
    cid, mid = _unpack_HH(payload, 0)
    spec = METHODS.get((cid, mid))
    if spec is None:
        raise FrameError(NOT_IMPLEMENTED, f"unknown method {cid}/{mid}", cid, mid)
    if spec is PUBLISH:
        return spec, decode_publish(payload)
    if spec is ACK:
        return spec, decode_ack(payload)
    return spec, spec.parse(payload[4:])


_unpack_HH = struct.Struct(">HH").unpack_from
PUBLISH = BY_NAME["basic.publish"]
ACK = BY_NAME["basic.ack"]
DELIVER = BY_NAME["basic.deliver"]


def decode_publish(payload: bytes) -> dict:
    """Fast path for basic.publish (payload includes class/method ids)."""
    end = len(payload)
    pos = 6  # ids + ticket
    need(payload, pos, 1, end)
    n = payload[pos]
    pos += 1
    need(payload, pos, n + 1, end)
    try:
        exchange = payload[pos : pos + n].decode("utf-8")
        pos += n
        n = payload[pos]
        pos += 1
        need(payload, pos, n + 1, end)
        routing_key = payload[pos : pos + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise FrameError(SYNTAX_ERROR, "malformed basic.publish", 60, 40) from e
    bits = payload[pos + n]
    if pos + n + 1 != end:
        raise FrameError(SYNTAX_ERROR, "malformed basic.publish", 60, 40)
    return {
        "ticket": 0,
        "exchange": exchange,
        "routing_key": routing_key,
        "mandatory": bool(bits & 1),
        "immediate": bool(bits & 2),
    }


_unpack_ack = struct.Struct(">QB").unpack_from


def decode_ack(payload: bytes) -> dict:
    if len(payload) != 13:
        raise FrameError(SYNTAX_ERROR, "malformed basic.ack", 60, 80)
    tag, bits = _unpack_ack(payload, 4)
    return {"delivery_tag": tag, "multiple": bool(bits & 1)}


_DELIVER_IDS = b"\x00\x3c\x00\x3c"
_pack_QB = struct.Struct(">QB").pack
_ACK_IDS = b"\x00\x3c\x00\x50"


def ack_frame(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    """A whole basic.ack frame (publisher confirms): the fast path of its declaration."""
    return b"".join(
        (
            _pack_frame_head(1, channel, 13),
            _ACK_IDS,
            _pack_QB(delivery_tag, 1 if multiple else 0),
            FRAME_END_BYTE,
        )
    )


def deliver_prefix(consumer_tag: str) -> bytes:
    """The constant head of basic.deliver for one consumer (ids + consumer tag)."""
    t = consumer_tag.encode("utf-8")
    return _DELIVER_IDS + bytes((len(t),)) + t


def deliver_tail(exchange: str, routing_key: str) -> bytes:
    """The exchange and routing-key part of basic.deliver."""
    ex = exchange.encode("utf-8")
    rk = routing_key.encode("utf-8")
    return bytes((len(ex),)) + ex + bytes((len(rk),)) + rk


def deliver_frame(
    channel: int, prefix: bytes, delivery_tag: int, redelivered: bool, tail: bytes
) -> bytes:
    """basic.deliver from its constant prefix and an encoded :func:`deliver_tail`."""
    payload = prefix + _pack_QB(delivery_tag, 1 if redelivered else 0) + tail
    return _pack_frame_head(1, channel, len(payload)) + payload + FRAME_END_BYTE


def encode_deliver(
    channel: int,
    prefix: bytes,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
) -> bytes:
    """Fast path for the basic.deliver method frame."""
    ex = exchange.encode("utf-8")
    rk = routing_key.encode("utf-8")
    payload = b"".join(
        (
            prefix,
            _pack_QB(delivery_tag, 1 if redelivered else 0),
            bytes((len(ex),)),
            ex,
            bytes((len(rk),)),
            rk,
        )
    )
    return _pack_frame_head(1, channel, len(payload)) + payload + FRAME_END_BYTE


# ---------------------------------------------------------------------------------------------
# content header: fast paths
# ---------------------------------------------------------------------------------------------

_unpack_header = struct.Struct(">HHQH").unpack_from
_pack_header = struct.Struct(">HHQ").pack


def _shortstr(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    need(buf, pos, 1, end)
    n = buf[pos]
    pos += 1
    need(buf, pos, n, end)
    try:
        return buf[pos : pos + n].decode("utf-8"), pos + n
    except UnicodeDecodeError as e:
        raise FrameError(SYNTAX_ERROR, "short string is not UTF-8") from e


def decode_content_header(payload: bytes) -> tuple[int, int, dict, bytes]:
    """Returns (class id, body size, properties, raw property bytes from the flags on)."""
    end = len(payload)
    if end < 14:
        raise FrameError(FRAME_ERROR, "content header too short")
    class_id, _weight, body_size, flags = _unpack_header(payload, 0)
    if flags & 1:
        raise FrameError(SYNTAX_ERROR, "property flags continuation is not supported")
    props: dict[str, Any] = {}
    pos = 14
    if flags:
        if flags & 0x8000:
            props["content_type"], pos = _shortstr(payload, pos, end)
        if flags & 0x4000:
            props["content_encoding"], pos = _shortstr(payload, pos, end)
        if flags & 0x2000:
            props["headers"], pos = decode_table(payload, pos, end)
        if flags & 0x1000:
            need(payload, pos, 1, end)
            props["delivery_mode"] = payload[pos]
            pos += 1
        if flags & 0x0800:
            need(payload, pos, 1, end)
            props["priority"] = payload[pos]
            pos += 1
        if flags & 0x0400:
            props["correlation_id"], pos = _shortstr(payload, pos, end)
        if flags & 0x0200:
            props["reply_to"], pos = _shortstr(payload, pos, end)
        if flags & 0x0100:
            props["expiration"], pos = _shortstr(payload, pos, end)
        if flags & 0x0080:
            props["message_id"], pos = _shortstr(payload, pos, end)
        if flags & 0x0040:
            need(payload, pos, 8, end)
            props["timestamp"] = _unpack_Q(payload, pos)[0]
            pos += 8
        if flags & 0x0020:
            props["type"], pos = _shortstr(payload, pos, end)
        if flags & 0x0010:
            props["user_id"], pos = _shortstr(payload, pos, end)
        if flags & 0x0008:
            props["app_id"], pos = _shortstr(payload, pos, end)
        if flags & 0x0004:
            props["cluster_id"], pos = _shortstr(payload, pos, end)
        if flags & 0x0002:
            raise FrameError(SYNTAX_ERROR, "unknown content property")
    if pos != end:
        raise FrameError(FRAME_ERROR, "content header longer than its properties")
    return class_id, body_size, props, payload[12:]


def decode_properties(raw: bytes) -> dict:
    """Properties from flags + property list (what :func:`encode_properties` makes)."""
    return decode_content_header(b"\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + raw)[2]


def _enc_shortstr(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 255:
        b = b[:255]
    return bytes((len(b),)) + b


def encode_properties(props: dict) -> bytes:
    """Property flags and property list (what follows class, weight and body size)."""
    flags = 0
    parts: list[bytes] = []
    get = props.get
    v = get("content_type")
    if v is not None:
        flags |= 0x8000
        parts.append(_enc_shortstr(v))
    v = get("content_encoding")
    if v is not None:
        flags |= 0x4000
        parts.append(_enc_shortstr(v))
    v = get("headers")
    if v is not None:
        flags |= 0x2000
        parts.append(encode_table(v))
    v = get("delivery_mode")
    if v is not None:
        flags |= 0x1000
        parts.append(bytes((v & 0xFF,)))
    v = get("priority")
    if v is not None:
        flags |= 0x0800
        parts.append(bytes((v & 0xFF,)))
    for name, bit in (
        ("correlation_id", 0x0400),
        ("reply_to", 0x0200),
        ("expiration", 0x0100),
        ("message_id", 0x0080),
    ):
        v = get(name)
        if v is not None:
            flags |= bit
            parts.append(_enc_shortstr(v))
    v = get("timestamp")
    if v is not None:
        flags |= 0x0040
        parts.append(_pack_Q(v & 0xFFFFFFFFFFFFFFFF))
    for name, bit in (
        ("type", 0x0020),
        ("user_id", 0x0010),
        ("app_id", 0x0008),
        ("cluster_id", 0x0004),
    ):
        v = get(name)
        if v is not None:
            flags |= bit
            parts.append(_enc_shortstr(v))
    return _pack_H(flags) + b"".join(parts)


def content_frames(
    channel: int, raw_props: bytes, body: bytes, frame_max: int, class_id: int = 60
) -> bytes:
    """Content header frame plus body frames (split to fit ``frame_max``)."""
    n = len(body)
    hp = _pack_header(class_id, 0, n) + raw_props
    out = _pack_frame_head(2, channel, len(hp)) + hp + FRAME_END_BYTE
    if not n:
        return out
    room = frame_max - 8
    if n <= room:
        return b"".join((out, _pack_frame_head(3, channel, n), body, FRAME_END_BYTE))
    parts = [out]
    for i in range(0, n, room):
        chunk = body[i : i + room]
        parts.append(_pack_frame_head(3, channel, len(chunk)))
        parts.append(chunk)
        parts.append(FRAME_END_BYTE)
    return b"".join(parts)


def unpack_frame_head(buf: bytes, pos: int) -> tuple[int, int, int]:
    return _unpack_frame_head(buf, pos)
