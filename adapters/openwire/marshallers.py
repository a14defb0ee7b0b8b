"""The fast decoders and encoders of every OpenWire type, built at import from the
``construct`` declarations of schema.py, without generated source: each type becomes a list
of steps (closures), consecutive fixed-width fields one ``struct.Struct`` call each.

Three families, each a dict by type id:

- plain decoders ``dec(data, pos, end, depth, uc) -> (obj, pos)`` and encoders
  ``enc(obj, parts)`` (``uc`` unused);
- cached-form decoders and encoders (the marshalling cache negotiated): a ``c`` field is
  ``bool new, int16 index`` and, when new, the object, which the decoder stores at ``index``
  of the connection's unmarshalling cache ``uc``; a reference resolves an earlier one. Our
  encoders write every cached field as new with index -1 (the receiver keeps nothing);
- speculative decoders of the cached form for the shape in which the JMS client writes its
  hottest commands (messages and their acks): cached fields as references, optional strings,
  objects and arrays absent, only the MessageIds present. For that shape everything but the
  byte arrays is a few fixed layouts: one ``struct`` call each, one comparison of all their
  flags with what the shape holds; a cache index out of range ends the look-up. Anything
  else, malformed frames included, is left to the cached-form decoder (the speculative one
  returns None); the tests check both give the same object.

Every nested object is checked against the type ids its declaration allows, whether it
arrives in the frame or as a cache reference, so a session never sees an object of the wrong
type; every length is checked against what remains of the frame before anything is
allocated, and nesting is capped at :data:`MAX_NESTING`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from .primitives import _H, _I, _UH, decode_mutf8, encode_mutf8
from .schema import (
    DECLARATIONS,
    MAX_NESTING,
    MESSAGE_TYPES,
    SCHEMA,
    DecodeError,
    Field,
    Obj,
    fields_of,
)
from .speculative import SPEC_PRESENT
from .speculative import build as build_speculative

_FIXED = {"z": "?", "b": "b", "h": "h", "i": "i", "l": "q"}
_PREFIX = struct.Struct(">i?")
_TRUNC = "truncated"
_new = object.__new__

OBJ_HEADER = {t: bytes((1, t)) for t in SCHEMA}
UNCACHED = b"\x01\xff\xff"  # a cached field written as new, index -1 (receiver keeps nothing)

DECODERS: dict[int, Callable] = {}
ENCODERS: dict[int, Callable] = {}
CDECODERS: dict[int, Callable] = {}
CENCODERS: dict[int, Callable] = {}
SPECULATIVE: dict[int, Callable] = {}


def _name(t: int) -> str:
    return SCHEMA[t][0]


# -- readers and writers of the variable-length kinds -------------------------------------------


def read_string(data: bytes, pos: int, end: int) -> tuple[str | None, int]:
    if pos >= end:
        raise DecodeError(_TRUNC)
    if not data[pos]:
        return None, pos + 1
    if pos + 3 > end:
        raise DecodeError(_TRUNC)
    n = (data[pos + 1] << 8) | data[pos + 2]
    pos += 3
    if pos + n > end:
        raise DecodeError(f"string length {n} exceeds the frame")
    raw = data[pos : pos + n]
    return (raw.decode("ascii") if raw.isascii() else decode_mutf8(raw)), pos + n


def read_bytes(data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
    if pos >= end:
        raise DecodeError(_TRUNC)
    if not data[pos]:
        return None, pos + 1
    if pos + 5 > end:
        raise DecodeError(_TRUNC)
    n = _I.unpack_from(data, pos + 1)[0]
    pos += 5
    if n < 0 or pos + n > end:
        raise DecodeError(f"length {n} exceeds the frame")
    return data[pos : pos + n], pos + n


def read_throwable(data: bytes, pos: int, end: int) -> tuple[tuple | None, int]:
    if pos >= end:
        raise DecodeError(_TRUNC)
    if not data[pos]:
        return None, pos + 1
    cls, pos = read_string(data, pos + 1, end)
    msg, pos = read_string(data, pos, end)
    return (cls, msg), pos


def read_object(
    data: bytes, pos: int, end: int, depth: int, uc: list | None, types: Any, family: dict
) -> tuple[Obj | None, int]:
    """A nullable nested object of one of ``types`` (None: any), decoded by ``family``."""
    if pos >= end:
        raise DecodeError(_TRUNC)
    if not data[pos]:
        return None, pos + 1
    if pos + 2 > end:
        raise DecodeError(_TRUNC)
    t = data[pos + 1]
    dec = family.get(t)
    if dec is None:
        raise DecodeError(f"unknown data type {t}")
    if types is not None and t not in types:
        raise DecodeError(f"unexpected {_name(t)}")
    if depth > MAX_NESTING:
        raise DecodeError("objects nested too deeply")
    return dec(data, pos + 2, end, depth, uc)


def write_string(v: str | None, parts: list) -> None:
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


def write_bytes(v: bytes | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01" + _I.pack(len(v)))
        parts.append(v)


def write_throwable(v: tuple | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01")
        write_string(v[0], parts)
        write_string(v[1], parts)


def write_object(v: Obj | None, parts: list, family: dict) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(OBJ_HEADER[v.type])
        family[v.type](v, parts)


# -- decoder steps: step(data, pos, end, depth, uc, out) -> pos, values appended to out --------


def _fixed_step(st: struct.Struct) -> Callable:
    size, unpack = st.size, st.unpack_from

    def step(data: bytes, pos: int, end: int, depth: int, uc: Any, out: list) -> int:
        if pos + size > end:
            raise DecodeError(_TRUNC)
        out += unpack(data, pos)
        return pos + size

    return step


def _reader_step(read: Callable) -> Callable:
    def step(data: bytes, pos: int, end: int, depth: int, uc: Any, out: list) -> int:
        v, pos = read(data, pos, end)
        out.append(v)
        return pos

    return step


def _string_step(data: bytes, pos: int, end: int, depth: int, uc: Any, out: list) -> int:
    # read_string, inlined: strings are the commonest variable field
    if pos >= end:
        raise DecodeError(_TRUNC)
    if not data[pos]:
        out.append(None)
        return pos + 1
    if pos + 3 > end:
        raise DecodeError(_TRUNC)
    n = (data[pos + 1] << 8) | data[pos + 2]
    pos += 3
    if pos + n > end:
        raise DecodeError(f"string length {n} exceeds the frame")
    raw = data[pos : pos + n]
    out.append(raw.decode("ascii") if raw.isascii() else decode_mutf8(raw))
    return pos + n


def _object_step(types: Any, family: dict) -> Callable:
    def step(data: bytes, pos: int, end: int, depth: int, uc: Any, out: list) -> int:
        v, pos = read_object(data, pos, end, depth + 1, uc, types, family)
        out.append(v)
        return pos

    return step


def _array_step(types: Any, family: dict) -> Callable:
    def step(data: bytes, pos: int, end: int, depth: int, uc: Any, out: list) -> int:
        if pos >= end:
            raise DecodeError(_TRUNC)
        if not data[pos]:
            out.append(None)
            return pos + 1
        if pos + 3 > end:
            raise DecodeError(_TRUNC)
        n = _H.unpack_from(data, pos + 1)[0]
        pos += 3
        if n < 0 or n > end - pos:
            raise DecodeError(f"array count {n} exceeds the frame")
        items = []
        for _ in range(n):
            v, pos = read_object(data, pos, end, depth + 1, uc, types, family)
            items.append(v)
        out.append(items)
        return pos

    return step


def _cached_step(types: Any, family: dict) -> Callable:
    """A ``c`` field of the cached form: new (stored at its index unless -1) or a reference."""

    def step(data: bytes, pos: int, end: int, depth: int, uc: list, out: list) -> int:
        if pos + 3 > end:
            raise DecodeError(_TRUNC)
        # the index as unsigned: 0xFFFF is -1 (not stored); any other index of 0x8000 and up
        # is negative, beyond every cache (at most 32767)
        idx = (data[pos + 1] << 8) | data[pos + 2]
        if data[pos]:
            v, pos = read_object(data, pos + 3, end, depth + 1, uc, types, family)
            if idx != 0xFFFF:
                if idx >= len(uc):
                    raise DecodeError(f"cache index {idx} out of range")
                uc[idx] = v
        else:
            if idx >= len(uc):
                raise DecodeError(f"cache index {idx} out of range")
            v = uc[idx]
            if v is not None and types is not None and v.type not in types:
                raise DecodeError(f"cache entry {idx} is an unexpected {_name(v.type)}")
            pos += 3
        out.append(v)
        return pos

    return step


def _mark_step(data: bytes, pos: int, end: int, depth: int, uc: Any, out: list) -> int:
    out.append(pos)
    return pos


def _runs(fields: list[tuple[str, Field]]) -> list[tuple[str, list[tuple[str, Field]]]]:
    """Consecutive fixed-width fields grouped: [("fixed" | kind, [(name, field)])]."""
    out: list = []
    for name, f in fields:
        if f.kind in _FIXED:
            if out and out[-1][0] == "fixed":
                out[-1][1].append((name, f))
            else:
                out.append(("fixed", [(name, f)]))
        else:
            out.append((f.kind, [(name, f)]))
    return out


def _split_prefix(t: int) -> tuple[bool, list[tuple[str, Field]]]:
    fields = fields_of(DECLARATIONS[t][1])
    prefix = SCHEMA[t][1]
    return prefix, fields[2:] if prefix else fields


# in a message, where the encoding of the fields differs between the forms (reencode_message):
# offsets after the MessageId (plain form), after the original transaction id, and before and
# after the target consumer id
_MARKS = {
    "message_id": ("after",),
    "original_transaction_id": ("after",),
    "target_consumer_id": ("before", "after"),
}


def _decoder(t: int, cached: bool) -> Callable:
    family = CDECODERS if cached else DECODERS
    prefix, fields = _split_prefix(t)
    message = t in MESSAGE_TYPES
    steps: list[Callable] = []
    slots: list[str | None] = []  # what each value of ``out`` is: a field name, or a mark
    for kind, group in _runs(fields):
        if kind == "fixed":
            fmt = ">" + "".join(_FIXED[f.kind] for _, f in group)
            steps.append(_fixed_step(struct.Struct(fmt)))
            slots += [n for n, _ in group]
            continue
        name, f = group[0]
        marks = _MARKS.get(name, ()) if message else ()
        if "before" in marks:
            steps.append(_mark_step)
            slots.append(None)
        if kind == "s":
            steps.append(_string_step)
        elif kind == "y":
            steps.append(_reader_step(read_bytes))
        elif kind == "t":
            steps.append(_reader_step(read_throwable))
        elif kind == "O":
            steps.append(_array_step(f.types, family))
        elif kind == "c" and cached:
            steps.append(_cached_step(f.types, family))
        else:  # "o", or "c" of the plain form
            steps.append(_object_step(f.types, family))
        slots.append(name)
        if "after" in marks:
            steps.append(_mark_step)
            slots.append(None)
    names = tuple(n for n in slots if n is not None)
    steps_t = tuple(steps)
    prefix_unpack = _PREFIX.unpack_from

    if not message:

        def decode(data: bytes, pos: int, end: int, depth: int, uc: Any = None) -> tuple:
            o = _new(Obj)
            o.type = t
            if prefix:
                if pos + 5 > end:
                    raise DecodeError(_TRUNC)
                o.command_id, o.response_required = prefix_unpack(data, pos)
                pos += 5
            else:
                o.command_id = 0
                o.response_required = False
            out: list = []
            for step in steps_t:
                pos = step(data, pos, end, depth, uc, out)
            o.__dict__ = dict(zip(names, out))  # noqa: B905 (one value per name)
            return o, pos

        return decode

    values = itemgetter(*[i for i, n in enumerate(slots) if n is not None])
    mark_positions = itemgetter(*[i for i, n in enumerate(slots) if n is None])

    def decode_message(data: bytes, pos: int, end: int, depth: int, uc: Any = None) -> tuple:
        o = _new(Obj)
        o.type = t
        if pos + 5 > end:
            raise DecodeError(_TRUNC)
        o.command_id, o.response_required = prefix_unpack(data, pos)
        pos += 5
        out: list = []
        for step in steps_t:
            pos = step(data, pos, end, depth, uc, out)
        o.__dict__ = dict(zip(names, values(out)))  # noqa: B905
        mark, m1, m2, m3 = mark_positions(out)
        o.mark = mark
        o.cmark = (m1, m2, m3)
        return o, pos

    return decode_message


# -- encoder steps: step(d, parts), d the object's __dict__ ------------------------------------


def _encoder(t: int, cached: bool) -> Callable:
    family = CENCODERS if cached else ENCODERS
    prefix, fields = _split_prefix(t)
    steps: list[Callable] = []
    for kind, group in _runs(fields):
        if kind == "fixed":
            pack = struct.Struct(">" + "".join(_FIXED[f.kind] for _, f in group)).pack
            if len(group) == 1:
                only = group[0][0]

                def step(d: dict, parts: list, pack: Any = pack, only: str = only) -> None:
                    parts.append(pack(d[only]))

            else:
                get = itemgetter(*[n for n, _ in group])

                def step(d: dict, parts: list, pack: Any = pack, get: Any = get) -> None:
                    parts.append(pack(*get(d)))

            steps.append(step)
            continue
        name = group[0][0]
        if kind == "s":

            def step(d: dict, parts: list, name: str = name) -> None:
                write_string(d[name], parts)

        elif kind == "y":

            def step(d: dict, parts: list, name: str = name) -> None:
                write_bytes(d[name], parts)

        elif kind == "t":

            def step(d: dict, parts: list, name: str = name) -> None:
                write_throwable(d[name], parts)

        elif kind == "O":

            def step(d: dict, parts: list, name: str = name) -> None:
                v = d[name]
                if v is None:
                    parts.append(b"\x00")
                else:
                    parts.append(b"\x01" + _H.pack(len(v)))
                    for x in v:
                        write_object(x, parts, family)

        elif kind == "c" and cached:

            def step(d: dict, parts: list, name: str = name) -> None:
                v = d[name]
                if v is None:
                    parts.append(b"\x01\xff\xff\x00")
                else:
                    parts.append(UNCACHED + OBJ_HEADER[v.type])
                    family[v.type](v, parts)

        else:

            def step(d: dict, parts: list, name: str = name) -> None:
                write_object(d[name], parts, family)

        steps.append(step)
    steps_t = tuple(steps)
    prefix_pack = _PREFIX.pack

    def encode(o: Obj, parts: list) -> None:
        if prefix:
            parts.append(prefix_pack(o.command_id, o.response_required))
        d = o.__dict__
        for step in steps_t:
            step(d, parts)

    return encode


def _build() -> None:
    for t in DECLARATIONS:
        DECODERS[t] = _decoder(t, False)
        CDECODERS[t] = _decoder(t, True)
        ENCODERS[t] = _encoder(t, False)
        CENCODERS[t] = _encoder(t, True)
    for t in SPEC_PRESENT:
        SPECULATIVE[t] = build_speculative(t)


_build()
