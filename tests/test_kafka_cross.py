"""Kafka <-> other protocols through amq.topic (docs/mapping.md); AMQP 0-9-1 (pika) on the
other side."""

from __future__ import annotations

import time
import uuid

import pika
import pytest
from brokerproc import BrokerProcess
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import module_broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory, "cross", ["kafka", "amqp"], log_level="info") as b:
        yield b


def amqp_channel(b):
    conn = pika.BlockingConnection(pika.ConnectionParameters(b.host, b.port("amqp")))
    return conn, conn.channel()


def test_amqp_publish_reaches_kafka_consumer(broker):
    t = "cross." + uuid.uuid4().hex[:8]
    bs = f"{broker.host}:{broker.port('kafka')}"
    p = Producer({"bootstrap.servers": bs})
    p.produce(t, b"from-kafka", key=b"k1", headers=[("h", b"1")])  # creates the topic
    assert p.flush(10) == 0
    conn, ch = amqp_channel(broker)
    ch.basic_publish(
        "amq.topic",
        t,
        b"from-amqp",
        pika.BasicProperties(headers={"color": "red", "n": 7}, timestamp=int(time.time())),
    )
    conn.close()
    c = Consumer({"bootstrap.servers": bs, "group.id": "x-" + t, "auto.offset.reset": "earliest"})
    c.subscribe([t])
    got = []
    deadline = time.time() + 20
    while len(got) < 2 and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append(m)
    c.close()
    assert [m.value() for m in got] == [b"from-kafka", b"from-amqp"]
    assert [m.offset() for m in got] == [0, 1]
    headers = dict(got[1].headers())
    assert headers["color"] == b"red" and headers["n"] == b"7"


def test_kafka_produce_reaches_amqp_queue(broker):
    t = "cross." + uuid.uuid4().hex[:8]
    bs = f"{broker.host}:{broker.port('kafka')}"
    conn, ch = amqp_channel(broker)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "cross.#")
    p = Producer({"bootstrap.servers": bs, "linger.ms": 20})
    for i in range(5):
        p.produce(t, b"v%d" % i, key=b"key", headers=[("h", b"x")])
    assert p.flush(10) == 0
    bodies = []
    deadline = time.time() + 10
    while len(bodies) < 5 and time.time() < deadline:
        method, props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        assert method.routing_key == t
        bodies.append(body)
    conn.close()
    assert bodies == [b"v%d" % i for i in range(5)]
    # the stream itself holds each record once (no loop back through amq.topic)
    c = Consumer({"bootstrap.servers": bs, "group.id": "y-" + t, "auto.offset.reset": "earliest"})
    lo, hi = c.get_watermark_offsets(TopicPartition(t, 0), timeout=10)
    c.close()
    assert (lo, hi) == (0, 5)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_kafka_batches_decoded_for_amqp(broker, codec):
    t = "cross." + uuid.uuid4().hex[:8]
    bs = f"{broker.host}:{broker.port('kafka')}"
    conn, ch = amqp_channel(broker)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", t)
    p = Producer({"bootstrap.servers": bs, "linger.ms": 50, "compression.type": codec})
    values = [(b"%s-%d " % (codec.encode(), i)) * 30 for i in range(50)]
    for v in values:
        p.produce(t, v)
    assert p.flush(10) == 0
    bodies = []
    deadline = time.time() + 10
    while len(bodies) < 50 and time.time() < deadline:
        method, props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        bodies.append(body)
    conn.close()
    assert bodies == values


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_kafka_python_compressed_batches_decoded_for_amqp(broker, codec):
    from kafka import KafkaProducer

    t = "cross." + uuid.uuid4().hex[:8]
    conn, ch = amqp_channel(broker)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", t)
    p = KafkaProducer(
        bootstrap_servers=f"{broker.host}:{broker.port('kafka')}",
        compression_type=codec,
        linger_ms=50,
    )
    values = [(b"kp-%d " % i) * 30 for i in range(20)]
    for v in values:
        p.send(t, v)
    p.flush(10)
    p.close()
    bodies = []
    deadline = time.time() + 10
    while len(bodies) < 20 and time.time() < deadline:
        method, props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        bodies.append(body)
    conn.close()
    assert bodies == values


def test_mqtt_and_kafka_both_ways(tmp_path):
    import paho.mqtt.client as mqtt

    with BrokerProcess(tmp_path / "mq", adapters=["kafka", "mqtt"], log_level="info") as b:
        bs = f"{b.host}:{b.port('kafka')}"
        t = "sensors.t" + uuid.uuid4().hex[:6]
        p = Producer({"bootstrap.servers": bs})
        p.produce(t, b"first")  # creates the topic
        assert p.flush(10) == 0
        got = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="kx-" + t)
        c.on_message = lambda cl, u, m: got.append((m.topic, m.payload))
        c.connect(b.host, b.port("mqtt"))
        c.loop_start()
        try:
            c.subscribe("sensors/#", 1)
            time.sleep(0.5)
            c.publish(t.replace(".", "/"), b"from-mqtt", qos=1).wait_for_publish(5)
            p.produce(t, b"from-kafka")
            assert p.flush(10) == 0
            deadline = time.time() + 10
            while len(got) < 2 and time.time() < deadline:
                time.sleep(0.05)
        finally:
            c.loop_stop()
            c.disconnect()
        assert got == [(t.replace(".", "/"), b"from-mqtt"), (t.replace(".", "/"), b"from-kafka")]
        k = Consumer(
            {"bootstrap.servers": bs, "group.id": "g" + t, "auto.offset.reset": "earliest"}
        )
        k.subscribe([t])
        out = []
        deadline = time.time() + 10
        while len(out) < 3 and time.time() < deadline:
            m = k.poll(0.2)
            if m is not None and not m.error():
                out.append(m.value())
        k.close()
        assert out == [b"first", b"from-mqtt", b"from-kafka"]


def test_kafka_produce_follows_an_exchange_to_exchange_binding(broker):
    """A Kafka produce reaches a queue bound to amq.topic only through another exchange."""
    t = "cross." + uuid.uuid4().hex[:8]
    conn, ch = amqp_channel(broker)
    ch.exchange_declare("e2e-" + t, "topic", auto_delete=True)
    ch.exchange_bind(destination="e2e-" + t, source="amq.topic", routing_key=t)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "e2e-" + t, routing_key=t)
    p = Producer({"bootstrap.servers": f"{broker.host}:{broker.port('kafka')}"})
    p.produce(t, b"through-e2e")
    assert p.flush(10) == 0
    body = None
    deadline = time.time() + 10
    while body is None and time.time() < deadline:
        _, _, body = ch.basic_get(q, auto_ack=True)
        if body is None:
            time.sleep(0.1)
    conn.close()
    assert body == b"through-e2e"
