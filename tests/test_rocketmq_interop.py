"""RocketMQ (ali-ons) to and from AMQP 0-9-1 (pika), MQTT (paho) and Kafka (confluent-kafka),
through one broker. A RocketMQ topic is the stream a Kafka topic of the same name is, bound to
amq.topic with its name, so each side reaches the other without configuration."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import module_broker
from rocketmq_helpers import ADAPTER, consumer, ensure_ali_ons, produce

sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))

from clients import AmqpClient, MqttClient, Out  # noqa: E402


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    ensure_ali_ons()
    adapters = [ADAPTER, "amqp", "mqtt", "kafka"]
    with module_broker(tmp_path_factory, "rmq-interop", adapters, store="sqlite") as b:
        yield b


def name_srv(b) -> str:
    return f"{b.host}:{b.port(ADAPTER)}"


def kafka_reader(b, topic: str, partitions: int):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": f"{b.host}:{b.port('kafka')}",
            "group.id": f"rmq-interop-{topic}",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, i, OFFSET_BEGINNING) for i in range(partitions)])
    return c


def kafka_poll(c, n: int, timeout: float = 15.0) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append(m)
    return got


def test_rocketmq_to_amqp_mqtt_and_kafka(broker):
    ns = name_srv(broker)
    amqp = AmqpClient(broker.host, broker.port("amqp"))
    mqtt = MqttClient(broker.host, broker.port("mqtt"), v5=True)
    try:
        q = amqp.subscribe("RmqOut")
        m = mqtt.subscribe("RmqOut")
        produce(ns, "RmqOut", 3, tag="red", prefix="to-all")  # creates the topic (4 queues)
        kc = kafka_reader(broker, "RmqOut", 4)
        expected = [f"to-all-{i}" for i in range(3)]

        got = amqp.receive(q, 3)
        assert sorted(g.body.decode() for g in got) == expected
        for g in got:
            i = g.body.decode().rsplit("-", 1)[1]
            assert g.headers["app_header"] == f"value-{i}"
            assert g.durable

        assert sorted(g.body.decode() for g in mqtt.receive(m, 3)) == expected

        recs = kafka_poll(kc, 3)
        kc.close()
        assert sorted(r.value().decode() for r in recs) == expected
        for r in recs:
            i = r.value().decode().rsplit("-", 1)[1]
            assert r.key() == f"key-{i}".encode()  # KEYS is the Kafka key
            assert dict(r.headers())["app_header"] == f"value-{i}".encode()
    finally:
        amqp.close()
        mqtt.close()


def test_amqp_mqtt_and_kafka_to_rocketmq(broker):
    from confluent_kafka import Producer

    ns = name_srv(broker)
    c = consumer(ns, "g-interop", "RmqIn", "*", count=3)
    c.ready()
    amqp = AmqpClient(broker.host, broker.port("amqp"))
    mqtt = MqttClient(broker.host, broker.port("mqtt"), v5=False)
    try:
        amqp.publish(
            "RmqIn", Out(b"from-amqp", headers={"TAGS": "blue", "colour": "teal"}, durable=True)
        )
        mqtt.publish("RmqIn", Out(b"from-mqtt"))
        p = Producer({"bootstrap.servers": f"{broker.host}:{broker.port('kafka')}"})
        p.produce("RmqIn", b"from-kafka", key=b"k1", headers=[("h", b"v")])
        assert p.flush(10) == 0
    finally:
        amqp.close()
        mqtt.close()
    got = {m["body"]: m for m in c.finish(30)}
    assert set(got) == {"from-amqp", "from-mqtt", "from-kafka"}
    assert got["from-amqp"]["tags"] == "blue"
    assert got["from-amqp"]["props"]["colour"] == "teal"
    assert got["from-kafka"]["keys"] == "k1"
    assert got["from-kafka"]["props"]["h"] == "v"


def test_tag_filter_applies_to_other_protocols_messages(broker):
    ns = name_srv(broker)
    c = consumer(ns, "g-interop-tags", "RmqTags", "wanted", count=1)
    c.ready()
    amqp = AmqpClient(broker.host, broker.port("amqp"))
    try:
        amqp.publish("RmqTags", Out(b"untagged"))
        amqp.publish("RmqTags", Out(b"other", headers={"TAGS": "other"}))
        amqp.publish("RmqTags", Out(b"tagged", headers={"TAGS": "wanted"}))
    finally:
        amqp.close()
    assert [m["body"] for m in c.finish(30)] == ["tagged"]
