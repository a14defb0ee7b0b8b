"""Paged queues through a real AMQP client (pika) against a broker process: a backlog many times
the in-memory budget survives a restart and comes back complete and in order."""

from __future__ import annotations

import time

import pika

BUDGET = 50
N = 3000


def connect(broker):
    return pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    )


def test_backlog_many_times_the_budget_survives_restart_in_order(broker_factory):
    broker = broker_factory(
        adapters=["amqp"],
        log_level="info",
        settings={"store.queue_max_in_memory_length": BUDGET},
    )
    c = connect(broker)
    ch = c.channel()
    ch.queue_declare("backlog", durable=True)
    ch.queue_declare("prio", durable=True, arguments={"x-max-priority": 9})
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(N):
        ch.basic_publish("", "backlog", b"%06d" % i + b"." * 200, props)
    for i in range(300):
        p = pika.BasicProperties(delivery_mode=2, priority=9 if i % 2 else 1)
        ch.basic_publish("", "prio", b"%d" % i, p)
    assert ch.queue_declare("backlog", passive=True).method.message_count == N
    c.close()

    broker.restart()
    assert "left in the store" in broker.log_text()
    c = connect(broker)
    ch = c.channel()
    assert ch.queue_declare("backlog", passive=True).method.message_count == N
    # a basic.get right after the restart finds the head (read back before listeners open)
    method, _props, body = ch.basic_get("backlog", auto_ack=False)
    assert body.startswith(b"000000") and not method.redelivered
    ch.basic_nack(method.delivery_tag, requeue=True)
    ch.basic_qos(prefetch_count=100)
    got: list[bytes] = []
    redelivered: list[bool] = []
    for method, _props, body in ch.consume("backlog", inactivity_timeout=10):
        assert method is not None, f"stalled after {len(got)} messages"
        got.append(body[:6])
        redelivered.append(method.redelivered)
        ch.basic_ack(method.delivery_tag)
        if len(got) == N:
            break
    ch.cancel()
    assert got == [b"%06d" % i for i in range(N)]
    assert redelivered[0] and not any(redelivered[1:])
    assert ch.queue_declare("backlog", passive=True).method.message_count == 0

    prio = []
    for method, _props, body in ch.consume("prio", inactivity_timeout=10):
        assert method is not None
        prio.append(int(body))
        ch.basic_ack(method.delivery_tag)
        if len(prio) == 300:
            break
    ch.cancel()
    assert prio == list(range(1, 300, 2)) + list(range(0, 300, 2))
    c.close()


def test_ttl_and_dead_lettering_of_a_paged_backlog(broker_factory):
    broker = broker_factory(
        adapters=["amqp"], settings={"store.queue_max_in_memory_length": BUDGET}
    )
    c = connect(broker)
    ch = c.channel()
    ch.exchange_declare("dlx", "fanout", durable=True)
    ch.queue_declare("dead", durable=True)
    ch.queue_bind("dead", "dlx")
    ch.queue_declare(
        "short", durable=True, arguments={"x-message-ttl": 300, "x-dead-letter-exchange": "dlx"}
    )
    ch.queue_declare("reject", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(500):  # ten times the budget: most expire while only in the store
        ch.basic_publish("", "short", b"t%d" % i, props)
    for i in range(200):
        ch.basic_publish("", "reject", b"r%d" % i, props)
    time.sleep(0.6)
    # a consumer makes the queue read its backlog back: every message is past its TTL
    ch.basic_consume("short", lambda *a: None, auto_ack=True)
    ch.basic_qos(prefetch_count=20)
    rejected = 0
    for method, _props, _body in ch.consume("reject", inactivity_timeout=10):
        assert method is not None
        ch.basic_reject(method.delivery_tag, requeue=False)
        rejected += 1
        if rejected == 200:
            break
    ch.cancel()
    deadline = time.time() + 20
    while time.time() < deadline:
        if ch.queue_declare("dead", passive=True).method.message_count == 700:
            break
        time.sleep(0.1)
    assert ch.queue_declare("short", passive=True).method.message_count == 0
    got = []
    for method, props, body in ch.consume("dead", inactivity_timeout=10):
        assert method is not None
        got.append((body, props.headers["x-death"][0]["reason"]))
        ch.basic_ack(method.delivery_tag)
        if len(got) == 700:
            break
    ch.cancel()
    expired = [b for b, r in got if r == "expired"]
    assert expired == [b"t%d" % i for i in range(500)]
    assert [b for b, r in got if r == "rejected"] == [b"r%d" % i for i in range(200)]
    c.close()


def test_basic_get_drains_a_paged_backlog_without_a_false_empty(broker_factory):
    """basic.get never answers get-empty while messages wait in the store: a get that finds the
    head still being read back is answered once it is in (RabbitMQ's get-empty means empty)."""
    broker = broker_factory(
        adapters=["amqp"],
        log_level="info",
        settings={"store.queue_max_in_memory_length": BUDGET},
    )
    c = connect(broker)
    ch = c.channel()
    ch.queue_declare("gets", durable=True)
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(1000):
        ch.basic_publish("", "gets", b"%06d" % i, props)
    c.close()
    broker.restart()
    c = connect(broker)
    ch = c.channel()
    got = []
    while True:
        method, _props, body = ch.basic_get("gets", auto_ack=True)
        if method is None:
            break
        got.append(body)
    assert got == [b"%06d" % i for i in range(1000)]
    c.close()
