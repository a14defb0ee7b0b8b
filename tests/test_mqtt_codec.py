"""The hand-written fast paths against their construct declarations (hypothesis round trips),
the framer, and a fuzz of the session state machine (sans-I/O) and of a real socket."""

from __future__ import annotations

import socket

import pytest
from conftest import module_broker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from polymq.adapters.mqtt import codec as c
from polymq.adapters.mqtt.transport import MqttFactory
from polymq.core import output
from polymq.core.broker import Broker

topics = st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t)
payloads = st.binary(max_size=300)
pids = st.integers(min_value=1, max_value=65535)
user_props = st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=3)
prop_dicts = st.fixed_dictionaries(
    {},
    optional={
        "payload_format_indicator": st.integers(0, 1),
        "message_expiry_interval": st.integers(0, 2**32 - 1),
        "content_type": st.text(max_size=20),
        "response_topic": topics,
        "correlation_data": st.binary(max_size=20),
        "topic_alias": st.integers(1, 65535),
        "user_property": user_props.filter(bool),
        "subscription_identifier": st.lists(st.integers(1, 268_435_455), min_size=1, max_size=2),
    },
)


def as_dict(items):
    return c.props_to_dict(items)


@given(
    topics,
    pids,
    payloads,
    st.integers(0, 2),
    st.booleans(),
    st.booleans(),
    st.sampled_from([c.V311, c.V5]),
    prop_dicts,
)
def test_encode_publish_matches_declaration(topic, pid, payload, qos, retain, dup, version, props):
    block = c.encode_props(props) if version == c.V5 else None
    data = c.encode_publish(topic.encode(), payload, qos, pid, retain, dup, block)
    first = data[0]
    assert first >> 4 == c.PUBLISH and (first >> 1) & 3 == qos
    assert bool(first & 1) == retain and bool(first & 8) == dup
    frames = c.FrameReader(1 << 20).feed(data)
    assert len(frames) == 1
    _, body = frames[0]
    parsed = c.Publish.parse(body, version=version, qos=qos)
    assert parsed.topic == topic
    assert parsed.payload == payload
    assert parsed.packet_id == (pid if qos else None)
    if version == c.V5:
        assert as_dict(parsed.properties["items"]) == {
            k: (list(v) if isinstance(v, list) else v) for k, v in props.items()
        }
    # and the fast decoder agrees with the declaration
    t, p, blk, pl, tb = c.decode_publish(first & 0x0F, body, version)
    assert (t, p, pl, tb) == (topic, parsed.packet_id, payload, topic.encode())
    if version == c.V5:
        assert (c.props_from_block(blk) if blk is not None else {}) == as_dict(
            parsed.properties["items"]
        )


@given(topics, pids, payloads, st.integers(0, 2), st.sampled_from([c.V311, c.V5]), prop_dicts)
def test_decode_publish_of_declared_frames(topic, pid, payload, qos, version, props):
    fields = {
        "topic": topic,
        "packet_id": pid if qos else None,
        "payload": payload,
        "properties": None,
    }
    if version == c.V5:
        items = c.Properties.parse(c.encode_props(props))["items"]
        fields["properties"] = {"items": items}
    body = c.Publish.build(fields, version=version, qos=qos)
    t, p, blk, pl, _ = c.decode_publish(qos << 1, body, version)
    assert (t, p, pl) == (topic, pid if qos else None, payload)


@given(
    st.sampled_from([c.PUBACK, c.PUBREC, c.PUBREL, c.PUBCOMP]),
    pids,
    st.sampled_from([0, 0x10, 0x80, 0x92]),
    st.sampled_from([c.V311, c.V5]),
)
def test_encode_ack_matches_declaration(ptype, pid, reason, version):
    if version == c.V311:
        reason = 0
    data = c.encode_ack(ptype, pid, reason, b"\x00" if reason else None)
    [(first, body)] = c.FrameReader(100).feed(data)
    assert first == (ptype << 4) | (2 if ptype == c.PUBREL else 0)
    parsed = c.Ack.parse(body, version=version, size=len(body))
    assert parsed.packet_id == pid
    assert (parsed.reason or 0) == reason
    assert c.decode_ack(body, version) == (pid, reason)


@given(st.integers(0, c.MAX_REMAINING_LENGTH))
def test_varint_matches_declaration(n):
    enc = c.encode_varint(n)
    assert enc == c.RemainingLength.build(n)
    assert len(enc) <= 4


@given(
    st.lists(
        st.tuples(st.sampled_from([0x30, 0x40, 0xC0, 0x82]), st.binary(max_size=400)), max_size=8
    ),
    st.lists(st.integers(1, 50), max_size=30),
)
def test_frame_reader_splits_any_chunking(frames, cuts):
    stream = b"".join(c.frame(f, b) for f, b in frames)
    reader = c.FrameReader(1 << 20)
    got = []
    pos = 0
    for n in cuts:
        got += reader.feed(stream[pos : pos + n])
        pos += n
    got += reader.feed(stream[pos:])
    assert reader.error is None
    assert got == [(f, b) for f, b in frames]


@given(prop_dicts)
def test_properties_round_trip(props):
    items = c.Properties.parse(c.encode_props(props))["items"]
    assert as_dict(items) == props


def test_remaining_length_cap():
    r = c.FrameReader(1 << 28)
    assert r.feed(b"\x30\xff\xff\xff\xff\x01") == []
    assert r.error is not None and "four bytes" in str(r.error)
    r = c.FrameReader(100)
    r.feed(b"\x30\x80\x01")
    assert r.error is not None and r.error.reason == c.PACKET_TOO_LARGE


def test_topic_helpers():
    assert c.topic_to_key("a/b.c/d") == "a.b/c.d"
    assert c.key_to_topic("a.b/c.d") == "a/b.c/d"
    assert c.topic_to_key("a/+/#") == "a.*.#"
    assert c.topic_matches("a/#", "a")
    assert c.topic_matches("+/b", "a/b")
    assert not c.topic_matches("#", "$SYS/x")
    assert not c.topic_matches("+/x", "$SYS/x")
    assert c.topic_matches("$SYS/#", "$SYS/x")
    assert not c.valid_topic_filter("a/#/b")
    assert not c.valid_topic_filter("a+")
    assert c.valid_topic_filter("+/+/#")


# -- fuzz: the session state machine, sans I/O ------------------------------------------------


def _server():
    return MqttFactory(Broker(clock=Clock()), {})


class Sink:
    """One connection of an MQTT listener, over a StringTransport."""

    def __init__(self, factory, host="127.0.0.1"):
        self.t = StringTransport(peerAddress=IPv4Address("TCP", host, 0))
        self.p = factory.buildProtocol(None)
        self.p.makeConnection(self.t)

    def data_received(self, data):
        self.p.dataReceived(data)
        output.flush_pending()

    def connection_lost(self):
        self.p.connectionLost(None)

    @property
    def out(self):
        value = self.t.value()
        return [value] if value else []

    @property
    def closed(self):
        return self.t.disconnecting

    @property
    def inflight(self):
        return self.p.session.inflight


CONNECT_V3 = c.frame(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x02ab")
CONNECT_V5 = c.frame(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02ab")

frames_st = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.builds(lambda t, b: c.frame(t, b), st.integers(0, 255), st.binary(max_size=64)),
        st.builds(
            lambda t, qos, body: c.frame(0x30 | (qos << 1), c._utf8(t) + body),
            st.text(max_size=10),
            st.integers(0, 3),
            st.binary(max_size=20),
        ),
    ),
    max_size=10,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from([b"", CONNECT_V3, CONNECT_V5]), frames_st)
def test_fuzz_session_never_raises(prefix, frames):
    server = _server()
    sink = conn = Sink(server)
    conn.data_received(prefix)
    for data in frames:
        conn.data_received(data)
        if sink.closed:
            break
    conn.connection_lost()
    # whatever happened, the server still serves a well-behaved client
    sink2 = ok = Sink(server, "127.0.0.2")
    ok.data_received(c.frame(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x02zz"))
    assert sink2.out and sink2.out[0] == b"\x20\x02\x00\x00"
    assert not sink2.closed


# -- fuzz over a real socket --------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory, "mqttbroker", ["mqtt"], store="memory") as b:
        yield b


@settings(
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    deadline=None,
)
@given(st.sampled_from([b"", CONNECT_V3, CONNECT_V5]), frames_st)
def test_fuzz_real_socket(broker, prefix, frames):
    s = socket.create_connection((broker.host, broker.port("mqtt")), timeout=2)
    try:
        s.sendall(prefix + b"".join(frames))
    except OSError:
        pass
    s.close()
    ok = socket.create_connection((broker.host, broker.port("mqtt")), timeout=5)
    ok.sendall(c.frame(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x02zz"))
    assert ok.recv(4) == b"\x20\x02\x00\x00"
    ok.close()


def _sub_frame(pid, flt, opts, v5):
    body = pid.to_bytes(2, "big") + (b"\x00" if v5 else b"") + c._utf8(flt) + bytes((opts,))
    return c.frame(0x82, body)


ops_st = st.lists(
    st.one_of(
        st.builds(
            lambda pid, f, o: ("sub", pid, f, o),
            pids,
            st.sampled_from(["a/#", "+/b", "#", "$share/g/a/+", "a/b", "$SYS/#"]),
            st.integers(0, 0x2F),
        ),
        st.builds(
            lambda t, q, r, pid, body: ("pub", t, q, r, pid, body),
            st.sampled_from(["a/b", "a", "x/b", "$SYS/x", "a/b/c"]),
            st.integers(0, 2),
            st.booleans(),
            pids,
            st.binary(max_size=10),
        ),
        st.builds(lambda t, pid: ("ack", t, pid), st.sampled_from([4, 5, 6, 7]), st.integers(1, 5)),
        st.builds(lambda f: ("unsub", f), st.sampled_from(["a/#", "+/b", "$share/g/a/+"])),
        st.just(("ping",)),
    ),
    max_size=25,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.booleans(), ops_st)
def test_fuzz_valid_sequences_keep_invariants(v5, ops):
    server = _server()
    sinks = []
    conns = []
    for cid in ("p", "q"):
        sink = conn = Sink(server)
        conn.data_received(
            CONNECT_V5.replace(b"\x02ab", b"\x02" + cid.encode() * 2)
            if v5
            else CONNECT_V3.replace(b"ab", cid.encode() * 2)
        )
        assert sink.out[0].startswith(b"\x20")  # CONNACK
        sinks.append(sink)
        conns.append(conn)
    for i, op in enumerate(ops):
        conn = conns[i % 2]
        if sinks[i % 2].closed:
            continue
        if op[0] == "sub":
            data = _sub_frame(op[1], op[2], op[3], v5)
        elif op[0] == "pub":
            _, t, q, r, pid, body = op
            data = c.encode_publish(t.encode(), body, q, pid, r, False, b"\x00" if v5 else None)
        elif op[0] == "ack":
            data = c.encode_ack(op[1], op[2])
        elif op[0] == "unsub":
            data = c.frame(0xA2, b"\x00\x01" + (b"\x00" if v5 else b"") + c._utf8(op[1]))
        else:
            data = b"\xc0\x00"
        conn.data_received(data)
        server.clock.advance(0)
    for conn in conns:
        # every in-flight delivery is one the core also counts as unacknowledged
        for d in conn.inflight.unsettled.values():
            assert d.seq in d.queue.unacked
        conn.connection_lost()
    assert not server.server.sessions


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300_000), min_size=1, max_size=4), st.integers(1, 70_000), st.data())
def test_frame_reader_large_packets_any_chunking(sizes, chunk, data):
    frames = [(0x30, bytes([i % 251]) * n) for i, n in enumerate(sizes)]
    stream = b"".join(c.frame(f, b) for f, b in frames)
    reader = c.FrameReader(1 << 20)
    got = []
    pos = 0
    while pos < len(stream):
        step = data.draw(st.integers(1, chunk))
        got += reader.feed(stream[pos : pos + step])
        pos += step
    assert reader.error is None
    assert got == frames


def test_frame_reader_big_packet_in_small_reads_is_linear():
    import time

    body = b"x" * (16 * 1024 * 1024)
    stream = c.frame(0x30, body)
    reader = c.FrameReader(1 << 25)
    start = time.process_time()
    got = []
    for i in range(0, len(stream), 65536):
        got += reader.feed(stream[i : i + 65536])
    assert got == [(0x30, body)]
    assert time.process_time() - start < 1.0  # quadratic concatenation took many seconds
