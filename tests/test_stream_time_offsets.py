"""Stream consumers that start at a timestamp whose records are only in the segment files (a
store that pages keeps a small tail in memory), with unmodified clients against a broker
process: pika with ``x-stream-offset`` given as a timestamp, and ali-ons starting a new group
with ``CONSUME_FROM_TIMESTAMP`` (RocketMQ's SEARCH_OFFSET_BY_TIMESTAMP)."""

from __future__ import annotations

import datetime
import time

import pika
from polymq_rocketmq import codec as C
from rocketmq_helpers import ADAPTER, Raw, consumer, ensure_ali_ons, produce

TAIL = 256 * 1024  # bytes of a partition kept in memory
N = 3000
BODY = b"." * 1000
T0 = 1_700_000_000  # seconds: message i carries the timestamp T0 + i


def connect(broker) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    )


def read_from(broker, stream: str, seconds: int, n: int) -> list[tuple[int, int]]:
    """The first ``n`` deliveries (message number, x-stream-offset) of a consumer started at
    the timestamp ``seconds``."""
    c = connect(broker)
    try:
        ch = c.channel()
        ch.basic_qos(prefetch_count=50)
        at = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        got = []
        for method, props, body in ch.consume(
            stream, arguments={"x-stream-offset": at}, inactivity_timeout=10
        ):
            assert method is not None, f"nothing more after {got}"
            got.append((int(body[:6]), props.headers["x-stream-offset"]))
            ch.basic_ack(method.delivery_tag)
            if len(got) == n:
                break
        ch.cancel()
        return got
    finally:
        c.close()


def test_amqp_timestamp_offset_finds_records_only_on_disk(broker_factory):
    broker = broker_factory(adapters=["amqp"], settings={"store.stream_max_in_memory_bytes": TAIL})
    c = connect(broker)
    ch = c.channel()
    ch.queue_declare("times", durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    for i in range(N):
        props = pika.BasicProperties(delivery_mode=2, timestamp=T0 + i)
        ch.basic_publish("", "times", b"%06d" % i + BODY, props)
    c.close()
    # the tail in memory holds a few hundred of the 3000 messages (about 3 MB)
    expected = {
        T0 + 7: [(7 + k, 7 + k) for k in range(5)],
        T0 + 1500: [(1500 + k, 1500 + k) for k in range(5)],
        T0 - 60: [(k, k) for k in range(5)],
        T0 + N - 1: [(N - 1, N - 1)],
    }
    for seconds, want in expected.items():
        assert read_from(broker, "times", seconds, len(want)) == want, seconds
    broker.restart()  # nothing of the stream in memory now
    for seconds, want in expected.items():
        assert read_from(broker, "times", seconds, len(want)) == want, seconds


def test_rocketmq_consumer_from_timestamp_starts_in_the_segment_files(broker_factory):
    ensure_ali_ons()
    broker = broker_factory(
        adapters=[ADAPTER],
        store="sqlite",
        settings={"store.stream_max_in_memory_bytes": TAIL, "store.segment_mb": 1},
    )
    ns = f"{broker.host}:{broker.port(ADAPTER)}"
    raw = Raw(broker.host, broker.port(ADAPTER))
    # one queue: every message of the topic in one partition, in send order
    topic = {"topic": "Times", "readQueueNums": 1, "writeQueueNums": 1}
    assert raw.call(C.UPDATE_AND_CREATE_TOPIC, topic).code == C.SUCCESS
    raw.close()
    before = produce(ns, "Times", 60, prefix="old", size=8000)
    # the "new" messages are born from the next whole second on (ali-ons gives the start time
    # to the second)
    start = (before[-1]["at"] // 1000 + 1) * 1000
    time.sleep(max(0.0, start / 1000 + 0.05 - time.time()))
    after = produce(ns, "Times", 60, prefix="new", size=8000)
    assert [s["queueOffset"] for s in after] == list(range(60, 120))
    # 960 KB sent: the first "new" messages are only on disk
    c = consumer(ns, "g-times", "Times", "*", count=60, from_ms=start)
    got = c.finish(60)
    bodies = [m["body"].split("..")[0].rstrip("x") for m in got]
    assert bodies[:60] == [f"new-{i}" for i in range(60)], bodies[:5]
