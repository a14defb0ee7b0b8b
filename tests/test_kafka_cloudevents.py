"""Record headers ``content-type`` and ``correlation-id`` (the CloudEvents Kafka binding's names)
carry the core's content type and correlation id between Kafka and AMQP 0-9-1 / MQTT 5, both
ways (docs/mapping.md). Real clients: confluent-kafka, pika, paho-mqtt v5."""

from __future__ import annotations

import time
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
from brokerproc import BrokerProcess
from confluent_kafka import Consumer, Producer
from conftest import module_broker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory, "ce", ["kafka", "amqp", "mqtt"], log_level="info") as b:
        yield b


def bootstrap(b: BrokerProcess) -> str:
    return f"{b.host}:{b.port('kafka')}"


def create_topic(b: BrokerProcess, topic: str) -> None:
    p = Producer({"bootstrap.servers": bootstrap(b)})
    p.produce(topic, b"first")  # creates the topic, so amq.topic routes its name to it
    assert p.flush(10) == 0


def kafka_read(b: BrokerProcess, topic: str, count: int) -> list:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap(b),
            "group.id": "g" + topic,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    out = []
    deadline = time.time() + 20
    while len(out) < count and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            out.append(m)
    c.close()
    return out


def test_kafka_headers_become_amqp_and_mqtt5_properties(broker):
    t = "ce.k" + uuid.uuid4().hex[:8]
    create_topic(broker, t)
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", t)
    got_mqtt = []
    m5 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ce-" + t, protocol=mqtt.MQTTv5)
    m5.on_message = lambda cl, u, msg: got_mqtt.append(msg)
    m5.connect(broker.host, broker.port("mqtt"))
    m5.loop_start()
    try:
        m5.subscribe(t.replace(".", "/"), 1)
        time.sleep(0.5)
        p = Producer({"bootstrap.servers": bootstrap(broker)})
        p.produce(
            t,
            b'{"temp": 21}',
            headers=[
                ("content-type", b"application/json"),
                ("correlation-id", b"req-42"),
                ("other", b"x"),
            ],
        )
        assert p.flush(10) == 0
        deadline = time.time() + 10
        method = None
        while method is None and time.time() < deadline:
            method, props, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                time.sleep(0.05)
        assert method is not None, "the AMQP queue got nothing"
        assert body == b'{"temp": 21}'
        assert props.content_type == "application/json"
        assert props.correlation_id == "req-42"
        # the two headers are fields now, not application headers; the rest stay headers
        assert props.headers == {"other": "x"}
        while not got_mqtt and time.time() < deadline:
            time.sleep(0.05)
        assert got_mqtt, "the MQTT 5 subscriber got nothing"
        mp = got_mqtt[0].properties
        assert mp.ContentType == "application/json"
        assert mp.CorrelationData == b"req-42"
        assert ("other", "x") in mp.UserProperty
        assert all(k not in ("content-type", "correlation-id") for k, _ in mp.UserProperty)
    finally:
        m5.loop_stop()
        m5.disconnect()
        conn.close()


def test_amqp_and_mqtt5_properties_become_kafka_headers(broker):
    t = "ce.a" + uuid.uuid4().hex[:8]
    create_topic(broker, t)
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    ch.basic_publish(
        "amq.topic",
        t,
        b"from-amqp",
        pika.BasicProperties(content_type="text/plain", correlation_id="corr-amqp"),
    )
    conn.close()
    m5 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ce-p-" + t, protocol=mqtt.MQTTv5)
    m5.connect(broker.host, broker.port("mqtt"))
    m5.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/cloudevents+json"
        props.CorrelationData = b"corr-mqtt"
        m5.publish(t.replace(".", "/"), b"from-mqtt", qos=1, properties=props).wait_for_publish(5)
    finally:
        m5.loop_stop()
        m5.disconnect()
    out = kafka_read(broker, t, 3)
    assert [m.value() for m in out] == [b"first", b"from-amqp", b"from-mqtt"]
    assert out[0].headers() is None  # a plain Kafka record gets no headers added
    amqp_headers = dict(out[1].headers())
    assert amqp_headers["content-type"] == b"text/plain"
    assert amqp_headers["correlation-id"] == b"corr-amqp"
    mqtt_headers = dict(out[2].headers())
    assert mqtt_headers["content-type"] == b"application/cloudevents+json"
    assert mqtt_headers["correlation-id"] == b"corr-mqtt"
