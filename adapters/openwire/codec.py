"""OpenWire (ActiveMQ 5.x, protocol version 9–12) loose encoding, sans I/O: the decoders and
encoders of every command, in the plain form and the cached form, and the fast paths of the
hottest frames.

The broker always negotiates loose encoding with stack traces off, so only the loose form
exists here. The wire format is described once, by the table in :mod:`.schema`; the fixed
layouts (frame header, WireFormatInfo) are ``construct`` declarations in :mod:`.primitives`.
This module is the one namespace of the wire format: it re-exports both.

The marshalling cache (``CacheEnabled``) changes only the ``c`` fields: each becomes
``bool new, int16 index`` followed, when new, by the nested object, which the receiver stores
at ``index`` of its unmarshalling cache (index -1: not stored); a reference (``new`` false)
names an index stored earlier. Without the cache a ``c`` field is exactly an ``o`` field. The
decoders of the cached form (``decode_command(frame, cache)``) check every index against the
negotiated cache size; the encoders of the cached form (``cached=True``) write every ``c`` field
as new with index -1 (valid for any receiver, shareable between connections), except the
per-consumer MessageDispatch head (:func:`dispatch_heads_cached`), whose consumer id and
destination are stored once in slots the connection allocates.

Every length is checked against what remains of the frame before anything is allocated, and
nesting is capped at :data:`MAX_NESTING`, so a client controls neither allocation sizes nor
recursion depth.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

from .primitives import *  # noqa: F403  (one namespace for the wire format)
from .primitives import _H, _I, _Q, _UH, decode_mutf8, encode_mutf8
from .schema import *  # noqa: F403
from .schema import (
    BLOB_MESSAGE,
    BROKER_ID,
    CONNECTION_ID,
    CONSUMER_ID,
    DESTINATION_TYPES,
    MAX_NESTING,
    MESSAGE_ACK,
    MESSAGE_DISPATCH,
    MESSAGE_ID,
    MESSAGE_TYPES,
    PRODUCER_ID,
    RESPONSE,
    SCHEMA,
    SESSION_ID,
    WIREFORMAT_INFO,
    DecodeError,
    Obj,
)

# (consecutive fixed-width fields read/written with a single struct call). The tests check
# them against the interpreter above and the construct declarations below.

_FIXED = {"z": "?", "b": "b", "h": "h", "i": "i", "l": "q"}
_trunc = "truncated"


def _rs(data: bytes, pos: int, end: int) -> tuple[str | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 3 > end:
        raise DecodeError(_trunc)
    n = (data[pos + 1] << 8) | data[pos + 2]
    pos += 3
    if pos + n > end:
        raise DecodeError(f"string length {n} exceeds the frame")
    raw = data[pos : pos + n]
    return (raw.decode("ascii") if raw.isascii() else decode_mutf8(raw)), pos + n


def _ry(data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 5 > end:
        raise DecodeError(_trunc)
    n = _I.unpack_from(data, pos + 1)[0]
    pos += 5
    if n < 0 or pos + n > end:
        raise DecodeError(f"length {n} exceeds the frame")
    return data[pos : pos + n], pos + n


def _ro(data: bytes, pos: int, end: int, depth: int) -> tuple[Obj | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 2 > end:
        raise DecodeError(_trunc)
    dec = _DECODERS.get(data[pos + 1])
    if dec is None:
        raise DecodeError(f"unknown data type {data[pos + 1]}")
    if depth > MAX_NESTING:
        raise DecodeError("objects nested too deeply")
    return dec(data, pos + 2, end, depth)


def _rO(data: bytes, pos: int, end: int, depth: int) -> tuple[list | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 3 > end:
        raise DecodeError(_trunc)
    n = _H.unpack_from(data, pos + 1)[0]
    pos += 3
    if n < 0 or n > end - pos:
        raise DecodeError(f"array count {n} exceeds the frame")
    out = []
    for _ in range(n):
        v, pos = _ro(data, pos, end, depth)
        out.append(v)
    return out, pos


def _rt(data: bytes, pos: int, end: int) -> tuple[tuple | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    cls, pos = _rs(data, pos + 1, end)
    msg, pos = _rs(data, pos, end)
    return (cls, msg), pos


def _ws(v: str | None, parts: list) -> None:
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


def _wy(v: bytes | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01" + _I.pack(len(v)))
        parts.append(v)


def _wo(v: Obj | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(_OBJ_HEADER[v.type])
        _ENCODERS[v.type](v, parts)


def _wO(v: list | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01" + _H.pack(len(v)))
        for x in v:
            _wo(x, parts)


def _wt(v: tuple | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01")
        _ws(v[0], parts)
        _ws(v[1], parts)


def _runs(fields: tuple) -> list:
    """Group consecutive fixed-width fields: [(kind, [names])]."""
    out: list = []
    for name, kind in fields:
        if kind in _FIXED and out and out[-1][0] == "fixed":
            out[-1][1].append((name, kind))
        elif kind in _FIXED:
            out.append(("fixed", [(name, kind)]))
        else:
            out.append((kind, [(name, kind)]))
    return out


def _cro(data: bytes, pos: int, end: int, depth: int, uc: list) -> tuple[Obj | None, int]:
    """:func:`_ro` in the cached form (nested objects may hold cached fields)."""
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 2 > end:
        raise DecodeError(_trunc)
    dec = _CDECODERS.get(data[pos + 1])
    if dec is None:
        raise DecodeError(f"unknown data type {data[pos + 1]}")
    if depth > MAX_NESTING:
        raise DecodeError("objects nested too deeply")
    return dec(data, pos + 2, end, depth, uc)


def _crO(data: bytes, pos: int, end: int, depth: int, uc: list) -> tuple[list | None, int]:
    if pos >= end:
        raise DecodeError(_trunc)
    if not data[pos]:
        return None, pos + 1
    if pos + 3 > end:
        raise DecodeError(_trunc)
    n = _H.unpack_from(data, pos + 1)[0]
    pos += 3
    if n < 0 or n > end - pos:
        raise DecodeError(f"array count {n} exceeds the frame")
    out = []
    for _ in range(n):
        v, pos = _cro(data, pos, end, depth, uc)
        out.append(v)
    return out, pos


def _cwo(v: Obj | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(_OBJ_HEADER[v.type])
        _CENCODERS[v.type](v, parts)


def _cwO(v: list | None, parts: list) -> None:
    if v is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01" + _H.pack(len(v)))
        for x in v:
            _cwo(x, parts)


_UNCACHED = b"\x01\xff\xff"  # a cached field written as new, index -1 (receiver keeps nothing)


def _generate(cached: bool) -> tuple[dict, dict]:
    """Decoders and encoders of every type, for the plain form or the cached form."""
    env: dict[str, Any] = {
        "Obj": Obj, "DecodeError": DecodeError, "_rs": _rs, "_ry": _ry, "_ro": _ro,
        "_rO": _rO, "_rt": _rt, "_ws": _ws, "_wy": _wy, "_wo": _wo, "_wO": _wO, "_wt": _wt,
        "_crO": _crO, "_cwO": _cwO,
        "_new": object.__new__, "_PREFIX": struct.Struct(">i?"),
        "_UNCACHED": _UNCACHED,
    }
    src: list[str] = []
    x = "c" if cached else ""  # function name prefix
    uc = ", uc" if cached else ""
    for t, (_, prefix, fields) in SCHEMA.items():
        dec = [f"def _{x}d{t}(data, pos, end, depth{uc}):", "    o = _new(Obj)",
               f"    o.type = {t}"]
        enc = [f"def _{x}e{t}(o, parts):", "    d = o.__dict__"]
        if prefix:
            dec += ["    if pos + 5 > end:", "        raise DecodeError('truncated')",
                    "    o.command_id, o.response_required = _PREFIX.unpack_from(data, pos)",
                    "    pos += 5"]
            enc += ["    parts.append(_PREFIX.pack(o.command_id, o.response_required))"]
        else:
            dec += ["    o.command_id = 0", "    o.response_required = False"]
        names = []
        for i, (kind, group) in enumerate(_runs(fields)):
            if kind == "fixed":
                fmt = ">" + "".join(_FIXED[k] for _, k in group)
                st = struct.Struct(fmt)
                env[f"_S{t}_{i}"] = st
                vs = [f"v_{n}" for n, _ in group]
                dec += [f"    if pos + {st.size} > end:", "        raise DecodeError('truncated')",
                        f"    {', '.join(vs)}{',' if len(vs) == 1 else ''} = "
                        f"_S{t}_{i}.unpack_from(data, pos)",
                        f"    pos += {st.size}"]
                args = ", ".join(
                    f"d['{n}']" if k == "z" else f"d['{n}'] or 0" for n, k in group
                )
                enc.append(f"    parts.append(_S{t}_{i}.pack({args}))")
                names += [n for n, _ in group]
                continue
            n = group[0][0]
            names.append(n)
            if t in MESSAGE_TYPES and n == "target_consumer_id":
                dec.append("    m2 = pos")
            if kind == "s":  # inlined _rs / _ws
                dec += [
                    "    if pos >= end:", "        raise DecodeError('truncated')",
                    "    if data[pos]:",
                    "        if pos + 3 > end:", "            raise DecodeError('truncated')",
                    "        n = (data[pos + 1] << 8) | data[pos + 2]",
                    "        pos += 3",
                    "        if pos + n > end:",
                    "            raise DecodeError(f'string length {n} exceeds the frame')",
                    "        raw = data[pos : pos + n]",
                    "        pos += n",
                    f"        v_{n} = raw.decode('ascii') if raw.isascii() else _mutf8(raw)",
                    "    else:", f"        v_{n} = None", "        pos += 1",
                ]
                enc += [
                    f"    v = d['{n}']",
                    "    if v is None:", "        parts.append(b'\\x00')",
                    "    elif v.isascii() and '\\x00' not in v:",
                    "        parts.append(b'\\x01' + _UHpack(len(v)) + v.encode('ascii'))",
                    "    else:", "        _ws(v, parts)",
                ]
            elif kind == "o" or kind == "c":  # inlined _ro / _wo
                nested = [
                    "if pos >= end:", "    raise DecodeError('truncated')",
                    "if data[pos]:",
                    "    if pos + 2 > end:", "        raise DecodeError('truncated')",
                    "    dec = _DECODERS_get(data[pos + 1])",
                    "    if dec is None:",
                    "        raise DecodeError(f'unknown data type {data[pos + 1]}')",
                    f"    if depth + 1 > {MAX_NESTING}:",
                    "        raise DecodeError('objects nested too deeply')",
                    f"    v_{n}, pos = dec(data, pos + 2, end, depth + 1{uc})",
                    "else:", f"    v_{n} = None", "    pos += 1",
                ]
                if kind == "c" and cached:
                    # the index as unsigned: 0xFFFF is -1 (not stored); any other
                    # index of 0x8000 and up is negative, beyond every cache (at most 32767)
                    dec += [
                        "    if pos + 3 > end:", "        raise DecodeError('truncated')",
                        "    idx = (data[pos + 1] << 8) | data[pos + 2]",
                        "    if data[pos]:",
                        "        pos += 3",
                    ] + ["        " + ln for ln in nested] + [
                        "        if idx != 0xFFFF:",
                        "            if idx >= len(uc):",
                        "                raise DecodeError(f'cache index {idx} out of range')",
                        f"            uc[idx] = v_{n}",
                        "    else:",
                        "        pos += 3",
                        "        if idx >= len(uc):",
                        "            raise DecodeError(f'cache index {idx} out of range')",
                        f"        v_{n} = uc[idx]",
                    ]
                    enc += [
                        f"    v = d['{n}']",
                        "    if v is None:", "        parts.append(b'\\x01\\xff\\xff\\x00')",
                        "    else:", "        parts.append(_UNCACHED + _OBJ_HEADER[v.type])",
                        "        _ENCODERS[v.type](v, parts)",
                    ]
                else:
                    dec += ["    " + ln for ln in nested]
                    enc += [
                        f"    v = d['{n}']",
                        "    if v is None:", "        parts.append(b'\\x00')",
                        "    else:", "        parts.append(_OBJ_HEADER[v.type])",
                        "        _ENCODERS[v.type](v, parts)",
                    ]
                if t in MESSAGE_TYPES and n == "message_id":
                    dec.append("    o.mark = pos")
                if t in MESSAGE_TYPES and n == "original_transaction_id":
                    dec.append("    m1 = pos")
                if t in MESSAGE_TYPES and n == "target_consumer_id":
                    dec.append("    o.cmark = (m1, m2, pos)")
            elif kind == "O":
                dec.append(f"    v_{n}, pos = _{x}rO(data, pos, end, depth + 1{uc})")
                enc.append(f"    _{x}wO(d['{n}'], parts)")
            else:
                dec.append(f"    v_{n}, pos = _r{kind}(data, pos, end)")
                enc.append(f"    _w{kind}(d['{n}'], parts)")
        if len(names) > 16:  # see _generate_speculative: a presized copy, then the values
            env[f"_TMPL{t}"] = dict.fromkeys(names)
            dec.append(f"    d = _TMPL{t}.copy()")
            dec += [f"    d['{n}'] = v_{n}" for n in names]
            dec.append("    o.__dict__ = d")
        else:
            dec.append("    o.__dict__ = {" + ", ".join(f"'{n}': v_{n}" for n in names) + "}")
        dec.append("    return o, pos")
        if len(enc) == 2 and not prefix:
            enc.append("    pass")
        src += dec + [""] + enc + [""]
    exec(compile("\n".join(src), f"<openwire codec{' cached' if cached else ''}>", "exec"), env)
    decoders = {t: env[f"_{x}d{t}"] for t in SCHEMA}
    encoders = {t: env[f"_{x}e{t}"] for t in SCHEMA}
    env.update(_DECODERS_get=decoders.get, _ENCODERS=encoders, _OBJ_HEADER=_OBJ_HEADER,
               _mutf8=decode_mutf8, _UHpack=_UH.pack)
    return decoders, encoders


# -- speculative decoders (cached form) ---------------------------------------------------------
# The JMS client writes its hottest commands (messages and their acks) in one shape: cached
# fields as references, optional strings, objects and arrays absent, only the MessageIds
# present. For that shape everything but the byte arrays is a few fixed layouts: one struct
# call each, then one test that every flag holds what the shape assumes and one that every
# cache index is in range. Anything else, malformed frames included, is left to the decoders
# above (the speculative decoder returns None); the tests check both give the same object.

_SPEC_PRESENT = {MESSAGE_ACK: ("first_message_id", "last_message_id")}
_SPEC_PRESENT.update({t: ("message_id",) for t in MESSAGE_TYPES if t != BLOB_MESSAGE})


class _SpecBuilder:
    """Source of one speculative decoder: fixed layouts gathered field by field."""

    def __init__(self, t: int, env: dict) -> None:
        self.t = t
        self.env = env
        self.body: list[str] = ["    nuc = len(uc)"]
        self.run: list[tuple[str, str]] = []  # (struct code, variable) of the current layout
        self.checks: list[str] = []  # what the flags of the layout must hold
        self.idxs: list[str] = []  # its cache indexes
        self.after: list[str] = []  # lines run once it is unpacked (pos still at its start)
        self._names = itertools.count()

    def new(self) -> str:
        return f"x{next(self._names)}"

    def offset(self) -> int:
        """Where the next field starts, from the start of the current layout."""
        return struct.calcsize(">" + "".join(f for f, _ in self.run))

    def fixed(self, code: str) -> str:
        v = self.new()
        self.run.append((code, v))
        return v

    def ref(self) -> str:
        """A cached field written as a reference; the expression of its value."""
        f, i = self.new(), self.new()
        self.run.extend((("?", f), ("H", i)))
        self.checks.append(f"not {f}")
        self.idxs.append(i)
        return f"uc[{i}]"

    def absent(self) -> str:
        """An optional string, object, array or throwable left out."""
        f = self.fixed("?")
        self.checks.append(f"not {f}")
        return "None"

    def flush(self) -> None:
        run = self.run
        if not run:
            return
        st = struct.Struct(">" + "".join(f for f, _ in run))
        name = f"_SS{self.t}_{len(self.env)}"
        self.env[name] = st
        vs = [v for _, v in run]
        b = self.body
        b += [f"    if pos + {st.size} > end:", "        return None",
              f"    {', '.join(vs)}{',' if len(vs) == 1 else ''} = "
              f"{name}.unpack_from(data, pos)"]
        if self.checks:
            b += [f"    if not ({' and '.join(self.checks)}):", "        return None"]
        if self.idxs:
            top = f"max({', '.join(self.idxs)})" if len(self.idxs) > 1 else self.idxs[0]
            b += [f"    if {top} >= nuc:", "        return None"]
        b += ["    " + ln for ln in self.after]
        b.append(f"    pos += {st.size}")
        run.clear()
        self.checks.clear()
        self.idxs.clear()
        self.after.clear()

    def bytes_field(self) -> str:
        self.flush()
        v = self.new()
        self.body += [
            "    if pos >= end:", "        return None",
            "    if data[pos]:",
            "        if pos + 5 > end:", "            return None",
            "        n = _I.unpack_from(data, pos + 1)[0]",
            "        pos += 5",
            "        if n < 0 or pos + n > end:", "            return None",
            f"        {v} = data[pos : pos + n]",
            "        pos += n",
            "    else:", f"        {v} = None", "        pos += 1",
        ]
        return v

    def message_id(self) -> str:
        """A present MessageId without text view."""
        p, ty = self.new(), self.new()
        self.run.extend((("?", p), ("B", ty)))
        self.checks.extend((p, f"{ty} == {MESSAGE_ID}"))
        self.absent()
        pid = self.ref()
        seq, bseq = self.fixed("q"), self.fixed("q")
        mid = self.new()
        self.after += [
            f"{mid} = _new(Obj)", f"{mid}.type = {MESSAGE_ID}",
            f"{mid}.command_id = 0", f"{mid}.response_required = False",
            f"{mid}.__dict__ = {{'text_view': None, 'producer_id': {pid}, "
            f"'producer_sequence_id': {seq}, 'broker_sequence_id': {bseq}}}",
        ]
        return mid


def _generate_speculative() -> dict:
    env: dict[str, Any] = {"Obj": Obj, "_new": object.__new__, "_I": _I}
    src: list[str] = []
    for t, present in _SPEC_PRESENT.items():
        _, prefix, fields = SCHEMA[t]
        sb = _SpecBuilder(t, env)
        message = t in MESSAGE_TYPES
        values: dict[str, str] = {}
        if prefix:
            sb.run.extend((("i", "cid"), ("?", "rr")))
        for name, kind in fields:
            if message and name == "target_consumer_id":
                sb.after.append(f"m2 = pos + {sb.offset()}")
            if kind in _FIXED:
                values[name] = sb.fixed(_FIXED[kind])
            elif kind == "c":
                values[name] = sb.ref()
            elif kind == "o" and name in present:
                values[name] = sb.message_id()
            elif kind == "y":
                values[name] = sb.bytes_field()
            else:  # s, o, O, t
                values[name] = sb.absent()
            if message and name == "original_transaction_id":
                sb.after.append(f"m1 = pos + {sb.offset()}")
            if message and name == "target_consumer_id":
                sb.after.append(f"m3 = pos + {sb.offset()}")
        sb.flush()
        tail = ["    o = _new(Obj)", f"    o.type = {t}"]
        if prefix:
            tail += ["    o.command_id = cid", "    o.response_required = rr"]
        else:
            tail += ["    o.command_id = 0", "    o.response_required = False"]
        if message:
            tail += ["    o.mark = None", "    o.cmark = (m1, m2, m3)"]
        if len(values) > 16:
            # a copy of a dict of the absent fields, then the rest: a large dict display costs
            # twice that (about 1 against 0.55 us for thirty keys, measured)
            env[f"_TMPL{t}"] = {n: None for n, e in values.items() if e == "None"}
            tail.append(f"    d = _TMPL{t}.copy()")
            tail += [f"    d['{n}'] = {e}" for n, e in values.items() if e != "None"]
            tail.append("    o.__dict__ = d")
        else:
            tail.append("    o.__dict__ = {" + ", ".join(f"'{n}': {e}" for n, e in values.items())
                        + "}")
        tail.append("    return o, pos")
        src += [f"def _sd{t}(data, pos, end, uc):"] + sb.body + tail + [""]
    exec(compile("\n".join(src), "<openwire codec speculative>", "exec"), env)
    return {t: env[f"_sd{t}"] for t in _SPEC_PRESENT}


# The standard ack of the client's usual shape (see the speculative decoders), read without
# building any object: command id, response required, consumer id, transaction id, ack type,
# the last MessageId's broker sequence id. Checked against the decoders by the tests.
_ACK_SHAPE = struct.Struct(">i??H?H?Hb?B??Hqq?B??Hqqi?")
_ACK_FRAME_SIZE = 1 + _ACK_SHAPE.size


def ack_fields(frame: bytes, uc: list) -> tuple | None:
    """The fields of a cached-form MessageAck that the session's common case reads, or None
    when the frame is not a MessageAck of that shape (then decode it)."""
    if len(frame) != _ACK_FRAME_SIZE or frame[0] != MESSAGE_ACK:
        return None
    (cid, rr, dn, di, tn, ti, cn, ci, kind, fp, ft, ftv, fpn, fpi, _, _, lp, lt, ltv, lpn, lpi,
     _, last, _, poison) = _ACK_SHAPE.unpack_from(frame, 1)
    if (dn or tn or cn or not fp or ft != MESSAGE_ID or ftv or fpn or not lp
            or lt != MESSAGE_ID or ltv or lpn or poison):
        return None
    if max(di, ti, ci, fpi, lpi) >= len(uc):
        return None
    return cid, rr, uc[ci], uc[ti], kind, last


_OBJ_HEADER = {t: bytes((1, t)) for t in SCHEMA}
_DECODERS, _ENCODERS = _generate(False)
_CDECODERS, _CENCODERS = _generate(True)
_SPECULATIVE = _generate_speculative()
_TYPE_BYTE = {t: bytes((t,)) for t in SCHEMA}


def encode_frame(obj: Obj, cached: bool = False) -> bytes:
    """One size-prefixed frame: int32 size, type byte, body (``cached``: the cached form)."""
    parts = [_TYPE_BYTE[obj.type]]
    (_CENCODERS if cached else _ENCODERS)[obj.type](obj, parts)
    body = b"".join(parts)
    return _I.pack(len(body)) + body


def dispatch_head(consumer_id: Obj | None, destination: Obj | None) -> bytes:
    """The constant start of every MessageDispatch to one consumer (for :func:`encode_dispatch`):
    type byte, commandId 0, responseRequired false, ConsumerId, Destination."""
    parts = [bytes((MESSAGE_DISPATCH,)), b"\x00\x00\x00\x00\x00"]
    _wo(consumer_id, parts)
    _wo(destination, parts)
    return b"".join(parts)


def dispatch_heads_cached(consumer_id: Obj | None, destination: Obj | None,
                          slots: tuple[int, int] | None) -> tuple[bytes, bytes]:
    """The MessageDispatch head of one consumer in the cached form: (first, later). ``first``
    stores the consumer id and destination in the receiver's cache ``slots``; ``later``
    refers to them. Without slots both write the fields as new with index -1."""
    pre = bytes((MESSAGE_DISPATCH,)) + b"\x00\x00\x00\x00\x00"
    if slots is None:
        parts = [pre, _UNCACHED]
        _wo(consumer_id, parts)
        parts.append(_UNCACHED)
        _wo(destination, parts)
        head = b"".join(parts)
        return head, head
    ci, di = _H.pack(slots[0]), _H.pack(slots[1])
    parts = [pre, b"\x01", ci]
    _wo(consumer_id, parts)
    parts += [b"\x01", di]
    _wo(destination, parts)
    return b"".join(parts), b"".join((pre, b"\x00", ci, b"\x00", di))


def encode_dispatch(head: bytes, message: Obj | None, redelivery_counter: int,
                    cached: bool = False) -> bytes:
    """Hand-written fast path for the hottest frame, MessageDispatch; equal to
    ``encode_frame(Obj(MESSAGE_DISPATCH, consumer_id=.., destination=.., message=..,
    redelivery_counter=..))`` (checked by the tests)."""
    parts = [head]
    if message is None:
        parts.append(b"\x00")
    else:
        parts.append(_OBJ_HEADER[message.type])
        (_CENCODERS if cached else _ENCODERS)[message.type](message, parts)
    parts.append(_I.pack(redelivery_counter))
    body = b"".join(parts)
    return _I.pack(len(body)) + body


_RESPONSE_FRAME = struct.Struct(">iBi?i")


def encode_response(correlation_id: int) -> bytes:
    """Hand-written fast path for a plain Response (the answer to every synchronous send);
    equal to ``encode_frame(Obj(RESPONSE, correlation_id=..))`` in both forms (checked by the
    tests)."""
    return _RESPONSE_FRAME.pack(10, RESPONSE, 0, False, correlation_id)


def encode_message(message: Obj, cached: bool = False) -> bytes:
    """A message as a present nested object (flag, type, body), for :func:`encode_dispatch_raw`."""
    parts = [_OBJ_HEADER[message.type]]
    (_CENCODERS if cached else _ENCODERS)[message.type](message, parts)
    return b"".join(parts)


def encode_dispatch_raw(head: bytes, message: bytes, redelivery_counter: int) -> bytes:
    """:func:`encode_dispatch` with the message already encoded by :func:`encode_message`."""
    n = len(head) + len(message) + 4
    return b"".join((_I.pack(n), head, message, _I.pack(redelivery_counter)))


def decode_command(frame: bytes, cache: list | None = None) -> Obj:
    """A frame without its size prefix: type byte, body (must consume it exactly). With
    ``cache`` (the connection's unmarshalling cache, a list of the negotiated size) the frame
    is in the cached form."""
    if not frame:
        raise DecodeError("empty frame")
    type_id = frame[0]
    if type_id == WIREFORMAT_INFO:
        raise DecodeError("unexpected WireFormatInfo")
    end = len(frame)
    if cache is None:
        dec = _DECODERS.get(type_id)
        if dec is None:
            raise DecodeError(f"unknown data type {type_id}")
        obj, pos = dec(frame, 1, end, 0)
    else:
        spec = _SPECULATIVE.get(type_id)
        got = spec(frame, 1, end, cache) if spec is not None else None
        if got is not None:
            obj, pos = got
        else:
            dec = _CDECODERS.get(type_id)
            if dec is None:
                raise DecodeError(f"unknown data type {type_id}")
            obj, pos = dec(frame, 1, end, 0, cache)
            if type_id in MESSAGE_TYPES:
                obj.mark = None  # the cached form: no single slice makes the plain form
    if pos != end:
        raise DecodeError(f"{end - pos} bytes left over after {obj.name}")
    if type_id in MESSAGE_TYPES:
        obj.raw = frame
    return obj


def _cenc(v: Obj | None) -> bytes:
    """A cached field as new with index -1; memoized on id and destination objects, which
    are never changed once decoded (a cached one comes back as the same object)."""
    if v is None:
        return b"\x01\xff\xff\x00"
    try:
        return v.cenc
    except AttributeError:
        pass
    parts = [_UNCACHED, _OBJ_HEADER[v.type]]
    _CENCODERS[v.type](v, parts)
    b = b"".join(parts)
    if v.type in _VALUE_TYPES:
        v.cenc = b
    return b


_VALUE_TYPES = DESTINATION_TYPES | {CONNECTION_ID, SESSION_ID, CONSUMER_ID, PRODUCER_ID,
                                    BROKER_ID}
_MID_HEAD = _OBJ_HEADER[MESSAGE_ID]
_QQ = struct.Struct(">qq")
_REENCODE_HEADS: dict[tuple, tuple] = {}


def reencode_message(m: Obj, broker_sequence_id: int, cached: bool = False) -> bytes | None:
    """The message a client sent, as a nested object for :func:`encode_dispatch_raw`, taken
    from its frame instead of encoded again: commandId and responseRequired zeroed and the
    MessageId's broker sequence id set; ``cached`` gives the cached form (whatever the form
    of the frame). None when ``m`` was not decoded from a frame or has no MessageId, or when
    the forms differ and it carries a data structure."""
    frame = getattr(m, "raw", None)
    mid = m.message_id
    if frame is None or mid is None:
        return None
    mark = getattr(m, "mark", None)
    if not cached and mark is not None:
        # a plain frame into the plain form: one slice around the broker sequence id
        return b"".join((b"\x01", frame[:1], b"\x00\x00\x00\x00\x00", frame[6 : mark - 8],
                         _Q.pack(broker_sequence_id), frame[mark:]))
    if m.data_structure is not None:  # may hold cached fields: not the same in both forms
        return None
    m1, m2, m3 = m.cmark
    if cached and mark is None:
        # A cached-form frame into the cached form. Its ids and destination are the objects
        # of the connection's unmarshalling cache, the same for every message of a producer
        # to a destination, and so is everything up to the MessageId's sequence ids: built
        # once (the entry holds the objects themselves, so their ids stay theirs).
        key = (frame[0], id(m.producer_id), id(m.destination), id(m.transaction_id),
               id(m.original_destination), id(mid.producer_id), mid.text_view)
        entry = _REENCODE_HEADS.get(key)
        if entry is None:
            parts = [b"\x01", frame[:1], b"\x00\x00\x00\x00\x00", _cenc(m.producer_id),
                     _cenc(m.destination), _cenc(m.transaction_id),
                     _cenc(m.original_destination), _MID_HEAD]
            _ws(mid.text_view, parts)
            parts.append(_cenc(mid.producer_id))
            if len(_REENCODE_HEADS) >= 4096:
                _REENCODE_HEADS.clear()
            entry = _REENCODE_HEADS[key] = (b"".join(parts), m.producer_id, m.destination,
                                            m.transaction_id, m.original_destination,
                                            mid.producer_id)
        return b"".join((entry[0], _QQ.pack(mid.producer_sequence_id, broker_sequence_id),
                         _cenc(m.original_transaction_id), frame[m1:m2],
                         _cenc(m.target_consumer_id), frame[m3:]))
    if cached:
        enc = _cenc
        mparts = [_MID_HEAD]
        _ws(mid.text_view, mparts)
        mparts.append(enc(mid.producer_id))
    else:
        def enc(v: Obj | None) -> bytes:
            if v is None:
                return b"\x00"
            parts = [_OBJ_HEADER[v.type]]
            _ENCODERS[v.type](v, parts)
            return b"".join(parts)

        mparts = [_MID_HEAD]
        _ws(mid.text_view, mparts)
        mparts.append(enc(mid.producer_id))
    mparts.append(_QQ.pack(mid.producer_sequence_id, broker_sequence_id))
    return b"".join((b"\x01", frame[:1], b"\x00\x00\x00\x00\x00", enc(m.producer_id),
                     enc(m.destination), enc(m.transaction_id), enc(m.original_destination),
                     *mparts, enc(m.original_transaction_id), frame[m1:m2],
                     enc(m.target_consumer_id), frame[m3:]))

