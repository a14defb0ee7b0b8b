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
    clock = Clock()
    factory = AMQPFactory(Broker(clock=clock), section or {})
    t = CountingTransport()
    p = factory.buildProtocol(t.getPeer())
    p.makeConnection(t)
    p.dataReceived(HANDSHAKE)
    return clock, factory, p, t


def consume(p, t, queue: str) -> None:
    p.dataReceived(C.method_frame(1, "queue.declare", queue=queue)
                   + C.method_frame(1, "basic.consume", queue=queue, no_ack=True))
    t.clear()
    t.writes = 0


def test_output_of_a_read_leaves_when_the_read_ends():
    clock, factory, p, t = connect()
    # the whole handshake's answers were written by the end of the read, with one write
    assert t.writes == 1
    names = [m[1] for m in methods(t.value())]
    assert names == ["connection.start", "connection.tune", "connection.open-ok",
                     "channel.open-ok"]


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
    p.dataReceived(C.method_frame(0, "connection.close", reply_code=200, reply_text="bye",
                                  class_id=0, method_id=0))
    assert t.disconnecting
    assert [m[1] for m in methods(t.value())] == ["connection.close-ok"]


def test_output_of_a_read_resumed_after_yielding_leaves_with_it():
    clock, factory, p, t = connect({"publish_burst": 2})
    p.dataReceived(C.method_frame(1, "confirm.select"))
    t.clear()
    publish = (C.method_frame(1, "basic.publish", exchange="amq.direct", routing_key="none")
               + C.content_frames(1, C.encode_properties({}), b"m", 131072))
    p.dataReceived(publish * 5)
    assert t.producerState == "paused"  # yielded after a burst of two
    acks = [a for _, name, a in methods(t.value()) if name == "basic.ack"]
    assert acks and acks[-1]["delivery_tag"] == 2
    t.clear()
    clock.advance(0)  # the rest of the read, in bursts: their confirms leave as they end
    acks = [a for _, name, a in methods(t.value()) if name == "basic.ack"]
    assert acks[-1]["delivery_tag"] == 5
    assert t.producerState == "producing"
