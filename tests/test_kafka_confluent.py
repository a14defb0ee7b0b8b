"""Kafka adapter with confluent-kafka (librdkafka) and kcat: real clients, real broker process."""

from __future__ import annotations

import subprocess
import time
import uuid

import confluent_kafka as ck
import pytest
from brokerproc import BrokerProcess
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

GROUP_SETTINGS = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 200,
    "max.poll.interval.ms": 10000,
}


def bootstrap(b: BrokerProcess) -> str:
    return f"{b.host}:{b.port('kafka')}"


def topic_name() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def produce(b, topic, values, partition=None, **conf) -> list:
    p = Producer({"bootstrap.servers": bootstrap(b), "linger.ms": 5, **conf})
    reports = []

    def cb(err, msg):
        reports.append((err, msg.partition(), msg.offset()))

    for i, v in enumerate(values):
        kw = {"partition": partition} if partition is not None else {}
        p.produce(topic, v, key=b"k%d" % i, headers=[("h", b"v%d" % i)], on_delivery=cb, **kw)
        p.poll(0)
    assert p.flush(15) == 0
    return reports


def consume(b, topic, n, group=None, timeout=20.0, **conf) -> list:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap(b),
            "group.id": group or topic_name(),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **GROUP_SETTINGS,
            **conf,
        }
    )
    c.subscribe([topic])
    out = []
    deadline = time.time() + timeout
    try:
        while len(out) < n and time.time() < deadline:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            out.append(m)
    finally:
        c.close()
    return out


@pytest.mark.parametrize(
    "acks,idempotent", [("0", False), ("1", False), ("all", False), ("all", True)]
)
def test_produce_consume_acks(kbroker, acks, idempotent):
    t = topic_name()
    values = [b"value-%d" % i for i in range(50)]
    reports = produce(kbroker, t, values, acks=acks, **{"enable.idempotence": idempotent})
    assert len(reports) == 50 and all(err is None for err, _, _ in reports)
    if acks != "0":
        assert sorted(o for _, _, o in reports) == list(range(50))
    msgs = consume(kbroker, t, 50)
    assert [m.value() for m in msgs] == values
    assert [m.key() for m in msgs] == [b"k%d" % i for i in range(50)]
    assert msgs[3].headers() == [("h", b"v3")]
    assert [m.offset() for m in msgs] == list(range(50))


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches(kbroker, codec):
    t = topic_name()
    values = [(b"compress me %d " % i) * 20 for i in range(200)]
    reports = produce(kbroker, t, values, **{"compression.type": codec, "linger.ms": 50})
    assert all(err is None for err, _, _ in reports)
    msgs = consume(kbroker, t, 200)
    assert [m.value() for m in msgs] == values


def _wait_assignment(consumers, pred, timeout=25.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for c in consumers:
            c.poll(0.05)
        if pred():
            return True
    return False


def test_group_of_two_and_leave(kbroker):
    t = topic_name()
    admin = AdminClient({"bootstrap.servers": bootstrap(kbroker)})
    fs = admin.create_topics([NewTopic(t, num_partitions=4, replication_factor=1)])
    fs[t].result(10)
    group = topic_name()
    assigned: dict[int, set] = {0: set(), 1: set()}

    def make(i):
        c = Consumer(
            {
                "bootstrap.servers": bootstrap(kbroker),
                "group.id": group,
                "auto.offset.reset": "earliest",
                **GROUP_SETTINGS,
            }
        )

        def on_assign(consumer, parts):
            assigned[i] = {p.partition for p in parts}

        def on_revoke(consumer, parts):
            assigned[i] = set()

        c.subscribe([t], on_assign=on_assign, on_revoke=on_revoke)
        return c

    c0, c1 = make(0), make(1)
    try:
        ok = _wait_assignment(
            [c0, c1],
            lambda: (
                assigned[0]
                and assigned[1]
                and assigned[0] | assigned[1] == {0, 1, 2, 3}
                and not assigned[0] & assigned[1]
            ),
        )
        assert ok, assigned
        c1.close()
        ok = _wait_assignment([c0], lambda: assigned[0] == {0, 1, 2, 3})
        assert ok, assigned
    finally:
        c0.close()


def test_commit_and_resume_after_consumer_and_broker_restart(tmp_path):
    b = BrokerProcess(tmp_path / "b", adapters=["kafka"], log_level="info")
    b.start()
    try:
        t = topic_name()
        group = "g-" + t
        produce(b, t, [b"m%d" % i for i in range(30)], acks="all")
        conf = {
            "bootstrap.servers": bootstrap(b),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **GROUP_SETTINGS,
        }
        c = Consumer(conf)
        c.subscribe([t])
        got = []
        deadline = time.time() + 20
        while len(got) < 10 and time.time() < deadline:
            m = c.poll(0.2)
            if m is not None and not m.error():
                got.append(m)
        assert len(got) == 10
        c.commit(message=got[-1], asynchronous=False)
        c.close()
        # a new consumer in the same group resumes after the committed offset
        msgs = consume(b, t, 5, group=group)
        assert [m.value() for m in msgs] == [b"m%d" % i for i in range(10, 15)]
        b.restart()
        conf["bootstrap.servers"] = bootstrap(b)
        c = Consumer(conf)
        committed = c.committed([TopicPartition(t, 0)], timeout=10)
        assert committed[0].offset == 10
        c.close()
        msgs = consume(b, t, 20, group=group)
        assert [m.value() for m in msgs] == [b"m%d" % i for i in range(10, 30)]
    finally:
        b.stop()


def test_kcat_metadata_produce_consume(kbroker):
    t = topic_name()
    bs = bootstrap(kbroker)
    r = subprocess.run(
        ["kcat", "-b", bs, "-P", "-t", t, "-K:"],
        input=b"a:1\nb:2\nc:3\n",
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["kcat", "-b", bs, "-L", "-t", t], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert f'topic "{t}" with 1 partitions'.encode() in r.stdout
    assert b"leader 1" in r.stdout
    r = subprocess.run(
        ["kcat", "-b", bs, "-C", "-t", t, "-e", "-f", "%o %k %s\\n"],
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["0 a 1", "1 b 2", "2 c 3"]


def test_list_offsets_and_admin(kbroker):
    t = topic_name()
    admin = AdminClient({"bootstrap.servers": bootstrap(kbroker)})
    admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)])[t].result(10)
    again = admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)])[t]
    with pytest.raises(ck.KafkaException) as ei:
        again.result(10)
    assert ei.value.args[0].code() == ck.KafkaError.TOPIC_ALREADY_EXISTS
    produce(kbroker, t, [b"x"] * 7, partition=1)
    c = Consumer({"bootstrap.servers": bootstrap(kbroker), "group.id": "lo"})
    lo, hi = c.get_watermark_offsets(TopicPartition(t, 1), timeout=10)
    assert (lo, hi) == (0, 7)
    c.close()
    md = admin.list_topics(timeout=10)
    assert len(md.topics[t].partitions) == 2
    admin.delete_topics([t])[t].result(10)
    md = admin.list_topics(timeout=10)
    assert t not in md.topics


def test_fetch_answers_larger_than_the_socket_buffer(kbroker):
    """Fetch answers of several MB fill the socket: the broker stops reading that connection
    until they drain, then goes on (every record arrives, in order)."""
    t = topic_name()
    n = 30000
    values = [b"%08d" % i + b"x" * 1016 for i in range(n)]
    p = Producer(
        {
            "bootstrap.servers": bootstrap(kbroker),
            "linger.ms": 20,
            "batch.size": 1000000,
            "queue.buffering.max.messages": 100000,
        }
    )
    for v in values:
        p.produce(t, v)
    assert p.flush(60) == 0
    got = consume(
        kbroker,
        t,
        n,
        timeout=60.0,
        **{
            "max.partition.fetch.bytes": 10485760,
            "fetch.max.bytes": 52428800,
            "fetch.wait.max.ms": 100,
        },
    )
    assert len(got) == n
    assert [m.value()[:8] for m in got] == [v[:8] for v in values]
