"""AMQP 0-9-1 as ``construct`` declarations: the single source of truth for the wire format.

Frame constants, every method of every class (with RabbitMQ's extensions) as a
:class:`MethodSpec` in :data:`METHODS` / :data:`BY_NAME`, the frame (:data:`FRAME`) and the
content header with its 14 properties (:data:`CONTENT_HEADER`). The broker parses the rare methods
with these; :mod:`~polymq.adapters.amqp.codec` has the fast paths of the hot frames and reaches all
of these names as ``codec.<name>`` too.
"""

from __future__ import annotations

import struct
from typing import Any

import construct as c

from .errors import SYNTAX_ERROR, FrameError
from .fieldtable import FieldTable, LongStrBytes, ShortStr

__all__ = [
    "BY_NAME",
    "CLASS_IDS",
    "CONTENT_HEADER",
    "FRAME",
    "FRAME_BODY",
    "FRAME_END",
    "FRAME_END_BYTE",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "FRAME_MIN_SIZE",
    "METHODS",
    "MethodSpec",
    "PROPERTY_NAMES",
    "PROPERTY_TYPES",
    "PROTOCOL_HEADER",
]

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
