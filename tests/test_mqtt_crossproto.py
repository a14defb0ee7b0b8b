"""The MQTT column of the field mapping, proved against a real AMQP 0-9-1 client (pika)."""

from __future__ import annotations

import time

import pika
import pytest
from conftest import module_broker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_mqtt_helpers import V3, V5, Client, uid


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory, "xproto", ["mqtt", "amqp"], store="memory") as b:
        yield b


@pytest.fixture
def channel(broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    yield conn.channel()
    conn.close()


def test_amqp_to_mqtt5(broker, channel):
    t = uid("xa")
    sub = Client(broker, version=V5)
    sub.subscribe(f"{t}/#", qos=1)
    s3 = Client(broker, version=V3)
    s3.subscribe(f"{t}/#", qos=1)
    channel.basic_publish(
        "amq.topic",
        f"{t}.dev/1.x",
        b"from amqp",
        pika.BasicProperties(
            content_type="text/plain",
            correlation_id="c-1",
            reply_to="replies",
            headers={"n": 5, "ok": True, "s": "str"},
            delivery_mode=2,
        ),
    )
    m = sub.get()
    assert m.topic == f"{t}/dev.1/x"  # '.' and '/' swapped back
    assert (m.payload, m.qos) == (b"from amqp", 1)  # persistent -> QoS 1
    p = m.properties
    assert p.ContentType == "text/plain"
    assert p.CorrelationData == b"c-1"
    assert p.ResponseTopic == "replies"
    assert sorted(p.UserProperty) == [("n", "5"), ("ok", "true"), ("s", "str")]
    m3 = s3.get()
    assert (m3.topic, m3.payload) == (f"{t}/dev.1/x", b"from amqp")
    channel.basic_publish("amq.topic", f"{t}.t", b"transient")
    assert sub.get().qos == 0  # non-persistent -> QoS 0


def test_mqtt5_to_amqp(broker, channel):
    t = uid("xm")
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, "amq.topic", f"{t}.#")
    pub = Client(broker, version=V5)
    p = Properties(PacketTypes.PUBLISH)
    p.ContentType = "application/json"
    p.CorrelationData = b"abc"
    p.ResponseTopic = "reply/to"
    p.UserProperty = [("k", "v")]
    p.MessageExpiryInterval = 60
    pub.publish(f"{t}/a.b", b'{"v": 1}', qos=1, properties=p)
    for _ in range(50):
        meth, props, body = channel.basic_get(q, auto_ack=True)
        if meth is not None:
            break
        time.sleep(0.05)
    assert meth.exchange == "amq.topic" and meth.routing_key == f"{t}.a/b"
    assert body == b'{"v": 1}'
    assert props.content_type == "application/json"
    assert props.correlation_id == "abc"
    assert props.reply_to == "topic://reply.to"  # docs/mapping.md: reply-to addresses
    assert props.headers == {"k": "v"}
    assert props.delivery_mode == 2  # QoS 1 -> persistent
    assert 55_000 <= int(props.expiration) <= 60_000


@pytest.fixture(scope="module")
def kbroker(tmp_path_factory):
    with module_broker(tmp_path_factory, "xkafka", ["mqtt", "kafka"], store="memory") as b:
        yield b


def test_kafka_and_mqtt_share_topics(kbroker):
    from kafka import KafkaConsumer, KafkaProducer

    t = uid("k")
    boot = f"{kbroker.host}:{kbroker.port('kafka')}"
    sub = Client(kbroker, version=V5)
    sub.subscribe(f"{t}/#", qos=1)
    producer = KafkaProducer(bootstrap_servers=boot, acks=1)
    producer.send(f"{t}.temp", b"21.5", headers=[("unit", b"C")]).get(10)
    m = sub.get(timeout=10)
    assert (m.topic, m.payload) == (f"{t}/temp", b"21.5")  # Kafka topic t.temp = MQTT t/temp
    assert m.properties.UserProperty == [("unit", "C")]
    # and back: an MQTT publish lands in the Kafka topic (a stream bound to amq.topic)
    producer.send(f"{t}.hum", b"first").get(10)
    sub.publish(f"{t}/hum", b"55", qos=1)
    consumer = KafkaConsumer(
        f"{t}.hum", bootstrap_servers=boot, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    assert [r.value for r in consumer][:2] == [b"first", b"55"]
    consumer.close()
    producer.close()
