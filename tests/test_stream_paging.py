"""Streams served from their segment files (sqlite store with paging, in process): a bounded
tail in memory, positional reads for older offsets, restart without reading the log, retention
by whole segments on a timer."""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet import defer, reactor, task

from polymq.core.broker import Broker
from polymq.core.message import Message
from polymq.core.queue import Consumer
from polymq.core.store.segments import StreamLog
from polymq.core.store.sqlite import SEGMENT_SUFFIX, SqliteStore, escape_name

TAIL = 64 * 1024  # bytes of a partition kept in memory
BODY = b"x" * 1000


def settle(seconds: float = 0.05) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def until(predicate, timeout: float = 10.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        yield settle(0.01)
    assert predicate()


@defer.inlineCallbacks
def start_broker(path, segment_mb=1, **store_cfg):
    cfg = {"stream_max_in_memory_bytes": TAIL, **store_cfg}
    store = SqliteStore(str(path), paging=True, lazy_flush_ms=1, segment_mb=segment_mb)
    broker = Broker(store=store, config={"store": cfg})
    yield broker.start()
    return broker


def segments(path, stream):
    pdir = path / "streams" / escape_name("/") / escape_name(stream) / "0"
    if not pdir.is_dir():
        return []
    return sorted(n for n in os.listdir(pdir) if n.endswith(SEGMENT_SUFFIX))


@defer.inlineCallbacks
def read_all(p, start, end):
    """Every message from ``start`` to ``end`` through Partition.read, as a fetcher does."""
    out = []
    offset = start
    for _ in range(10000):
        if offset >= end:
            break
        entries = p.read(offset, 64 * 1024)
        if not entries:
            woke = defer.Deferred()
            p.waiters.append(lambda woke=woke: woke.called or woke.callback(None))
            yield woke
            continue
        for e in entries:
            for k, m in enumerate(p.messages(e)):
                if e.offset + k >= offset:
                    out.append((e.offset + k, m.body))
            offset = e.next_offset
    return out


@pytest_twisted.inlineCallbacks
def test_partition_keeps_a_bounded_tail_and_reads_the_rest_from_disk(tmp_path):
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    s = vh.declare_stream("s", durable=True)
    p = s.partitions[0]
    for i in range(2000):
        p.append_message(Message(b"%05d" % i + BODY))
    yield until(lambda: p.mem_bytes <= TAIL + 2 * len(BODY))
    assert p.bytes >= 2000 * len(BODY)
    assert p.entries[0].offset > 1000  # the old part is on disk only
    got = yield read_all(p, 0, 2000)
    assert [o for o, _ in got] == list(range(2000))
    assert all(b[:5] == b"%05d" % o for o, b in got)
    # an AMQP-style stream consumer from offset 0 gets all of them, in order
    out = []
    s.add_consumer(Consumer("c", out.append, no_ack=True), offset="first")
    yield until(lambda: len(out) == 2000)
    assert [d.offset for d in out] == list(range(2000))
    assert [d.message.body[:5] for d in out[:3]] == [b"00000", b"00001", b"00002"]
    yield broker.stop()


@pytest_twisted.inlineCallbacks
def test_restart_reads_only_the_last_segment(tmp_path):
    broker = yield start_broker(tmp_path)
    s = broker.vhost().declare_stream("s", durable=True, partitions=2)
    for i in range(3000):
        s.partitions[i % 2].append_message(Message(b"%05d" % i + BODY))
    yield broker.stop()
    assert len(segments(tmp_path, "s")) >= 2
    broker = yield start_broker(tmp_path)
    s = broker.vhost().queues["s"]
    p0, p1 = s.partitions
    assert (p0.start_offset, p0.next_offset) == (0, 1500)
    assert (p1.start_offset, p1.next_offset) == (0, 1500)
    assert p0.entries == [] and p1.entries == []  # nothing read at start
    got = yield read_all(p1, 0, 1500)
    assert [b[:5] for _, b in got] == [b"%05d" % i for i in range(1, 3000, 2)]
    # appends go on after the restored end
    assert p1.append_message(Message(b"next")) == 1500
    yield broker.stop()


@pytest_twisted.inlineCallbacks
def test_retention_deletes_whole_old_segments_on_a_timer(tmp_path):
    broker = yield start_broker(tmp_path, retention_check_ms=100)
    vh = broker.vhost()
    s = vh.declare_stream("r", durable=True, arguments={"x-max-length-bytes": 2_500_000})
    p = s.partitions[0]
    for i in range(6000):  # about 6 MB in 1 MiB segments
        p.append_message(Message(b"%05d" % i + BODY))
    yield until(lambda: len(segments(tmp_path, "r")) >= 5)
    before = len(segments(tmp_path, "r"))
    yield until(lambda: p.start_offset > 0, timeout=5)
    after = segments(tmp_path, "r")
    assert len(after) < before
    # at least the limit is kept, and no more than one segment beyond it
    assert 2_500_000 <= p.bytes <= 2_500_000 + (1 << 20) + 2000
    assert int(after[0][: -len(SEGMENT_SUFFIX)]) == p.start_offset
    got = yield read_all(p, p.start_offset, 6000)
    assert [o for o, _ in got] == list(range(p.start_offset, 6000))
    yield broker.stop()
    # the log start survives a restart
    broker = yield start_broker(tmp_path)
    p2 = broker.vhost().queues["r"].partitions[0]
    assert p2.start_offset == p.start_offset and p2.next_offset == 6000
    yield broker.stop()


@pytest_twisted.inlineCallbacks
def test_broker_default_retention_by_age_applies_to_new_streams(tmp_path):
    broker = yield start_broker(tmp_path, retention_ms=300, retention_check_ms=100)
    vh = broker.vhost()
    s = vh.declare_stream("aged", durable=True)
    assert s.max_age_ms == 300 and s.max_bytes is None
    p = s.partitions[0]
    for i in range(3000):
        p.append_message(Message(b"%05d" % i + BODY, timestamp=broker.now()))
    yield until(lambda: len(segments(tmp_path, "aged")) >= 3)
    yield settle(0.4)  # every segment but the last is past the age now
    p.append_message(Message(b"fresh", timestamp=broker.now()))
    yield until(lambda: len(segments(tmp_path, "aged")) == 1, timeout=5)
    assert p.start_offset > 0
    yield broker.stop()


@pytest_twisted.inlineCallbacks
def test_clean_close_records_partition_ends_and_a_changed_segment_is_read_again(tmp_path):
    broker = yield start_broker(tmp_path)
    s = broker.vhost().declare_stream("c", durable=True)
    for i in range(500):
        s.partitions[0].append_message(Message(b"%05d" % i + BODY))
    yield broker.stop()
    assert (tmp_path / "streams" / ".clean").exists()
    broker = yield start_broker(tmp_path)
    p = broker.vhost().queues["c"].partitions[0]
    assert (p.start_offset, p.next_offset) == (0, 500)
    assert not (tmp_path / "streams" / ".clean").exists()  # consumed: a crash now rescans
    yield broker.stop()
    # a torn append after the clean close: the recorded size no longer matches, so the last
    # segment is read, the torn tail cut, and the end is right
    last = sorted((tmp_path / "streams").rglob("*" + SEGMENT_SUFFIX))[-1]
    with open(last, "ab") as f:
        f.write(b"\x01\x02\x03 torn")
    broker = yield start_broker(tmp_path)
    p = broker.vhost().queues["c"].partitions[0]
    assert p.next_offset == 500
    got = yield read_all(p, 495, 500)
    assert [b[:5] for _, b in got] == [b"%05d" % i for i in range(495, 500)]
    assert p.append_message(Message(b"more")) == 500
    yield broker.stop()


def test_segment_reads_and_timestamp_search_cross_a_record_larger_than_a_read(tmp_path):
    """StreamLog.read and StreamLog.find_timestamp walk the same records: a 2 MiB entry (more
    than one read of either) is returned whole, and the entries after it are found."""
    log = StreamLog(str(tmp_path), 64 * 1024 * 1024, False)
    log.load({})
    big = b"B" * (2 * 1024 * 1024)
    rows = [(i, 1, 100 + i, "t", b"%03d" % i) for i in range(10)]
    rows += [(10, 1, 200, "t", big), (11, 1, 300, "t", b"after")]
    for offset, count, ts, fmt, data in rows:
        log.append(("/", "s", 0, offset, count, ts, fmt, data))
    log.write_pending()
    try:
        assert log.find_timestamp("/", "s", 0, 105)[:3] == (5, 1, 105)
        assert log.find_timestamp("/", "s", 0, 150) == rows[10]
        assert log.find_timestamp("/", "s", 0, 250) == rows[11]
        assert log.find_timestamp("/", "s", 0, 301) is None
        assert log.read("/", "s", 0, 10, 1000) == [rows[10]]
        assert log.read("/", "s", 0, 3, 6) == rows[3:5]
        assert log.read("/", "s", 0, 8, 10 * 1024 * 1024) == rows[8:]
    finally:
        log.close()
