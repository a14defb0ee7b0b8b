"""The Kafka session in-process (no sockets): structurally valid random requests of every API
are generated from the codec's declarations and must never hit an internal error; the group
coordinator's state machine on a fake clock."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from polymq.adapters.kafka import codec as C
from polymq.adapters.kafka.groups import Coordinator
from polymq.adapters.kafka.plugin import DEFAULT_CONFIG
from polymq.adapters.kafka.records import encode_batch
from polymq.adapters.kafka.transport import KafkaFactory
from polymq.core import output
from polymq.core.broker import Broker
from polymq.core.store.memory import MemoryStore

small_names = st.sampled_from(["t1", "t2", "bad topic", "", "g1", "x" * 30])

PRIMS = {
    C.I8: st.integers(-128, 127),
    C.I16: st.integers(-3, 5),
    C.I32: st.one_of(st.integers(-2, 5), st.integers(-(2**31), 2**31 - 1)),
    C.I64: st.one_of(st.integers(-3, 10), st.integers(-(2**63), 2**63 - 1)),
    C.BOOL: st.booleans(),
    C.STR: small_names,
    C.NSTR: st.none() | small_names,
    C.BYTES: st.binary(max_size=20),
    C.NBYTES: st.none() | st.binary(max_size=20) | st.just(encode_batch([(b"k", b"v", [], 1)])),
}


def strategy(fields, version):
    d = {}
    for name, typ, since, until in fields:
        if since <= version <= until:
            d[name] = type_strategy(typ, version)
    return st.fixed_dictionaries(d)


def type_strategy(typ, version):
    if isinstance(typ, C.Arr):
        inner = PRIMS[typ.fields] if isinstance(typ.fields, str) else strategy(typ.fields, version)
        s = st.lists(inner, max_size=3)
        return st.none() | s if typ.nullable else s
    return PRIMS[typ]


def requests():
    cases = []
    for api, (lo, hi) in C.API_RANGES.items():
        for ver in range(lo, hi + 1):
            if ver in C.REFUSED_VERSIONS.get(api, ()):
                continue
            cases.append(st.tuples(st.just(api), st.just(ver), strategy(C.SCHEMAS[api][0], ver)))
    return st.one_of(cases)


def make_session(sasl=False, **config):
    """A Kafka connection of the real listener over a StringTransport, on a fake clock."""
    output.flush_pending()  # no flush left scheduled on an earlier test's clock
    clock = Clock()
    broker = Broker(MemoryStore(), clock=clock)
    factory = KafkaFactory(broker, dict(DEFAULT_CONFIG, sasl=sasl, **config))
    conn = factory.buildProtocol(None)
    tr = StringTransport()
    conn.makeConnection(tr)
    return clock, conn, tr


def frames_out(tr) -> list[bytes]:
    """The response frames written so far (each must be whole), without their length."""
    output.flush_pending()
    out = tr.value()
    tr.clear()
    frames = []
    while out:
        (n,) = struct.unpack(">i", out[:4])
        assert len(out) >= 4 + n
        frames.append(out[4 : 4 + n])
        out = out[4 + n :]
    return frames


def corrs_out(tr) -> list[int]:
    return [struct.unpack(">i", f[:4])[0] for f in frames_out(tr)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(requests(), min_size=1, max_size=6), sasl=st.booleans())
def test_session_never_fails_internally(reqs, sasl):
    clock, conn, tr = make_session(sasl)
    failures = []
    sess = conn.session
    sess.internal_error = failures.append
    for i, (api, ver, body) in enumerate(reqs):
        conn.dataReceived(C.encode_request(api, ver, i, "fuzz", body))
        clock.advance(1)
        if conn.closing:
            break
    clock.advance(120)
    assert failures == []
    frames_out(tr)  # every response is a whole frame
    conn.connectionLost(None)
    conn.factory.server.coordinator.close()


def test_responses_in_request_order_while_join_waits():
    clock, conn, tr = make_session()
    conn.factory.server.coordinator.initial_delay = 0.5
    join = {
        "group_id": "g",
        "session_timeout_ms": 1000,
        "rebalance_timeout_ms": 1000,
        "member_id": "",
        "group_instance_id": None,
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": b""}],
    }
    conn.dataReceived(C.encode_request(C.JOIN_GROUP, 5, 1, "c", join))
    conn.dataReceived(C.encode_request(C.API_VERSIONS, 0, 2, "c", {}))
    assert frames_out(tr) == []  # the ApiVersions answer waits behind the JoinGroup
    clock.advance(0.6)
    assert corrs_out(tr) == [1, 2]


def test_coordinator_rebalance_and_session_timeout():
    clock = Clock()
    broker = Broker(MemoryStore(), clock=clock)
    co = Coordinator(broker, 0)
    got = {}

    def rec(key):
        return lambda body: got.__setitem__(key, body)

    co.join("g", "", "a", "h", 1000, 1000, "consumer", [("range", b"A"), ("rr", b"a")], rec("a1"))
    a = got["a1"]["member_id"]
    assert got["a1"]["generation_id"] == 1 and got["a1"]["leader"] == a
    co.sync("g", 1, a, [(a, b"all")], rec("sa"))
    assert got["sa"] == {"error_code": 0, "assignment": b"all"}
    # b joins: rebalance; a learns it from its heartbeat and rejoins
    co.join("g", "", "b", "h", 1000, 1000, "consumer", [("rr", b"B")], rec("b1"))
    assert "b1" not in got
    assert co.heartbeat("g", 1, a) == C.REBALANCE_IN_PROGRESS
    co.join("g", a, "a", "h", 1000, 1000, "consumer", [("range", b"A"), ("rr", b"a")], rec("a2"))
    assert got["a2"]["generation_id"] == 2 and got["a2"]["protocol_name"] == "rr"
    assert len(got["a2"]["members"]) == 2 and got["b1"]["members"] == []
    b = got["b1"]["member_id"]
    co.sync("g", 2, b, [], rec("sb0"))
    assert "sb0" not in got  # waits for the leader
    # a repeated SyncGroup answers the earlier one (its connection would stall otherwise)
    co.sync("g", 2, b, [], rec("sb"))
    assert got["sb0"]["error_code"] == C.REBALANCE_IN_PROGRESS and "sb" not in got
    co.sync("g", 2, a, [(a, b"x"), (b, b"y")], rec("sa2"))
    assert got["sb"]["assignment"] == b"y" and got["sa2"]["assignment"] == b"x"
    # b stops heartbeating: after its session timeout a is alone again
    for _ in range(12):
        clock.advance(0.1)
        co.heartbeat("g", 2, a)
    assert co.heartbeat("g", 2, a) == C.REBALANCE_IN_PROGRESS
    co.join("g", a, "a", "h", 1000, 1000, "consumer", [("range", b"A")], rec("a3"))
    assert got["a3"]["generation_id"] == 3 and len(got["a3"]["members"]) == 1
    assert co.heartbeat("g", 2, a) == C.ILLEGAL_GENERATION
    assert co.heartbeat("g", 3, "nobody") == C.UNKNOWN_MEMBER_ID
    # an incompatible protocol is refused
    co.join("g", "", "c", "h", 1000, 1000, "consumer", [("other", b"")], rec("c"))
    assert got["c"]["error_code"] == C.INCONSISTENT_GROUP_PROTOCOL
    co.close()


def test_coordinator_static_member_rejoins_without_rebalance():
    clock = Clock()
    co = Coordinator(Broker(MemoryStore(), clock=clock), 0)
    got = {}

    def rec(key):
        return lambda body: got.__setitem__(key, body)

    proto = [("range", b"M")]
    co.join("g", "", "a", "h", 5000, 5000, "consumer", proto, rec("a1"), "inst-a")
    a = got["a1"]["member_id"]
    co.sync("g", 1, a, [(a, b"all")], rec("sa1"))
    co.join("g", "", "b", "h", 5000, 5000, "consumer", proto, rec("b1"), "inst-b")
    co.join("g", a, "a", "h", 5000, 5000, "consumer", proto, rec("a2"), "inst-a")
    b = got["b1"]["member_id"]
    assert got["a2"]["generation_id"] == 2
    assert {m["group_instance_id"] for m in got["a2"]["members"]} == {"inst-a", "inst-b"}
    co.sync("g", 2, b, [], rec("sb"))
    co.sync("g", 2, a, [(a, b"pa"), (b, b"pb")], rec("sa2"))
    assert got["sb"]["assignment"] == b"pb"
    # b's process restarts: same instance id, no member id -> answered at once, same generation
    co.join("g", "", "b", "h", 5000, 5000, "consumer", proto, rec("b2"), "inst-b")
    b2 = got["b2"]["member_id"]
    assert got["b2"]["error_code"] == 0 and got["b2"]["generation_id"] == 2 and b2 != b
    assert co.heartbeat("g", 2, a) == 0  # no rebalance for the others
    co.sync("g", 2, b2, [], rec("sb2"))
    assert got["sb2"]["assignment"] == b"pb"  # its old assignment
    # the old process is fenced
    assert co.heartbeat("g", 2, b) == C.UNKNOWN_MEMBER_ID
    co.join("g", b, "b", "h", 5000, 5000, "consumer", proto, rec("b3"), "inst-b")
    assert got["b3"]["error_code"] == C.FENCED_INSTANCE_ID
    co.close()


def test_transport_back_pressure_and_frame_split():
    output.flush_pending()  # no flush left scheduled on an earlier test's clock

    broker = Broker(MemoryStore(), clock=Clock())
    factory = KafkaFactory(broker, dict(DEFAULT_CONFIG))
    proto = factory.buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    assert tr.producer is proto and tr.streaming
    # when our writes back up, reading from the client stops; it resumes when they drain
    proto.pauseProducing()
    assert tr.producerState == "paused"
    proto.resumeProducing()
    assert tr.producerState == "producing"
    # frames split at every byte boundary still come out whole and in order
    data = b"".join(C.encode_request(C.API_VERSIONS, 0, i, "c", {}) for i in range(3))
    for i in range(len(data)):
        proto.dataReceived(data[i : i + 1])
    out = tr.value()
    corrs = []
    while out:
        (n,) = struct.unpack(">i", out[:4])
        corrs.append(struct.unpack(">i", out[4:8])[0])
        out = out[4 + n :]
    assert corrs == [0, 1, 2]
    # a negative length closes the connection
    proto.dataReceived(struct.pack(">i", -1))
    assert tr.disconnecting


def produce_req(topic: str, value: bytes, acks: int = 1) -> dict:
    return {
        "transactional_id": None,
        "acks": acks,
        "timeout_ms": 5000,
        "topic_data": [
            {
                "name": topic,
                "partition_data": [{"index": 0, "records": encode_batch([(None, value, [], 1)])}],
            }
        ],
    }


def fetch_req(topic: str, offset: int = 0, max_wait_ms: int = 0) -> dict:
    return {
        "replica_id": -1,
        "max_wait_ms": max_wait_ms,
        "min_bytes": 1,
        "max_bytes": 10**6,
        "isolation_level": 0,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [
            {
                "topic": topic,
                "partitions": [
                    {
                        "partition": 0,
                        "current_leader_epoch": -1,
                        "fetch_offset": offset,
                        "log_start_offset": -1,
                        "partition_max_bytes": 10**6,
                    }
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }


def test_publishing_blocked_holds_produce_answers_and_reading():
    clock, conn, tr = make_session()
    conn.dataReceived(C.encode_request(C.PRODUCE, 7, 1, "c", produce_req("t", b"before")))
    assert corrs_out(tr) == [1]
    conn.factory.registry.set_publishing_blocked(True, "memory")
    conn.dataReceived(
        C.encode_request(C.PRODUCE, 3, 2, "c", produce_req("t", b"v3"))
        + C.encode_request(C.PRODUCE, 7, 3, "c", produce_req("t", b"v7"))
        + C.encode_request(C.API_VERSIONS, 0, 4, "c", {})
    )
    assert frames_out(tr) == []  # held, and the ApiVersions answer stays behind them
    assert tr.producerState == "paused"  # no more requests are read meanwhile
    clock.advance(2.5)
    assert frames_out(tr) == []
    conn.factory.registry.set_publishing_blocked(False)
    clock.advance(0)
    frames = frames_out(tr)
    assert [struct.unpack(">i", f[:4])[0] for f in frames] == [2, 3, 4]
    assert tr.producerState == "producing"
    _, v3 = C.decode_response(C.PRODUCE, 3, frames[0])
    _, v7 = C.decode_response(C.PRODUCE, 7, frames[1])
    # v0-5: the delay the broker applied; v6+: a wait still to come, served already
    assert 2400 <= v3.throttle_time_ms <= 2600
    assert v7.throttle_time_ms == 0
    assert [r.responses[0].partition_responses[0].base_offset for r in (v3, v7)] == [1, 2]


def test_idle_timeout_is_kafkas_connections_max_idle_ms():
    clock, conn, tr = make_session()
    assert conn.factory.idle_timeout == 600.0
    conn.dataReceived(C.encode_request(C.API_VERSIONS, 0, 1, "c", {}))
    clock.advance(599)
    assert not tr.disconnecting
    conn.dataReceived(C.encode_request(C.API_VERSIONS, 0, 2, "c", {}))
    clock.advance(599)
    assert not tr.disconnecting  # the silence is counted from the last request
    clock.advance(2)
    assert tr.disconnecting


def test_authorization_check_points_and_counters():
    clock, conn, tr = make_session()
    asked = []

    def authorizer(identity, vhost, action, kind, name):
        asked.append((action, kind, name))
        return not name.startswith("secret")

    conn.broker.authorizer = authorizer
    conn.dataReceived(
        C.encode_request(C.PRODUCE, 7, 1, "c", produce_req("open", b"a"))
        + C.encode_request(C.PRODUCE, 7, 2, "c", produce_req("open", b"b"))
        + C.encode_request(C.PRODUCE, 7, 3, "c", produce_req("secret", b"x"))
    )
    frames = frames_out(tr)
    codes = [
        C.decode_response(C.PRODUCE, 7, f)[1].responses[0].partition_responses[0].error_code
        for f in frames
    ]
    assert codes == [0, 0, C.TOPIC_AUTHORIZATION_FAILED]
    # write asked once per topic and connection; the auto-creation asked for configure
    assert asked == [
        ("write", "topic", "open"),
        ("configure", "topic", "open"),
        ("write", "topic", "secret"),
    ]
    assert conn.info.messages_in == 2
    conn.dataReceived(C.encode_request(C.FETCH, 11, 4, "c", fetch_req("open")))
    conn.dataReceived(C.encode_request(C.FETCH, 11, 5, "c", fetch_req("secret")))
    f_open, f_secret = frames_out(tr)
    _, r = C.decode_response(C.FETCH, 11, f_open)
    assert r.responses[0].partitions[0].error_code == 0
    _, r = C.decode_response(C.FETCH, 11, f_secret)
    assert r.responses[0].partitions[0].error_code == C.TOPIC_AUTHORIZATION_FAILED
    assert conn.info.messages_out == 2
    join = {
        "group_id": "secret-group",
        "session_timeout_ms": 1000,
        "rebalance_timeout_ms": 1000,
        "member_id": "",
        "group_instance_id": None,
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": b""}],
    }
    conn.dataReceived(C.encode_request(C.JOIN_GROUP, 5, 6, "c", join))
    (f,) = frames_out(tr)
    _, r = C.decode_response(C.JOIN_GROUP, 5, f)
    assert r.error_code == C.GROUP_AUTHORIZATION_FAILED
    assert ("read", "group", "secret-group") in asked
    assert conn.info.client_id == "c" and conn.info.protocol == "kafka"


def test_socket_back_pressure_pauses_reading_once():
    """Twisted pauses its producer on every write while the buffer is full and resumes it
    once: reading must resume after that one resume (a big Fetch answer must not hang)."""
    clock, conn, tr = make_session()
    for _ in range(3):
        conn.pauseProducing()
    assert tr.producerState == "paused"
    conn.resumeProducing()
    assert tr.producerState == "producing"
    conn.dataReceived(C.encode_request(C.API_VERSIONS, 0, 7, "c", {}))
    assert corrs_out(tr) == [7]


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
)
def test_length_prefixed_framer_views_survive_later_reads(bodies, cuts):
    """The Kafka listener's framer (views of the reads): every frame comes out whole however
    the stream is cut, and a frame handed out stays intact while later reads arrive."""
    from polymq.core.framing import LengthPrefixedFramer

    stream = b"".join(struct.pack(">i", len(b)) + b for b in bodies)
    framer = LengthPrefixedFramer(1000, views=True)
    got = []
    pos = 0
    for cut in sorted(set(c for c in cuts if c < len(stream))) + [len(stream)]:
        got.extend(framer.feed(stream[pos:cut]))
        pos = cut
    assert [bytes(f) for f in got] == bodies
    assert framer.buffered == 0
