"""AMQP 0-9-1 field values and field tables, sans I/O.

The ``construct`` declarations (:data:`FieldValuePure`, :data:`FieldTablePure`) are the source
of truth; :func:`decode_table` / :func:`encode_table` are the fast paths the broker uses (the
hypothesis tests in tests/test_amqp_codec.py check them against the declarations), and
:data:`FieldTable` puts the fast path inside the method declarations of
:mod:`polymq.adapters.amqp.codec`. Every length is bounded by what remains of the frame before
anything is allocated; tables nest at most :data:`MAX_TABLE_DEPTH` levels.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import construct as c

from .errors import SYNTAX_ERROR, FrameError

__all__ = [
    "MAX_TABLE_DEPTH",
    "ShortStr",
    "LongStrBytes",
    "LongStr",
    "Decimal",
    "FieldValuePure",
    "FieldTablePure",
    "FieldTable",
    "Timestamp",
    "pure_to_python",
    "need",
    "decode_value",
    "decode_table",
    "decode_table_body",
    "encode_value",
    "encode_table",
]

MAX_TABLE_DEPTH = 32


class Timestamp(int):
    """A field-table value of type ``T`` (seconds since the epoch); a plain int elsewhere."""

    __slots__ = ()


# ---------------------------------------------------------------------------------------------
# construct declarations: field values and tables (pure, recursive through LazyBound)
# ---------------------------------------------------------------------------------------------

ShortStr = c.PascalString(c.Int8ub, "utf8")
LongStrBytes = c.Prefixed(c.Int32ub, c.GreedyBytes)
LongStr = c.PascalString(c.Int32ub, "utf8")

Decimal = c.Struct("scale" / c.Int8ub, "value" / c.Int32sb)

FieldValuePure = c.Struct(
    "type" / c.PaddedString(1, "ascii"),
    "value"
    / c.Switch(
        c.this.type,
        {
            "t": c.Flag,
            "b": c.Int8sb,
            "B": c.Int8ub,
            "s": c.Int16sb,
            "u": c.Int16ub,
            "I": c.Int32sb,
            "i": c.Int32ub,
            "l": c.Int64sb,
            "f": c.Float32b,
            "d": c.Float64b,
            "D": Decimal,
            "S": LongStrBytes,
            "x": LongStrBytes,
            "A": c.Prefixed(c.Int32ub, c.GreedyRange(c.LazyBound(lambda: FieldValuePure))),
            "T": c.Int64ub,
            "F": c.LazyBound(lambda: FieldTablePure),
            "V": c.Pass,
        },
        default=c.StopFieldError,
    ),
)
FieldTablePure = c.Prefixed(
    c.Int32ub,
    c.GreedyRange(c.Struct("name" / ShortStr, "value" / FieldValuePure)),
)


def pure_to_python(fv: Any) -> Any:
    """A value parsed by :data:`FieldValuePure` as the Python value the fast decoder gives."""
    t, v = fv.type, fv.value
    if t == "D":
        return decimal.Decimal(v.value).scaleb(-v.scale)
    if t == "S":
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(v)
    if t == "x":
        return bytes(v)
    if t == "A":
        return [pure_to_python(x) for x in v]
    if t == "F":
        return {e.name: pure_to_python(e.value) for e in v}
    if t == "V":
        return None
    return v


# ---------------------------------------------------------------------------------------------
# field tables: fast paths
# ---------------------------------------------------------------------------------------------

_unpack_B = struct.Struct(">B").unpack_from
_unpack_b = struct.Struct(">b").unpack_from
_unpack_H = struct.Struct(">H").unpack_from
_unpack_h = struct.Struct(">h").unpack_from
_unpack_I = struct.Struct(">I").unpack_from
_unpack_i = struct.Struct(">i").unpack_from
_unpack_Q = struct.Struct(">Q").unpack_from
_unpack_q = struct.Struct(">q").unpack_from
_unpack_f = struct.Struct(">f").unpack_from
_unpack_d = struct.Struct(">d").unpack_from
_unpack_Bi = struct.Struct(">Bi").unpack_from
_pack_I = struct.Struct(">I").pack
_pack_H = struct.Struct(">H").pack
_pack_Q = struct.Struct(">Q").pack

_FIXED = {
    116: (1, None),  # t
    98: (1, _unpack_b),
    66: (1, _unpack_B),
    115: (2, _unpack_h),
    117: (2, _unpack_H),
    73: (4, _unpack_i),
    105: (4, _unpack_I),
    108: (8, _unpack_q),
    102: (4, _unpack_f),
    100: (8, _unpack_d),
}


def need(buf: bytes, pos: int, n: int, end: int) -> None:
    if pos + n > end:
        raise FrameError(SYNTAX_ERROR, "field runs past the end of its frame")


def decode_value(buf: bytes, pos: int, end: int, depth: int) -> tuple[Any, int]:
    """Decode one typed field value at ``pos``; returns (value, new position)."""
    need(buf, pos, 1, end)
    t = buf[pos]
    pos += 1
    fixed = _FIXED.get(t)
    if fixed is not None:
        n, fn = fixed
        need(buf, pos, n, end)
        if fn is None:
            return buf[pos] != 0, pos + 1
        return fn(buf, pos)[0], pos + n
    if t == 84:  # T
        need(buf, pos, 8, end)
        return Timestamp(_unpack_Q(buf, pos)[0]), pos + 8
    if t == 83 or t == 120:  # S x
        need(buf, pos, 4, end)
        n = _unpack_I(buf, pos)[0]
        pos += 4
        need(buf, pos, n, end)
        raw = bytes(buf[pos : pos + n])
        if t == 83:
            try:
                return raw.decode("utf-8"), pos + n
            except UnicodeDecodeError:
                return raw, pos + n
        return raw, pos + n
    if t == 70:  # F
        return decode_table(buf, pos, end, depth + 1)
    if t == 65:  # A
        if depth >= MAX_TABLE_DEPTH:
            raise FrameError(SYNTAX_ERROR, "field tables nested too deep")
        need(buf, pos, 4, end)
        n = _unpack_I(buf, pos)[0]
        pos += 4
        need(buf, pos, n, end)
        stop = pos + n
        out = []
        while pos < stop:
            v, pos = decode_value(buf, pos, stop, depth + 1)
            out.append(v)
        return out, pos
    if t == 68:  # D
        need(buf, pos, 5, end)
        scale, value = _unpack_Bi(buf, pos)
        return decimal.Decimal(value).scaleb(-scale), pos + 5
    if t == 86:  # V
        return None, pos
    raise FrameError(SYNTAX_ERROR, f"unknown field type {chr(t)!r}")


def decode_table(buf: bytes, pos: int, end: int, depth: int = 0) -> tuple[dict, int]:
    """Decode a length-prefixed field table at ``pos``; returns (dict, new position)."""
    if depth > MAX_TABLE_DEPTH:
        raise FrameError(SYNTAX_ERROR, "field tables nested too deep")
    need(buf, pos, 4, end)
    n = _unpack_I(buf, pos)[0]
    pos += 4
    need(buf, pos, n, end)
    stop = pos + n
    out: dict[str, Any] = {}
    while pos < stop:
        klen = buf[pos]
        pos += 1
        need(buf, pos, klen, stop)
        try:
            key = bytes(buf[pos : pos + klen]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise FrameError(SYNTAX_ERROR, "field name is not UTF-8") from e
        pos += klen
        out[key], pos = decode_value(buf, pos, stop, depth)
    return out, pos


def decode_table_body(data: bytes) -> dict:
    """A table without its length prefix (the AMQPLAIN response)."""
    return decode_table(_pack_I(len(data)) + data, 0, len(data) + 4)[0]


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def encode_value(v: Any, out: list[bytes], depth: int = 0) -> None:
    if depth > MAX_TABLE_DEPTH:
        raise ValueError("field tables nested too deep")
    if v is None:
        out.append(b"V")
    elif v is True or v is False:
        out.append(b"t\x01" if v else b"t\x00")
    elif isinstance(v, Timestamp):
        out.append(b"T" + _pack_Q(v))
    elif isinstance(v, int):
        if -0x80000000 <= v <= 0x7FFFFFFF:
            out.append(b"I" + struct.pack(">i", v))
        elif -0x8000000000000000 <= v <= 0x7FFFFFFFFFFFFFFF:
            out.append(b"l" + struct.pack(">q", v))
        else:
            raise ValueError(f"integer {v} does not fit in 64 bits")
    elif isinstance(v, str):
        b = v.encode("utf-8")
        out.append(b"S" + _pack_I(len(b)) + b)
    elif isinstance(v, bytes | bytearray | memoryview):
        b = bytes(v)
        out.append(b"x" + _pack_I(len(b)) + b)
    elif isinstance(v, float):
        out.append(b"d" + struct.pack(">d", v))
    elif isinstance(v, dict):
        out.append(b"F")
        out.append(encode_table(v, depth + 1))
    elif isinstance(v, list | tuple):
        parts: list[bytes] = []
        for x in v:
            encode_value(x, parts, depth + 1)
        body = b"".join(parts)
        out.append(b"A" + _pack_I(len(body)) + body)
    elif isinstance(v, decimal.Decimal):
        sign, digits, exp = v.as_tuple()
        scale = -exp if isinstance(exp, int) and exp < 0 else 0
        value = int(v.scaleb(scale))
        if not (0 <= scale <= 255 and -0x80000000 <= value <= 0x7FFFFFFF):
            raise ValueError(f"decimal {v} does not fit an AMQP decimal")
        out.append(b"D" + struct.pack(">Bi", scale, value))
    elif isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.UTC)
        out.append(b"T" + _pack_Q(int((v - _EPOCH).total_seconds())))
    else:
        raise ValueError(f"cannot encode {type(v).__name__} in a field table")


def encode_table(table: dict | None, depth: int = 0) -> bytes:
    """A length-prefixed field table."""
    if not table:
        return b"\x00\x00\x00\x00"
    parts: list[bytes] = []
    for k, v in table.items():
        kb = str(k).encode("utf-8")
        if len(kb) > 255:
            raise ValueError("field name longer than 255 bytes")
        parts.append(bytes((len(kb),)) + kb)
        encode_value(v, parts, depth)
    body = b"".join(parts)
    return _pack_I(len(body)) + body


class _FastTable(c.Construct):
    """A field table inside a method declaration: parsed by the fast path (which the tests
    check against :data:`FieldTablePure`)."""

    def _parse(self, stream, context, path):
        head = c.stream_read(stream, 4, path)
        n = _unpack_I(head, 0)[0]
        data = c.stream_read(stream, n, path)
        return decode_table(head + data, 0, 4 + n)[0]

    def _build(self, obj, stream, context, path):
        data = encode_table(obj)
        c.stream_write(stream, data, len(data), path)
        return obj


FieldTable = _FastTable()
