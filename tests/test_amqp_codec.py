"""AMQP 0-9-1 codec: the fast paths agree with the construct declarations; the decoders survive
arbitrary bytes; the session closes (never crashes) on garbage."""

from __future__ import annotations

import decimal
import struct

import construct as c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from polymq.adapters.amqp import codec as C
from polymq.adapters.amqp.mapping import message_from_properties, properties_for
from polymq.adapters.amqp.transport import AMQPFactory
from polymq.core.broker import Broker

shortstr = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
names = st.text(min_size=1, max_size=12).filter(lambda s: len(s.encode()) <= 255)

# Typed field values as the pure declaration builds them: (type char, construct value, python)
scalar_values = st.one_of(
    st.booleans().map(lambda v: ("t", v, v)),
    st.integers(-128, 127).map(lambda v: ("b", v, v)),
    st.integers(0, 255).map(lambda v: ("B", v, v)),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: ("s", v, v)),
    st.integers(0, 2**16 - 1).map(lambda v: ("u", v, v)),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: ("I", v, v)),
    st.integers(0, 2**32 - 1).map(lambda v: ("i", v, v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: ("l", v, v)),
    st.floats(width=32, allow_nan=False).map(lambda v: ("f", v, v)),
    st.floats(allow_nan=False).map(lambda v: ("d", v, v)),
    st.tuples(st.integers(0, 10), st.integers(-(2**31), 2**31 - 1)).map(
        lambda t: ("D", {"scale": t[0], "value": t[1]}, decimal.Decimal(t[1]).scaleb(-t[0]))
    ),
    st.text(max_size=20).map(lambda v: ("S", v.encode(), v)),
    st.binary(max_size=20).map(lambda v: ("x", v, v)),
    st.integers(0, 2**64 - 1).map(lambda v: ("T", v, v)),
    st.just(("V", None, None)),
)


def _extend(children):
    arrays = st.lists(children, max_size=4).map(
        lambda xs: ("A", [{"type": t, "value": v} for t, v, _ in xs], [p for _, _, p in xs])
    )
    tables = st.dictionaries(names, children, max_size=4).map(
        lambda d: (
            "F",
            [{"name": k, "value": {"type": t, "value": v}} for k, (t, v, _) in d.items()],
            {k: p for k, (_, _, p) in d.items()},
        )
    )
    return st.one_of(arrays, tables)


field_values = st.recursive(scalar_values, _extend, max_leaves=12)
typed_tables = st.dictionaries(names, field_values, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_tables)
def test_fast_table_decoder_agrees_with_declaration(table):
    built = C.FieldTablePure.build(
        [{"name": k, "value": {"type": t, "value": v}} for k, (t, v, _) in table.items()]
    )
    decoded, end = C.decode_table(built, 0, len(built))
    assert end == len(built)
    assert decoded == {k: p for k, (_, _, p) in table.items()}
    # and the declaration reads it back the same way
    parsed = C.FieldTablePure.parse(built)
    assert {e.name: C.pure_to_python(e.value) for e in parsed} == decoded


python_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20),
    ),
    lambda ch: st.one_of(st.lists(ch, max_size=4), st.dictionaries(names, ch, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, python_values, max_size=6))
def test_fast_table_encoder_agrees_with_declaration(table):
    data = C.encode_table(table)
    parsed = C.FieldTablePure.parse(data)
    assert {e.name: C.pure_to_python(e.value) for e in parsed} == table
    assert C.decode_table(data, 0, len(data))[0] == table


def test_every_field_type_decodes():
    table = {
        "t": ("t", True),
        "b": ("b", -5),
        "B": ("B", 200),
        "s": ("s", -300),
        "u": ("u", 60000),
        "I": ("I", -70000),
        "i": ("i", 4000000000),
        "l": ("l", -(2**40)),
        "f": ("f", 1.5),
        "d": ("d", 2.25),
        "D": ("D", {"scale": 2, "value": 150}),
        "S": ("S", b"text"),
        "x": ("x", b"\x00\xff"),
        "A": ("A", [{"type": "I", "value": 1}]),
        "T": ("T", 1700000000),
        "F": ("F", [{"name": "k", "value": {"type": "V", "value": None}}]),
        "V": ("V", None),
    }
    data = C.FieldTablePure.build(
        [{"name": k, "value": {"type": t, "value": v}} for k, (t, v) in table.items()]
    )
    out = C.decode_table(data, 0, len(data))[0]
    assert out["t"] is True and out["b"] == -5 and out["B"] == 200 and out["s"] == -300
    assert out["u"] == 60000 and out["I"] == -70000 and out["i"] == 4000000000
    assert out["l"] == -(2**40) and out["f"] == 1.5 and out["d"] == 2.25
    assert out["D"] == decimal.Decimal("1.50") and out["S"] == "text" and out["x"] == b"\x00\xff"
    assert out["A"] == [1] and out["F"] == {"k": None} and out["V"] is None
    assert out["T"] == 1700000000 and isinstance(out["T"], C.Timestamp)
    # re-encoding keeps decimal and timestamp types
    again = C.FieldTablePure.parse(C.encode_table({"D": out["D"], "T": out["T"]}))
    assert [(e.name, e.value.type) for e in again] == [("D", "D"), ("T", "T")]


def test_table_nesting_is_bounded():
    inner = C.encode_table({})
    for _ in range(C.MAX_TABLE_DEPTH + 3):
        inner = struct.pack(">I", len(inner) + 3) + b"\x01kF" + inner
    with pytest.raises(C.FrameError):
        C.decode_table(inner, 0, len(inner))


def test_table_length_beyond_frame_is_refused():
    data = b"\x7f\xff\xff\xff\x01a"
    with pytest.raises(C.FrameError):
        C.decode_table(data, 0, len(data))


# -- methods -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(shortstr, shortstr, st.booleans(), st.booleans())
def test_publish_fast_path_matches_declaration(exchange, rk, mandatory, immediate):
    payload = C.PUBLISH.build(
        {"exchange": exchange, "routing_key": rk, "mandatory": mandatory, "immediate": immediate}
    )
    fast = C.decode_publish(payload)
    assert fast == C.PUBLISH.parse(payload[4:])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1), st.booleans())
def test_ack_fast_path_matches_declaration(tag, multiple):
    payload = C.ACK.build({"delivery_tag": tag, "multiple": multiple})
    assert C.decode_ack(payload) == C.ACK.parse(payload[4:])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 65535), st.integers(0, 2**64 - 1), st.booleans())
def test_ack_frame_fast_path_matches_declaration(channel, tag, multiple):
    slow = C.method_frame(channel, "basic.ack", delivery_tag=tag, multiple=multiple)
    assert C.ack_frame(channel, tag, multiple) == slow


@settings(max_examples=200, deadline=None)
@given(
    shortstr, st.integers(0, 2**64 - 1), st.booleans(), shortstr, shortstr, st.integers(0, 65535)
)
def test_deliver_fast_path_matches_declaration(tag, dtag, redelivered, exchange, rk, channel):
    fast = C.encode_deliver(channel, C.deliver_prefix(tag), dtag, redelivered, exchange, rk)
    slow = C.method_frame(
        channel,
        "basic.deliver",
        consumer_tag=tag,
        delivery_tag=dtag,
        redelivered=redelivered,
        exchange=exchange,
        routing_key=rk,
    )
    assert fast == slow
    tail = C.deliver_tail(exchange, rk)
    assert C.deliver_frame(channel, C.deliver_prefix(tag), dtag, redelivered, tail) == slow
    f = C.FRAME.parse(fast)
    assert (f.type, f.channel) == (1, channel)


def test_every_method_round_trips_through_its_declaration():
    for spec in C.METHODS.values():
        payload = spec.build({})
        s, args = C.decode_method(payload)
        assert s is spec
        assert set(args) >= set(spec.fields) - {""}


properties = st.fixed_dictionaries(
    {},
    optional={
        "content_type": shortstr,
        "content_encoding": shortstr,
        "headers": st.dictionaries(names, python_values, max_size=4),
        "delivery_mode": st.integers(0, 255),
        "priority": st.integers(0, 255),
        "correlation_id": shortstr,
        "reply_to": shortstr,
        "expiration": shortstr,
        "message_id": shortstr,
        "timestamp": st.integers(0, 2**64 - 1),
        "type": shortstr,
        "user_id": shortstr,
        "app_id": shortstr,
        "cluster_id": shortstr,
    },
)


@settings(max_examples=300, deadline=None)
@given(properties, st.integers(0, 2**63))
def test_content_header_fast_paths_match_declaration(props, size):
    raw = C.encode_properties(props)
    payload = struct.pack(">HHQ", 60, 0, size) + raw
    parsed = C.CONTENT_HEADER.parse(payload)
    class_id, body_size, fast, raw_back = C.decode_content_header(payload)
    assert (class_id, body_size, raw_back) == (60, size, raw)
    assert fast == props
    for name in C.PROPERTY_NAMES:
        assert parsed[name] == props.get(name)
    # the declaration builds the same bytes as the fast encoder
    built = C.CONTENT_HEADER.build(
        dict(
            {n: props.get(n) for n in C.PROPERTY_NAMES},
            class_id=60,
            weight=0,
            body_size=size,
            flags=struct.unpack(">H", raw[:2])[0],
        )
    )
    assert built == payload


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.integers(4096, 9000), st.integers(1, 65535))
def test_body_split_over_frames(body, frame_max, channel):
    out = C.content_frames(channel, b"\x00\x00", body, frame_max)
    frames = c.GreedyRange(C.FRAME).parse(out)
    assert frames[0].type == 2
    assert b"".join(f.payload for f in frames[1:]) == body
    assert all(len(f.payload) + 8 <= frame_max for f in frames)
    assert all(f.channel == channel for f in frames)


def test_property_mapping_round_trip():
    class B:
        def now(self):
            return 1_000_000

    props = {
        "content_type": "text/plain",
        "content_encoding": "gzip",
        "headers": {"h": 1},
        "delivery_mode": 2,
        "priority": 5,
        "correlation_id": "c",
        "reply_to": "r",
        "expiration": "5000",
        "message_id": "m",
        "timestamp": 1700000000,
        "type": "t",
        "user_id": "guest",
        "app_id": "a",
        "cluster_id": "cl",
    }
    m = message_from_properties(b"x", props, C.encode_properties(props), B())
    assert m.durable and m.expiration == 1_005_000 and m.timestamp == 1700000000 * 1000
    assert m.annotations["amqp.app_id"] == "a" and m.annotations["amqp.cluster_id"] == "cl"
    raw = properties_for(m, None, B())
    assert C.decode_content_header(struct.pack(">HHQ", 60, 0, 1) + raw)[2] == props


# -- fuzzing -----------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_method_decoder_only_raises_frame_errors(data):
    try:
        C.decode_method(data)
    except C.FrameError:
        pass
    try:
        C.decode_content_header(data)
    except C.FrameError:
        pass


def _session():
    """A connection through the AMQP listener, on a string transport."""
    factory = AMQPFactory(Broker(clock=Clock()), {})
    t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    p = factory.buildProtocol(t.getPeer())
    p.makeConnection(t)
    crashes = []
    crash = p._crash

    def record(e):  # a bug reaching the contract's boundary
        crashes.append(e)
        crash(e)

    p._crash = record
    return p, t, crashes


HANDSHAKE = (
    C.PROTOCOL_HEADER
    + C.method_frame(
        0,
        "connection.start-ok",
        client_properties={},
        mechanism="PLAIN",
        response=b"\x00guest\x00guest",
        locale="en_US",
    )
    + C.method_frame(0, "connection.tune-ok", channel_max=0, frame_max=131072, heartbeat=0)
    + C.method_frame(0, "connection.open", virtual_host="/")
    + C.method_frame(1, "channel.open")
)

frame_types = st.sampled_from([1, 2, 3, 8, 0, 9])


@st.composite
def frames(draw):
    """Frames that are mostly well-formed on the outside, with arbitrary payloads."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            out.append(draw(st.binary(max_size=40)))
            continue
        spec = draw(st.sampled_from(list(C.METHODS.values())))
        payload = spec.prefix + draw(st.binary(max_size=40))
        if kind == 2:
            payload = spec.build({})
        ftype = 1 if kind != 3 else draw(frame_types)
        out.append(C.frame(ftype, draw(st.integers(0, 3)), payload))
    return b"".join(out)


@settings(max_examples=400, deadline=None)
@given(frames(), st.integers(1, 50))
def test_session_survives_fuzzed_frames(data, chunk):
    p, t, crashes = _session()
    p.dataReceived(HANDSHAKE)
    conn = p.session
    assert conn.state == "opened"
    for i in range(0, len(data), chunk):
        if conn.state == "closed" or p.closing:
            break
        p.dataReceived(data[i : i + chunk])
    assert not crashes  # bad input is a protocol error, never an internal one
    if conn.state == "closing":
        # a connection error was sent as connection.close, the last frame written
        frames_out = c.GreedyRange(C.FRAME).parse(t.value())
        last = frames_out[-1]
        assert last.type == 1 and last.payload[:4] == b"\x00\x0a\x00\x32"
        assert C.decode_method(last.payload)[1]["reply_code"] != C.INTERNAL_ERROR
    p.connectionLost(None)


def test_kafka_key_mapping_both_ways():
    class B:
        def now(self):
            return 0

    props = {"headers": {"x-kafka-key": "user-7"}}
    m = message_from_properties(b"v", props, C.encode_properties(props), B())
    assert m.key == b"user-7"
    # a message from another protocol with a key: the header appears on the way out
    from polymq.core.message import Message

    out = C.decode_properties(properties_for(Message(b"v", key=b"\xff\x00"), None, B()))
    assert out["headers"] == {"x-kafka-key": b"\xff\x00"}
    out = C.decode_properties(
        properties_for(Message(b"v", key=b"k1", durable=True, timestamp=5000), None, B())
    )
    assert out == {"headers": {"x-kafka-key": "k1"}, "delivery_mode": 2, "timestamp": 5}


def test_amqp_published_properties_are_sent_back_verbatim():
    class B:
        def now(self):
            return 0

    props = {"headers": {"d": decimal.Decimal("1.5"), "t": C.Timestamp(7)}, "app_id": "a"}
    raw = C.encode_properties(props)
    m = message_from_properties(b"v", props, raw, B())
    assert m.headers == {"d": "1.5", "t": 7}  # what other protocols see
    assert properties_for(m, None, B()) == raw  # what AMQP consumers get: the same bytes
    with_offset = C.decode_properties(properties_for(m, 42, B()))
    assert with_offset["headers"] == {"d": decimal.Decimal("1.5"), "t": 7, "x-stream-offset": 42}
