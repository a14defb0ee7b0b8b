"""Delayed delivery with real AMQP and MQTT 5 clients: RabbitMQ's ``x-delayed-message`` exchange
with pika (also across ``kill -9``), the ``x-delay`` user property with paho (MQTT 5), and a
delayed message crossing protocols."""

from __future__ import annotations

import time

import pika
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_mqtt_helpers import V5, Client, uid


def channel(b):
    conn = pika.BlockingConnection(pika.ConnectionParameters(b.host, b.port("amqp")))
    return conn, conn.channel()


def get_within(ch, queue: str, seconds: float):
    """basic.get until a message comes or ``seconds`` pass: (body, props, seconds waited)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return body, props, time.monotonic() - start
        time.sleep(0.05)
    return None, None, seconds


def test_pika_delayed_message_exchange(broker_factory):
    b = broker_factory(adapters=["amqp"], log_level="info")
    conn, ch = channel(b)
    # x-delayed-type is required, as in RabbitMQ's plugin: 406 and the channel closes
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare("dx-bad", "x-delayed-message")
    assert e.value.reply_code == 406
    ch = conn.channel()
    ch.exchange_declare("dx", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare("dq")
    ch.queue_bind("dq", "dx", "k")
    ch.confirm_delivery()
    ch.basic_publish("dx", "k", b"late", pika.BasicProperties(headers={"x-delay": 1500}))
    ch.basic_publish("dx", "k", b"now")
    body, _, _ = get_within(ch, "dq", 1.0)
    assert body == b"now"  # the one without x-delay is routed at once
    assert get_within(ch, "dq", 0.8)[0] is None  # the delayed one is not there yet
    body, props, _ = get_within(ch, "dq", 3.0)
    assert body == b"late"
    assert props.headers["x-delay"] == -1500  # delivered: negated, as RabbitMQ does
    # routing follows x-delayed-type: no binding for key "other", nothing arrives
    ch.basic_publish("dx", "other", b"lost", pika.BasicProperties(headers={"x-delay": 100}))
    assert get_within(ch, "dq", 0.8)[0] is None
    conn.close()


def test_pika_delayed_messages_survive_kill9(broker_factory):
    b = broker_factory(adapters=["amqp"], log_level="info")
    conn, ch = channel(b)
    ch.exchange_declare(
        "dxk", "x-delayed-message", durable=True, arguments={"x-delayed-type": "fanout"}
    )
    ch.queue_declare("dqk", durable=True)
    ch.queue_bind("dqk", "dxk", "")
    ch.confirm_delivery()  # each publish returns once the job is on disk
    sent = time.time()
    for i in range(20):
        ch.basic_publish(
            "dxk",
            "",
            b"%d" % i,
            pika.BasicProperties(delivery_mode=2, headers={"x-delay": 4000 + 10 * i}),
        )
    conn.close()
    b.kill9()
    b.start()
    conn, ch = channel(b)
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 20 and time.monotonic() < deadline:
        method, _, body = ch.basic_get("dqk", auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        assert time.time() >= sent + 3.9  # never before its time
        got.append(int(body))
    assert sorted(got) == list(range(20))
    assert get_within(ch, "dqk", 0.5)[0] is None  # delivered once
    conn.close()


def test_mqtt5_x_delay_user_property_and_cross_protocol(broker_factory):
    b = broker_factory(adapters=["mqtt", "amqp"], log_level="info")
    t = uid("delayed")
    sub = Client(b, version=V5)
    sub.subscribe(t, qos=1)
    conn, ch = channel(b)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", t)
    pub = Client(b, version=V5)
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("x-delay", "1200")]
    sent = time.monotonic()
    pub.publish(t, b"later", qos=1, properties=p)
    pub.publish(t, b"now", qos=1)
    assert sub.get().payload == b"now"
    m = sub.get(timeout=5)
    waited = time.monotonic() - sent
    assert m.payload == b"later" and waited >= 1.15, waited
    assert ("x-delay", "1200") in m.properties.UserProperty
    # the AMQP subscriber of the same topic got both too, the delayed one last
    bodies = []
    for _ in range(2):
        body, _, _ = get_within(ch, q, 3.0)
        bodies.append(body)
    assert bodies == [b"now", b"later"]
    # a value that is not a number is an ordinary user property: no delay
    p.UserProperty = [("x-delay", "soon")]
    pub.publish(t, b"odd", qos=1, properties=p)
    assert sub.get(timeout=2).payload == b"odd"
    conn.close()


def test_scheduled_messages_in_metrics(tmp_path):
    from test_management_metrics import scrape
    from test_management_support import Api, start_broker

    b, url = start_broker(tmp_path, adapters=["amqp"], store="sqlite")
    try:
        conn, ch = channel(b)
        ch.exchange_declare("dxm", "x-delayed-message", arguments={"x-delayed-type": "fanout"})
        ch.queue_declare("dqm")
        ch.queue_bind("dqm", "dxm", "")
        ch.confirm_delivery()
        for delay in (60_000, 60_000, 200):
            ch.basic_publish("dxm", "", b"m", pika.BasicProperties(headers={"x-delay": delay}))
        assert get_within(ch, "dqm", 3.0)[0] == b"m"
        m = scrape(Api(url))
        assert m["polymq_scheduled_messages"][()] == 2
        assert m["polymq_scheduled_deliveries_total"][()] == 1
        conn.close()
    finally:
        b.stop()


def test_delayed_messages_and_delayed_wills_survive_kill9_on_postgres(broker_factory, pg_server):
    """The kill -9 tests again, with the broker on the postgres store."""
    from test_mqtt_receive_max_wills import (
        test_will_of_a_client_connected_at_a_crash_is_published_after_the_restart as will_test,
    )

    def on_postgres(adapters=(), store="sqlite", settings=None, **kw):
        settings = {"store.dsn": pg_server.create_database(), **(settings or {})}
        b = broker_factory(adapters=adapters, store="postgres", settings=settings, **kw)
        assert "store: postgres" in b.log_text()
        return b

    test_pika_delayed_messages_survive_kill9(on_postgres)
    will_test(on_postgres)
