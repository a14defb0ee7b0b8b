"""OpenWire primitives, sans I/O: Java modified UTF-8, a bounds-checked reader and a writer,
primitive maps (message properties, MapMessage bodies, WireFormatInfo properties), the
WireFormatInfo handshake frame and message bodies.

Every length is checked against what remains before anything is allocated, so a client
controls no allocation size; every malformed input raises :class:`DecodeError`.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

import construct as cs

from .schema import MAGIC, MAX_MAP_NESTING, WIREFORMAT_INFO, DecodeError


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

# CONSTRUCT

# -- construct declarations (fixed layouts; also derived from the table for the tests) ----------

FRAME_HEADER = cs.Struct("size" / cs.Int32sb, "type" / cs.Int8ub)

WIRE_FORMAT_INFO = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int32sb,
    "properties"
    / cs.Struct(
        "present" / cs.Flag,
        "data" / cs.If(cs.this.present, cs.Prefixed(cs.Int32sb, cs.GreedyBytes)),
    ),
)


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

PTYPE_NAMES = {
    P_BYTE: "byte",
    P_CHAR: "char",
    P_SHORT: "short",
    P_INT: "int",
    P_LONG: "long",
    P_FLOAT: "float",
    P_DOUBLE: "double",
}
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
