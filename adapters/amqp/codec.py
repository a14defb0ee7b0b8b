"""AMQP 0-9-1 wire format, sans I/O.

The ``construct`` declarations in :mod:`~polymq.adapters.amqp.spec` (:data:`METHODS`,
:data:`FRAME`, :data:`CONTENT_HEADER`) and in :mod:`~polymq.adapters.amqp.fieldtable`
(:data:`FieldTablePure`) are the single source of truth for the wire format. The broker parses the
rare methods with them; the hot frames (basic.publish, basic.deliver, basic.ack, content header,
body) have hand-written fast paths below and field tables theirs in ``fieldtable``, which the
hypothesis tests in tests/test_amqp_codec.py check against the declarations. Reply codes and
:class:`FrameError` are in :mod:`~polymq.adapters.amqp.errors`; all of these are reached as
``codec.<name>``.

Every length read from the wire is bounded by what remains of the frame before anything is
allocated; field tables nest at most :data:`MAX_TABLE_DEPTH` levels.
"""

from __future__ import annotations

import struct
from typing import Any

# the reply codes, FrameError, the field-table codec and the declarations belong to the wire
# vocabulary that the rest of the adapter (and its tests) reach as codec.<name>
from .errors import *  # noqa: F403
from .errors import FRAME_ERROR, NOT_IMPLEMENTED, SYNTAX_ERROR, FrameError
from .fieldtable import *  # noqa: F403
from .fieldtable import decode_table, encode_table, need
from .spec import *  # noqa: F403
from .spec import BY_NAME, FRAME_END_BYTE, FRAME_METHOD, METHODS, MethodSpec

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
