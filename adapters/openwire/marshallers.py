"""The fast decoders and encoders of every OpenWire type, built at import from the
``construct`` declarations of schema.py: each type becomes one flat function per family,
built as a syntax tree (astgen.py) and compiled, no source text involved; consecutive
fixed-width fields are one ``struct.Struct`` call each.

Three families, each a dict by type id:

- plain decoders ``dec(data, pos, end, depth, uc) -> (obj, pos)`` and encoders
  ``enc(obj, parts)`` (``uc`` unused);
- cached-form decoders and encoders (the marshalling cache negotiated): a ``c`` field is
  ``bool new, int16 index`` and, when new, the object, which the decoder stores at ``index``
  of the connection's unmarshalling cache ``uc``; a reference resolves an earlier one. Our
  encoders write every cached field as new with index -1 (the receiver keeps nothing);
- speculative decoders of the cached form (speculative.py) for the shape in which the JMS
  client writes its hottest commands (messages and their acks). Anything else, malformed
  frames included, is left to the cached-form decoder (the speculative one returns None);
  the tests check both give the same object.

Every nested object is checked against the type ids its declaration allows, whether it
arrives in the frame or as a cache reference, so a session never sees an object of the wrong
type; every length is checked against what remains of the frame before anything is
allocated, and nesting is capped at :data:`MAX_NESTING`.
"""

from __future__ import annotations

import ast
import struct
from collections.abc import Callable
from typing import Any

from . import astgen as A
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


# -- readers and writers of the composite kinds (called from the generated functions) ----------


def read_array(
    data: bytes, pos: int, end: int, depth: int, uc: list | None, types: Any, family: dict
) -> tuple[list | None, int]:
    """A nullable array of nested objects (int16 count), each at nesting ``depth``."""
    if pos >= end:
        raise DecodeError(_TRUNC)
    if not data[pos]:
        return None, pos + 1
    if pos + 3 > end:
        raise DecodeError(_TRUNC)
    n = _H.unpack_from(data, pos + 1)[0]
    pos += 3
    if n < 0 or n > end - pos:
        raise DecodeError(f"array count {n} exceeds the frame")
    items = []
    for _ in range(n):
        v, pos = read_object(data, pos, end, depth, uc, types, family)
        items.append(v)
    return items, pos


def read_cached(
    data: bytes, pos: int, end: int, depth: int, uc: list, types: Any, family: dict
) -> tuple[Obj | None, int]:
    """A ``c`` field of the cached form: new (stored at its index unless -1) or a reference."""
    if pos + 3 > end:
        raise DecodeError(_TRUNC)
    # the index as unsigned: 0xFFFF is -1 (not stored); any other index of 0x8000 and up
    # is negative, beyond every cache (at most 32767)
    idx = (data[pos + 1] << 8) | data[pos + 2]
    if data[pos]:
        v, pos = read_object(data, pos + 3, end, depth, uc, types, family)
        if idx != 0xFFFF:
            if idx >= len(uc):
                raise DecodeError(f"cache index {idx} out of range")
            uc[idx] = v
        return v, pos
    if idx >= len(uc):
        raise DecodeError(f"cache index {idx} out of range")
    v = uc[idx]
    if v is not None and types is not None and v.type not in types:
        raise DecodeError(f"cache entry {idx} is an unexpected {_name(v.type)}")
    return v, pos + 3


def write_array(v: list | None, parts: list, family: dict) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01" + _H.pack(len(v)))
        for x in v:
            write_object(x, parts, family)


# -- the generated decoders and encoders ---------------------------------------------------------
# One flat function per type and family, built from the declaration as a syntax tree (see
# astgen): consecutive fixed-width fields one struct call, every other field one call of a
# reader or writer above (an absent nested object not even that), the fields' dict built at
# once.


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


def _raise_truncated(g: A.Globals) -> ast.Raise:
    return ast.Raise(A.call(g.ref(DecodeError, "DecodeError"), A.const(_TRUNC)), None)


def _fields_dict(g: A.Globals, names: list[str], values: list[ast.expr]) -> list[ast.stmt]:
    """``d = {...}``: a dict display, or past 16 keys a copy of a presized template and the
    values (a display of thirty keys costs about twice that)."""
    if len(names) <= 16:
        return [A.assign("d", ast.Dict([A.const(n) for n in names], values))]
    tmpl = g.ref(dict.fromkeys(names), "TMPL")
    out: list[ast.stmt] = [A.assign("d", A.call(A.attr(tmpl, "copy")))]
    out += [A.set_item("d", A.const(n), v) for n, v in zip(names, values)]  # noqa: B905
    return out


def _decoder(t: int, cached: bool, g: A.Globals) -> Callable:
    family = CDECODERS if cached else DECODERS
    fam = g.ref(family, "FAMILY")
    prefix, fields = _split_prefix(t)
    message = t in MESSAGE_TYPES
    n = A.name
    body: list[ast.stmt] = [
        A.assign("o", A.call(g.ref(_new, "new"), g.ref(Obj, "Obj"))),
        A.set_attr("o", "type", A.const(t)),
    ]
    if prefix:
        body += [
            A.if_(A.beyond(n("pos"), 5), [_raise_truncated(g)]),
            A.assign(
                ast.Tuple(
                    [
                        ast.Attribute(n("o"), "command_id", ast.Store()),
                        ast.Attribute(n("o"), "response_required", ast.Store()),
                    ],
                    ast.Store(),
                ),
                A.call(A.attr(g.ref(_PREFIX, "PREFIX"), "unpack_from"), n("data"), n("pos")),
            ),
            A.increment("pos", 5),
        ]
    else:
        body += [
            A.set_attr("o", "command_id", A.const(0)),
            A.set_attr("o", "response_required", A.const(False)),
        ]
    names: list[str] = []
    depth1 = A.add(n("depth"), 1)
    for kind, group in _runs(fields):
        if kind == "fixed":
            st = struct.Struct(">" + "".join(_FIXED[f.kind] for _, f in group))
            vs = [f"v_{name}" for name, _ in group]
            unpack = A.attr(g.ref(st, "S"), "unpack_from")
            body += [
                A.if_(A.beyond(n("pos"), st.size), [_raise_truncated(g)]),
                A.assign_tuple(vs, A.call(unpack, n("data"), n("pos"))),
                A.increment("pos", st.size),
            ]
            names += [name for name, _ in group]
            continue
        name, f = group[0]
        v = f"v_{name}"
        if message and name == "target_consumer_id":
            body.append(A.assign("m2", n("pos")))
        args3 = (n("data"), n("pos"), n("end"))
        types_ = A.const(None) if f.types is None else g.ref(f.types, "T")
        if kind in ("s", "y", "t"):
            reader = {"s": read_string, "y": read_bytes, "t": read_throwable}[kind]
            body.append(A.assign_tuple([v, "pos"], A.call(g.ref(reader, "read"), *args3)))
        elif kind == "O":
            call = A.call(g.ref(read_array, "read"), *args3, depth1, n("uc"), types_, fam)
            body.append(A.assign_tuple([v, "pos"], call))
        elif kind == "c" and cached:
            call = A.call(g.ref(read_cached, "read"), *args3, depth1, n("uc"), types_, fam)
            body.append(A.assign_tuple([v, "pos"], call))
        else:  # "o", or "c" of the plain form: absent inline, present read_object
            call = A.call(g.ref(read_object, "read"), *args3, depth1, n("uc"), types_, fam)
            body += [
                A.if_(A.compare(n("pos"), ast.GtE(), n("end")), [_raise_truncated(g)]),
                A.if_(
                    A.item(n("data"), n("pos")),
                    [A.assign_tuple([v, "pos"], call)],
                    [A.assign(v, A.const(None)), A.increment("pos", 1)],
                ),
            ]
        names.append(name)
        if message and name == "message_id":
            body.append(A.set_attr("o", "mark", n("pos")))
        if message and name == "original_transaction_id":
            body.append(A.assign("m1", n("pos")))
        if message and name == "target_consumer_id":
            body.append(A.set_attr("o", "cmark", A.tuple_(n("m1"), n("m2"), n("pos"))))
    body += _fields_dict(g, names, [n(f"v_{name}") for name in names])
    body += [A.set_attr("o", "__dict__", n("d")), ast.Return(A.tuple_(n("o"), n("pos")))]
    fname = f"decode_{'cached_' if cached else ''}{_name(t)}"
    return A.function(fname, ["data", "pos", "end", "depth", "uc"], body, g.env, (None,))


def _encoder(t: int, cached: bool, g: A.Globals) -> Callable:
    family = CENCODERS if cached else ENCODERS
    fam = g.ref(family, "FAMILY")
    prefix, fields = _split_prefix(t)
    n = A.name
    append = A.attr(n("parts"), "append")
    body: list[ast.stmt] = []
    if prefix:
        pack = A.attr(g.ref(_PREFIX, "PREFIX"), "pack")
        value = A.call(pack, A.attr(n("o"), "command_id"), A.attr(n("o"), "response_required"))
        body.append(ast.Expr(A.call(append, value)))
    body.append(A.assign("d", A.attr(n("o"), "__dict__")))
    for kind, group in _runs(fields):
        if kind == "fixed":
            st = struct.Struct(">" + "".join(_FIXED[f.kind] for _, f in group))
            vals = [A.item(n("d"), A.const(name)) for name, _ in group]
            body.append(ast.Expr(A.call(append, A.call(A.attr(g.ref(st, "S"), "pack"), *vals))))
            continue
        name = group[0][0]
        value = A.item(n("d"), A.const(name))
        if kind in ("s", "y", "t"):
            writer = {"s": write_string, "y": write_bytes, "t": write_throwable}[kind]
            body.append(ast.Expr(A.call(g.ref(writer, "write"), value, n("parts"))))
            continue
        if kind == "O":
            body.append(ast.Expr(A.call(g.ref(write_array, "write"), value, n("parts"), fam)))
            continue
        # a nested object: flag (and for a cached field the index -1), type, fields
        null, head = (b"\x01\xff\xff\x00", UNCACHED) if kind == "c" and cached else (b"\x00", b"")
        header = A.item(g.ref(OBJ_HEADER, "OBJ_HEADER"), A.attr(n("v"), "type"))
        if head:
            header = ast.BinOp(A.const(head), ast.Add(), header)
        nested = A.call(A.item(fam, A.attr(n("v"), "type")), n("v"), n("parts"))
        body += [
            A.assign("v", value),
            A.if_(
                A.compare(n("v"), ast.Is(), A.const(None)),
                [ast.Expr(A.call(append, A.const(null)))],
                [ast.Expr(A.call(append, header)), ast.Expr(nested)],
            ),
        ]
    fname = f"encode_{'cached_' if cached else ''}{_name(t)}"
    return A.function(fname, ["o", "parts"], body, g.env)


def _build() -> None:
    g = A.Globals({})
    for t in DECLARATIONS:
        DECODERS[t] = _decoder(t, False, g)
        CDECODERS[t] = _decoder(t, True, g)
        ENCODERS[t] = _encoder(t, False, g)
        CENCODERS[t] = _encoder(t, True, g)
    for t in SPEC_PRESENT:
        SPECULATIVE[t] = build_speculative(t)


_build()
