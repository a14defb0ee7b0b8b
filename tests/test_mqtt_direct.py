"""The QoS 0 direct path (MqttServer.publish_plain), sans network: a PUBLISH without
properties or retain is written straight to subscriber connections the core would hand it to
at once, and every case the shortcut must not take goes through the core as before."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from polymq.adapters.mqtt import codec as c
from polymq.adapters.mqtt import server as server_mod
from polymq.adapters.mqtt import session as session_mod
from polymq.adapters.mqtt.transport import MqttFactory
from polymq.core import output
from polymq.core.broker import Broker
from polymq.core.queue import Consumer

_port = iter(range(1000, 100000))


@pytest.fixture(autouse=True)
def _fresh_turn():
    """No gathered output, and no flush scheduled on an earlier test's clock."""
    output.flush_pending()


class Peer:
    def __init__(
        self, factory: MqttFactory, cid: str, level: int = 4, connect_props: bytes = b"\x00"
    ) -> None:
        self.t = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", next(_port)))
        self.p = factory.buildProtocol(self.t.getPeer())
        self.p.makeConnection(self.t)
        self.level = level
        props = connect_props if level == 5 else b""
        self.p.dataReceived(
            c.frame(
                0x10, b"\x00\x04MQTT" + bytes((level,)) + b"\x02\x00\x3c" + props + c._utf8(cid)
            )
        )
        self.factory = factory
        self.reader = c.FrameReader(1 << 24)

    def subscribe(self, flt: str, qos: int = 0, options: int = 0, sid: int | None = None):
        props = b""
        if self.level == 5:
            props = c.encode_props({"subscription_identifier": [sid]} if sid else None)
        self.p.dataReceived(
            c.frame(0x82, b"\x00\x01" + props + c._utf8(flt) + bytes((qos | options,)))
        )

    def publish(self, topic: str, payload: bytes, qos: int = 0, pid: int = 0, retain: bool = False):
        props = b"\x00" if self.level == 5 else None
        self.p.dataReceived(
            c.encode_publish(topic.encode(), payload, qos, pid, retain, False, props)
        )

    def packets(self) -> list[tuple[int, bytes]]:
        self.factory.clock.advance(0)
        out = self.reader.feed(self.t.value())
        self.t.clear()
        return out

    def publishes(self) -> list[tuple[int, str, int | None, dict, bytes]]:
        out = []
        for first, body in self.packets():
            if first >> 4 == c.PUBLISH:
                topic, pid, block, payload, _ = c.decode_publish(first & 15, body, self.level)
                props = c.props_from_block(block) if block else {}
                out.append((first, topic, pid, props, payload))
        return out


@pytest.fixture
def factory():
    clock = Clock()
    f = MqttFactory(Broker(clock=clock), {})
    f.clock = clock
    return f


@pytest.fixture
def no_messages(monkeypatch):
    """Count core Messages the MQTT session creates."""
    made = []
    real = session_mod.Message

    def counting(*a, **k):
        made.append(1)
        return real(*a, **k)

    monkeypatch.setattr(session_mod, "Message", counting)
    monkeypatch.setattr(server_mod, "Message", counting)  # publish_plain lives in server.py
    return made


def test_qos0_to_ready_subscribers_of_both_families_builds_no_core_message(factory, no_messages):
    subs = [Peer(factory, f"s{i}", level) for i, level in enumerate((4, 5, 4, 5))]
    for s in subs:
        s.subscribe("d/#")
        s.packets()
    for level in (4, 5):
        pub = Peer(factory, f"p{level}", level)
        pub.packets()
        no_messages.clear()
        pub.publish("d/x.y", b"m%d" % level)
        assert no_messages == []  # straight to the connections
        for s in subs:
            [(first, topic, pid, props, payload)] = s.publishes()
            assert (first, topic, pid, props, payload) == (0x30, "d/x.y", None, {}, b"m%d" % level)


def test_qos1_publish_to_qos0_subscription_goes_direct_and_is_acknowledged(factory, no_messages):
    sub = Peer(factory, "s")
    sub.subscribe("a/#", qos=0)
    pub = Peer(factory, "p")
    sub.packets()
    pub.packets()
    no_messages.clear()
    pub.publish("a/b", b"x", qos=1, pid=7)
    assert no_messages == []
    assert [(f, t, p, pl) for f, t, p, _, pl in sub.publishes()] == [(0x30, "a/b", None, b"x")]
    assert pub.packets() == [(0x40, b"\x00\x07")]


def test_qos1_subscription_still_gets_qos1_through_the_core(factory, no_messages):
    sub = Peer(factory, "s")
    sub.subscribe("a/#", qos=1)
    pub = Peer(factory, "p")
    sub.packets()
    pub.packets()
    pub.publish("a/b", b"x", qos=1, pid=7)
    assert no_messages == [1]
    [(first, topic, pid, _, payload)] = sub.publishes()
    assert (first, topic, payload) == (0x32, "a/b", b"x") and pid
    q = sub.p.session.session.queue
    assert len(q.unacked) == 1  # tracked by the core until PUBACK
    sub.p.dataReceived(c.encode_ack(c.PUBACK, pid))
    assert not q.unacked


def test_subscription_identifier_and_topic_alias_subscribers_get_their_properties(factory):
    plain = Peer(factory, "plain", 5)
    plain.subscribe("i/#")
    with_id = Peer(factory, "sid", 5)
    with_id.subscribe("i/#", sid=42)
    alias = Peer(factory, "alias", 5, connect_props=c.encode_props({"topic_alias_maximum": 5}))
    alias.subscribe("i/#")
    pub = Peer(factory, "p", 4)
    for p in (plain, with_id, alias, pub):
        p.packets()
    pub.publish("i/x", b"1")
    pub.publish("i/x", b"2")
    assert [(props, pl) for _, _, _, props, pl in plain.publishes()] == [({}, b"1"), ({}, b"2")]
    got = with_id.publishes()
    assert [(props, pl) for _, _, _, props, pl in got] == [
        ({"subscription_identifier": [42]}, b"1"),
        ({"subscription_identifier": [42]}, b"2"),
    ]
    got = alias.publishes()
    assert [(t, props.get("topic_alias"), pl) for _, t, _, props, pl in got] == [
        ("i/x", 1, b"1"),
        ("", 1, b"2"),
    ]


def test_maximum_packet_size_of_one_subscriber_does_not_affect_others(factory):
    small = Peer(factory, "small", 5, connect_props=c.encode_props({"maximum_packet_size": 40}))
    small.subscribe("m/#")
    big = Peer(factory, "big", 4)
    big.subscribe("m/#")
    pub = Peer(factory, "p", 4)
    for p in (small, big, pub):
        p.packets()
    pub.publish("m/x", b"y" * 100)
    pub.publish("m/x", b"short")
    assert [pl for *_, pl in small.publishes()] == [b"short"]
    assert [pl for *_, pl in big.publishes()] == [b"y" * 100, b"short"]
    assert small.p.session.session.queue.message_count == 0


def test_no_local_is_respected(factory):
    me = Peer(factory, "me", 5)
    me.subscribe("n/#", options=0x04)  # no local
    other = Peer(factory, "other", 5)
    other.subscribe("n/#")
    me.packets()
    other.packets()
    me.publish("n/x", b"mine")
    assert me.publishes() == []
    assert [pl for *_, pl in other.publishes()] == [b"mine"]


def test_order_is_kept_across_a_paused_subscriber_and_its_backlog(factory):
    sub = Peer(factory, "s")
    sub.subscribe("o/#")
    pub = Peer(factory, "p")
    sub.packets()
    pub.packets()
    pub.publish("o/x", b"0")
    sub.p.pauseProducing()
    for i in range(1, 4):
        pub.publish("o/x", b"%d" % i)
    assert sub.p.session.session.queue.message_count == 3  # held by the core
    sub.p.resumeProducing()
    for i in range(4, 7):
        pub.publish("o/x", b"%d" % i)
    assert [pl for *_, pl in sub.publishes()] == [b"%d" % i for i in range(7)]


def test_other_destinations_get_a_core_message(factory):
    sub = Peer(factory, "s")
    sub.subscribe("x/#")
    pub = Peer(factory, "p")
    vh = factory.server.vhost
    vh.declare_queue("amqp-side")
    vh.bind_queue("amqp-side", "amq.topic", "x.#")
    sub.packets()
    pub.packets()
    pub.publish("x/y.z", b"both")
    assert [pl for *_, pl in sub.publishes()] == [b"both"]
    d = vh.get_queue("amqp-side").get(no_ack=True)
    assert (d.message.body, d.message.exchange, d.message.routing_key) == (
        b"both",
        "amq.topic",
        "x.y/z",
    )
    assert not d.message.durable


def test_a_foreign_consumer_on_the_session_queue_gets_the_message_through_the_core(factory):
    sub = Peer(factory, "s")
    sub.subscribe("f/#")
    pub = Peer(factory, "p")
    sub.packets()
    pub.packets()
    q = sub.p.session.session.queue
    got = []
    q.add_consumer(Consumer("other", got.append, no_ack=True))
    for i in range(4):
        pub.publish("f/x", b"%d" % i)
    # the queue round-robins between its two consumers, as without the shortcut
    assert len(got) == 2 and len(sub.publishes()) == 2


def test_retained_publish_is_stored_and_not_forwarded_as_retained(factory):
    sub = Peer(factory, "s")
    sub.subscribe("r/#")
    pub = Peer(factory, "p")
    sub.packets()
    pub.packets()
    pub.publish("r/x", b"kept", retain=True)
    [(first, *_rest, payload)] = sub.publishes()
    assert first == 0x30 and payload == b"kept"  # retain flag cleared for live delivery
    late = Peer(factory, "late")
    late.packets()
    late.subscribe("r/#")
    [(first, *_rest, payload)] = late.publishes()
    assert first == 0x31 and payload == b"kept"


def test_a_session_queue_length_limit_still_allows_the_direct_path(no_messages):
    clock = Clock()
    f = MqttFactory(Broker(clock=clock), {"max_queued_messages": 2})
    f.clock = clock
    sub = Peer(f, "s")
    sub.subscribe("l/#")
    pub = Peer(f, "p")
    sub.packets()
    pub.packets()
    no_messages.clear()
    pub.publish("l/x", b"0")
    assert no_messages == []
    sub.p.pauseProducing()
    for i in range(1, 6):
        pub.publish("l/x", b"%d" % i)
    q = sub.p.session.session.queue
    assert q.message_count == 2  # the oldest were dropped (drop-head), as the core does
    sub.p.resumeProducing()
    assert [pl for *_, pl in sub.publishes()] == [b"0", b"4", b"5"]


def test_exchange_to_exchange_binding_on_amq_topic_routes_through_the_core(factory, no_messages):
    sub = Peer(factory, "s")
    sub.subscribe("e/#")
    pub = Peer(factory, "p")
    vh = factory.server.vhost
    vh.declare_exchange("side", "fanout")
    vh.bind_exchange("side", "amq.topic", "e.#")
    vh.declare_queue("behind")
    vh.bind_queue("behind", "side")
    sub.packets()
    pub.packets()
    no_messages.clear()
    pub.publish("e/x", b"both")
    assert no_messages == [1]  # one core Message for both destinations
    assert [pl for *_, pl in sub.publishes()] == [b"both"]
    d = vh.get_queue("behind").get(no_ack=True)
    assert (d.message.body, d.message.routing_key) == (b"both", "e.x")
