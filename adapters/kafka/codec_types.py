"""The schema language of the Kafka codec: wire primitives as ``construct`` classes, fields with
version ranges (``F``, ``Arr``) turned into structs, and the header declarations.

Every length read from the wire is checked against what remains of the frame before anything is
allocated (arrays additionally against a minimum element size), so an inflated length fails with
a :class:`KafkaDecodeError` instead of allocating.
"""

from __future__ import annotations

import struct
from typing import Any

import construct as cs

from polymq.core.errors import ProtocolError

from ..varint import encode_uvarint


class KafkaDecodeError(ProtocolError):
    """A frame that cannot be decoded (truncated, inflated length, bad varint ...)."""


# --------------------------------------------------------------------------------------------
# primitive constructs


def _remaining(stream: Any) -> int:
    pos = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(pos)
    return end - pos


def _read(stream: Any, n: int, path: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise cs.StreamError(f"truncated: needed {n} bytes", path=path)
    return data


class UVarint(cs.Construct):
    """Unsigned LEB128 varint (at most 5 bytes: fits an unsigned 32-bit value)."""

    def _parse(self, stream, context, path):
        result = 0
        for i in range(5):
            b = _read(stream, 1, path)[0]
            result |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return result
        raise cs.ExplicitError("varint too long", path=path)

    def _build(self, obj, stream, context, path):
        stream.write(encode_uvarint(obj))
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


class KString(cs.Construct):
    """Kafka STRING / NULLABLE_STRING (int16 length, -1 null) or the COMPACT_ forms."""

    def __init__(self, nullable: bool = False, compact: bool = False, raw: bool = False):
        super().__init__()
        self.nullable = nullable
        self.compact = compact
        self.raw = raw  # bytes instead of str (BYTES / COMPACT_BYTES)
        self._uv = UVarint()

    def _parse(self, stream, context, path):
        if self.compact:
            n = self._uv._parse(stream, context, path) - 1
        elif self.raw:
            n = struct.unpack(">i", _read(stream, 4, path))[0]
        else:
            n = struct.unpack(">h", _read(stream, 2, path))[0]
        if n < 0:
            if n == -1 and self.nullable:
                return None
            raise cs.ExplicitError("negative length", path=path)
        if n > _remaining(stream):
            raise cs.ExplicitError("length beyond frame", path=path)
        data = _read(stream, n, path)
        if self.raw:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise cs.ExplicitError("invalid utf-8", path=path) from e

    def _build(self, obj, stream, context, path):
        if obj is None:
            if not self.nullable:
                raise cs.ExplicitError("null in non-nullable field", path=path)
            if self.compact:
                stream.write(b"\x00")
            elif self.raw:
                stream.write(b"\xff\xff\xff\xff")
            else:
                stream.write(b"\xff\xff")
            return obj
        data = obj if self.raw else obj.encode("utf-8")
        if self.compact:
            stream.write(encode_uvarint(len(data) + 1))
        elif self.raw:
            stream.write(struct.pack(">i", len(data)))
        else:
            stream.write(struct.pack(">h", len(data)))
        stream.write(data)
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


class KArray(cs.Construct):
    """Kafka ARRAY (int32 count, -1 null) or COMPACT_ARRAY (uvarint count+1, 0 null).

    The count is checked against the bytes left in the frame (each element takes at least
    ``min_size`` bytes) before any element is parsed.
    """

    def __init__(
        self, subcon: cs.Construct, min_size: int, nullable: bool = False, compact: bool = False
    ):
        super().__init__()
        self.subcon = subcon
        self.min_size = max(1, min_size)
        self.nullable = nullable
        self.compact = compact
        self._uv = UVarint()

    def _parse(self, stream, context, path):
        if self.compact:
            n = self._uv._parse(stream, context, path) - 1
        else:
            n = struct.unpack(">i", _read(stream, 4, path))[0]
        if n < 0:
            if n == -1 and self.nullable:
                return None
            raise cs.ExplicitError("negative array length", path=path)
        if n * self.min_size > _remaining(stream):
            raise cs.ExplicitError("array length beyond frame", path=path)
        return cs.ListContainer(self.subcon._parsereport(stream, context, path) for _ in range(n))

    def _build(self, obj, stream, context, path):
        if obj is None:
            if not self.nullable:
                raise cs.ExplicitError("null in non-nullable array", path=path)
            stream.write(b"\x00" if self.compact else b"\xff\xff\xff\xff")
            return obj
        if self.compact:
            stream.write(encode_uvarint(len(obj) + 1))
        else:
            stream.write(struct.pack(">i", len(obj)))
        for item in obj:
            self.subcon._build(item, stream, context, path)
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


class TaggedFields(cs.Construct):
    """The tagged-field block of flexible versions: parsed (and skipped), built empty."""

    def __init__(self):
        super().__init__()
        self._uv = UVarint()

    def _parse(self, stream, context, path):
        n = self._uv._parse(stream, context, path)
        if n * 2 > _remaining(stream):
            raise cs.ExplicitError("tagged field count beyond frame", path=path)
        tags = {}
        for _ in range(n):
            tag = self._uv._parse(stream, context, path)
            size = self._uv._parse(stream, context, path)
            if size > _remaining(stream):
                raise cs.ExplicitError("tagged field beyond frame", path=path)
            tags[tag] = _read(stream, size, path)
        return tags

    def _build(self, obj, stream, context, path):
        stream.write(b"\x00")
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


# --------------------------------------------------------------------------------------------
# the schema language: fields with version ranges, turned into construct structs

I8, I16, I32, I64, BOOL = "int8", "int16", "int32", "int64", "bool"
STR, NSTR, BYTES, NBYTES = "string", "nullable_string", "bytes", "nullable_bytes"


class Arr:
    """An array of structs (``fields``) or of a primitive (``fields`` is a type name)."""

    def __init__(self, fields: Any, nullable: bool = False):
        self.fields = fields
        self.nullable = nullable


def F(name: str, typ: Any, since: int = 0, until: int = 99) -> tuple:
    return (name, typ, since, until)


def topics_of(partition_fields: Any, partitions: str = "partitions", name: str = "name") -> Arr:
    """Kafka's usual nesting: an array of topics, each its name (a STRING field ``name``) and an
    array ``partitions`` of ``partition_fields``."""
    return Arr([F(name, STR), F(partitions, Arr(partition_fields))])


_PRIM = {
    I8: (cs.Int8sb, 1),
    I16: (cs.Int16sb, 2),
    I32: (cs.Int32sb, 4),
    I64: (cs.Int64sb, 8),
    BOOL: (cs.Flag, 1),
}


def _type_construct(typ: Any, version: int, flexible: bool) -> tuple[cs.Construct, int]:
    if isinstance(typ, Arr):
        if isinstance(typ.fields, str):
            sub, size = _type_construct(typ.fields, version, flexible)
        else:
            sub, size = fields_struct(typ.fields, version, flexible)
        return KArray(sub, size, nullable=typ.nullable, compact=flexible), 1 if flexible else 4
    if typ in _PRIM:
        return _PRIM[typ]
    if typ == STR:
        return KString(compact=flexible), 1 if flexible else 2
    if typ == NSTR:
        return KString(nullable=True, compact=flexible), 1 if flexible else 2
    if typ == BYTES:
        return KString(raw=True, compact=flexible), 1 if flexible else 4
    if typ == NBYTES:
        return KString(raw=True, nullable=True, compact=flexible), 1 if flexible else 4
    raise ValueError(typ)


def fields_struct(fields: list, version: int, flexible: bool) -> tuple[cs.Construct, int]:
    """The struct of ``fields`` at ``version``, and the least number of bytes it takes."""
    subs = []
    size = 0
    for name, typ, since, until in fields:
        if since <= version <= until:
            c, n = _type_construct(typ, version, flexible)
            subs.append(name / c)
            size += n
    if flexible:
        subs.append("_tagged" / cs.Default(TaggedFields(), {}))
        size += 1
    return cs.Struct(*subs), size


# ---- request header

REQUEST_HEADER_V1 = cs.Struct(
    "api_key" / cs.Int16sb,
    "api_version" / cs.Int16sb,
    "correlation_id" / cs.Int32sb,
    "client_id" / KString(nullable=True),
)
REQUEST_HEADER_V2 = cs.Struct(
    "api_key" / cs.Int16sb,
    "api_version" / cs.Int16sb,
    "correlation_id" / cs.Int32sb,
    "client_id" / KString(nullable=True),  # never compact
    "_tagged" / cs.Default(TaggedFields(), {}),
)
RESPONSE_HEADER_V0 = cs.Struct("correlation_id" / cs.Int32sb)
RESPONSE_HEADER_V1 = cs.Struct(
    "correlation_id" / cs.Int32sb, "_tagged" / cs.Default(TaggedFields(), {})
)
