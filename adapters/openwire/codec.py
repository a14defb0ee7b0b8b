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

import struct

from .marshallers import (
    CDECODERS,
    CENCODERS,
    DECODERS,
    ENCODERS,
    OBJ_HEADER,
    SPECULATIVE,
    UNCACHED,
    write_object,
    write_string,
)
from .primitives import *  # noqa: F403  (one namespace for the wire format)
from .primitives import _H, _I, _Q
from .schema import *  # noqa: F403
from .schema import (
    BROKER_ID,
    CONNECTION_ID,
    CONSUMER_ID,
    DESTINATION_TYPES,
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

# The standard ack of the client's usual shape (see the speculative decoders), read without
# building any object: command id, response required, consumer id, transaction id, ack type,
# the last MessageId's broker sequence id. Checked against the decoders by the tests.
# Layout: type, commandId, responseRequired, then the cached fields destination, transactionId
# and consumerId as references (new flag 0, index), ackType, then firstMessageId and
# lastMessageId, each: notNull, type, textView null, ProducerId a reference (one int32, the
# _ID_HEAD, and its index), producerSequenceId, brokerSequenceId; then messageCount and
# poisonCause (null). Fields the session does not read are skipped (``x``).
_ACK_SHAPE = struct.Struct(">Bi?BHBHBHbIH16xIH8xq4xB")
_ACK_FRAME_SIZE = _ACK_SHAPE.size
_ID_HEAD = int.from_bytes(bytes((1, MESSAGE_ID, 0, 0)), "big")


def ack_fields(frame: bytes, uc: list) -> tuple | None:
    """The fields of a cached-form MessageAck that the session's common case reads, or None
    when the frame is not a MessageAck of that shape (then decode it)."""
    if len(frame) != _ACK_FRAME_SIZE:
        return None
    (
        t,
        cid,
        rr,
        dn,
        di,
        tn,
        ti,
        cn,
        ci,
        kind,
        first_head,
        fpi,
        last_head,
        lpi,
        last,
        poison,
    ) = _ACK_SHAPE.unpack_from(frame)
    # (the flags are compared as bytes: a flag byte other than 0 or 1 goes to the decoder)
    if (
        t != MESSAGE_ACK
        or dn
        or tn
        or cn
        or poison
        or first_head != _ID_HEAD
        or last_head != _ID_HEAD
    ):
        return None
    n = len(uc)  # (five comparisons: cheaper than max() of the five indexes)
    if di >= n or ti >= n or ci >= n or fpi >= n or lpi >= n:
        return None
    return cid, rr, uc[ci], uc[ti], kind, last


_OBJ_HEADER = OBJ_HEADER
_TYPE_BYTE = {t: bytes((t,)) for t in SCHEMA}


def encode_frame(obj: Obj, cached: bool = False) -> bytes:
    """One size-prefixed frame: int32 size, type byte, body (``cached``: the cached form)."""
    parts = [_TYPE_BYTE[obj.type]]
    (CENCODERS if cached else ENCODERS)[obj.type](obj, parts)
    body = b"".join(parts)
    return _I.pack(len(body)) + body


def dispatch_head(consumer_id: Obj | None, destination: Obj | None) -> bytes:
    """The constant start of every MessageDispatch to one consumer (for :func:`encode_dispatch`):
    type byte, commandId 0, responseRequired false, ConsumerId, Destination."""
    parts = [bytes((MESSAGE_DISPATCH,)), b"\x00\x00\x00\x00\x00"]
    write_object(consumer_id, parts, ENCODERS)
    write_object(destination, parts, ENCODERS)
    return b"".join(parts)


def dispatch_heads_cached(
    consumer_id: Obj | None, destination: Obj | None, slots: tuple[int, int] | None
) -> tuple[bytes, bytes]:
    """The MessageDispatch head of one consumer in the cached form: (first, later). ``first``
    stores the consumer id and destination in the receiver's cache ``slots``; ``later``
    refers to them. Without slots both write the fields as new with index -1."""
    pre = bytes((MESSAGE_DISPATCH,)) + b"\x00\x00\x00\x00\x00"
    if slots is None:
        parts = [pre, UNCACHED]
        write_object(consumer_id, parts, ENCODERS)
        parts.append(UNCACHED)
        write_object(destination, parts, ENCODERS)
        head = b"".join(parts)
        return head, head
    ci, di = _H.pack(slots[0]), _H.pack(slots[1])
    parts = [pre, b"\x01", ci]
    write_object(consumer_id, parts, ENCODERS)
    parts += [b"\x01", di]
    write_object(destination, parts, ENCODERS)
    return b"".join(parts), b"".join((pre, b"\x00", ci, b"\x00", di))


def encode_dispatch(
    head: bytes, message: Obj | None, redelivery_counter: int, cached: bool = False
) -> bytes:
    """Hand-written fast path for the hottest frame, MessageDispatch; equal to
    ``encode_frame(Obj(MESSAGE_DISPATCH, consumer_id=.., destination=.., message=..,
    redelivery_counter=..))`` (checked by the tests)."""
    parts = [head]
    if message is None:
        parts.append(b"\x00")
    else:
        parts.append(_OBJ_HEADER[message.type])
        (CENCODERS if cached else ENCODERS)[message.type](message, parts)
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
    (CENCODERS if cached else ENCODERS)[message.type](message, parts)
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
        dec = DECODERS.get(type_id)
        if dec is None:
            raise DecodeError(f"unknown data type {type_id}")
        obj, pos = dec(frame, 1, end, 0)
    else:
        spec = SPECULATIVE.get(type_id)
        got = spec(frame, 1, end, cache) if spec is not None else None
        if got is not None:
            obj, pos = got
        else:
            dec = CDECODERS.get(type_id)
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


_CNONE = b"\x01\xff\xff\x00"  # a null cached field, as new with index -1


def _cenc(v: Obj | None) -> bytes:
    """A cached field as new with index -1; memoized on id and destination objects, which
    are never changed once decoded (a cached one comes back as the same object)."""
    if v is None:
        return _CNONE
    try:
        return v.cenc
    except AttributeError:
        pass
    parts = [UNCACHED, _OBJ_HEADER[v.type]]
    CENCODERS[v.type](v, parts)
    b = b"".join(parts)
    if v.type in _VALUE_TYPES:
        v.cenc = b
    return b


def _reencode_head(m: Obj, mid: Obj, frame: bytes) -> tuple:
    """(the start of a cached-form message up to its MessageId's sequence ids, then what it
    was made of): its destination, transaction id, original destination, MessageId's
    producer id and text view, type byte. Shared by the messages of one producer to one
    destination; the entry holds the objects themselves, so their ids stay theirs."""
    key = (
        frame[0],
        id(m.producer_id),
        id(m.destination),
        id(m.transaction_id),
        id(m.original_destination),
        id(mid.producer_id),
        mid.text_view,
    )
    entry = _REENCODE_HEADS.get(key)
    if entry is None:
        parts = [
            b"\x01",
            frame[:1],
            b"\x00\x00\x00\x00\x00",
            _cenc(m.producer_id),
            _cenc(m.destination),
            _cenc(m.transaction_id),
            _cenc(m.original_destination),
            _MID_HEAD,
        ]
        write_string(mid.text_view, parts)
        parts.append(_cenc(mid.producer_id))
        if len(_REENCODE_HEADS) >= 4096:
            _REENCODE_HEADS.clear()
        entry = _REENCODE_HEADS[key] = (
            b"".join(parts),
            m.destination,
            m.transaction_id,
            m.original_destination,
            mid.producer_id,
            mid.text_view,
            frame[0],
            m.producer_id,
        )
    return entry


_VALUE_TYPES = DESTINATION_TYPES | {CONNECTION_ID, SESSION_ID, CONSUMER_ID, PRODUCER_ID, BROKER_ID}
_MID_HEAD = _OBJ_HEADER[MESSAGE_ID]
_QQ = struct.Struct(">qq")
_REENCODE_HEADS: dict[tuple, tuple] = {}


def reencode_message(m: Obj, broker_sequence_id: int, cached: bool = False) -> bytes | None:
    """The message a client sent, as a nested object for :func:`encode_dispatch_raw`, taken
    from its frame instead of encoded again: commandId and responseRequired zeroed and the
    MessageId's broker sequence id set; ``cached`` gives the cached form (whatever the form
    of the frame). None when ``m`` was not decoded from a frame or has no MessageId, or when
    the forms differ and it carries a data structure."""
    try:
        frame, mark = m.raw, m.mark
    except AttributeError:  # not decoded from a frame
        return None
    mid = m.message_id
    if frame is None or mid is None:
        return None
    if not cached and mark is not None:
        # a plain frame into the plain form: one slice around the broker sequence id
        return b"".join(
            (
                b"\x01",
                frame[:1],
                b"\x00\x00\x00\x00\x00",
                frame[6 : mark - 8],
                _Q.pack(broker_sequence_id),
                frame[mark:],
            )
        )
    if m.data_structure is not None:  # may hold cached fields: not the same in both forms
        return None
    m1, m2, m3 = m.cmark
    if cached and mark is None:
        # A cached-form frame into the cached form. Its ids and destination are the objects
        # of the connection's unmarshalling cache, the same for every message of a producer
        # to a destination, and so is everything up to the MessageId's sequence ids: built
        # once (_reencode_head). The head of the producer's previous message is tried first
        # (kept on its producer id): identity checks instead of a key of ids to hash.
        pid = m.producer_id
        try:
            entry = pid.rehead
        except AttributeError:  # (none yet, or no producer id)
            entry = None
        if (
            entry is None
            or entry[1] is not m.destination
            or entry[2] is not m.transaction_id
            or entry[3] is not m.original_destination
            or entry[4] is not mid.producer_id
            or entry[5] != mid.text_view
            or entry[6] != frame[0]
        ):
            entry = _reencode_head(m, mid, frame)
            if pid is not None:
                pid.rehead = entry[:7]  # (without the producer id: no reference cycle)
        otx, tcid = m.original_transaction_id, m.target_consumer_id
        return b"".join(
            (
                entry[0],
                _QQ.pack(mid.producer_sequence_id, broker_sequence_id),
                _CNONE if otx is None else _cenc(otx),
                frame[m1:m2],
                _CNONE if tcid is None else _cenc(tcid),
                frame[m3:],
            )
        )
    if cached:
        enc = _cenc
        mparts = [_MID_HEAD]
        write_string(mid.text_view, mparts)
        mparts.append(enc(mid.producer_id))
    else:

        def enc(v: Obj | None) -> bytes:
            if v is None:
                return b"\x00"
            parts = [_OBJ_HEADER[v.type]]
            ENCODERS[v.type](v, parts)
            return b"".join(parts)

        mparts = [_MID_HEAD]
        write_string(mid.text_view, mparts)
        mparts.append(enc(mid.producer_id))
    mparts.append(_QQ.pack(mid.producer_sequence_id, broker_sequence_id))
    return b"".join(
        (
            b"\x01",
            frame[:1],
            b"\x00\x00\x00\x00\x00",
            enc(m.producer_id),
            enc(m.destination),
            enc(m.transaction_id),
            enc(m.original_destination),
            *mparts,
            enc(m.original_transaction_id),
            frame[m1:m2],
            enc(m.target_consumer_id),
            frame[m3:],
        )
    )
