"""The Kafka session in-process (no sockets): structurally valid random requests of every API
are generated from the codec's declarations and must never hit an internal error; the group
coordinator's state machine on a fake clock."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from polymq.adapters.kafka import codec as C
from polymq.adapters.kafka import session as S
from polymq.adapters.kafka.groups import Coordinator
from polymq.adapters.kafka.plugin import DEFAULT_CONFIG
from polymq.adapters.kafka.records import encode_batch
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
    C.NBYTES: st.none() | st.binary(max_size=20) | st.just(
        encode_batch([(b"k", b"v", [], 1)])),
}


def strategy(fields, version):
    d = {}
    for name, typ, since, until in fields:
        if since <= version <= until:
            d[name] = type_strategy(typ, version)
    return st.fixed_dictionaries(d)


def type_strategy(typ, version):
    if isinstance(typ, C.Arr):
        inner = (PRIMS[typ.fields] if isinstance(typ.fields, str)
                 else strategy(typ.fields, version))
        s = st.lists(inner, max_size=3)
        return st.none() | s if typ.nullable else s
    return PRIMS[typ]


def requests():
    cases = []
    for api, (lo, hi) in C.API_RANGES.items():
        for ver in range(lo, hi + 1):
            if ver in C.REFUSED_VERSIONS.get(api, ()):
                continue
            cases.append(st.tuples(st.just(api), st.just(ver),
                                   strategy(C.SCHEMAS[api][0], ver)))
    return st.one_of(cases)


def make_session(sasl=False):
    clock = Clock()
    broker = Broker(MemoryStore(), clock=clock)
    section = dict(DEFAULT_CONFIG, sasl=sasl)
    server = S.KafkaServer(broker, section)
    out = []
    closed = []
    sess = S.KafkaSession(server, out.append, lambda: closed.append(True), peer="test:1",
                          local_port=9092)
    return clock, sess, out, closed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(requests(), min_size=1, max_size=6), sasl=st.booleans())
def test_session_never_fails_internally(reqs, sasl):
    clock, sess, out, closed = make_session(sasl)
    failures = []
    orig = sess.violation

    def violation(text):
        failures.append(text)
        orig(text)

    sess.violation = violation
    for i, (api, ver, body) in enumerate(reqs):
        frame = C.encode_request(api, ver, i, "fuzz", body)
        sess.handle_frame(memoryview(frame)[4:])
        clock.advance(1)
        if sess.closed:
            break
    clock.advance(120)
    assert "internal error" not in failures
    for chunks in out:
        frame = b"".join(chunks)
        assert struct.unpack(">i", frame[:4])[0] == len(frame) - 4
    sess.close()
    sess.server.coordinator.close()


def test_responses_in_request_order_while_join_waits():
    clock, sess, out, closed = make_session()
    sess.server.coordinator.initial_delay = 0.5
    join = {"group_id": "g", "session_timeout_ms": 1000, "rebalance_timeout_ms": 1000,
            "member_id": "", "group_instance_id": None, "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": b""}]}
    sess.handle_frame(memoryview(C.encode_request(C.JOIN_GROUP, 5, 1, "c", join))[4:])
    sess.handle_frame(memoryview(C.encode_request(C.API_VERSIONS, 0, 2, "c", {}))[4:])
    assert out == []  # the ApiVersions answer waits behind the JoinGroup
    clock.advance(0.6)
    corrs = [struct.unpack(">i", b"".join(c)[4:8])[0] for c in out]
    assert corrs == [1, 2]


def test_coordinator_rebalance_and_session_timeout():
    clock = Clock()
    broker = Broker(MemoryStore(), clock=clock)
    co = Coordinator(broker, 0)
    got = {}

    def rec(key):
        return lambda body: got.__setitem__(key, body)

    co.join("g", "", "a", "h", 1000, 1000, "consumer", [("range", b"A"), ("rr", b"a")],
            rec("a1"))
    a = got["a1"]["member_id"]
    assert got["a1"]["generation_id"] == 1 and got["a1"]["leader"] == a
    co.sync("g", 1, a, [(a, b"all")], rec("sa"))
    assert got["sa"] == {"error_code": 0, "assignment": b"all"}
    # b joins: rebalance; a learns it from its heartbeat and rejoins
    co.join("g", "", "b", "h", 1000, 1000, "consumer", [("rr", b"B")], rec("b1"))
    assert "b1" not in got
    assert co.heartbeat("g", 1, a) == C.REBALANCE_IN_PROGRESS
    co.join("g", a, "a", "h", 1000, 1000, "consumer", [("range", b"A"), ("rr", b"a")],
            rec("a2"))
    assert got["a2"]["generation_id"] == 2 and got["a2"]["protocol_name"] == "rr"
    assert len(got["a2"]["members"]) == 2 and got["b1"]["members"] == []
    b = got["b1"]["member_id"]
    co.sync("g", 2, b, [], rec("sb"))
    assert "sb" not in got  # waits for the leader
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


def test_transport_back_pressure_and_frame_split():
    from twisted.internet.testing import StringTransport

    from polymq.adapters.kafka.transport import KafkaFactory
    from polymq.core import output

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
        proto.dataReceived(data[i:i + 1])
    out = tr.value()
    corrs = []
    while out:
        (n,) = struct.unpack(">i", out[:4])
        corrs.append(struct.unpack(">i", out[4:8])[0])
        out = out[4 + n:]
    assert corrs == [0, 1, 2]
    # a negative length closes the connection
    proto.dataReceived(struct.pack(">i", -1))
    assert tr.disconnecting
