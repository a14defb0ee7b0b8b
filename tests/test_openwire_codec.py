"""OpenWire codec: the compiled marshaller checked against the oracles of
tests/openwire_oracle.py (a table interpreter, construct declarations), round trips,
primitive maps, modified UTF-8, and a decoder fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openwire_oracle import (
    ClientWriter,
    as_plain,
    construct_for,
    decode_command_generic,
    encode_frame_generic,
    plain,
)

from polymq.adapters.openwire import codec as c
from polymq.adapters.openwire.codec import Obj
from polymq.adapters.openwire.schema import DECLARATIONS, SCHEMA, fields_of

ascii_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
opt_text = st.none() | ascii_text
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)


def producer_ids():
    return st.builds(
        lambda cn, v, s: Obj(c.PRODUCER_ID, connection_id=cn, value=v, session_id=s),
        opt_text,
        i64,
        i64,
    )


def dests():
    return st.builds(
        lambda t, n: Obj(t, physical_name=n), st.sampled_from(sorted(c.DESTINATION_TYPES)), opt_text
    )


def message_ids():
    return st.builds(
        lambda tv, p, ps, bs: Obj(
            c.MESSAGE_ID,
            text_view=tv,
            producer_id=p,
            producer_sequence_id=ps,
            broker_sequence_id=bs,
        ),
        opt_text,
        st.none() | producer_ids(),
        i64,
        i64,
    )


def messages():
    return st.builds(
        lambda t, cid, rr, p, d, mid, corr, pers, exp, pri, rt, ts, jt, content, props, comp, red: (
            Obj(
                t,
                command_id=cid,
                response_required=rr,
                producer_id=p,
                destination=d,
                message_id=mid,
                correlation_id=corr,
                persistent=pers,
                expiration=exp,
                priority=pri,
                reply_to=rt,
                timestamp=ts,
                jms_type=jt,
                content=content,
                marshalled_properties=props,
                compressed=comp,
                redelivery_counter=red,
            )
        ),
        st.sampled_from([c.MESSAGE, c.BYTES_MESSAGE, c.TEXT_MESSAGE, c.MAP_MESSAGE]),
        i32,
        st.booleans(),
        st.none() | producer_ids(),
        st.none() | dests(),
        st.none() | message_ids(),
        opt_text,
        st.booleans(),
        i64,
        st.integers(-128, 127),
        st.none() | dests(),
        i64,
        opt_text,
        st.none() | st.binary(max_size=64),
        st.none() | st.binary(max_size=16),
        st.booleans(),
        i32,
    )


def acks():
    return st.builds(
        lambda d, cid, t, f, last, n, cause: Obj(
            c.MESSAGE_ACK,
            destination=d,
            consumer_id=cid,
            ack_type=t,
            first_message_id=f,
            last_message_id=last,
            message_count=n,
            poison_cause=cause,
        ),
        st.none() | dests(),
        st.none()
        | st.builds(
            lambda cn, s, v: Obj(c.CONSUMER_ID, connection_id=cn, session_id=s, value=v),
            opt_text,
            i64,
            i64,
        ),
        st.integers(0, 6),
        st.none() | message_ids(),
        st.none() | message_ids(),
        i32,
        st.none() | st.tuples(opt_text, opt_text),
    )


@settings(max_examples=150, deadline=None)
@given(st.one_of(messages(), acks()))
def test_marshaller_matches_construct_declaration(obj):
    frame = c.encode_frame(obj)
    size, type_id = struct.unpack(">iB", frame[:5])
    assert size == len(frame) - 4 and type_id == obj.type
    parsed = construct_for(obj.type).parse(frame[5:])
    assert ("obj", obj.type, plain(parsed)) == as_plain(obj)
    # and the construct declaration builds the very same bytes
    assert c.decode_command(frame[4:]) == obj


@settings(max_examples=200, deadline=None)
@given(st.one_of(messages(), acks()))
def test_round_trip(obj):
    assert c.decode_command(c.encode_frame(obj)[4:]) == obj


def test_wireformat_info_declaration():
    data = c.encode_wireformat(
        12,
        {"CacheEnabled": False, "MaxInactivityDuration": 30000},
        {"MaxInactivityDuration": "long"},
    )
    parsed = c.WIRE_FORMAT_INFO.parse(data[5:])
    assert parsed.version == 12
    version, props = c.decode_wireformat(data[4:], 64)
    assert version == 12 and props == {"CacheEnabled": False, "MaxInactivityDuration": 30000}
    # the long type is kept on the wire (a ClassCastException in the client otherwise)
    assert b"\x06" + struct.pack(">q", 30000) in data
    with pytest.raises(c.DecodeError):
        c.decode_wireformat(b"\x01ActiveMX" + data[13:], 64)


primitive = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), primitive, max_size=6))
def test_primitive_map_round_trip(m):
    data = c.encode_primitive_map(m)
    assert c.decode_primitive_map(c.Reader(data), 1 << 20) == m


def test_primitive_types_kept():
    types = {"b": "byte", "s": "short", "f": "float", "ch": "char", "l": "long"}
    m = {"b": -5, "s": 300, "f": 1.5, "ch": "x", "l": 7, "i": 1, "d": 2.5}
    data = c.encode_primitive_map(m, types)
    got_types: dict = {}
    assert c.decode_primitive_map(c.Reader(data), 100, got_types) == m
    assert got_types == types


@pytest.mark.parametrize("s", ["", "abc", "h\u00e9llo", "nul\x00nul", "emoji \U0001f600", "\uffff"])
def test_modified_utf8(s):
    b = c.encode_mutf8(s)
    assert b"\x00" not in b
    assert all(x < 0xF0 for x in b)
    assert c.decode_mutf8(b) == s


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"a\x80"])
def test_invalid_modified_utf8(bad):
    with pytest.raises(c.DecodeError):
        c.decode_mutf8(bad)


def test_lengths_are_checked_against_the_frame():
    # a byte sequence claiming 2 GiB inside a 20-byte frame
    w = c.Writer()
    w.int(1)
    w.bool(False)
    frame = bytes([c.PRODUCER_ACK]) + w.getvalue() + b"\x00" + b"\x00\x00\x00\x05"
    assert c.decode_command(frame).size == 5
    bad = (
        bytes([c.CONNECTION_CONTROL])
        + b"\x00\x00\x00\x01\x00"
        + b"\x00" * 5
        + b"\x00\x00"
        + b"\x00"
        + b"\x01\x7f\xff\xff\xff"
    )
    with pytest.raises(c.DecodeError):
        c.decode_command(bad)
    with pytest.raises(c.DecodeError):
        c.decode_primitive_map(c.Reader(b"\x7f\xff\xff\xff"), 1 << 30)


def test_nesting_is_capped():
    # MessageDispatch -> Message -> data_structure -> Message ... deeper than MAX_NESTING
    inner = Obj(c.MESSAGE)
    for _ in range(c.MAX_NESTING + 2):
        inner = Obj(c.MESSAGE, data_structure=inner)
    with pytest.raises(c.DecodeError):
        c.decode_command(c.encode_frame(inner)[4:])


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_fuzz(data):
    try:
        c.decode_command(data)
    except c.DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(messages(), acks()), st.data())
def test_decoder_fuzz_mutations(obj, data):
    frame = bytearray(c.encode_frame(obj)[4:])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(frame)))
    try:
        c.decode_command(bytes(frame[:cut]))
    except c.DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.one_of(messages(), acks()))
def test_compiled_fast_paths_match_the_table_interpreter(obj):
    frame = c.encode_frame(obj)
    assert frame == encode_frame_generic(obj)
    assert c.decode_command(frame[4:]) == decode_command_generic(frame[4:]) == obj


@settings(max_examples=500, deadline=None)
@given(st.one_of(messages(), acks()), st.data())
def test_compiled_and_interpreted_decoders_agree_on_garbage(obj, data):
    frame = bytearray(c.encode_frame(obj)[4:])
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] = data.draw(st.integers(0, 255))
    cut = bytes(frame[: data.draw(st.integers(1, len(frame)))])
    results = []
    for dec in (c.decode_command, decode_command_generic):
        try:
            results.append(dec(cut))
        except c.DecodeError:
            results.append("error")
    assert results[0] == results[1]


@settings(max_examples=200, deadline=None)
@given(
    st.none() | messages(),
    st.none() | dests(),
    i32,
    st.builds(
        lambda cn, s, v: Obj(c.CONSUMER_ID, connection_id=cn, session_id=s, value=v),
        opt_text,
        i64,
        i64,
    ),
)
def test_dispatch_fast_path(message, dest, redelivery, consumer_id):
    head = c.dispatch_head(consumer_id, dest)
    fast = c.encode_dispatch(head, message, redelivery)
    ref = Obj(
        c.MESSAGE_DISPATCH,
        consumer_id=consumer_id,
        destination=dest,
        message=message,
        redelivery_counter=redelivery,
    )
    assert fast == encode_frame_generic(ref)
    if message is not None:
        assert c.encode_dispatch_raw(head, c.encode_message(message), redelivery) == fast
    parsed = construct_for(c.MESSAGE_DISPATCH).parse(fast[5:])
    assert ("obj", c.MESSAGE_DISPATCH, plain(parsed)) == as_plain(ref)


@settings(max_examples=200, deadline=None)
@given(messages(), i64)
def test_reencode_message_from_its_frame(m, seq):
    frame = c.encode_frame(m)[4:]
    decoded = c.decode_command(frame)
    raw = c.reencode_message(decoded, seq)
    if m.message_id is None:
        assert raw is None
        return
    expected = c.decode_command(frame)
    expected.command_id = 0
    expected.response_required = False
    expected.message_id.broker_sequence_id = seq
    assert raw == c.encode_message(expected)


# -- the marshalling cache (CacheEnabled) ----------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.one_of(messages(), acks()))
def test_cached_form_all_new_round_trip(obj):
    """The cached form we write (every cached field new with index -1) decodes to the same
    object and stores nothing in the receiver's cache; the reference writer with a full
    cache writes the very same bytes."""
    frame = c.encode_frame(obj, cached=True)
    cache = [None] * 16
    assert c.decode_command(frame[4:], cache) == obj
    assert cache == [None] * 16
    assert ClientWriter(0).frame(obj) == frame[4:]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(messages(), acks()), min_size=1, max_size=8), st.integers(1, 6))
def test_cached_form_with_references(objs, size):
    """Frames written by a client's marshalling cache (references to objects sent before,
    including null, and overflow at index -1) decode, through one unmarshalling cache, to
    the objects that were written; and our reencoding of such a message is right in both
    forms."""
    writer = ClientWriter(size)
    cache = [None] * size
    for obj in objs + objs:  # the second time round, cached fields are references
        frame = writer.frame(obj)
        got = c.decode_command(frame, cache)
        assert got == obj
        if obj.type in c.MESSAGE_TYPES and obj.message_id is not None:
            expected = c.decode_command(c.encode_frame(obj)[4:])
            expected.command_id = 0
            expected.response_required = False
            expected.message_id.broker_sequence_id = 77
            assert c.reencode_message(got, 77) == c.encode_message(expected)
            cached = c.reencode_message(got, 77, cached=True)
            assert cached == c.encode_message(expected, cached=True)


def test_cached_form_bad_index_is_a_decode_error():
    dest = Obj(c.QUEUE, physical_name="q")
    ack = Obj(c.MESSAGE_ACK, destination=dest)
    frame = ClientWriter(4).frame(ack)
    with pytest.raises(c.DecodeError):
        c.decode_command(frame, [None] * 0)  # index 0 of an empty cache
    ref = bytearray(frame)
    ref[6:9] = b"\x00\x00\x09"  # a reference to slot 9
    with pytest.raises(c.DecodeError):
        c.decode_command(bytes(ref), [None] * 4)
    ref[6:9] = b"\x00\xff\xff"  # a reference to -1
    with pytest.raises(c.DecodeError):
        c.decode_command(bytes(ref), [None] * 4)


@settings(max_examples=100, deadline=None)
@given(
    st.none() | messages(),
    st.none() | dests(),
    i32,
    st.builds(
        lambda cn, s, v: Obj(c.CONSUMER_ID, connection_id=cn, session_id=s, value=v),
        opt_text,
        i64,
        i64,
    ),
    st.none() | st.tuples(st.integers(0, 5), st.integers(6, 9)),
)
def test_dispatch_fast_path_cached(message, dest, redelivery, consumer_id, slots):
    """The per-consumer heads of the cached form: the first stores consumer id and
    destination in the client's cache, the later ones refer to them."""
    first, later = c.dispatch_heads_cached(consumer_id, dest, slots)
    ref = Obj(
        c.MESSAGE_DISPATCH,
        consumer_id=consumer_id,
        destination=dest,
        message=message,
        redelivery_counter=redelivery,
    )
    cache = [None] * 10
    for head in (first, later, later):
        frame = c.encode_dispatch(head, message, redelivery, cached=True)
        assert c.decode_command(frame[4:], cache) == ref
        if message is not None:
            raw = c.encode_dispatch_raw(head, c.encode_message(message, cached=True), redelivery)
            assert raw == frame
    if slots is None:
        assert first == later and cache == [None] * 10
    else:
        assert cache[slots[0]] == consumer_id and cache[slots[1]] == dest


def _agree(frame: bytes, cache: list, generic_cache: list) -> bool:
    """decode_command (which tries the speculative decoder first) and the generated cached
    decoder give the same object, the same end and the same marks; returns whether the
    speculative decoder took the frame."""
    t = frame[0]
    spec = c.SPECULATIVE.get(t)
    took = spec(frame, 1, len(frame), list(cache)) if spec is not None else None
    got = c.decode_command(frame, cache)
    expected, pos = c.CDECODERS[t](frame, 1, len(frame), 0, generic_cache)
    assert pos == len(frame)
    assert got == expected
    if t in c.MESSAGE_TYPES:
        assert got.cmark == expected.cmark and got.mark is None
    if took is not None:
        assert took[0] == expected and took[1] == pos
        if t in c.MESSAGE_TYPES:
            assert took[0].cmark == expected.cmark
    return took is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(messages(), acks()), min_size=1, max_size=6))
def test_speculative_decoders_agree_with_the_generated_ones(objs):
    writer = ClientWriter(64)
    cache, generic_cache = [None] * 64, [None] * 64
    for obj in objs + objs:
        _agree(writer.frame(obj), cache, generic_cache)


def test_speculative_decoders_take_the_java_clients_shape():
    """A BytesMessage and its standard ack as the 5.17 client writes them: the second time
    round every cached field is a reference, and the speculative decoders take both."""
    writer = ClientWriter(64)
    cache, generic_cache = [None] * 64, [None] * 64
    pid = Obj(c.PRODUCER_ID, connection_id="ID:p", value=1, session_id=1)
    dest = Obj(c.QUEUE, physical_name="q")
    cid = Obj(c.CONSUMER_ID, connection_id="ID:c", session_id=1, value=1)
    took = []
    for k in (1, 2):
        mid = Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=k)
        msg = Obj(
            c.BYTES_MESSAGE,
            command_id=k,
            producer_id=pid,
            destination=dest,
            message_id=mid,
            persistent=True,
            priority=4,
            timestamp=1_700_000_000_000,
            content=b"\x00" * 256,
            marshalled_properties=b"\x00\x00\x00\x00",
        )
        ack = Obj(
            c.MESSAGE_ACK,
            command_id=k,
            destination=dest,
            consumer_id=cid,
            ack_type=2,
            first_message_id=mid,
            last_message_id=mid,
            message_count=1,
        )
        took += [
            _agree(writer.frame(msg), cache, generic_cache),
            _agree(writer.frame(ack), cache, generic_cache),
        ]
    assert took == [False, False, True, True]
    # one flag off the shape (a correlation id) and the generated decoder takes over
    msg = Obj(
        c.BYTES_MESSAGE,
        command_id=3,
        producer_id=pid,
        destination=dest,
        message_id=Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=3),
        correlation_id="corr",
        content=b"x",
    )
    assert not _agree(writer.frame(msg), cache, generic_cache)


def test_speculative_decoder_leaves_malformed_frames_to_the_generated_one():
    writer = ClientWriter(64)
    cache = [None] * 64
    pid = Obj(c.PRODUCER_ID, connection_id="ID:p", value=1, session_id=1)
    dest = Obj(c.QUEUE, physical_name="q")
    msg = Obj(
        c.BYTES_MESSAGE,
        producer_id=pid,
        destination=dest,
        message_id=Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=1),
        content=b"abc",
    )
    c.decode_command(writer.frame(msg), cache)
    frame = writer.frame(msg)  # references only: the speculative shape
    assert c.SPECULATIVE[frame[0]](frame, 1, len(frame), cache) is not None
    for bad in (frame[:-3], frame[:40], frame + b"\x00"):
        with pytest.raises(c.DecodeError):
            c.decode_command(bad, cache)
    small = [None] * 2  # a reference beyond the negotiated cache
    assert c.SPECULATIVE[frame[0]](frame, 1, len(frame), small) is None
    with pytest.raises(c.DecodeError):
        c.decode_command(frame, small)


@given(i32)
def test_response_fast_path_matches_the_table(correlation_id):
    obj = Obj(c.RESPONSE, correlation_id=correlation_id)
    assert c.encode_response(correlation_id) == c.encode_frame(obj)
    assert c.encode_response(correlation_id) == c.encode_frame(obj, cached=True)


def _check_ack_fields(frame: bytes, cache: list) -> bool:
    """ack_fields agrees with the decoded frame (when it reads it at all); the frame is then
    decoded into ``cache`` as the connection would. Returns whether ack_fields read it."""
    fields = c.ack_fields(frame, cache)
    obj = c.decode_command(frame, cache)
    if fields is None:
        return False
    assert obj.type == c.MESSAGE_ACK
    assert fields == (
        obj.command_id,
        obj.response_required,
        obj.consumer_id,
        obj.transaction_id,
        obj.ack_type,
        obj.last_message_id.broker_sequence_id,
    )
    return True


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(messages(), acks()), min_size=1, max_size=6))
def test_ack_fields_agree_with_the_decoder(objs):
    writer = ClientWriter(64)
    cache = [None] * 64
    for obj in objs + objs:
        _check_ack_fields(writer.frame(obj), cache)


def test_ack_fields_read_the_java_clients_standard_ack():
    writer = ClientWriter(64)
    cache = [None] * 64
    pid = Obj(c.PRODUCER_ID, connection_id="ID:p", value=1, session_id=1)
    cid = Obj(c.CONSUMER_ID, connection_id="ID:c", session_id=1, value=1)
    read = []
    for k in (1, 2):
        mid = Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=k, broker_sequence_id=k)
        ack = Obj(
            c.MESSAGE_ACK,
            command_id=k,
            destination=Obj(c.QUEUE, physical_name="q"),
            consumer_id=cid,
            ack_type=2,
            first_message_id=mid,
            last_message_id=mid,
            message_count=1,
        )
        read.append(_check_ack_fields(writer.frame(ack), cache))
    assert read == [False, True]  # the first carries its cached fields as new entries
    assert c.ack_fields(writer.frame(ack)[:-1], cache) is None  # truncated: decode it
    assert c.ack_fields(writer.frame(ack), [None] * 2) is None  # index beyond the cache


def test_nested_objects_of_the_wrong_type_are_decode_errors():
    """A field holds only the types its declaration allows: in the frame, and through the
    marshalling cache (a slot stored by one field and referred to by another), whichever
    decoder (speculative or not) reads the frame."""
    dest = Obj(c.QUEUE, physical_name="q")
    pid = Obj(c.PRODUCER_ID, connection_id="ID:p", value=1, session_id=1)
    wrong = Obj(c.BYTES_MESSAGE, producer_id=dest, destination=dest)  # a queue as producer id
    with pytest.raises(c.DecodeError):
        c.decode_command(c.encode_frame(wrong)[4:])
    with pytest.raises(c.DecodeError):
        decode_command_generic(c.encode_frame(wrong)[4:])
    writer = ClientWriter(8)
    cache = [None] * 8
    msg = Obj(
        c.BYTES_MESSAGE,
        producer_id=pid,
        destination=dest,
        message_id=Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=1),
    )
    c.decode_command(writer.frame(msg), cache)  # stores pid, dest, null ... in the cache
    frame = writer.frame(msg)  # the speculative shape: references only
    assert c.decode_command(frame, cache).producer_id == pid
    slot_pid, slot_dest = cache.index(pid), cache.index(dest)
    swapped = bytearray(frame)
    # the first two cached fields refer to each other's slots: producer id -> the queue
    assert swapped[6:12] == bytes((0, 0, slot_pid, 0, 0, slot_dest))
    swapped[6:12] = bytes((0, 0, slot_dest, 0, 0, slot_pid))
    assert c.SPECULATIVE[frame[0]](bytes(swapped), 1, len(swapped), cache) is None
    with pytest.raises(c.DecodeError):
        c.decode_command(bytes(swapped), cache)


# -- every declared type (the generated functions of all of them) ----------------------------

_FIELD_VALUES = {
    "z": st.booleans(),
    "b": st.integers(-128, 127),
    "h": st.integers(-(2**15), 2**15 - 1),
    "i": i32,
    "l": i64,
    "s": opt_text,
    "y": st.none() | st.binary(max_size=16),
    "t": st.none() | st.tuples(opt_text, opt_text),
    "O": st.none() | st.just([]),
}


def _nested(field):
    """None, or for a field that may hold destinations or any type, a destination."""
    if field.types is None or field.types & c.DESTINATION_TYPES:
        return st.none() | dests()
    return st.none()


@st.composite
def any_command(draw):
    t = draw(st.sampled_from(sorted(set(SCHEMA) - {c.WIREFORMAT_INFO})))
    values = {}
    for name, field in fields_of(DECLARATIONS[t][1]):
        kind = field.kind
        values[name] = draw(_nested(field) if kind in ("o", "c") else _FIELD_VALUES[kind])
    return Obj(t, **values)


@settings(max_examples=400, deadline=None)
@given(any_command())
def test_every_type_matches_its_declaration_in_both_forms(obj):
    """Each type's generated encoder writes what its construct declaration parses and the
    table interpreter writes, and its generated decoders (plain and cached form) read it back."""
    frame = c.encode_frame(obj)
    assert frame == encode_frame_generic(obj)
    parsed = construct_for(obj.type).parse(frame[5:])
    assert ("obj", obj.type, plain(parsed)) == as_plain(obj)
    assert c.decode_command(frame[4:]) == obj
    cached = c.encode_frame(obj, cached=True)
    assert cached[4:] == ClientWriter(0).frame(obj)
    assert c.decode_command(cached[4:], [None] * 4) == obj
