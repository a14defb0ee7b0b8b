"""The AMQP transport sans network: output gathered per read or reactor turn (through
adapters/output.py), written at once past 64 KiB, and sent before the connection is closed."""

from __future__ import annotations

import construct
import pytest
from test_amqp_codec import HANDSHAKE  # the same client handshake
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from polymq.adapters.amqp import codec as C
from polymq.adapters.amqp.transport import FLUSH_BYTES, AMQPFactory
from polymq.core import output
from polymq.core.broker import Broker
from polymq.core.message import Message


@pytest.fixture(autouse=True)
def _fresh_turn():
    """No gathered output, and no flush scheduled on an earlier test's clock."""
    output.flush_pending()


class CountingTransport(StringTransport):
    def __init__(self):
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.1", 5672))
        self.writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)


def methods(data: bytes) -> list[tuple[int, str, dict]]:
    out = []
    for f in construct.GreedyRange(C.FRAME).parse(data):
        if f.type == 1:
            spec, args = C.decode_method(f.payload)
            out.append((f.channel, spec.name, args))
    return out


def connect(section=None):
    return connect_with(HANDSHAKE, section)


def consume(p, t, queue: str) -> None:
    p.dataReceived(
        C.method_frame(1, "queue.declare", queue=queue)
        + C.method_frame(1, "basic.consume", queue=queue, no_ack=True)
    )
    t.clear()
    t.writes = 0


def test_output_of_a_read_leaves_when_the_read_ends():
    clock, factory, p, t = connect()
    # the whole handshake's answers were written by the end of the read, with one write
    assert t.writes == 1
    names = [m[1] for m in methods(t.value())]
    assert names == ["connection.start", "connection.tune", "connection.open-ok", "channel.open-ok"]


def test_output_made_outside_a_read_waits_for_the_turn():
    clock, factory, p, t = connect()
    consume(p, t, "q")
    vhost = p.session.vhost
    for i in range(3):
        vhost.publish("", "q", Message(b"%d" % i))
    assert t.writes == 0  # three deliveries gathered...
    clock.advance(0)
    assert t.writes == 1  # ...and written together at the end of the turn
    assert [m[1] for m in methods(t.value())] == ["basic.deliver"] * 3


def test_a_big_burst_is_written_before_the_turn_ends():
    clock, factory, p, t = connect()
    consume(p, t, "big")
    vhost = p.session.vhost
    n = FLUSH_BYTES // 4096 + 4
    for _ in range(n):
        vhost.publish("", "big", Message(b"x" * 4096))
    assert t.writes >= 1  # handed over early, so that a full socket can pause the consumer
    clock.advance(0)
    assert [m[1] for m in methods(t.value())] == ["basic.deliver"] * n


def test_what_is_gathered_is_sent_before_the_connection_closes():
    clock, factory, p, t = connect()
    t.clear()
    # connection.close from the client: close-ok is written, then the transport closed
    p.dataReceived(
        C.method_frame(
            0, "connection.close", reply_code=200, reply_text="bye", class_id=0, method_id=0
        )
    )
    assert t.disconnecting
    assert [m[1] for m in methods(t.value())] == ["connection.close-ok"]


def test_output_of_a_read_resumed_after_yielding_leaves_with_it():
    clock, factory, p, t = connect({"publish_burst": 2})
    p.dataReceived(C.method_frame(1, "confirm.select"))
    t.clear()
    publish = C.method_frame(
        1, "basic.publish", exchange="amq.direct", routing_key="none"
    ) + C.content_frames(1, C.encode_properties({}), b"m", 131072)
    p.dataReceived(publish * 5)
    assert t.producerState == "paused"  # yielded after a burst of two
    acks = [a for _, name, a in methods(t.value()) if name == "basic.ack"]
    assert acks and acks[-1]["delivery_tag"] == 2
    t.clear()
    clock.advance(0)  # the rest of the read, in bursts: their confirms leave as they end
    acks = [a for _, name, a in methods(t.value()) if name == "basic.ack"]
    assert acks[-1]["delivery_tag"] == 5
    assert t.producerState == "producing"


def handshake(heartbeat=0, frame_max=131072, capabilities=None):
    props = {"capabilities": capabilities} if capabilities else {}
    return (
        C.PROTOCOL_HEADER
        + C.method_frame(
            0,
            "connection.start-ok",
            client_properties=props,
            mechanism="PLAIN",
            response=b"\x00guest\x00guest",
            locale="en_US",
        )
        + C.method_frame(
            0, "connection.tune-ok", channel_max=0, frame_max=frame_max, heartbeat=heartbeat
        )
        + C.method_frame(0, "connection.open", virtual_host="/")
        + C.method_frame(1, "channel.open")
    )


def connect_with(data, section=None):
    """A connection through the listener, fed ``data`` (a client's first bytes)."""
    clock = Clock()
    factory = AMQPFactory(Broker(clock=clock), section or {})
    t = CountingTransport()
    p = factory.buildProtocol(t.getPeer())
    p.makeConnection(t)
    p.dataReceived(data)
    return clock, factory, p, t


def test_a_silent_client_gets_one_heartbeat_per_half_interval_then_is_dropped():
    clock, factory, p, t = connect_with(handshake(heartbeat=2))
    t.clear()
    for _ in range(35):  # 3.5 s of silence from the client
        clock.advance(0.1)
    assert t.value() == C.HEARTBEAT_FRAME * 3  # at 1, 2 and 3 s
    assert not t.disconnecting
    for _ in range(6):  # two intervals (4 s) without a byte from the client
        clock.advance(0.1)
    assert t.disconnecting
    assert p.info is not None and factory.registry.count("amqp") == 1  # until connectionLost
    p.connectionLost(None)
    assert factory.registry.count("amqp") == 0


def test_heartbeats_from_the_client_keep_it_open():
    clock, factory, p, t = connect_with(handshake(heartbeat=2))
    for _ in range(100):  # 10 s
        clock.advance(0.1)
        if _ % 10 == 0:
            p.dataReceived(C.HEARTBEAT_FRAME)
    assert not t.disconnecting


def test_authorization_refusal_is_a_403_channel_error():
    clock, factory, p, t = connect_with(HANDSHAKE)
    asked = []

    def authorizer(identity, vhost, action, kind, name):
        asked.append((identity.user, vhost, action, kind, name))
        return name not in ("secret", "amq.topic")

    factory.broker.authorizer = authorizer
    t.clear()
    p.dataReceived(C.method_frame(1, "queue.declare", queue="open"))
    p.dataReceived(C.method_frame(1, "queue.declare", queue="secret"))
    out = methods(t.value())
    assert [m[1] for m in out] == ["queue.declare-ok", "channel.close"]
    assert out[1][2]["reply_code"] == 403 and "secret" in out[1][2]["reply_text"]
    assert asked == [
        ("guest", "/", "configure", "queue", "open"),
        ("guest", "/", "configure", "queue", "secret"),
    ]
    # a publish is authorized once per destination, and refused with 403 too
    p.dataReceived(C.method_frame(1, "channel.close-ok") + C.method_frame(2, "channel.open"))
    t.clear()
    publish = C.method_frame(
        2, "basic.publish", exchange="amq.direct", routing_key="k"
    ) + C.content_frames(2, C.encode_properties({}), b"m", 131072)
    p.dataReceived(publish * 3)
    assert asked[2:] == [("guest", "/", "write", "exchange", "amq.direct")]
    assert methods(t.value()) == []
    t.clear()
    p.dataReceived(
        C.method_frame(2, "basic.publish", exchange="amq.topic", routing_key="k")
        + C.content_frames(2, C.encode_properties({}), b"m", 131072)
    )
    out = methods(t.value())
    assert [(m[1], m[2]["reply_code"], m[2]["class_id"]) for m in out] == [
        ("channel.close", 403, 60)
    ]
    assert not t.disconnecting  # the connection stays up


def test_publishing_blocked_holds_the_publisher_until_cleared():
    clock, factory, p, t = connect_with(
        handshake(heartbeat=2, capabilities={"connection.blocked": True})
    )
    p.dataReceived(C.method_frame(1, "queue.declare", queue="held"))
    t.clear()
    factory.registry.set_publishing_blocked(True, "disk alarm")
    clock.advance(0)  # written outside a read: at the end of the turn
    out = methods(t.value())
    assert [(m[1], m[2].get("reason")) for m in out] == [("connection.blocked", "disk alarm")]
    publish = C.method_frame(
        1, "basic.publish", exchange="", routing_key="held"
    ) + C.content_frames(1, C.encode_properties({}), b"m", 131072)
    declare = C.method_frame(1, "queue.declare", queue="held", passive=True)
    t.clear()
    p.dataReceived(publish * 3 + declare)
    # the first publish while blocked is taken, then the connection is no longer read
    queue = p.session.vhost.queues["held"]
    assert queue.message_count == 1
    assert t.producerState == "paused"
    assert methods(t.value()) == []
    for _ in range(50):  # not read from: silence is not the client's fault
        clock.advance(1)
    assert not t.disconnecting
    t.clear()
    factory.registry.set_publishing_blocked(False)
    clock.advance(0)
    out = methods(t.value())
    assert [m[1] for m in out] == ["connection.unblocked", "queue.declare-ok"]
    assert out[1][2]["message_count"] == 3
    assert t.producerState == "producing"


def test_broker_shutdown_is_connection_forced():
    clock, factory, p, t = connect_with(HANDSHAKE)
    t.clear()
    factory.shutting_down()
    clock.advance(0)
    out = methods(t.value())
    assert [(m[1], m[2]["reply_code"]) for m in out] == [("connection.close", 320)]
    p.dataReceived(C.method_frame(0, "connection.close-ok"))
    assert t.disconnecting


def test_a_bug_is_closed_with_541(monkeypatch):
    clock, factory, p, t = connect_with(HANDSHAKE)

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(p.session.vhost, "declare_queue", broken)
    t.clear()
    p.dataReceived(C.method_frame(1, "queue.declare", queue="q"))
    out = methods(t.value())
    assert [(m[1], m[2]["reply_code"]) for m in out] == [("connection.close", 541)]
    assert not t.disconnecting  # waiting for the client's close-ok
    p.dataReceived(C.method_frame(0, "connection.close-ok"))
    assert t.disconnecting and not t.disconnected  # closed in order, not aborted


def test_a_connection_error_waits_for_close_ok_reading_what_arrives_meanwhile():
    clock, factory, p, t = connect_with(HANDSHAKE)
    t.clear()
    p.dataReceived(C.method_frame(5, "queue.declare", queue="q"))  # channel 5 is not open
    out = methods(t.value())
    assert [(m[1], m[2]["reply_code"]) for m in out] == [("connection.close", 504)]
    t.clear()
    # what the client sent before it saw the close is read and discarded
    publish = C.method_frame(1, "basic.publish", exchange="", routing_key="q")
    publish += C.content_frames(1, C.encode_properties({}), b"m", 131072)
    p.dataReceived(publish + C.method_frame(1, "queue.declare", queue="r"))
    assert t.value() == b"" and not t.disconnecting
    clock.advance(1.9)
    assert not t.disconnecting
    clock.advance(0.2)  # no close-ok within 2 s: dropped
    assert t.disconnecting and t.disconnected


def test_a_blocked_publisher_is_read_again_to_take_its_close_ok():
    clock, factory, p, t = connect_with(handshake(capabilities={"connection.blocked": True}))
    factory.registry.set_publishing_blocked(True, "memory high watermark")
    p.dataReceived(
        C.method_frame(1, "basic.publish", exchange="amq.direct", routing_key="k")
        + C.content_frames(1, C.encode_properties({}), b"m", 131072)
    )
    assert t.producerState == "paused"
    t.clear()
    factory.shutting_down()
    assert [m[1] for m in methods(t.value())] == ["connection.close"]
    assert t.producerState == "producing"
    p.dataReceived(C.method_frame(0, "connection.close-ok"))
    assert t.disconnecting and not t.disconnected
