"""The transport layer sans network: one write per reactor turn, and back-pressure."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from polymq.adapters.mqtt import codec as c
from polymq.adapters.mqtt.transport import FLUSH_AT, MqttFactory
from polymq.core import output
from polymq.core.broker import Broker


@pytest.fixture(autouse=True)
def _fresh_turn():
    """No gathered output, and no flush scheduled on an earlier test's clock."""
    output.flush_pending()


class CountingTransport(StringTransport):
    def __init__(self, port):
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.1", port))
        self.writes = 0
        self.nodelay = False

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled

    def write(self, data):
        self.writes += 1
        super().write(data)


def connect(factory, cid: str, port: int):
    t = CountingTransport(port)
    p = factory.buildProtocol(t.getPeer())
    p.makeConnection(t)
    p.dataReceived(c.frame(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + c._utf8(cid)))
    return p, t


def setup():
    clock = Clock()
    factory = MqttFactory(Broker(clock=clock), {})
    sub, st = connect(factory, "sub", 1)
    sub.dataReceived(c.frame(0x82, b"\x00\x01" + c._utf8("t/#") + b"\x00"))
    pub, pt = connect(factory, "pub", 2)
    clock.advance(0)
    st.clear()
    st.writes = 0
    return clock, factory, sub, st, pub


def test_one_write_per_turn():
    clock, factory, sub, st, pub = setup()
    frames = b"".join(c.encode_publish(b"t/x", b"%d" % i) for i in range(100))
    pub.dataReceived(frames)
    assert st.writes == 0  # nothing written during the turn
    clock.advance(0)
    assert st.writes == 1  # all 100 deliveries in one write
    got = c.FrameReader(1 << 20).feed(st.value())
    assert len(got) == 100


def test_back_pressure_pauses_and_resumes_consumers():
    clock, factory, sub, st, pub = setup()
    queue = sub.session.session.queue
    sub.pauseProducing()
    pub.dataReceived(b"".join(c.encode_publish(b"t/x", b"m") for _ in range(10)))
    clock.advance(0)
    assert st.value() == b""
    assert queue.message_count == 10  # held in the core while the socket is full
    sub.resumeProducing()
    clock.advance(0)
    assert len(c.FrameReader(1 << 20).feed(st.value())) == 10
    assert queue.message_count == 0


def test_big_burst_is_written_before_the_turn_ends():
    clock, factory, sub, st, pub = setup()
    body = b"x" * 4096
    n = FLUSH_AT // 4096 + 10
    pub.dataReceived(b"".join(c.encode_publish(b"t/x", body) for _ in range(n)))
    assert st.writes >= 1  # handed to the transport early, so its buffer limit can pause us
    clock.advance(0)
    assert len(c.FrameReader(1 << 20).feed(st.value())) == n


def test_nagle_is_off():
    clock, factory, sub, st, pub = setup()
    assert st.nodelay  # small deliveries to a silent subscriber must not wait for its ACK


def test_qos0_fan_out_is_not_re_encoded(monkeypatch):
    from polymq.adapters.mqtt import session as session_mod

    clock = Clock()
    factory = MqttFactory(Broker(clock=clock), {})
    transports = []
    for i, level in enumerate((4, 4, 4, 5, 5, 5)):
        t = CountingTransport(10 + i)
        p = factory.buildProtocol(t.getPeer())
        p.makeConnection(t)
        props = b"\x00" if level == 5 else b""
        p.dataReceived(
            c.frame(
                0x10, b"\x00\x04MQTT" + bytes((level,)) + b"\x02\x00\x3c" + props + c._utf8(f"s{i}")
            )
        )
        p.dataReceived(c.frame(0x82, b"\x00\x01" + props + c._utf8("f/#") + b"\x00"))
        transports.append(t)
    pub, _ = connect(factory, "pub", 99)
    clock.advance(0)
    for t in transports:
        t.clear()
    frame = c.encode_publish(b"f/x", b"payload")
    calls = []
    real = c.encode_publish
    monkeypatch.setattr(
        session_mod.c, "encode_publish", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    pub.dataReceived(frame)
    clock.advance(0)
    # 3.1.1 subscribers get the publisher's own frame; 5.0 ones share one encoding
    assert len(calls) == 1
    for t in transports:
        [(first, body)] = c.FrameReader(1000).feed(t.value())
        assert first == 0x30 and body.endswith(b"payload")


def test_a_failing_delivery_closes_only_the_subscriber():
    from polymq.core.message import Message

    clock, factory, sub, st, pub = setup()
    vhost = factory.server.vhost
    # a broken message from elsewhere (a body that is no bytes) cannot be encoded
    vhost.publish("amq.topic", "t.x", Message("not bytes"))  # type: ignore[arg-type]
    clock.advance(0)
    assert st.disconnecting  # the subscriber is closed
    pub.dataReceived(c.encode_publish(b"t/y", b"fine", 1, 5))
    clock.advance(0)
    assert pub.transport.value().endswith(c.encode_ack(c.PUBACK, 5))  # the publisher is fine


def test_a_key_that_is_no_utf8_is_not_delivered():
    from polymq.core.message import Message

    clock, factory, sub, st, pub = setup()
    vhost = factory.server.vhost
    vhost.publish("amq.topic", "t.\udcff", Message(b"bad key"))  # lone surrogate from elsewhere
    vhost.publish("amq.topic", "t.ok", Message(b"good"))
    clock.advance(0)
    assert not st.disconnecting
    [(first, body)] = c.FrameReader(1000).feed(st.value())
    assert body.endswith(b"good")


def test_headers_with_no_utf8_form_are_sent_replaced():
    from polymq.core.message import Message

    clock = Clock()
    factory = MqttFactory(Broker(clock=clock), {})
    t = CountingTransport(7)
    p = factory.buildProtocol(t.getPeer())
    p.makeConnection(t)
    p.dataReceived(c.frame(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + c._utf8("v5")))
    p.dataReceived(c.frame(0x82, b"\x00\x01\x00" + c._utf8("h/#") + b"\x01"))
    clock.advance(0)
    t.clear()
    factory.server.vhost.publish(
        "amq.topic", "h.x", Message(b"b", headers={"k": "bad\udcff"}, durable=True)
    )
    clock.advance(0)
    assert not t.disconnecting
    [(first, body)] = c.FrameReader(1000).feed(t.value())
    props = c.Publish.parse(body, version=c.V5, qos=1).properties
    assert c.props_to_dict(props["items"])["user_property"] == [("k", "bad?")]


def test_odd_fields_from_other_protocols_do_not_break_delivery():
    from polymq.core.message import Message, now_ms

    clock = Clock()
    factory = MqttFactory(Broker(clock=clock), {})
    t = CountingTransport(8)
    p = factory.buildProtocol(t.getPeer())
    p.makeConnection(t)
    p.dataReceived(c.frame(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + c._utf8("odd")))
    p.dataReceived(c.frame(0x82, b"\x00\x01\x00" + c._utf8("o/#") + b"\x01"))
    clock.advance(0)
    t.clear()
    m = Message(
        b"b",
        durable=True,
        headers={"long": "x" * 70000, "n": None, "l": [1, 2]},
        reply_to=b"bytes-reply",
        correlation_id=12,  # type: ignore[arg-type]
        expiration=now_ms() + 10**13,
    )
    factory.server.vhost.publish("amq.topic", "o.x", m)
    clock.advance(0)
    assert not t.disconnecting
    [(first, body)] = c.FrameReader(1 << 20).feed(t.value())
    props = c.props_to_dict(c.Publish.parse(body, version=c.V5, qos=1).properties["items"])
    assert props["message_expiry_interval"] == 0xFFFFFFFF
    assert props["response_topic"] == "bytes-reply"
    assert props["correlation_data"] == b"12"
    ups = dict(props["user_property"])
    assert len(ups["long"]) == 0xFFFF and ups["n"] == "" and ups["l"] == "[1, 2]"
