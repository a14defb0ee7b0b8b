"""AMQP 0-9-1 with kombu and py-amqp against a real broker process."""

from __future__ import annotations

import time
import uuid

import amqp
import kombu
import pytest


@pytest.fixture(scope="module")
def broker(amqp_broker):
    return amqp_broker


def url(broker):
    return f"amqp://guest:guest@{broker.host}:{broker.port('amqp')}//"


def py_amqp(broker, **kw):
    c = amqp.Connection(
        f"{broker.host}:{broker.port('amqp')}", userid="guest", password="guest", **kw
    )
    c.connect()
    return c


def qname():
    return "k-" + uuid.uuid4().hex[:10]


@pytest.mark.parametrize("method", ["AMQPLAIN", "PLAIN"])
def test_py_amqp_login_methods(broker, method):
    c = py_amqp(broker, login_method=method)
    try:
        assert c.server_properties["product"] == "polymq"
        ch = c.channel()
        q, _, _ = ch.queue_declare(exclusive=True)
        ch.basic_publish(amqp.Message(b"hi"), routing_key=q)
        assert ch.basic_get(q, no_ack=True).body == b"hi"
    finally:
        c.close()


def test_py_amqp_wrong_password(broker):
    c = amqp.Connection(f"{broker.host}:{broker.port('amqp')}", userid="guest", password="x")
    with pytest.raises(amqp.exceptions.AccessRefused):
        c.connect()


def test_py_amqp_properties_and_float_headers(broker):
    c = py_amqp(broker)
    try:
        ch = c.channel()
        q, _, _ = ch.queue_declare(exclusive=True)
        msg = amqp.Message(
            b"body",
            content_type="text/plain",
            content_encoding="utf-8",
            application_headers={"f": 1.5, "i": -7, "s": "x", "l": [1, 2], "t": {"a": True}},
            delivery_mode=2,
            priority=3,
            correlation_id="c",
            reply_to="r",
            message_id="m",
            timestamp=1700000000,
            type="ty",
            app_id="ap",
        )
        ch.basic_publish(msg, routing_key=q)
        got = ch.basic_get(q, no_ack=True)
        assert got.body == "body"  # py-amqp decodes a utf-8 content-encoding
        p = got.properties
        assert p["content_type"] == "text/plain" and p["priority"] == 3
        assert p["application_headers"] == {
            "f": 1.5,
            "i": -7,
            "s": "x",
            "l": [1, 2],
            "t": {"a": True},
        }
        assert p["message_id"] == "m" and p["app_id"] == "ap" and p["delivery_mode"] == 2
    finally:
        c.close()


def test_py_amqp_consume_drain_ack_and_reject(broker):
    c = py_amqp(broker)
    try:
        ch = c.channel()
        q, _, _ = ch.queue_declare(exclusive=True)
        for i in range(5):
            ch.basic_publish(amqp.Message(b"%d" % i), routing_key=q)
        ch.basic_qos(0, 2, False)
        got = []

        def on_message(m):
            got.append(m)

        ch.basic_consume(q, callback=on_message)
        deadline = time.time() + 3
        while len(got) < 2 and time.time() < deadline:
            try:
                c.drain_events(timeout=0.2)
            except TimeoutError:
                pass
        assert len(got) == 2  # prefetch 2
        ch.basic_ack(got[0].delivery_tag)
        ch.basic_reject(got[1].delivery_tag, requeue=True)
        while len(got) < 6 and time.time() < deadline:
            try:
                c.drain_events(timeout=0.2)
            except TimeoutError:
                continue
            ch.basic_ack(got[-1].delivery_tag)
        # the ack of 0 frees a slot for 2 before 1 is rejected; 1 goes back to the head
        assert [m.body for m in got] == [b"0", b"1", b"2", b"1", b"3", b"4"]
        assert got[3].delivery_info["redelivered"] is True
    finally:
        c.close()


def test_py_amqp_confirm_publish(broker):
    c = py_amqp(broker, confirm_publish=True)
    try:
        ch = c.channel()
        q, _, _ = ch.queue_declare(qname(), durable=True)
        for i in range(10):
            ch.basic_publish(amqp.Message(b"%d" % i, delivery_mode=2), routing_key=q)
        assert ch.queue_declare(q, passive=True)[1] == 10
        ch.queue_delete(q)
    finally:
        c.close()


def test_py_amqp_tx(broker):
    c = py_amqp(broker)
    try:
        ch = c.channel()
        q, _, _ = ch.queue_declare(exclusive=True)
        ch.tx_select()
        ch.basic_publish(amqp.Message(b"a"), routing_key=q)
        ch.tx_rollback()
        ch.basic_publish(amqp.Message(b"b"), routing_key=q)
        ch.tx_commit()
        assert ch.basic_get(q, no_ack=True).body == b"b"
        assert ch.basic_get(q, no_ack=True) is None
    finally:
        c.close()


def test_py_amqp_channel_error_then_new_channel(broker):
    c = py_amqp(broker)
    try:
        ch = c.channel()
        with pytest.raises(amqp.exceptions.NotFound):
            ch.queue_declare(qname(), passive=True)
        ch2 = c.channel()
        q, _, _ = ch2.queue_declare(exclusive=True)
        assert q
    finally:
        c.close()


def test_py_amqp_heartbeat(broker):
    c = py_amqp(broker, heartbeat=2)
    try:
        assert c.heartbeat == 2
        deadline = time.time() + 3
        while time.time() < deadline:
            c.heartbeat_tick()
            try:
                c.drain_events(timeout=0.3)
            except TimeoutError:
                pass
        ch = c.channel()
        assert ch.queue_declare(exclusive=True)[0]
    finally:
        c.close()


def test_kombu_producer_consumer_topic(broker):
    ex = kombu.Exchange("kx-" + uuid.uuid4().hex[:6], type="topic", durable=False, auto_delete=True)
    queue = kombu.Queue(qname(), ex, routing_key="orders.#", auto_delete=True)
    with kombu.Connection(url(broker)) as conn:
        producer = conn.Producer(serializer="json")
        received = []

        def handle(body, message):
            received.append((body, message.headers, message.properties.get("priority")))
            message.ack()

        with conn.Consumer(queue, callbacks=[handle], prefetch_count=10):
            for i in range(5):
                producer.publish(
                    {"n": i},
                    exchange=ex,
                    routing_key=f"orders.eu.{i}",
                    headers={"h": i},
                    priority=1,
                    declare=[queue],
                )
            producer.publish({"n": 99}, exchange=ex, routing_key="other.x")
            deadline = time.time() + 5
            while len(received) < 5 and time.time() < deadline:
                try:
                    conn.drain_events(timeout=0.3)
                except TimeoutError:
                    pass
    assert [b["n"] for b, _, _ in received] == [0, 1, 2, 3, 4]
    assert [h["h"] for _, h, _ in received] == [0, 1, 2, 3, 4]


def test_kombu_simple_queue_persistent(broker):
    name = qname()
    with kombu.Connection(url(broker)) as conn:
        sq = conn.SimpleQueue(name, serializer="json")
        sq.put({"hello": "world"}, delivery_mode=2)
        msg = sq.get(block=True, timeout=3)
        assert msg.payload == {"hello": "world"}
        assert msg.properties["delivery_mode"] == 2
        msg.ack()
        sq.close()
        sq.queue(conn.channel()).delete()


def test_kombu_reject_dead_letters(broker):
    dlx = kombu.Exchange("kdlx-" + uuid.uuid4().hex[:6], type="fanout", auto_delete=True)
    dead = kombu.Queue(qname(), dlx, auto_delete=False)
    work = kombu.Queue(qname(), queue_arguments={"x-dead-letter-exchange": dlx.name})
    with kombu.Connection(url(broker)) as conn:
        ch = conn.channel()
        dead(ch).declare()
        work(ch).declare()
        conn.Producer().publish(b"bad", routing_key=work.name)
        sq = conn.SimpleQueue(work)
        msg = sq.get(timeout=3)
        msg.reject(requeue=False)
        dq = conn.SimpleQueue(dead)
        m = dq.get(timeout=3)
        assert m.body == b"bad"
        assert m.headers["x-death"][0]["reason"] == "rejected"
        m.ack()
        sq.close()
        dq.close()
        ch = conn.channel()
        work(ch).delete()
        dead(ch).delete()
