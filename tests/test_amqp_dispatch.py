"""Consumer selection over AMQP 0-9-1 with pika against a real broker process: exclusive
consumers, single-active-consumer queues, consumer priorities and direct reply-to."""

from __future__ import annotations

import time
import uuid

import kombu
import pika
import pika.exceptions as pe
import pytest


@pytest.fixture(scope="module")
def broker(amqp_broker):
    return amqp_broker


def connect(broker) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            broker.host,
            broker.port("amqp"),
            credentials=pika.PlainCredentials("guest", "guest"),
        )
    )


def qname() -> str:
    return "d-" + uuid.uuid4().hex[:10]


def pump(*connections, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in connections:
            c.process_data_events(0.02)


class Collector:
    """A basic_consume callback that records bodies (and acks when told)."""

    def __init__(self, ch, ack: bool = True) -> None:
        self.ch = ch
        self.ack = ack
        self.bodies: list[bytes] = []

    def __call__(self, ch, method, props, body) -> None:
        self.bodies.append(body)
        if self.ack:
            ch.basic_ack(method.delivery_tag)


def publish(ch, q: str, *bodies: bytes) -> None:
    for b in bodies:
        ch.basic_publish("", q, b)


def test_server_advertises_consumer_priorities_and_direct_reply_to(broker):
    c = connect(broker)
    caps = c._impl.server_properties["capabilities"]
    assert caps["consumer_priorities"] is True
    assert caps["direct_reply_to"] is True
    c.close()


def test_exclusive_consume_on_a_consumed_queue_is_refused_with_403(broker):
    c1, c2 = connect(broker), connect(broker)
    ch1 = c1.channel()
    q = qname()
    ch1.queue_declare(q)
    ch1.basic_consume(q, Collector(ch1))
    ch2 = c2.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch2.basic_consume(q, Collector(ch2), exclusive=True)
    assert e.value.reply_code == 403
    assert "exclusive use" in e.value.reply_text
    # and the other way round: an exclusive consumer keeps every other one out
    q2 = qname()
    ch1.queue_declare(q2)
    ch1.basic_consume(q2, Collector(ch1), exclusive=True)
    ch3 = c2.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch3.basic_consume(q2, Collector(ch3))
    assert e.value.reply_code == 403
    c1.close()
    c2.close()


def test_single_active_consumer_takes_over_in_order(broker):
    conns = [connect(broker) for _ in range(3)]
    chans = [c.channel() for c in conns]
    q = qname()
    chans[0].queue_declare(q, arguments={"x-single-active-consumer": True})
    cols = []
    tags = []
    for ch in chans:
        ch.basic_qos(prefetch_count=10)
        col = Collector(ch)
        cols.append(col)
        tags.append(ch.basic_consume(q, col))
    ok = chans[0].queue_declare(q, passive=True)
    assert ok.method.consumer_count == 3
    publish(chans[0], q, b"a1", b"a2", b"a3")
    pump(*conns, seconds=0.7)
    assert cols[0].bodies == [b"a1", b"a2", b"a3"]
    assert cols[1].bodies == [] and cols[2].bodies == []
    # the active one cancels: the next in line (the second) takes over, the third still waits
    chans[0].basic_cancel(tags[0])
    publish(chans[1], q, b"b1", b"b2")
    pump(*conns, seconds=0.7)
    assert cols[1].bodies == [b"b1", b"b2"]
    assert cols[2].bodies == []
    # unacknowledged messages of an active consumer whose connection closes go to the next one
    cols[1].ack = False
    publish(chans[2], q, b"c1")
    pump(*conns, seconds=0.5)
    assert cols[1].bodies[-1] == b"c1"
    conns[1].close()
    publish(chans[2], q, b"c2")
    pump(conns[2], seconds=0.7)
    assert cols[2].bodies == [b"c1", b"c2"]
    conns[0].close()
    conns[2].close()


def test_single_active_consumer_argument_is_checked(broker):
    c = connect(broker)
    q = qname()
    ch = c.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(q, arguments={"x-single-active-consumer": "yes"})
    assert e.value.reply_code == 406
    ch = c.channel()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(q)  # inequivalent: the argument is part of the queue's identity
    assert e.value.reply_code == 406
    c.close()


def test_consumer_priorities_prefer_the_highest_with_room(broker):
    c = connect(broker)
    q = qname()
    ch_low, ch_high = c.channel(), c.channel()
    ch_low.queue_declare(q)
    for ch in (ch_low, ch_high):
        ch.basic_qos(prefetch_count=2)
    low, high = Collector(ch_low, ack=False), Collector(ch_high, ack=False)
    ch_low.basic_consume(q, low, arguments={"x-priority": -1})
    ch_high.basic_consume(q, high, arguments={"x-priority": 10})
    publish(ch_low, q, b"1", b"2")
    pump(c, seconds=0.5)
    # round-robin would have given one to each
    assert high.bodies == [b"1", b"2"] and low.bodies == []
    # the high one is full (prefetch 2, nothing acked): the low one gets the rest
    publish(ch_low, q, b"3", b"4", b"5")
    pump(c, seconds=0.5)
    assert low.bodies == [b"3", b"4"]
    assert high.bodies == [b"1", b"2"]
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch3 = c.channel()
        ch3.basic_consume(q, Collector(ch3), arguments={"x-priority": "high"})
    assert e.value.reply_code == 406
    c.close()


def test_direct_reply_to_rpc_with_pika(broker):
    server, client = connect(broker), connect(broker)
    rpc = qname()
    sch = server.channel()
    sch.queue_declare(rpc)

    def serve(ch, method, props, body):
        assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        ch.basic_publish(
            "",
            props.reply_to,
            body.upper(),
            pika.BasicProperties(correlation_id=props.correlation_id),
        )
        ch.basic_ack(method.delivery_tag)

    sch.basic_consume(rpc, serve)
    cch = client.channel()
    replies: list[tuple[str, bytes]] = []
    cch.basic_consume(
        "amq.rabbitmq.reply-to",
        lambda ch, m, p, b: replies.append((p.correlation_id, b)),
        auto_ack=True,
    )
    for i in range(3):
        cch.basic_publish(
            "",
            rpc,
            f"ping{i}".encode(),
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=str(i)),
        )
    deadline = time.monotonic() + 5
    while len(replies) < 3 and time.monotonic() < deadline:
        pump(server, client, seconds=0.1)
    assert replies == [("0", b"PING0"), ("1", b"PING1"), ("2", b"PING2")]
    # publishing with that reply-to on a channel with no reply consumer is refused
    other = client.channel()
    other.confirm_delivery()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        other.basic_publish("", rpc, b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    assert e.value.reply_code == 406
    # the reply consumer must be no-ack
    ch4 = client.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch4.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=False)
    assert e.value.reply_code == 406
    server.close()
    client.close()


def test_single_active_consumer_with_kombu(broker):
    q = qname()
    url = f"amqp://guest:guest@{broker.host}:{broker.port('amqp')}//"
    got: dict[str, list[str]] = {"a": [], "b": []}
    with kombu.Connection(url) as ca, kombu.Connection(url) as cb:
        queue = kombu.Queue(q, queue_arguments={"x-single-active-consumer": True})
        qa, qb = queue(ca.default_channel), queue(cb.default_channel)
        qa.declare()
        cons_a = kombu.Consumer(
            ca, [qa], callbacks=[lambda body, m: (got["a"].append(body), m.ack())]
        )
        cons_b = kombu.Consumer(
            cb, [qb], callbacks=[lambda body, m: (got["b"].append(body), m.ack())]
        )
        cons_a.consume()
        cons_b.consume()
        with kombu.Producer(ca) as p:
            for i in range(4):
                p.publish(f"m{i}", routing_key=q)
        for conn in (ca, cb, ca, cb):
            try:
                conn.drain_events(timeout=0.3)
            except TimeoutError:
                pass
        deadline = time.monotonic() + 3
        while len(got["a"]) < 4 and time.monotonic() < deadline:
            try:
                ca.drain_events(timeout=0.2)
            except TimeoutError:
                pass
        assert got["a"] == ["m0", "m1", "m2", "m3"]
        try:
            cb.drain_events(timeout=0.3)
        except TimeoutError:
            pass
        assert got["b"] == []
        cons_a.cancel()
        with kombu.Producer(cb) as p:
            p.publish("m4", routing_key=q)
        deadline = time.monotonic() + 3
        while not got["b"] and time.monotonic() < deadline:
            try:
                cb.drain_events(timeout=0.2)
            except TimeoutError:
                pass
        assert got["b"] == ["m4"]


def test_basic_get_waits_for_a_head_read_back_from_the_store(broker):
    """A queue that keeps one message in memory reads every next one back from the store:
    basic.get answers with it, never get-empty, while messages remain."""
    c = connect(broker)
    ch = c.channel()
    q = qname()
    ch.queue_declare(q, durable=True, arguments={"x-max-in-memory-length": 1})
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    got = []
    while True:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            break
        got.append(int(body))
    assert got == list(range(200))
    c.close()
