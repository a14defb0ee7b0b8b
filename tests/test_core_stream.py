"""Streams: offsets, batches, retention, readers, decoding through registered formats."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from polymq.core.broker import Broker
from polymq.core.errors import PreconditionFailed
from polymq.core.message import Message
from polymq.core.queue import Consumer
from polymq.core.stream import StreamFormat, parse_max_age


@pytest.fixture
def broker():
    clock = Clock()
    clock.rightNow = 1_700_000_000.0
    return Broker(clock=clock)


@pytest.fixture
def vh(broker):
    return broker.vhost()


def test_offsets_are_dense_and_reads_start_at_containing_entry(vh):
    s = vh.declare_stream("t")
    p = s.partitions[0]
    assert p.append_message(Message(b"a")) == 0
    assert p.append_batch("test", b"xyz", 3, 1) == 1  # offsets 1, 2, 3
    assert p.append_message(Message(b"b")) == 4
    assert p.next_offset == 5
    entries = p.read(2, 1 << 20)  # offset 2 lives in the batch starting at 1
    assert [e.offset for e in entries] == [1, 4]
    assert p.read(5, 1 << 20) == []


def test_read_returns_at_least_one_entry_and_respects_max_bytes(vh):
    p = vh.declare_stream("t").partitions[0]
    for _ in range(3):
        p.append_batch("test", b"x" * 100, 1, 1)
    assert len(p.read(0, 10)) == 1
    assert len(p.read(0, 200)) == 2


def test_routed_messages_append_and_keys_pick_partitions(vh):
    s = vh.declare_stream("t", partitions=4)
    vh.bind_queue("t", "amq.topic", "t")
    for _ in range(20):
        vh.publish("amq.topic", "t", Message(b"v", key=b"same-key"))
    counts = [p.next_offset for p in s.partitions]
    assert sorted(counts) == [0, 0, 0, 20]


def test_retention_by_size_keeps_the_newest(vh):
    s = vh.declare_queue(
        "t", durable=True, arguments={"x-queue-type": "stream", "x-max-length-bytes": 250}
    )
    p = s.partitions[0]
    for _ in range(5):
        p.append_batch("test", b"x" * 100, 2, 1)
    assert p.bytes <= 250
    assert p.start_offset == 6 and p.next_offset == 10
    assert p.read(0, 1 << 20)[0].offset == 6  # reading below the log start starts at it


def test_retention_by_age(vh, broker):
    args = {"x-queue-type": "stream", "x-max-age": "10s"}
    s = vh.declare_queue("t", durable=True, arguments=args)
    p = s.partitions[0]
    now = broker.now()
    p.append_batch("test", b"old", 1, now - 60_000)
    p.append_batch("test", b"new", 1, now)
    p.append_batch("test", b"newer", 1, now)
    assert p.start_offset == 1


def test_parse_max_age():
    assert parse_max_age("7D") == 7 * 86400000
    assert parse_max_age("30s") == 30000
    assert parse_max_age(1500) == 1500
    with pytest.raises(PreconditionFailed):
        parse_max_age("7 days")


def test_offset_specs(vh, broker):
    s = vh.declare_stream("t")
    p = s.partitions[0]
    t0 = broker.now()
    for i in range(5):
        p.append_message(Message(str(i).encode(), timestamp=t0 + i * 1000))

    def resolved(spec):  # all in memory: the answer comes at once
        got = []
        s.resolve_offset(p, spec, got.append)
        return got[0]

    assert resolved("first") == 0
    assert resolved("last") == 4
    assert resolved("next") == 5
    assert resolved(3) == 3
    assert resolved(("timestamp", t0 + 2500)) == 3
    with pytest.raises(PreconditionFailed):
        resolved("sideways")


def test_stream_consumer_reads_with_credit_and_keeps_messages(vh):
    s = vh.declare_stream("t")
    p = s.partitions[0]
    for i in range(5):
        p.append_message(Message(str(i).encode()))
    got = []
    c = Consumer("c", got.append, prefetch=2)
    s.add_consumer(c, offset="first")
    assert [d.offset for d in got] == [0, 1]
    s.ack(got[0])
    s.ack(got[1])
    assert [d.offset for d in got] == [0, 1, 2, 3]
    # a second reader starts over: reading removed nothing
    other = []
    s.add_consumer(Consumer("d", other.append, no_ack=True), offset="first")
    assert len(other) == 5
    p.append_message(Message(b"live"))
    assert other[-1].message.body == b"live"


def test_batches_decode_through_registered_format(vh, broker):
    def decode(data):
        return [Message(v.encode()) for v in json.loads(data)]

    broker.stream_formats["json"] = StreamFormat("json", decode)
    s = vh.declare_stream("t")
    p = s.partitions[0]
    p.append_batch("json", b'["a", "b", "c"]', 3, 1)
    got = []
    s.add_consumer(Consumer("c", got.append, no_ack=True), offset=1)
    assert [(d.offset, d.message.body) for d in got] == [(1, b"b"), (2, b"c")]


def test_unknown_format_is_an_error_not_garbage(vh):
    p = vh.declare_stream("t").partitions[0]
    p.append_batch("mystery", b"\x00", 1, 1)
    with pytest.raises(PreconditionFailed):
        p.messages(p.entries[0])


def test_waiters_fire_on_append(vh):
    p = vh.declare_stream("t").partitions[0]
    woken = []
    p.waiters.append(lambda: woken.append(p.next_offset))
    p.append_message(Message(b"x"))
    p.append_message(Message(b"y"))
    assert woken == [1]  # one-shot


def test_stream_cannot_be_exclusive_or_got_from(vh):
    with pytest.raises(PreconditionFailed):
        vh.declare_queue("t", exclusive_owner=object(), arguments={"x-queue-type": "stream"})
    s = vh.declare_stream("t")
    with pytest.raises(PreconditionFailed):
        s.get()
    vh.declare_queue("q")
    with pytest.raises(PreconditionFailed):
        vh.declare_stream("q")
