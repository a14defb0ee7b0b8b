"""Reading topics: the Fetch request (answered at once or long-polled) and ListOffsets (the
first, last and last stable offsets, and offsets by time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from polymq.core.stream import Partition

from . import codec as C
from .records import BatchError, decode_batch
from .server import FORMAT, kafka_bytes

if TYPE_CHECKING:
    from .session import KafkaSession


def offset_for_time(p: Partition, entries: list, ts: int) -> tuple[int, int]:
    """The first offset in ``entries`` whose record timestamp is >= ts, and that timestamp
    (or -1, -1); ``entries`` come from ``Partition.find_timestamp``."""
    for e in entries:
        if e.timestamp < ts:
            continue
        try:
            if e.fmt == FORMAT:
                for r in decode_batch(e.data):
                    if r.timestamp >= ts:
                        return r.offset, r.timestamp
            else:
                for i, m in enumerate(p.messages(e)):
                    t = m.timestamp if m.timestamp is not None else e.timestamp
                    if t >= ts:
                        return e.offset + i, t
        except BatchError:
            return e.offset, e.timestamp
    return -1, -1


class FetchWait:
    """One Fetch request: answered at once when enough bytes are there, else long-polled.

    A long-polled fetch reserves its place among the connection's answers
    (``conn.reply_later``), so that the answers to later requests wait behind it."""

    def __init__(
        self, session: KafkaSession, hdr: C.RequestHeader, req: Any, denied: set[str] | None
    ) -> None:
        self.session = session
        self.hdr = hdr
        self.req = req
        self.denied = denied  # topics this connection may not read
        self.ready: Any = None  # the reserved place of the answer, once it waits
        self.timer: Any = None
        self.partitions: list[Partition] = []
        self.scheduled: Any = None
        self.done = False
        self.records = 0

    def start(self) -> None:
        req = self.req
        topics, total, errors = self.build()
        if total >= max(req.min_bytes, 1) or req.max_wait_ms <= 0 or errors:
            return self.finish(topics)
        s = self.session
        self.ready = s.conn.reply_later()
        s.fetches.append(self)
        self.timer = s.broker.clock.callLater(req.max_wait_ms / 1000.0, self.expired)
        self.arm()

    def arm(self) -> None:
        srv = self.session.server
        self.partitions = []
        for t in self.req.topics:
            s = srv.topic(t.topic)
            if s is None:
                continue
            for rp in t.partitions:
                if 0 <= rp.partition < len(s.partitions):
                    p = s.partitions[rp.partition]
                    p.waiters.append(self.wake)
                    self.partitions.append(p)

    def disarm(self) -> None:
        for p in self.partitions:
            try:
                p.waiters.remove(self.wake)
            except ValueError:
                pass
        self.partitions = []

    def wake(self) -> None:
        if self.done or self.scheduled is not None:
            return
        self.scheduled = self.session.broker.clock.callLater(0, self.recheck)

    def recheck(self) -> None:
        self.scheduled = None
        if self.done:
            return
        self.disarm()
        topics, total, errors = self.build()
        if total >= max(self.req.min_bytes, 1) or errors:
            self.finish(topics)
        else:
            self.arm()

    def expired(self) -> None:
        self.timer = None
        if not self.done:
            self.finish(self.build()[0])

    def cancel(self) -> None:
        self.done = True
        self.disarm()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.scheduled is not None and self.scheduled.active():
            self.scheduled.cancel()

    def finish(self, topics: list) -> None:
        s = self.session
        conn = s.conn
        chunks = C.encode_fetch_response(self.hdr.api_version, self.hdr.correlation_id, topics)
        conn.info.messages_out += self.records
        ready = self.ready
        if ready is None:
            reply = conn.reply
            for chunk in chunks:
                reply(chunk)
            return
        self.cancel()
        if self in s.fetches:
            s.fetches.remove(self)
        ready(*chunks)

    def build(self) -> tuple[list, int, bool]:
        srv = self.session.server
        req = self.req
        denied = self.denied
        max_bytes = req.max_bytes if req.max_bytes > 0 else 52428800
        committed = req.isolation_level == 1  # read_committed: only up to the last stable offset
        txns = srv.txn.partitions
        total = 0
        records = 0
        errors = False
        out = []
        for t in req.topics:
            if denied and t.topic in denied:
                out.append(
                    (
                        t.topic,
                        [
                            C.FetchPartition(rp.partition, C.TOPIC_AUTHORIZATION_FAILED, -1, -1, [])
                            for rp in t.partitions
                        ],
                    )
                )
                errors = True
                continue
            s = srv.topic(t.topic)
            parts = []
            for rp in t.partitions:
                if s is None or not 0 <= rp.partition < len(s.partitions):
                    parts.append(
                        C.FetchPartition(rp.partition, C.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, [])
                    )
                    errors = True
                    continue
                p = s.partitions[rp.partition]
                off = rp.fetch_offset
                if off < p.start_offset or off > p.next_offset:
                    parts.append(
                        C.FetchPartition(
                            rp.partition, C.OFFSET_OUT_OF_RANGE, p.next_offset, p.start_offset, []
                        )
                    )
                    errors = True
                    continue
                batches: list[bytes] = []
                end = p.next_offset
                pt = txns.get((t.topic, rp.partition)) if committed else None
                if pt is not None:
                    end = pt.last_stable(end)
                if off < end and (total < max_bytes or total == 0):
                    budget = min(rp.partition_max_bytes, max_bytes - total)
                    size = 0
                    for e in p.read(off, max(budget, 1)):
                        if e.offset >= end:
                            break
                        b = kafka_bytes(p, e)
                        if batches and size + len(b) > budget:
                            break
                        batches.append(b)
                        size += len(b)
                        records += e.count
                    total += size
                aborted = None
                if committed:
                    aborted = pt.aborted_between(off, end) if pt is not None else []
                parts.append(
                    C.FetchPartition(
                        rp.partition, 0, p.next_offset, p.start_offset, batches, end, aborted
                    )
                )
            out.append((t.topic, parts))
        self.records = records
        return out, total, errors


def fetch(session: KafkaSession, hdr: C.RequestHeader, req: Any) -> None:
    """A Fetch: read permission asked once per topic and connection, then answered or polled."""
    readable = session.readable
    denied = None
    for t in req.topics:
        name = t.topic
        if name not in readable:
            if session.conn.authorize("read", "topic", name):
                readable.add(name)
            else:
                denied = denied or set()
                denied.add(name)
    FetchWait(session, hdr, req, denied).start()


def list_offsets(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    """ListOffsets: -1 the end (the last stable offset for read_committed), -2 the start, else
    the first record at or after a timestamp."""
    topics = []
    # lookups by time may read the disk (a paged partition): the answer waits for them
    waiting = [1]

    def one_done() -> None:
        waiting[0] -= 1
        if not waiting[0]:
            reply({"topics": topics})

    def by_time(p: Any, out: dict, ts: int) -> None:
        def found(entries: list) -> None:
            out["offset"], out["timestamp"] = offset_for_time(p, entries, ts)
            one_done()

        waiting[0] += 1
        p.find_timestamp(ts, found)

    for t in req.topics:
        s = session.server.topic(t.name)
        described = session.may_describe("topic", t.name)
        parts = []
        for rp in t.partitions:
            out = {
                "partition_index": rp.partition_index,
                "error_code": 0,
                "timestamp": -1,
                "offset": -1,
                "leader_epoch": -1,
                "old_style_offsets": [],
            }
            if not described:
                out["error_code"] = C.TOPIC_AUTHORIZATION_FAILED
            elif s is None or not 0 <= rp.partition_index < len(s.partitions):
                out["error_code"] = C.UNKNOWN_TOPIC_OR_PARTITION
            else:
                p = s.partitions[rp.partition_index]
                if rp.timestamp == -1:
                    out["offset"] = p.next_offset
                    if ver >= 2 and req.isolation_level == 1:
                        pt = session.server.txn.partitions.get((t.name, rp.partition_index))
                        if pt is not None:
                            out["offset"] = pt.last_stable(p.next_offset)
                elif rp.timestamp == -2:
                    out["offset"] = p.start_offset
                else:
                    by_time(p, out, rp.timestamp)
            parts.append(out)
        topics.append({"name": t.name, "partitions": parts})
    one_done()
