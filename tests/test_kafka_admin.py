"""Kafka admin requests with confluent-kafka's AdminClient and kafka-python's KafkaAdminClient:
CreatePartitions, DeleteRecords, AlterConfigs / IncrementalAlterConfigs (retention),
DescribeCluster, DeleteGroups, OffsetDelete."""

from __future__ import annotations

import time
import uuid

import pytest
from brokerproc import BrokerProcess
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)
from kafka import KafkaAdminClient
from kafka import TopicPartition as PyTopicPartition


def bootstrap(b: BrokerProcess) -> str:
    return f"{b.host}:{b.port('kafka')}"


def name() -> str:
    return "adm-" + uuid.uuid4().hex[:10]


def admin(b: BrokerProcess) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap(b)})


def create(b: BrokerProcess, topic: str, partitions: int = 1) -> None:
    a = admin(b)  # kept alive until the answer is in
    a.create_topics([NewTopic(topic, partitions, 1)])[topic].result(10)


def produce_each(b: BrokerProcess, topic: str, n: int, partition: int = 0) -> None:
    """``n`` records, one batch each (so offsets and batch boundaries coincide)."""
    p = Producer({"bootstrap.servers": bootstrap(b), "linger.ms": 0})
    for i in range(n):
        p.produce(topic, b"v%d" % i, partition=partition)
        assert p.flush(10) == 0


def earliest(b: BrokerProcess, topic: str, partition: int = 0) -> int:
    tp = TopicPartition(topic, partition)
    a = admin(b)
    return a.list_offsets({tp: OffsetSpec.earliest()})[tp].result(10).offset


def topic_config(b: BrokerProcess, topic: str) -> dict[str, str]:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    a = admin(b)
    entries = a.describe_configs([res])[res].result(10)
    return {k: e.value for k, e in entries.items()}


def commit_offsets(b: BrokerProcess, group: str, offsets: list[TopicPartition]) -> None:
    c = Consumer({"bootstrap.servers": bootstrap(b), "group.id": group})
    c.commit(offsets=offsets, asynchronous=False)
    c.close()


def committed(b: BrokerProcess, group: str, tps: list[TopicPartition]) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap(b), "group.id": group})
    out = [tp.offset for tp in c.committed(tps, 10)]
    c.close()
    return out


def test_create_partitions(kbroker):
    t = name()
    create(kbroker, t)
    a = admin(kbroker)
    a.create_partitions([NewPartitions(t, 3)])[t].result(10)
    assert len(a.list_topics(t, timeout=10).topics[t].partitions) == 3
    produce_each(kbroker, t, 1, partition=2)  # the new partition takes records
    with pytest.raises(KafkaException) as err:
        a.create_partitions([NewPartitions(t, 2)])[t].result(10)  # fewer: refused
    assert "INVALID_PARTITIONS" in str(err.value)


def test_delete_records_moves_log_start(kbroker):
    t = name()
    create(kbroker, t)
    produce_each(kbroker, t, 10)
    tp = TopicPartition(t, 0, 4)
    a = admin(kbroker)
    res = a.delete_records([tp])[tp].result(10)
    assert res.low_watermark == 4
    assert earliest(kbroker, t) == 4
    c = Consumer(
        {"bootstrap.servers": bootstrap(kbroker), "group.id": t, "auto.offset.reset": "earliest"}
    )
    c.assign([TopicPartition(t, 0, -2)])  # OFFSET_BEGINNING
    m = None
    deadline = time.time() + 10
    while m is None and time.time() < deadline:
        m = c.poll(0.2)
    c.close()
    assert m is not None and (m.offset(), m.value()) == (4, b"v4")


def test_alter_configs_retention(kbroker):
    t = name()
    create(kbroker, t)
    produce_each(kbroker, t, 5)
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        t,
        incremental_configs=[
            ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    a = admin(kbroker)
    a.incremental_alter_configs([res])[res].result(10)
    cfg = topic_config(kbroker, t)
    assert cfg["retention.ms"] == "3600000" and cfg["retention.bytes"] == "1048576"
    # AlterConfigs replaces the whole set: retention.bytes goes back to the default
    full = ConfigResource(ConfigResource.Type.TOPIC, t, set_config={"retention.ms": "7200000"})
    a.alter_configs([full])[full].result(10)
    cfg = topic_config(kbroker, t)
    assert cfg["retention.ms"] == "7200000" and cfg["retention.bytes"] == "-1"
    bad = ConfigResource(
        ConfigResource.Type.TOPIC,
        t,
        incremental_configs=[
            ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    with pytest.raises(KafkaException) as err:
        a.incremental_alter_configs([bad])[bad].result(10)
    assert "INVALID_CONFIG" in str(err.value)


def test_retention_config_survives_restart(tmp_path):
    with BrokerProcess(tmp_path / "b", adapters=["kafka"], store="sqlite") as b:
        t = name()
        create(b, t)
        res = ConfigResource(
            ConfigResource.Type.TOPIC,
            t,
            incremental_configs=[
                ConfigEntry("retention.ms", "123456", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        a = admin(b)
        a.incremental_alter_configs([res])[res].result(10)
        b.restart()
        assert topic_config(b, t)["retention.ms"] == "123456"


def test_describe_cluster(kbroker):
    a = admin(kbroker)
    d = a.describe_cluster(request_timeout=10).result(10)
    assert d.cluster_id == "polymq"
    assert [(n.id, n.host, n.port) for n in d.nodes] == [(1, kbroker.host, kbroker.port("kafka"))]
    assert d.controller.id == 1
    py = KafkaAdminClient(bootstrap_servers=bootstrap(kbroker))
    try:
        assert py.describe_cluster()["cluster_id"] == "polymq"
    finally:
        py.close()


def test_delete_groups(kbroker):
    t = name()
    create(kbroker, t)
    idle, busy = "idle-" + t, "busy-" + t
    commit_offsets(kbroker, idle, [TopicPartition(t, 0, 3)])
    assert committed(kbroker, idle, [TopicPartition(t, 0)]) == [3]
    member = Consumer({"bootstrap.servers": bootstrap(kbroker), "group.id": busy})
    member.subscribe([t])
    deadline = time.time() + 15
    while not member.assignment() and time.time() < deadline:
        member.poll(0.2)
    try:
        a = admin(kbroker)
        fs = a.delete_consumer_groups([idle, busy, "never-" + t], request_timeout=10)
        fs[idle].result(10)
        with pytest.raises(KafkaException) as err:
            fs[busy].result(10)
        assert "NON_EMPTY_GROUP" in str(err.value)
        with pytest.raises(KafkaException) as err:
            fs["never-" + t].result(10)
        assert "GROUP_ID_NOT_FOUND" in str(err.value)
    finally:
        member.close()
    assert committed(kbroker, idle, [TopicPartition(t, 0)]) == [-1001]  # no offset any more


def test_offset_delete_with_kafka_python(kbroker):
    a_topic, b_topic = name(), name()
    create(kbroker, a_topic)
    create(kbroker, b_topic)
    group = "od-" + a_topic
    commit_offsets(kbroker, group, [TopicPartition(a_topic, 0, 2), TopicPartition(b_topic, 0, 5)])
    py = KafkaAdminClient(bootstrap_servers=bootstrap(kbroker))
    try:
        result = py.delete_group_offsets(group, [PyTopicPartition(a_topic, 0)])
    finally:
        py.close()
    errors = {(tp.topic, tp.partition): err for tp, err in result.items()}
    assert [e.errno for e in errors.values()] == [0]
    assert committed(kbroker, group, [TopicPartition(a_topic, 0), TopicPartition(b_topic, 0)]) == [
        -1001,
        5,
    ]
