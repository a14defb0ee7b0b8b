"""MQTT 3.1.1 and 5.0 wire format, sans-I/O.

The ``construct`` declarations below are the single source of truth for every packet body.
The hottest packets (PUBLISH both ways, the PUBACK family) also have hand-written fast paths
(:func:`decode_publish`, :func:`encode_publish`, :func:`encode_ack`), each checked against its
declaration by a hypothesis round-trip test (tests/test_mqtt_codec.py).

Framing (:class:`FrameReader`) is hand-written: it caps the remaining length at four bytes and at
a configured maximum *before* anything is buffered for the packet.
"""

from __future__ import annotations

import struct
from typing import Any

from construct import (
    BitsInteger,
    BitStruct,
    ConstructError,
    Container,
    Error,
    Flag,
    GreedyBytes,
    GreedyRange,
    If,
    Int8ub,
    Int16ub,
    Int32ub,
    PascalString,
    Prefixed,
    Struct,
    Switch,
    Terminated,
    VarInt,
    this,
)

from polymq.core.errors import ProtocolError

from ..varint import encode_uvarint as encode_varint

# -- packet types --------------------------------------------------------------------------

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

PACKET_NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}

# fixed-header flags every packet but PUBLISH must carry ([MQTT-2.2.2-1])
REQUIRED_FLAGS = {
    CONNECT: 0,
    CONNACK: 0,
    PUBACK: 0,
    PUBREC: 0,
    PUBREL: 2,
    PUBCOMP: 0,
    SUBSCRIBE: 2,
    SUBACK: 0,
    UNSUBSCRIBE: 2,
    UNSUBACK: 0,
    PINGREQ: 0,
    PINGRESP: 0,
    DISCONNECT: 0,
    AUTH: 0,
}

V31 = 3
V311 = 4
V5 = 5

MAX_REMAINING_LENGTH = 268_435_455  # four bytes of variable byte integer

# -- reason codes (5.0; the 3.1.1 CONNACK return codes are 0-5) -----------------------------

SUCCESS = 0x00
GRANTED_QOS_1 = 0x01
GRANTED_QOS_2 = 0x02
DISCONNECT_WITH_WILL = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_ID_NOT_VALID = 0x85
BAD_USERNAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_BUSY = 0x89
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTH_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
ADMINISTRATIVE_ACTION = 0x98
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_ID_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
PAYLOAD_FORMAT_INVALID = 0x99
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
SUBSCRIPTION_IDS_NOT_SUPPORTED = 0xA1
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

# 3.1.1 CONNACK return codes
V3_ACCEPTED = 0
V3_UNACCEPTABLE_PROTOCOL = 1
V3_IDENTIFIER_REJECTED = 2
V3_SERVER_UNAVAILABLE = 3
V3_BAD_USERNAME_OR_PASSWORD = 4
V3_NOT_AUTHORIZED = 5


class MalformedPacket(ProtocolError):
    """The bytes are not a valid MQTT packet; ``reason`` is the 5.0 reason code to send."""

    def __init__(self, text: str, reason: int = MALFORMED_PACKET) -> None:
        super().__init__(text, reason)
        self.reason = reason


# -- construct declarations: the source of truth -------------------------------------------

Utf8 = PascalString(Int16ub, "utf8")
BinaryData = Prefixed(Int16ub, GreedyBytes)
UserProperty = Struct("key" / Utf8, "value" / Utf8)

# property identifier -> (name, construct)
PROPERTIES: dict[int, tuple[str, Any]] = {
    0x01: ("payload_format_indicator", Int8ub),
    0x02: ("message_expiry_interval", Int32ub),
    0x03: ("content_type", Utf8),
    0x08: ("response_topic", Utf8),
    0x09: ("correlation_data", BinaryData),
    0x0B: ("subscription_identifier", VarInt),
    0x11: ("session_expiry_interval", Int32ub),
    0x12: ("assigned_client_identifier", Utf8),
    0x13: ("server_keep_alive", Int16ub),
    0x15: ("authentication_method", Utf8),
    0x16: ("authentication_data", BinaryData),
    0x17: ("request_problem_information", Int8ub),
    0x18: ("will_delay_interval", Int32ub),
    0x19: ("request_response_information", Int8ub),
    0x1A: ("response_information", Utf8),
    0x1C: ("server_reference", Utf8),
    0x1F: ("reason_string", Utf8),
    0x21: ("receive_maximum", Int16ub),
    0x22: ("topic_alias_maximum", Int16ub),
    0x23: ("topic_alias", Int16ub),
    0x24: ("maximum_qos", Int8ub),
    0x25: ("retain_available", Int8ub),
    0x26: ("user_property", UserProperty),
    0x27: ("maximum_packet_size", Int32ub),
    0x28: ("wildcard_subscription_available", Int8ub),
    0x29: ("subscription_identifier_available", Int8ub),
    0x2A: ("shared_subscription_available", Int8ub),
}
PROPERTY_IDS = {name: pid for pid, (name, _) in PROPERTIES.items()}
# properties that may appear more than once
REPEATABLE = {"user_property", "subscription_identifier"}

Property = Struct(
    "id" / VarInt,
    "value" / Switch(this.id, {k: v[1] for k, v in PROPERTIES.items()}, default=Error),
)
Properties = Prefixed(VarInt, Struct("items" / GreedyRange(Property), Terminated))


def _v5(ctx: Any) -> bool:
    return ctx._root._params.get("version", V311) == V5


def _qos(ctx: Any) -> int:
    return ctx._root._params.get("qos", 0)


ConnectFlags = BitStruct(
    "username" / Flag,
    "password" / Flag,
    "will_retain" / Flag,
    "will_qos" / BitsInteger(2),
    "will" / Flag,
    "clean_start" / Flag,
    "reserved" / Flag,
)

Connect = Struct(
    "protocol_name" / Utf8,
    "protocol_level" / Int8ub,
    "flags" / ConnectFlags,
    "keep_alive" / Int16ub,
    "properties" / If(this.protocol_level == V5, Properties),
    "client_id" / Utf8,
    "will_properties" / If(lambda ctx: ctx.flags.will and ctx.protocol_level == V5, Properties),
    "will_topic" / If(this.flags.will, Utf8),
    "will_payload" / If(this.flags.will, BinaryData),
    "username" / If(this.flags.username, Utf8),
    "password" / If(this.flags.password, BinaryData),
    Terminated,
)

Connack = Struct(
    "session_present" / Int8ub,
    "reason" / Int8ub,
    "properties" / If(_v5, Properties),
    Terminated,
)

Publish = Struct(
    "topic" / Utf8,
    "packet_id" / If(lambda ctx: _qos(ctx) > 0, Int16ub),
    "properties" / If(_v5, Properties),
    "payload" / GreedyBytes,
)

# PUBACK, PUBREC, PUBREL, PUBCOMP: 5.0 may omit the reason (success) and the properties
Ack = Struct(
    "packet_id" / Int16ub,
    "reason"
    / If(lambda ctx: _v5(ctx) and ctx._io.tell() < ctx._root._params.get("size", 2), Int8ub),
    "properties"
    / If(lambda ctx: _v5(ctx) and ctx._io.tell() < ctx._root._params.get("size", 2), Properties),
    Terminated,
)

SubscriptionOptions = BitStruct(
    "reserved" / BitsInteger(2),
    "retain_handling" / BitsInteger(2),
    "retain_as_published" / Flag,
    "no_local" / Flag,
    "qos" / BitsInteger(2),
)

Subscribe = Struct(
    "packet_id" / Int16ub,
    "properties" / If(_v5, Properties),
    "topics" / GreedyRange(Struct("filter" / Utf8, "options" / SubscriptionOptions)),
    Terminated,
)

Suback = Struct(
    "packet_id" / Int16ub,
    "properties" / If(_v5, Properties),
    "reasons" / GreedyBytes,
)

Unsubscribe = Struct(
    "packet_id" / Int16ub,
    "properties" / If(_v5, Properties),
    "filters" / GreedyRange(Utf8),
    Terminated,
)

Unsuback = Struct(
    "packet_id" / Int16ub,
    "properties" / If(_v5, Properties),
    "reasons" / GreedyBytes,
)

# DISCONNECT and AUTH: 5.0 only; both fields optional (an empty body means success)
Disconnect = Struct(
    "reason" / If(lambda ctx: ctx._io.tell() < ctx._root._params.get("size", 0), Int8ub),
    "properties" / If(lambda ctx: ctx._io.tell() < ctx._root._params.get("size", 0), Properties),
    Terminated,
)
Auth = Disconnect

Empty = Struct(Terminated)

BODIES = {
    CONNECT: Connect,
    CONNACK: Connack,
    PUBLISH: Publish,
    PUBACK: Ack,
    PUBREC: Ack,
    PUBREL: Ack,
    PUBCOMP: Ack,
    SUBSCRIBE: Subscribe,
    SUBACK: Suback,
    UNSUBSCRIBE: Unsubscribe,
    UNSUBACK: Unsuback,
    PINGREQ: Empty,
    PINGRESP: Empty,
    DISCONNECT: Disconnect,
    AUTH: Auth,
}

# the variable byte integer of the fixed header, declared for the property tests
RemainingLength = VarInt
FixedHeader = Struct("type_flags" / Int8ub, "remaining_length" / VarInt)


# -- properties <-> dict --------------------------------------------------------------------


def props_to_dict(items: list) -> dict[str, Any]:
    """Turn parsed property items into a dict; repeatable ones become lists.

    A property given twice that may appear only once is a protocol error.
    """
    out: dict[str, Any] = {}
    for item in items:
        name = PROPERTIES[item.id][0]
        value = item.value
        if name == "user_property":
            out.setdefault(name, []).append((value.key, value.value))
        elif name == "subscription_identifier":
            out.setdefault(name, []).append(value)
        elif name in out:
            raise MalformedPacket(f"property {name} given twice", PROTOCOL_ERROR)
        else:
            out[name] = value
    return out


def _utf8(s: str) -> bytes:
    # "replace": a string from another protocol with lone surrogates still becomes valid UTF-8
    b = s.encode("utf-8", "replace")
    if len(b) > 0xFFFF:  # longer than MQTT allows (a header from elsewhere): cut at a character
        b = b[:0xFFFF].decode("utf-8", "ignore").encode()
    return len(b).to_bytes(2, "big") + b


def _bin(b: bytes) -> bytes:
    if len(b) > 0xFFFF:
        b = b[:0xFFFF]
    return len(b).to_bytes(2, "big") + b


def encode_props(props: dict[str, Any] | None) -> bytes:
    """Encode a property dict (values as :func:`props_to_dict` gives them), with its length."""
    if not props:
        return b"\x00"
    out = bytearray()
    for name, value in props.items():
        if value is None:
            continue
        pid = PROPERTY_IDS[name]
        if name == "user_property":
            for k, v in value:
                out.append(pid)
                out += _utf8(k)
                out += _utf8(v)
            continue
        if name == "subscription_identifier":
            for v in value:
                out.append(pid)
                out += encode_varint(v)
            continue
        out += encode_varint(pid)
        kind = PROPERTIES[pid][1]
        if kind is Int8ub:
            out.append(value)
        elif kind is Int16ub:
            out += value.to_bytes(2, "big")
        elif kind is Int32ub:
            out += value.to_bytes(4, "big")
        elif kind is Utf8:
            out += _utf8(value)
        elif kind is BinaryData:
            out += _bin(value)
        else:  # VarInt
            out += encode_varint(value)
    return encode_varint(len(out)) + bytes(out)


def props_container(props: dict[str, Any] | None) -> dict:
    """A property dict as the construct declaration builds it."""
    items = []
    for name, value in (props or {}).items():
        if value is None:
            continue
        pid = PROPERTY_IDS[name]
        if name == "user_property":
            items += [{"id": pid, "value": {"key": k, "value": v}} for k, v in value]
        elif name == "subscription_identifier":
            items += [{"id": pid, "value": v} for v in value]
        else:
            items.append({"id": pid, "value": value})
    return {"items": items}


def build_connack(
    version: int, session_present: bool, reason: int, props: dict[str, Any] | None = None
) -> bytes:
    return build(
        CONNACK,
        version,
        session_present=int(session_present),
        reason=reason,
        properties=props_container(props) if version == V5 else None,
    )


def build_suback(version: int, packet_id: int, reasons: list[int]) -> bytes:
    return build(
        SUBACK,
        version,
        packet_id=packet_id,
        reasons=bytes(reasons),
        properties=props_container(None) if version == V5 else None,
    )


def build_unsuback(version: int, packet_id: int, reasons: list[int]) -> bytes:
    return build(
        UNSUBACK,
        version,
        packet_id=packet_id,
        reasons=bytes(reasons) if version == V5 else b"",
        properties=props_container(None) if version == V5 else None,
    )


def build_disconnect(reason: int, props: dict[str, Any] | None = None) -> bytes:
    return build(DISCONNECT, V5, reason=reason, properties=props_container(props))


# -- framing --------------------------------------------------------------------------------


class FrameReader:
    """Splits a byte stream into (first byte, body) packets.

    ``max_size`` bounds the remaining length of every packet; it can be changed between
    packets (the session lowers it until CONNECT is accepted). A remaining length longer than
    four bytes or above ``max_size`` raises :class:`MalformedPacket` before any body byte is
    kept.
    """

    __slots__ = (
        "buf",
        "max_size",
        "first_type_check",
        "one_at_a_time",
        "error",
        "_out",
        "_chunks",
        "_have",
        "_need",
    )

    def __init__(self, max_size: int) -> None:
        self.buf = b""
        # a large packet arriving over many reads: its pieces, joined once it is complete
        # (concatenating every read would copy it quadratically)
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        self.max_size = max_size
        # a callable(first_byte, remaining) run before the body is buffered, or None
        self.first_type_check: Any = None
        # True until CONNECT is accepted: the packets after it wait in the buffer, so that they
        # are measured against the limit that holds once the session exists, not CONNECT's
        self.one_at_a_time = False
        # set when the stream went bad; the packets before the bad one are still returned
        self.error: MalformedPacket | None = None

    @property
    def max_length(self) -> int:
        return self.max_size

    @property
    def buffered(self) -> int:
        return len(self.buf) + self._have

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The complete packets in ``data`` (plus what was buffered); on a framing error the
        packets before it are returned and :attr:`error` is set."""
        try:
            return self._feed(data)
        except MalformedPacket as e:
            self.error = e
            self.buf = b""
            self._chunks = []
            self._need = 0
            return self._out

    def _feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._need:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                self._out = []
                return self._out
            buf = b"".join(self._chunks)
            self._chunks = []
            self._have = self._need = 0
        else:
            buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        out = self._out = []
        append = out.append
        max_size = self.max_size
        while n - pos >= 2:
            first = buf[pos]
            # variable byte integer, at most four bytes
            b = buf[pos + 1]
            if b < 0x80:
                length = b
                hdr = 2
            else:
                length = b & 0x7F
                mult = 128
                i = pos + 2
                while True:
                    if i >= n:
                        if i - pos - 1 >= 4:
                            raise MalformedPacket("remaining length longer than four bytes")
                        self.buf = buf[pos:]
                        return out
                    b = buf[i]
                    length += (b & 0x7F) * mult
                    i += 1
                    if b < 0x80:
                        break
                    if i - pos - 1 >= 4:
                        raise MalformedPacket("remaining length longer than four bytes")
                    mult *= 128
                hdr = i - pos
            if length > max_size:
                raise MalformedPacket(
                    f"packet of {length} bytes over the maximum of {max_size}",
                    PACKET_TOO_LARGE,
                )
            if self.first_type_check is not None:
                self.first_type_check(first, length)
                max_size = self.max_size
            end = pos + hdr + length
            if end > n:
                if length > 65536:
                    self._chunks = [buf[pos:]]
                    self._have = n - pos
                    self._need = end - pos
                    self.buf = b""
                    return out
                break
            append((first, buf[pos + hdr : end]))
            pos = end
            if self.one_at_a_time:
                break
        self.buf = buf[pos:] if pos < n else b""
        return out


def frame(type_flags: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:  # a one-byte remaining length: small publishes, most other packets
        return bytes((type_flags, n)) + body
    return bytes((type_flags,)) + encode_varint(n) + body


# -- generic decode (construct) -------------------------------------------------------------


def decode(ptype: int, body: bytes, version: int, qos: int = 0) -> Container:
    """Parse a packet body with its construct declaration; MalformedPacket on any error."""
    try:
        return BODIES[ptype].parse(body, version=version, qos=qos, size=len(body))
    except MalformedPacket:
        raise
    except (ConstructError, UnicodeError, ValueError, OverflowError) as e:
        raise MalformedPacket(f"malformed {PACKET_NAMES.get(ptype, ptype)}: {e}") from None


def build(ptype: int, version: int, flags: int = 0, qos: int = 0, **fields: Any) -> bytes:
    """Build a whole packet (fixed header included) from its construct declaration."""
    body = BODIES[ptype].build(fields, version=version, qos=qos, size=fields.pop("_size", 0xFFFF))
    return frame((ptype << 4) | flags, body)


# -- fast paths -----------------------------------------------------------------------------

_ACK_FRAMES: dict[tuple[int, int], bytes] = {}


def encode_ack(ptype: int, packet_id: int, reason: int = 0, props: bytes | None = None) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP (and the 3.1.1 forms when ``reason`` is 0 and no props).

    ``props`` is an encoded property block (with its length) for 5.0, or None.
    """
    first = (ptype << 4) | (2 if ptype == PUBREL else 0)
    if props is not None:
        body = packet_id.to_bytes(2, "big") + bytes((reason,)) + props
        return bytes((first, len(body))) + body if len(body) < 128 else frame(first, body)
    if reason:
        return bytes((first, 3)) + packet_id.to_bytes(2, "big") + bytes((reason,))
    return bytes((first, 2)) + packet_id.to_bytes(2, "big")


def decode_ack(body: bytes, version: int) -> tuple[int, int]:
    """(packet id, reason) of a PUBACK-family body; properties are ignored."""
    n = len(body)
    if n == 2:
        return (body[0] << 8) | body[1], 0
    if n < 2 or version != V5:
        raise MalformedPacket("malformed acknowledgement")
    if n > 3:
        # validate the property block through the declaration (rare: acks with properties)
        decode(PUBACK, body, version)
    return (body[0] << 8) | body[1], body[2]


def decode_publish(
    flags: int, body: bytes, version: int
) -> tuple[str, int | None, bytes | None, bytes, bytes]:
    """Fast PUBLISH parse: (topic, packet id, raw property block or None, payload, topic bytes).

    The property block is returned raw (``props_from_block`` parses it through the
    declaration) so that a publish without properties costs no construct call.
    """
    n = len(body)
    if n < 2:
        raise MalformedPacket("PUBLISH too short")
    tlen = (body[0] << 8) | body[1]
    pos = 2 + tlen
    if pos > n:
        raise MalformedPacket("PUBLISH topic longer than the packet")
    tbytes = body[2:pos]
    try:
        topic = tbytes.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("PUBLISH topic is not valid UTF-8", TOPIC_NAME_INVALID) from None
    qos = (flags >> 1) & 3
    pid = None
    if qos:
        if pos + 2 > n:
            raise MalformedPacket("PUBLISH without packet identifier")
        pid = (body[pos] << 8) | body[pos + 1]
        pos += 2
    block = None
    if version == V5:
        if pos >= n:
            raise MalformedPacket("PUBLISH without properties")
        b = body[pos]
        if b == 0:
            pos += 1
        else:
            # property length (variable byte integer, max four bytes)
            plen = 0
            mult = 1
            i = pos
            while True:
                if i >= n or i - pos >= 4:
                    raise MalformedPacket("bad property length")
                b = body[i]
                plen += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if b < 0x80:
                    break
            end = i + plen
            if end > n:
                raise MalformedPacket("properties longer than the packet")
            block = body[pos:end]
            pos = end
    return topic, pid, block, body[pos:], tbytes


def props_from_block(block: bytes) -> dict[str, Any]:
    """Parse an encoded property block (length prefix included) through the declaration."""
    try:
        items = Properties.parse(block)["items"]
    except (ConstructError, UnicodeError, ValueError, OverflowError) as e:
        raise MalformedPacket(f"malformed properties: {e}") from None
    return props_to_dict(items)


_FIRST_LEN_U16 = struct.Struct(">BBH").pack
_U16 = struct.Struct(">H").pack


def encode_publish(
    topic: bytes,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    retain: bool = False,
    dup: bool = False,
    props: bytes | None = None,
) -> bytes:
    """A whole PUBLISH packet. ``topic`` is UTF-8 bytes; ``props`` an encoded block for 5.0."""
    first = 0x30 | (qos << 1)
    if retain:
        first |= 1
    if dup:
        first |= 8
    tl = len(topic)
    rl = 2 + tl + len(payload) + (2 if qos else 0) + (len(props) if props is not None else 0)
    if rl < 128:  # (struct packs the header: bytes() of a tuple costs twice as much)
        out = _FIRST_LEN_U16(first, rl, tl) + topic
    else:
        out = bytes((first,)) + encode_varint(rl) + _U16(tl) + topic
    if qos:
        out += _U16(packet_id)
    if props is not None:
        out += props
    return out + payload


# -- validation helpers ---------------------------------------------------------------------


def valid_topic_name(topic: str) -> bool:
    """A PUBLISH topic: non-empty, no wildcards, no NUL."""
    return bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic


def valid_topic_filter(flt: str) -> bool:
    """A SUBSCRIBE filter: '#' only last and alone in its level, '+' alone in its level."""
    if not flt or "\x00" in flt:
        return False
    if "+" not in flt and "#" not in flt:
        return True
    levels = flt.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(flt: str, topic: str) -> bool:
    """MQTT filter matching, with the rule that '$' topics escape leading wildcards."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    if "+" not in flt and "#" not in flt:
        return flt == topic
    f = flt.split("/")
    t = topic.split("/")
    nf = len(f)
    nt = len(t)
    for i in range(nf):
        w = f[i]
        if w == "#":
            return True
        if i >= nt:
            return False
        if w != "+" and w != t[i]:
            return False
    if nf == nt:
        return True
    # "a/#" also matches "a"
    return nf == nt + 1 and f[-1] == "#"


_SWAP = str.maketrans("/.", "./")


def topic_to_key(topic: str) -> str:
    """MQTT topic (or filter) -> amq.topic routing key (or pattern): '/' and '.' swapped."""
    key = topic.translate(_SWAP)
    if "+" in key:
        key = key.replace("+", "*")
    return key


def key_to_topic(key: str) -> str:
    return key.translate(_SWAP)
