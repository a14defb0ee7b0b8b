"""Kafka adapter with kafka-python 3.x and aiokafka against a real broker process."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from brokerproc import BrokerProcess
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic


def bootstrap(b: BrokerProcess) -> str:
    return f"{b.host}:{b.port('kafka')}"


def name() -> str:
    return "py-" + uuid.uuid4().hex[:10]


def test_kafka_python_defaults_group_seek_times(kbroker):
    t = name()
    p = KafkaProducer(bootstrap_servers=bootstrap(kbroker))  # idempotence on by default
    t0 = int(time.time() * 1000)
    futures = []
    for i in range(20):
        futures.append(
            p.send(
                t,
                value=b"v%d" % i,
                key=b"k",
                timestamp_ms=t0 + i * 1000,
                headers=[("n", str(i).encode())],
            )
        )
    p.flush(15)
    offsets = [f.get(timeout=10).offset for f in futures]
    assert offsets == list(range(20))
    p.close()

    c = KafkaConsumer(
        t,
        bootstrap_servers=bootstrap(kbroker),
        group_id="g-" + t,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        consumer_timeout_ms=15000,
    )
    got = []
    for m in c:
        got.append(m)
        if len(got) == 20:
            break
    assert [m.value for m in got] == [b"v%d" % i for i in range(20)]
    assert got[5].headers == [("n", b"5")]
    assert got[5].timestamp == t0 + 5000
    c.commit()
    tp = TopicPartition(t, 0)
    assert c.committed(tp) == 20
    # seek back and read again
    c.seek(tp, 12)
    again = c.poll(timeout_ms=5000, max_records=3)
    assert [m.offset for m in again[tp]] == [12, 13, 14]
    # offsets by time
    found = c.offsets_for_times({tp: t0 + 7500})
    assert found[tp].offset == 8
    assert found[tp].timestamp == t0 + 8000
    assert c.offsets_for_times({tp: t0 + 10**7})[tp] is None
    assert c.beginning_offsets([tp])[tp] == 0
    assert c.end_offsets([tp])[tp] == 20
    c.close()


def test_kafka_python_admin_create_delete(kbroker):
    a = KafkaAdminClient(bootstrap_servers=bootstrap(kbroker))
    t = name()
    a.create_topics(
        [
            NewTopic(
                t, num_partitions=3, replication_factor=1, topic_configs={"retention.ms": "3600000"}
            )
        ]
    )
    assert t in a.list_topics()
    desc = a.describe_topics([t])
    assert len(desc[0]["partitions"]) == 3
    configs = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t)], config_filter="all")
    topic_configs = configs["topic"][t]
    assert topic_configs["retention.ms"]["value"] == "3600000"
    assert topic_configs["cleanup.policy"]["value"] == "delete"
    a.delete_topics([t])
    assert t not in a.list_topics()
    a.close()


@pytest.mark.xfail(
    strict=False,
    reason="kafka-python 3.0.12 (the newest release) hangs in about 1 run in 10 here: after "
    "the broker has answered every JoinGroup/SyncGroup in order and the client has logged its "
    "SyncGroup response, one consumer's poll() blocks in NetworkSelector.run() while the "
    "task it queued stays READY on an IO thread that sleeps in select(); that consumer never "
    "takes its partition. The same rebalance passes with librdkafka "
    "(test_kafka_confluent.py::test_group_of_two_and_leave) and aiokafka. The same blocking "
    "path (NetworkSelector.run -> event.wait without a timeout) is dpkp/kafka-python issue 3121",
)
def test_kafka_python_group_of_two(kbroker):
    t = name()
    a = KafkaAdminClient(bootstrap_servers=bootstrap(kbroker))
    a.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)])
    a.close()
    conf = dict(
        bootstrap_servers=bootstrap(kbroker),
        group_id="g-" + t,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=300,
    )
    stop = threading.Event()
    assignments: dict[int, set] = {0: set(), 1: set()}

    def run(i):
        c = KafkaConsumer(t, **conf)
        try:
            while not stop.is_set():
                c.poll(timeout_ms=100)
                assignments[i] = {tp.partition for tp in c.assignment()}
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for th in threads:
        th.start()
    try:
        deadline = time.time() + 40
        while time.time() < deadline:
            a0, a1 = assignments[0], assignments[1]
            # until both consumers have seen the rebalance: the first to rejoin holds one
            # partition while the other may still report both from before
            if len(a0) == 1 and len(a1) == 1 and a0 | a1 == {0, 1}:
                break
            time.sleep(0.1)
        assert assignments[0] | assignments[1] == {0, 1}
        assert len(assignments[0]) == 1 and len(assignments[1]) == 1
    finally:
        stop.set()
        for th in threads:
            th.join(30)


def test_aiokafka_produce_consume_group(kbroker):
    import aiokafka

    t = name()

    async def run():
        prod = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap(kbroker))
        await prod.start()
        try:
            for i in range(10):
                await prod.send_and_wait(t, b"a%d" % i, key=b"k")
        finally:
            await prod.stop()
        cons = aiokafka.AIOKafkaConsumer(
            t,
            bootstrap_servers=bootstrap(kbroker),
            group_id="g-" + t,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=300,
        )
        await cons.start()
        got = []
        try:

            async def take():
                async for m in cons:
                    got.append(m.value)
                    if len(got) == 10:
                        return

            await asyncio.wait_for(take(), 30)
            await cons.commit()
            committed = await cons.committed(aiokafka.TopicPartition(t, 0))
        finally:
            await cons.stop()
        return got, committed

    got, committed = asyncio.run(run())
    assert got == [b"a%d" % i for i in range(10)]
    assert committed == 10


def test_aiokafka_group_of_two(kbroker):
    """The rebalance test_kafka_python_group_of_two exercises, with aiokafka: a second member
    joins and the two settle on one partition each."""
    import aiokafka

    t = name()
    a = KafkaAdminClient(bootstrap_servers=bootstrap(kbroker))
    a.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)])
    a.close()

    async def run():
        consumers = [
            aiokafka.AIOKafkaConsumer(
                t,
                bootstrap_servers=bootstrap(kbroker),
                group_id="g-" + t,
                session_timeout_ms=6000,
                heartbeat_interval_ms=300,
            )
            for _ in range(2)
        ]
        for c in consumers:
            await c.start()
        try:
            deadline = time.time() + 40
            while time.time() < deadline:
                await asyncio.gather(*(c.getmany(timeout_ms=100) for c in consumers))
                parts = [{tp.partition for tp in c.assignment()} for c in consumers]
                if all(len(p) == 1 for p in parts) and parts[0] | parts[1] == {0, 1}:
                    break
            return parts
        finally:
            for c in consumers:
                await c.stop()

    parts = asyncio.run(run())
    assert parts[0] | parts[1] == {0, 1}
    assert len(parts[0]) == 1 and len(parts[1]) == 1


def test_kafka_python_admin_groups(kbroker):
    t = name()
    group = "g-" + t
    p = KafkaProducer(bootstrap_servers=bootstrap(kbroker))
    for i in range(3):
        p.send(t, b"x%d" % i)
    p.flush(15)
    p.close()
    c = KafkaConsumer(
        t,
        bootstrap_servers=bootstrap(kbroker),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=300,
        consumer_timeout_ms=15000,
    )
    n = 0
    for _ in c:
        n += 1
        if n == 3:
            break
    c.commit()
    a = KafkaAdminClient(bootstrap_servers=bootstrap(kbroker))
    try:
        assert {"group_id": group, "protocol_type": "consumer"} in a.list_groups()
        desc = a.describe_groups([group])[group]
        assert desc["group_state"] == "Stable" and desc["protocol_type"] == "consumer"
        (member,) = desc["members"]
        assert member["client_host"] == "/127.0.0.1"
        assert member["member_assignment"]["assigned_partitions"] == [
            {"topic": t, "partitions": [0]}
        ]
        offsets = a.list_group_offsets({group: None})[group]
        assert offsets[TopicPartition(t, 0)].offset == 3
    finally:
        c.close()
        a.close()
