"""In-process transport tests: framing across arbitrary chunk boundaries and back-pressure
(the protocol is the transport's push producer; pausing it pauses the core consumers)."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from polymq.adapters.openwire import codec as c
from polymq.adapters.openwire.codec import Obj
from polymq.adapters.openwire.transport import OpenWireFactory
from polymq.core import output
from polymq.core.broker import Broker
from polymq.core.message import Message


class TurnTransport(StringTransport):
    """What the socket has got by the end of the reactor turn: output made outside a read
    (a publish from the core) is gathered until then."""

    def value(self) -> bytes:
        output.flush_pending()
        return super().value()


def setup():
    broker = Broker(clock=Clock())
    factory = OpenWireFactory(broker, {"max_inactivity_ms": 0})
    proto = factory.buildProtocol(None)
    tr = TurnTransport()
    proto.makeConnection(tr)
    return broker, proto, tr


def frames(data: bytes, cache: list | None = None) -> list[Obj | tuple]:
    out = []
    while data:
        size = struct.unpack(">i", data[:4])[0]
        frame, data = data[4 : 4 + size], data[4 + size :]
        if frame[0] == c.WIREFORMAT_INFO:
            out.append(("wireformat",))
        else:
            out.append(c.decode_command(frame, cache))
    return out


def feed(proto, data: bytes, chunk: int) -> None:
    for i in range(0, len(data), chunk):
        proto.dataReceived(data[i : i + chunk])


def connect(proto, tr, chunk=1):
    hello = c.encode_wireformat(12, {"MaxInactivityDuration": 0}, {"MaxInactivityDuration": "long"})
    ci = c.encode_frame(
        Obj(
            c.CONNECTION_INFO,
            command_id=1,
            response_required=True,
            connection_id=Obj(c.CONNECTION_ID, value="ID:t"),
        )
    )
    cons = c.encode_frame(
        Obj(
            c.CONSUMER_INFO,
            command_id=2,
            response_required=True,
            consumer_id=Obj(c.CONSUMER_ID, connection_id="ID:t", session_id=1, value=1),
            destination=Obj(c.QUEUE, physical_name="bp.q"),
            prefetch_size=1000,
        )
    )
    feed(proto, hello + ci + cons, chunk)
    got = frames(tr.value())
    tr.clear()
    return got


def test_framing_byte_by_byte():
    broker, proto, tr = setup()
    assert tr.producer is proto and tr.streaming
    got = connect(proto, tr, chunk=1)
    assert got[0] == ("wireformat",)
    assert [x.type for x in got[1:]] == [c.BROKER_INFO, c.RESPONSE, c.RESPONSE]
    assert [x.correlation_id for x in got[2:]] == [1, 2]


def test_pause_and_resume_producing():
    broker, proto, tr = setup()
    connect(proto, tr, chunk=7)
    vh = broker.vhost()
    vh.publish("", "bp.q", Message(b"a"))
    assert [x.type for x in frames(tr.value())] == [c.MESSAGE_DISPATCH]
    tr.clear()
    proto.pauseProducing()
    for i in range(5):
        vh.publish("", "bp.q", Message(b"x%d" % i))
    assert tr.value() == b""
    assert vh.queues["bp.q"].message_count == 5
    proto.resumeProducing()
    got = frames(tr.value())
    assert len(got) == 5 and all(x.type == c.MESSAGE_DISPATCH for x in got)
    assert vh.queues["bp.q"].message_count == 0


def test_connection_lost_requeues():
    broker, proto, tr = setup()
    connect(proto, tr)
    vh = broker.vhost()
    vh.publish("", "bp.q", Message(b"a"))
    q = vh.queues["bp.q"]
    assert q.message_count == 0
    proto.connectionLost(None)
    assert q.message_count == 1 and q.consumer_count == 0


def test_same_message_twice_on_one_consumer_gets_distinct_ids():
    broker, proto, tr = setup()
    connect(proto, tr)
    vh = broker.vhost()
    q = vh.queues["bp.q"]
    m = Message(b"twice", content_type="text/plain")
    q.enqueue(m)
    q.enqueue(m)
    got = frames(tr.value())
    assert len(got) == 2
    ids = [x.message.message_id.broker_sequence_id for x in got]
    assert ids[0] != ids[1]
    assert all(x.message.type == c.TEXT_MESSAGE for x in got)
    # a standard ack of the second settles both (dispatch order)
    last = got[1].message.message_id
    proto.dataReceived(
        c.encode_frame(
            Obj(
                c.MESSAGE_ACK,
                command_id=5,
                consumer_id=got[1].consumer_id,
                ack_type=2,
                last_message_id=last,
                message_count=2,
            )
        )
    )
    assert not q.unacked


# -- session fuzz: well-formed frames carrying nonsense (wrong nested types, nulls) -----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from twisted.logger import globalLogPublisher  # noqa: E402

_SMALL_TYPES = [t for t, spec in c.SCHEMA.items() if not spec[1]]


def _value(kind: str, depth: int):
    if kind == "z":
        return st.booleans()
    if kind == "b":
        return st.integers(-128, 127)
    if kind == "h":
        return st.integers(-(2**15), 2**15 - 1)
    if kind == "i":
        return st.integers(-5, 5) | st.integers(-(2**31), 2**31 - 1)
    if kind == "l":
        return st.integers(-5, 5) | st.integers(-(2**63), 2**63 - 1)
    if kind == "s":
        return st.none() | st.sampled_from(["ID:t", "bp.q", "x", "", "a.>", "color = 'r'"])
    if kind == "y":
        return st.none() | st.binary(max_size=12)
    if kind == "t":
        text = st.none() | st.text(max_size=5)
        return st.none() | st.tuples(text, text)
    if kind == "o" or kind == "c":
        return st.none() | _obj(depth + 1) if depth < 2 else st.none()
    if kind == "O":
        return st.none() | st.lists(_obj(depth + 1), max_size=2) if depth < 2 else st.none()
    raise AssertionError(kind)


def _obj(depth: int, types=None):
    types = types or (_SMALL_TYPES if depth else sorted(c.SCHEMA))

    def build(t):
        fields = {name: _value(kind, depth) for name, kind in c.SCHEMA[t][2]}
        return st.fixed_dictionaries(fields).map(
            lambda d, t=t: Obj(t, command_id=1, response_required=True, **d)
        )

    return st.sampled_from(types).flatmap(build)


class NoCrash:
    """Collects the tracebacks the connection's error boundary logs: nonsense from a client
    must be a protocol error (a ConnectionError and a closed connection), never a bug."""

    def __enter__(self):
        self.failures = []
        globalLogPublisher.addObserver(self._observe)
        return self

    def _observe(self, event):
        if event.get("log_failure") is not None:
            self.failures.append(event["log_failure"].getTraceback())

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self._observe)
        assert not self.failures, self.failures[0]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_obj(0), min_size=1, max_size=6))
def test_session_survives_nonsense_commands(cmds):
    broker, proto, tr = setup()
    connect(proto, tr)
    with NoCrash():
        for cmd in cmds:
            if proto.closing:
                break
            proto.dataReceived(c.encode_frame(cmd))
        proto.connectionLost(None)


def _tx_ack_then_close_consumer(commit: bool):
    broker, proto, tr = setup()
    connect(proto, tr)
    q = broker.vhost().queues["bp.q"]
    q.enqueue(Message(b"t"))
    (disp,) = frames(tr.value())
    tr.clear()
    tid = Obj(c.LOCAL_TRANSACTION_ID, value=1, connection_id=Obj(c.CONNECTION_ID, value="ID:t"))
    cid = disp.consumer_id

    def send(o):
        proto.dataReceived(c.encode_frame(o))

    send(Obj(c.TRANSACTION_INFO, command_id=10, transaction_id=tid, tx_type=0))
    send(
        Obj(
            c.MESSAGE_ACK,
            command_id=11,
            consumer_id=cid,
            transaction_id=tid,
            ack_type=2,
            last_message_id=disp.message.message_id,
            message_count=1,
        )
    )
    send(
        Obj(
            c.REMOVE_INFO,
            command_id=12,
            response_required=True,
            object_id=cid,
            last_delivered_sequence_id=disp.message.message_id.broker_sequence_id,
        )
    )
    assert q.message_count == 0  # still held by the transaction
    send(
        Obj(
            c.TRANSACTION_INFO,
            command_id=13,
            response_required=True,
            transaction_id=tid,
            tx_type=2 if commit else 4,
        )
    )
    return q


def test_transaction_commit_after_consumer_closed_settles():
    q = _tx_ack_then_close_consumer(commit=True)
    assert q.message_count == 0 and not q.unacked


def test_transaction_rollback_after_consumer_closed_requeues():
    q = _tx_ack_then_close_consumer(commit=False)
    assert q.message_count == 1 and not q.unacked


# -- the marshalling cache, negotiated ----------------------------------------------------------


def test_cache_negotiation():
    for offer, size, expected in (
        (True, 8, 8),
        (True, 5000, 1024),
        (False, 8, None),
        (True, 0, None),
    ):
        broker, proto, tr = setup()
        hello = c.encode_wireformat(
            12,
            {"MaxInactivityDuration": 0, "CacheEnabled": offer, "CacheSize": size},
            {"MaxInactivityDuration": "long"},
        )
        proto.dataReceived(hello)
        assert proto.session.cached is (expected is not None)
        if expected:
            assert len(proto.session.ucache) == expected
    broker = Broker(clock=Clock())
    proto = OpenWireFactory(broker, {"cache_size": 0}).buildProtocol(None)
    tr = TurnTransport()
    proto.makeConnection(tr)
    proto.dataReceived(c.encode_wireformat(12, {"CacheEnabled": True, "CacheSize": 8}, {}))
    assert not proto.session.cached


def test_cached_form_end_to_end():
    """A client with a marshalling cache: its references are resolved, and what the broker
    sends decodes through the client's unmarshalling cache (the dispatch head stores the
    consumer id and destination once, then refers to them)."""
    from openwire_oracle import ClientWriter

    broker, proto, tr = setup()
    w = ClientWriter(8)
    mine: list = [None] * 8
    conn_id = Obj(c.CONNECTION_ID, value="ID:cc")
    cid = Obj(c.CONSUMER_ID, connection_id="ID:cc", session_id=1, value=1)
    dest = Obj(c.QUEUE, physical_name="cc.q")
    pid = Obj(c.PRODUCER_ID, connection_id="ID:cc", value=1, session_id=1)
    proto.dataReceived(
        c.encode_wireformat(
            12,
            {"MaxInactivityDuration": 0, "CacheEnabled": True, "CacheSize": 8},
            {"MaxInactivityDuration": "long"},
        )
    )

    def send(o):
        body = w.frame(o)
        proto.dataReceived(struct.pack(">i", len(body)) + body)

    send(Obj(c.CONNECTION_INFO, command_id=1, response_required=True, connection_id=conn_id))
    send(
        Obj(
            c.CONSUMER_INFO,
            command_id=2,
            response_required=True,
            consumer_id=cid,
            destination=dest,
            prefetch_size=1000,
        )
    )
    got = frames(tr.value(), mine)
    tr.clear()
    assert [x.type for x in got[1:]] == [c.BROKER_INFO, c.RESPONSE, c.RESPONSE]
    for k in range(3):  # the client's references: producer id, destination, null tx ...
        send(
            Obj(
                c.BYTES_MESSAGE,
                command_id=10 + k,
                producer_id=pid,
                destination=dest,
                message_id=Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=k),
                priority=4,
                content=b"m%d" % k,
            )
        )
    broker.vhost().publish("", "cc.q", Message(b"from the core"))
    got = frames(tr.value(), mine)
    tr.clear()
    assert [x.type for x in got] == [c.MESSAGE_DISPATCH] * 4
    assert all(x.consumer_id == cid and x.destination == dest for x in got)
    assert [x.message.content for x in got] == [b"m0", b"m1", b"m2", b"from the core"]
    assert all(x.message.producer_id == pid for x in got[:3])
    assert len(tr.value()) == 0 and mine[:2] == [cid, dest]
    last = got[-1].message.message_id
    send(
        Obj(
            c.MESSAGE_ACK,
            command_id=20,
            destination=dest,
            consumer_id=cid,
            ack_type=2,
            first_message_id=got[0].message.message_id,
            last_message_id=last,
            message_count=4,
        )
    )
    assert not broker.vhost().queues["cc.q"].unacked


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_obj(0), min_size=1, max_size=6), st.binary(max_size=3))
def test_session_survives_nonsense_commands_cached_form(cmds, junk):
    broker, proto, tr = setup()
    proto.dataReceived(
        c.encode_wireformat(
            12, {"MaxInactivityDuration": 0, "CacheEnabled": True, "CacheSize": 4}, {}
        )
    )
    proto.dataReceived(
        c.encode_frame(
            Obj(c.CONNECTION_INFO, command_id=1, connection_id=Obj(c.CONNECTION_ID, value="ID:f")),
            cached=True,
        )
    )
    with NoCrash():
        for cmd in cmds:
            if proto.closing:
                break
            proto.dataReceived(c.encode_frame(cmd, cached=True))
        # a reference to a slot that may be out of range, empty or of another type: an error
        # or a null, never a crash
        if not proto.closing:
            ref = b"\x00" + junk[:2].ljust(2, b"\x00")
            body = bytes((c.REMOVE_INFO,)) + b"\x00\x00\x00\x05\x00" + ref + b"\x00" * 8
            proto.dataReceived(struct.pack(">i", len(body)) + body)
        proto.connectionLost(None)


def _client(factory, name: str, cached: bool, dest: Obj | None):
    """A connection in the given form (with a consumer of ``dest`` unless None): its
    protocol, transport, a function that sends a command and its unmarshalling cache."""
    from openwire_oracle import ClientWriter

    proto, tr = factory.buildProtocol(None), TurnTransport()
    proto.makeConnection(tr)
    proto.dataReceived(
        c.encode_wireformat(
            12,
            {"MaxInactivityDuration": 0, "CacheEnabled": cached, "CacheSize": 16},
            {"MaxInactivityDuration": "long"},
        )
    )
    w = ClientWriter(16) if cached else None

    def send(o):
        body = w.frame(o) if w is not None else c.encode_frame(o)[4:]
        proto.dataReceived(struct.pack(">i", len(body)) + body)

    send(Obj(c.CONNECTION_INFO, command_id=1, connection_id=Obj(c.CONNECTION_ID, value=name)))
    tr.clear()
    if dest is not None:
        cid = Obj(c.CONSUMER_ID, connection_id=name, session_id=1, value=1)
        send(
            Obj(c.CONSUMER_INFO, command_id=2, prefetch_size=100, destination=dest, consumer_id=cid)
        )
    return proto, tr, send, [None] * 16 if cached else None


@pytest.mark.parametrize("producer_cached", [True, False])
def test_one_message_to_a_plain_and_a_cached_consumer(producer_cached):
    """A topic message from a producer of either form reaches a plain-form consumer and a
    cached-form consumer, each in its own form (the hub keeps one encoding per form)."""
    broker = Broker(clock=Clock())
    factory = OpenWireFactory(broker, {"max_inactivity_ms": 0})
    topic = Obj(c.TOPIC, physical_name="mix.t")
    conns = [
        _client(factory, "ID:plain", False, topic),
        _client(factory, "ID:cached", True, topic),
        _client(factory, "ID:producer", producer_cached, None),
    ]
    for _, tr, _, cache in conns:
        got = frames(tr.value(), list(cache) if cache is not None else None)
        assert not [x for x in got if getattr(x, "type", None) == c.EXCEPTION_RESPONSE], got
        tr.clear()
    pid = Obj(c.PRODUCER_ID, connection_id="ID:producer", value=1, session_id=1)
    send = conns[2][2]
    for k in range(3):
        send(
            Obj(
                c.TEXT_MESSAGE,
                command_id=5 + k,
                producer_id=pid,
                destination=topic,
                message_id=Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=k),
                priority=4,
                content=c.encode_text_body(f"hello {k}"),
                correlation_id="corr",
            )
        )
    for _proto, tr, _, cache in conns[:2]:
        got = frames(tr.value(), cache)
        assert [x.type for x in got] == [c.MESSAGE_DISPATCH] * 3
        for k, d in enumerate(got):
            m = d.message
            assert m.type == c.TEXT_MESSAGE and c.decode_text_body(m.content) == f"hello {k}"
            assert m.producer_id == pid and m.destination == topic
            assert m.message_id.producer_sequence_id == k and m.correlation_id == "corr"


def test_queued_messages_reach_a_plain_consumer_that_comes_later():
    """While every connection uses the cached form, a message keeps only its dispatch
    encoding (not its frame); a plain-form consumer that attaches later still gets every
    field as sent, and a cached-form one gets that kept encoding."""
    broker = Broker(clock=Clock())
    factory = OpenWireFactory(broker, {"max_inactivity_ms": 0})
    queue = Obj(c.QUEUE, physical_name="later.q")
    _, _, send, _ = _client(factory, "ID:producer", True, None)
    pid = Obj(c.PRODUCER_ID, connection_id="ID:producer", value=1, session_id=1)
    for k in range(4):
        send(
            Obj(
                c.BYTES_MESSAGE,
                command_id=5 + k,
                producer_id=pid,
                destination=queue,
                message_id=Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=k),
                priority=4,
                timestamp=1_700_000_000_000 + k,
                content=b"body %d" % k,
                correlation_id="corr",
                marshalled_properties=c.encode_primitive_map({"n": k}),
            )
        )
    hub = factory.hub
    kept = [d.message.encoded for d in broker.vhost().queues["later.q"]._levels[0]]
    assert len(kept) == 4 and all(e[2] is None and isinstance(e[4], bytes) for e in kept)
    got = {}
    for name, cached in (("ID:plain", False), ("ID:cached", True)):
        proto, tr, _, cache = _client(factory, name, cached, queue)
        dispatches = [f for f in frames(tr.value(), cache) if f.type == c.MESSAGE_DISPATCH]
        got[name] = [d.message for d in dispatches]
        proto.connectionLost(None)  # its deliveries go back for the next consumer
    assert hub.plain_sessions == 0
    for name, msgs in got.items():
        assert [m.message_id.producer_sequence_id for m in msgs] == [0, 1, 2, 3], name
        for k, m in enumerate(msgs):
            assert m.type == c.BYTES_MESSAGE and m.content == b"body %d" % k, name
            assert m.producer_id == pid and m.destination == queue, name
            assert m.correlation_id == "corr" and m.timestamp == 1_700_000_000_000 + k, name
            assert c.decode_primitive_map(c.Reader(m.marshalled_properties), 1024) == {"n": k}


def test_resource_alarm_holds_back_publishers_only():
    """The broker-wide resource alarm: a connection that publishes is no longer read from and
    its ProducerAcks wait; a consuming connection keeps being read (its acks free memory).
    Clearing the alarm resumes reading and sends the held ProducerAcks."""
    broker = Broker(clock=Clock())
    factory = OpenWireFactory(broker, {"max_inactivity_ms": 0})
    consumer, ctr = factory.buildProtocol(None), TurnTransport()
    consumer.makeConnection(ctr)
    connect(consumer, ctr)
    producer, ptr = factory.buildProtocol(None), TurnTransport()
    producer.makeConnection(ptr)
    conn_id = Obj(c.CONNECTION_ID, value="ID:p")
    pid = Obj(c.PRODUCER_ID, connection_id="ID:p", value=1, session_id=1)
    dest = Obj(c.QUEUE, physical_name="bp.q")
    producer.dataReceived(
        c.encode_wireformat(12, {"MaxInactivityDuration": 0}, {})
        + c.encode_frame(Obj(c.CONNECTION_INFO, command_id=1, connection_id=conn_id))
        + c.encode_frame(
            Obj(c.PRODUCER_INFO, command_id=2, producer_id=pid, destination=dest, window_size=65536)
        )
    )
    ptr.clear()
    ctr.clear()
    factory.registry.set_publishing_blocked(True, "memory alarm")
    assert ptr.producerState == "paused" and ctr.producerState == "producing"
    msg = Obj(
        c.BYTES_MESSAGE,
        command_id=3,
        producer_id=pid,
        destination=dest,
        content=b"x",
        message_id=Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=1),
    )
    producer.dataReceived(c.encode_frame(msg))  # already in flight when reading stopped
    assert ptr.value() == b""  # its ProducerAck is held
    (disp,) = frames(ctr.value())
    factory.registry.set_publishing_blocked(False)
    assert ptr.producerState == "producing"
    (ack,) = frames(ptr.value())
    assert ack.type == c.PRODUCER_ACK and ack.producer_id == pid and ack.size == 1024 + 1
