"""Test oracles of the OpenWire codec, written independently of its fast paths.

- a table interpreter (:func:`encode_frame_generic`, :func:`decode_command_generic`): one
  generic marshaller that reads ``SCHEMA`` field by field through the codec's bounds-checked
  :class:`Reader` / :class:`Writer`;
- the ``construct`` declarations themselves (:func:`construct_for`): construct's own parser
  and builder, a third implementation of the same bytes;
- :class:`ClientWriter`, which writes commands the way the Java client's marshallers do, with
  a marshalling cache (cached fields as references after their first use).

Used by the codec and transport tests and by ``bench/jms_bench/inproc.py``.
"""

from __future__ import annotations

import construct as cs

from polymq.adapters.openwire.codec import (
    DECLARATIONS,
    MAX_NESTING,
    SCHEMA,
    WIREFORMAT_INFO,
    DecodeError,
    Obj,
    Reader,
    Writer,
)
from polymq.adapters.openwire.primitives import _B, _H, _I, _Q
from polymq.adapters.openwire.schema import fields_of

# the type ids each nested field may hold (None: any), as the declarations say
_NESTED_TYPES = {
    (t, name): f.types for t, (_, decl) in DECLARATIONS.items() for name, f in fields_of(decl)
}


def decode_object(r: Reader, depth: int = 0, types: frozenset | None = None) -> Obj | None:
    """A nullable nested object: bool present, type byte, body."""
    if not r.bool():
        return None
    t = r.u8()
    if types is not None and t in SCHEMA and t not in types:
        raise DecodeError(f"unexpected type {t}")
    return decode_body(r, t, depth)


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
            d[name] = decode_object(r, depth + 1, _NESTED_TYPES[type_id, name])
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
                types = _NESTED_TYPES[type_id, name]
                d[name] = [decode_object(r, depth + 1, types) for _ in range(n)]
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


def construct_for(type_id: int) -> cs.Construct:
    """The ``construct`` declaration of one type (the codec's source of truth): construct
    itself parses and builds the plain form."""
    return DECLARATIONS[type_id][1]


# -- construct results and objects as comparable values -----------------------------------------


def plain(v):
    """construct's parse result, reduced to comparable values."""
    if hasattr(v, "items"):
        d = {k: plain(x) for k, x in v.items() if not k.startswith("_")}
        if set(d) == {"present", "value"}:
            return d["value"] if d["present"] else None
        if set(d) == {"present", "items"}:
            return d["items"] if d["present"] else None
        if set(d) == {"type", "body"}:
            return ("obj", d["type"], d["body"])
        return d
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def as_plain(obj):
    """An object in the shape of :func:`plain` of its construct parse."""
    if isinstance(obj, Obj):
        _, prefix, fields = SCHEMA[obj.type]
        body = {}
        if prefix:
            body["command_id"] = obj.command_id
            body["response_required"] = obj.response_required
        for name, kind in fields:
            v = obj.__dict__[name]
            if kind == "t" and v is not None:
                v = {"cls": v[0], "message": v[1]}
            body[name] = as_plain(v)
        return ("obj", obj.type, body)
    if isinstance(obj, list):
        return [as_plain(x) for x in obj]
    return obj


# -- the client's marshaller --------------------------------------------------------------------


class ClientWriter:
    """Writes commands as the Java client's marshallers do. With ``cached`` (the default) every
    ``c`` field goes through a marshalling cache of ``size`` entries: equal objects share a slot
    (null takes one too), a field is written as a reference when found, else stored at the next
    slot (index -1 once the cache is full). ``cached=False`` writes the plain form."""

    def __init__(self, size: int, cached: bool = True) -> None:
        self.size = size
        self.cached = cached
        self.index: dict = {}

    def frame(self, obj: Obj) -> bytes:
        """The frame without its size prefix."""
        w = Writer()
        w.raw(bytes((obj.type,)))
        self._body(w, obj)
        return w.getvalue()

    def sized(self, obj: Obj) -> bytes:
        """The frame with its size prefix, as it goes on the wire."""
        body = self.frame(obj)
        return _I.pack(len(body)) + body

    def _body(self, w: Writer, obj: Obj) -> None:
        _, prefix, fields = SCHEMA[obj.type]
        if prefix:
            w.int(obj.command_id)
            w.bool(obj.response_required)
        for name, kind in fields:
            v = obj.__dict__[name]
            if kind == "c" and self.cached:
                key = repr(as_plain(v))
                if key in self.index:
                    w.bool(False)
                    w.short(self.index[key])
                    continue
                idx = len(self.index) if len(self.index) < self.size else -1
                if idx >= 0:
                    self.index[key] = idx
                w.bool(True)
                w.short(idx)
                self._nested(w, v)
            elif kind in ("o", "c"):
                self._nested(w, v)
            elif kind == "O":
                w.bool(v is not None)
                if v is not None:
                    w.short(len(v))
                    for x in v:
                        self._nested(w, x)
            elif kind == "t":
                w.bool(v is not None)
                if v is not None:
                    w.string(v[0])
                    w.string(v[1])
            else:
                {
                    "z": w.bool,
                    "b": w.byte,
                    "h": w.short,
                    "i": w.int,
                    "l": w.long,
                    "s": w.string,
                    "y": w.byteseq,
                }[kind](v)

    def _nested(self, w: Writer, v: Obj | None) -> None:
        w.bool(v is not None)
        if v is not None:
            w.raw(bytes((v.type,)))
            self._body(w, v)
