"""Kafka topics served from segment files, with real clients (confluent-kafka) against a broker
process: a topic many times the in-memory tail read from offset 0 after a restart, broker-wide
retention defaults on auto-created topics deleting old segments on a timer, and
``cleanup.policy=compact`` refused at CreateTopics."""

from __future__ import annotations

import os
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

TAIL = 256 * 1024
N = 12000
VALUE = b"v" * 1000


def bootstrap(b) -> str:
    return f"{b.host}:{b.port('kafka')}"


def produce(b, topic, n, start=0):
    p = Producer({"bootstrap.servers": bootstrap(b), "linger.ms": 5, "batch.size": 65536})
    errors = []
    for i in range(start, start + n):
        p.produce(
            topic,
            b"%06d" % i + VALUE,
            partition=0,
            on_delivery=lambda err, msg: err and errors.append(err),
        )
        p.poll(0)
    assert p.flush(30) == 0
    assert errors == []


def read_from_zero(b, topic, n, offset=0):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap(b),
            "group.id": "g-" + topic,
            "enable.auto.commit": False,
            "fetch.max.bytes": 1 << 20,
            "max.partition.fetch.bytes": 256 * 1024,
        }
    )
    c.assign([TopicPartition(topic, 0, offset)])
    got = []
    deadline = time.time() + 60
    while len(got) < n and time.time() < deadline:
        for m in c.consume(1000, timeout=1.0):
            assert m.error() is None, m.error()
            got.append((m.offset(), m.value()[:6]))
    c.close()
    return got


def segments(b, topic):
    pdir = os.path.join(b.data_dir, "streams", "=%2F", "=" + topic, "0")
    if not os.path.isdir(pdir):
        return []
    return sorted(n for n in os.listdir(pdir) if n.endswith(".seg"))


def test_consumer_reads_a_topic_larger_than_memory_from_offset_0(broker_factory):
    b = broker_factory(
        adapters=["kafka"],
        log_level="info",
        settings={"store.stream_max_in_memory_bytes": TAIL, "store.segment_mb": 2},
    )
    produce(b, "big", N)
    got = read_from_zero(b, "big", N)
    assert [o for o, _ in got] == list(range(N))
    assert all(v == b"%06d" % o for o, v in got)
    assert len(segments(b, "big")) >= 5  # about 12 MB in 2 MiB segments
    b.restart()
    got = read_from_zero(b, "big", N)
    assert [o for o, _ in got] == list(range(N))
    assert all(v == b"%06d" % o for o, v in got)
    produce(b, "big", 10, start=N)  # appends continue after the restored end
    assert read_from_zero(b, "big", N + 10)[-1] == (N + 9, b"%06d" % (N + 9))


def test_default_retention_deletes_old_segments_of_auto_created_topics(broker_factory):
    b = broker_factory(
        adapters=["kafka"],
        log_level="info",
        settings={
            "store.retention_bytes": 3_000_000,
            "store.retention_check_ms": 200,
            "store.segment_mb": 1,
        },
    )
    produce(b, "auto", 8000)  # about 8 MB: auto-created with the broker's default retention
    deadline = time.time() + 20
    while time.time() < deadline and len(segments(b, "auto")) > 4:
        time.sleep(0.1)
    segs = segments(b, "auto")
    assert 3 <= len(segs) <= 4
    first = int(segs[0][:-4])
    assert first > 0
    c = Consumer({"bootstrap.servers": bootstrap(b), "group.id": "g-auto"})
    low, high = c.get_watermark_offsets(TopicPartition("auto", 0), timeout=10)
    c.close()
    assert (low, high) == (first, 8000)
    got = read_from_zero(b, "auto", 8000 - first, offset=first)
    assert [o for o, _ in got] == list(range(first, 8000))
    admin = AdminClient({"bootstrap.servers": bootstrap(b)})
    res = admin.describe_configs([ConfigResource("topic", "auto")])
    configs = list(res.values())[0].result(timeout=10)
    assert configs["retention.bytes"].value == "3000000"


def test_compacted_topic_is_refused(broker_factory):
    b = broker_factory(adapters=["kafka"], log_level="info")
    admin = AdminClient({"bootstrap.servers": bootstrap(b)})
    fut = admin.create_topics([NewTopic("compacted", 1, 1, config={"cleanup.policy": "compact"})])[
        "compacted"
    ]
    try:
        fut.result(timeout=10)
        raise AssertionError("a compacted topic was created")
    except Exception as e:
        assert "compact" in str(e)
    assert "compacted" not in admin.list_topics(timeout=10).topics


def test_offsets_for_times_finds_records_only_on_disk(broker_factory):
    """ListOffsets by timestamp searches the segment files, not just the in-memory tail: the
    exact offset of an old timestamp, before and after a restart (nothing in memory then)."""
    b = broker_factory(adapters=["kafka"], settings={"store.stream_max_in_memory_bytes": TAIL})
    t0 = 1_700_000_000_000
    n = 3000
    p = Producer({"bootstrap.servers": bootstrap(b), "linger.ms": 5, "batch.size": 65536})
    for i in range(n):
        p.produce("times", VALUE, partition=0, timestamp=t0 + 10 * i)
        p.poll(0)
    assert p.flush(30) == 0
    # a record's time, one between two records, the first, and past the last
    cases = {t0 + 10 * 7: 7, t0 + 10 * 1500 - 3: 1500, t0 - 1: 0, t0 + 10 * n: -1}

    def lookup() -> dict:
        c = Consumer({"bootstrap.servers": bootstrap(b), "group.id": "times"})
        try:
            got = {}
            for ts in cases:
                (tp,) = c.offsets_for_times([TopicPartition("times", 0, ts)], timeout=15)
                assert tp.error is None
                got[ts] = tp.offset
            return got
        finally:
            c.close()

    assert lookup() == cases
    b.restart()
    assert lookup() == cases
