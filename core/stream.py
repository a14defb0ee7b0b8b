"""Streams: append-only partitioned logs addressed by offset (what a Kafka topic is).

A stream is a queue type: exchanges route into it like into a queue, but reading never removes
anything; readers keep their own offsets and retention trims the head.

An entry holds either one core ``Message`` (format ``"message"``) or an opaque batch of
``count`` records in a format an adapter registered (``"kafka"`` record batches, say), kept as
the bytes the producer sent. Batches are decoded only when a reader of another protocol needs
them, through ``broker.stream_formats``; encodings made for a reader are cached on the entry.
"""

from __future__ import annotations

import bisect
import functools
import re
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .delivery import Consumer, Delivery
from .errors import PreconditionFailed
from .message import Message

if TYPE_CHECKING:
    from .vhost import VirtualHost

MESSAGE_FORMAT = "message"
READ_BATCH_BYTES = 256 * 1024  # what a stream reader takes from its partition at a time


class StreamFormat:
    """A batch format an adapter stores verbatim (registered in ``broker.stream_formats``).

    ``decode(data) -> list[Message]`` gives one message per offset of the batch;
    ``encode(messages) -> bytes`` builds a batch of that format from core messages.
    """

    def __init__(
        self,
        name: str,
        decode: Callable[[bytes], list[Message]],
        encode: Callable[[list[Message]], bytes] | None = None,
    ) -> None:
        self.name = name
        self.decode = decode
        self.encode = encode


class StreamEntry:
    __slots__ = ("offset", "count", "timestamp", "fmt", "data", "message", "size", "cache")

    def __init__(
        self,
        offset: int,
        count: int,
        timestamp: int,
        fmt: str,
        data: bytes | None,
        message: Message | None,
    ) -> None:
        self.offset = offset
        self.count = count
        self.timestamp = timestamp
        self.fmt = fmt
        self.data = data
        self.message = message
        self.size = len(data) if data is not None else len(message.body) if message else 0
        self.cache: dict[str, Any] | None = None

    @property
    def next_offset(self) -> int:
        return self.offset + self.count


# Disk reads of a paged partition: at least this much per read, and at most this many read
# results kept per partition for the readers that asked (and the next one read ahead).
MIN_DISK_READ = 1 << 20
MAX_DISK_READ = 16 << 20
READ_CACHE_CHUNKS = 4


class _Chunk:
    """Entries read back from disk: [first, end) of the log."""

    __slots__ = ("first", "end", "entries", "offsets", "size")

    def __init__(self, entries: list[StreamEntry]) -> None:
        self.entries = entries
        self.offsets = [e.offset for e in entries]
        self.first = entries[0].offset
        self.end = entries[-1].next_offset
        self.size = sum(e.size for e in entries)


class Partition:
    """One ordered log.

    With a store that pages, ``entries`` is only the recent tail kept in memory (at most about
    ``store.stream_max_in_memory_bytes`` once it is durable); older entries are read back from
    the segment files on the store's thread: ``read`` then answers with nothing, and calls the
    ``waiters`` (and pumps the readers) once the read is back.
    """

    def __init__(self, stream: Stream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.entries: list[StreamEntry] = []
        self._offsets: list[int] = []  # base offsets, for bisect
        self.start_offset = 0  # first offset still kept (log start)
        self.next_offset = 0  # high watermark
        self.bytes = 0
        self.waiters: list[Callable[[], None]] = []
        self.readers: list[StreamReader] = []
        vhost = stream.vhost
        self._pages = stream.durable and bool(getattr(vhost.store, "pages", False))
        self._mem_limit: int = vhost.stream_max_in_memory_bytes
        self.mem_bytes = 0  # bytes of ``entries``
        self._mem_start = 0  # the first offset ``entries`` holds (next_offset when empty)
        self._evicting = False
        self._chunks: list[_Chunk] = []  # disk reads, oldest first
        self._reading: set[int] = set()  # offsets with a disk read under way

    def _add(self, entry: StreamEntry) -> None:
        if not self.entries:
            self._mem_start = entry.offset
        self.entries.append(entry)
        self._offsets.append(entry.offset)
        self.next_offset = entry.next_offset
        self.bytes += entry.size
        self.mem_bytes += entry.size
        if self._pages and self.mem_bytes > self._mem_limit and not self._evicting:
            # drop the oldest entries from memory once what is written so far is on disk
            self._evicting = True
            upto = self.next_offset
            self.stream.vhost.store.after_durable(lambda: self._evict(upto))

    def _evict(self, upto: int) -> None:
        self._evicting = False
        entries = self.entries
        keep = self._mem_limit // 2
        i = 0
        mem = self.mem_bytes
        while i < len(entries) - 1 and mem > keep and entries[i].next_offset <= upto:
            mem -= entries[i].size
            i += 1
        if i:
            del entries[:i]
            del self._offsets[:i]
            self.mem_bytes = mem
            self._mem_start = entries[0].offset
        if self.mem_bytes > self._mem_limit and not self.stream.deleted:
            # appended meanwhile: again, once those are on disk too
            self._evicting = True
            upto = self.next_offset
            self.stream.vhost.store.after_durable(lambda: self._evict(upto))

    def restore_extent(self, start: int, end: int, size: int) -> None:
        """A partition of a store that pages, as opened: nothing of it in memory."""
        self.start_offset = start
        self.next_offset = end
        self._mem_start = end
        self.bytes = size

    def append_message(self, message: Message) -> int:
        """Append one core message; returns its offset."""
        offset = self.next_offset
        stream = self.stream
        ts = message.timestamp if message.timestamp is not None else stream.vhost.now()
        entry = StreamEntry(offset, 1, ts, MESSAGE_FORMAT, None, message)
        self._add(entry)
        if stream.durable:
            stream.vhost.store.append_stream(
                stream.vhost.name,
                stream.name,
                self.index,
                offset,
                1,
                ts,
                MESSAGE_FORMAT,
                message.to_bytes(),
            )
        self._appended()
        return offset

    def append_batch(self, fmt: str, data: bytes, count: int, timestamp: int) -> int:
        """Append an adapter-format batch of ``count`` records; returns its base offset."""
        offset = self.next_offset
        entry = StreamEntry(offset, count, timestamp, fmt, data, None)
        self._add(entry)
        stream = self.stream
        if stream.durable:
            stream.vhost.store.append_stream(
                stream.vhost.name, stream.name, self.index, offset, count, timestamp, fmt, data
            )
        self._appended()
        return offset

    def restore(self, offset: int, count: int, timestamp: int, fmt: str, data: bytes) -> None:
        if not self.entries:
            self.start_offset = offset
        self._add(_entry(offset, count, timestamp, fmt, data))

    def _appended(self) -> None:
        self.stream._retain(self)
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                w()
        for r in self.readers:
            r.pump()

    def find(self, offset: int) -> int:
        """Index of the entry containing ``offset`` (or the first one after it)."""
        i = bisect.bisect_right(self._offsets, offset) - 1
        if i < 0:
            return 0
        if self.entries[i].next_offset <= offset:
            return i + 1
        return i

    def read(self, offset: int, max_bytes: int) -> list[StreamEntry]:
        """Entries from the one containing ``offset``, at least one, up to ``max_bytes``.

        Nothing when ``offset`` is only on disk and not read back yet: the read is then
        started, and the waiters are called when it is back.
        """
        if self._pages and offset < self._mem_start:
            return self._read_disk(offset, max_bytes)
        return _take(self.entries, self.find(offset), max_bytes)

    def _read_disk(self, offset: int, max_bytes: int) -> list[StreamEntry]:
        for chunk in self._chunks:
            if chunk.first <= offset < chunk.end:
                i = bisect.bisect_right(chunk.offsets, offset) - 1
                out = _take(chunk.entries, max(i, 0), max_bytes)
                nxt = chunk.end
                if out and out[-1].next_offset == nxt and nxt < self._mem_start:
                    self._fetch(nxt, max_bytes)  # the reader is at the chunk's end: read ahead
                return out
        self._fetch(offset, max_bytes)
        return []

    def _fetch(self, offset: int, max_bytes: int) -> None:
        if offset in self._reading or any(c.first <= offset < c.end for c in self._chunks):
            return
        self._reading.add(offset)
        size = min(max(max_bytes, MIN_DISK_READ), MAX_DISK_READ)
        s = self.stream
        s.vhost.store.read_stream(
            s.vhost.name,
            s.name,
            self.index,
            offset,
            size,
            lambda rows: self._fetched(offset, rows),
        )

    def _fetched(self, offset: int, rows: list) -> None:
        self._reading.discard(offset)
        if self.stream.deleted:
            return
        entries = [_entry(*row) for row in rows]
        # Kept unless memory holds it by now. Nothing came back when retention removed the
        # offsets meanwhile: the waiters and readers then find them below the log start.
        if entries and entries[0].offset < self._mem_start:
            self._chunks.append(_Chunk(entries))
            if len(self._chunks) > READ_CACHE_CHUNKS:
                del self._chunks[0]
        self._wake()

    def _wake(self) -> None:
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                w()
        for r in list(self.readers):
            r.pump()

    def find_timestamp(self, timestamp: int, callback: Callable[[list[StreamEntry]], None]) -> None:
        """``callback(entries)`` with the entries, in offset order, that hold the earliest
        record whose timestamp is >= ``timestamp`` (an entry's timestamp is that of its newest
        record): the entries in memory when they are the whole partition, else the first such
        entry found on disk (or none). Called at once when the disk is not needed."""
        if not self._pages or self._mem_start <= self.start_offset:
            callback(self.entries)
            return
        s = self.stream

        def found(row: tuple | None) -> None:
            callback([_entry(*row)] if row is not None and not s.deleted else [])

        s.vhost.store.find_stream_timestamp(s.vhost.name, s.name, self.index, timestamp, found)

    def offset_at_time(self, timestamp: int, callback: Callable[[int], None]) -> None:
        """``callback(offset)`` with the first offset whose entry timestamp is >= ``timestamp``
        (an entry's timestamp is that of its newest record), or the end of the partition as it
        was at this call when no entry is that new. The segment files are searched when part
        of the partition is only on disk (see :meth:`find_timestamp`); else called at once."""
        end = self.next_offset

        def found(entries: list[StreamEntry]) -> None:
            for e in entries:
                if e.timestamp >= timestamp:
                    callback(e.offset)
                    return
            callback(end)

        self.find_timestamp(timestamp, found)

    def messages(self, entry: StreamEntry) -> list[Message]:
        """The core messages of an entry, decoding a batch through its registered format."""
        if entry.message is not None:
            return [entry.message]
        if entry.cache is not None and MESSAGE_FORMAT in entry.cache:
            return entry.cache[MESSAGE_FORMAT]
        if entry.fmt == MESSAGE_FORMAT:  # read back from disk
            msgs = [Message.from_bytes(entry.data)]
        else:
            fmt = self.stream.vhost.broker.stream_formats.get(entry.fmt)
            if fmt is None:
                raise PreconditionFailed(f"no decoder for stream format {entry.fmt!r}")
            msgs = fmt.decode(entry.data)
        if entry.cache is None:
            entry.cache = {}
        entry.cache[MESSAGE_FORMAT] = msgs
        return msgs

    def retained(self, start: int, size: int) -> None:
        """The store applied retention: the log now starts at ``start`` and holds ``size``."""
        if start <= self.start_offset:
            return
        self.start_offset = min(start, self.next_offset)
        self.bytes = size
        self._chunks = [c for c in self._chunks if c.end > start]
        i = 0
        while i < len(self.entries) and self.entries[i].next_offset <= start:
            self.mem_bytes -= self.entries[i].size
            i += 1
        if i:
            del self.entries[:i]
            del self._offsets[:i]
            self._mem_start = self.entries[0].offset if self.entries else self.next_offset

    def trim_before(self, offset: int) -> None:
        i = 0
        while i < len(self.entries) and self.entries[i].next_offset <= offset:
            self.bytes -= self.entries[i].size
            self.mem_bytes -= self.entries[i].size
            i += 1
        if i:
            del self.entries[:i]
            del self._offsets[:i]
            self.start_offset = self.entries[0].offset if self.entries else self.next_offset
            self._mem_start = self.start_offset
            stream = self.stream
            if stream.durable:
                stream.vhost.store.trim_stream(
                    stream.vhost.name, stream.name, self.index, self.start_offset
                )


def _entry(offset: int, count: int, timestamp: int, fmt: str, data: bytes) -> StreamEntry:
    if fmt == MESSAGE_FORMAT:
        return StreamEntry(offset, count, timestamp, fmt, None, Message.from_bytes(data))
    return StreamEntry(offset, count, timestamp, fmt, data, None)


def _take(entries: list[StreamEntry], i: int, max_bytes: int) -> list[StreamEntry]:
    out: list[StreamEntry] = []
    total = 0
    while i < len(entries):
        e = entries[i]
        if out and total + e.size > max_bytes:
            break
        out.append(e)
        total += e.size
        i += 1
    return out


class StreamReader:
    """Pushes a stream partition to a consumer from an offset, while it has room."""

    def __init__(self, stream: Stream, partition: Partition, consumer: Consumer, offset: int):
        self.stream = stream
        self.partition = partition
        self.consumer = consumer
        self.offset = offset
        self._pumping = False

    def pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            p = self.partition
            c = self.consumer
            while self.offset < p.next_offset and c.ready():
                if self.offset < p.start_offset:
                    self.offset = p.start_offset
                # (a read from disk, when it is needed, pumps again once it is back)
                entries = p.read(self.offset, READ_BATCH_BYTES)
                if not entries:
                    break
                for entry in entries:
                    if not c.ready():
                        break
                    msgs = p.messages(entry)
                    k = self.offset - entry.offset
                    if k < 0:
                        k = 0
                        self.offset = entry.offset
                    while k < len(msgs) and c.ready():
                        self.stream._seq += 1
                        d = Delivery(self.stream, self.stream._seq, msgs[k], 0, None)
                        d.offset = self.offset
                        self.offset += 1
                        k += 1
                        if c.credit is not None:
                            c.credit -= 1
                        if not c.no_ack:
                            d.consumer = c
                            c.limit.in_flight += 1
                            c.unacked[d.seq] = d
                        c.deliver(d)
                    if k < len(msgs):
                        break
        finally:
            self._pumping = False


_AGE = re.compile(r"^(\d+)(Y|M|D|h|m|s)$")
_AGE_MS = {
    "Y": 365 * 86400000,
    "M": 30 * 86400000,
    "D": 86400000,
    "h": 3600000,
    "m": 60000,
    "s": 1000,
}


def parse_max_age(value: Any) -> int | None:
    """RabbitMQ's ``x-max-age`` ("7D", "12h", "30s") or milliseconds as an integer."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _AGE.match(value)
        if m:
            return int(m.group(1)) * _AGE_MS[m.group(2)]
    raise PreconditionFailed(f"invalid arg 'x-max-age': {value!r}")


class Stream:
    """A partitioned, append-only log bound to exchanges like a queue."""

    kind = "stream"

    def __init__(
        self,
        vhost: VirtualHost,
        name: str,
        *,
        durable: bool = True,
        partitions: int = 1,
        arguments: dict | None = None,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.arguments = dict(arguments or {})
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        if partitions < 1:
            raise PreconditionFailed("a stream needs at least one partition")
        mlb = self.arguments.get("x-max-length-bytes")
        if mlb is not None and (isinstance(mlb, bool) or not isinstance(mlb, int) or mlb < 0):
            raise PreconditionFailed("invalid arg 'x-max-length-bytes'")
        # broker-wide defaults (store.retention_bytes / _ms) for streams that set none
        self.max_bytes: int | None = mlb if mlb is not None else vhost.stream_retention_bytes
        self.max_age_ms = parse_max_age(self.arguments.get("x-max-age"))
        if self.max_age_ms is None:
            self.max_age_ms = vhost.stream_retention_ms
        self.partitions = [Partition(self, i) for i in range(partitions)]
        self.consumers: list[Consumer] = []
        self._rr = 0
        self._seq = 0
        self.deleted = False
        self.config: dict[str, Any] = {}  # adapter-level settings (Kafka topic configs)

    def record(self) -> dict:
        return {
            "type": "stream",
            "durable": self.durable,
            "partitions": len(self.partitions),
            "arguments": self.arguments,
            "config": self.config,
        }

    @property
    def message_count(self) -> int:
        return sum(p.next_offset - p.start_offset for p in self.partitions)

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    def set_config(self, settings: dict[str, Any]) -> None:
        """Update adapter-level settings (Kafka topic configs) and persist them."""
        self.config.update(settings)
        if self.durable:
            self.vhost.store.put_queue(self.vhost.name, self.name, self.record())

    def add_partitions(self, total: int) -> None:
        while len(self.partitions) < total:
            self.partitions.append(Partition(self, len(self.partitions)))
        if self.durable:
            self.vhost.store.put_queue(self.vhost.name, self.name, self.record())

    def partition_for(self, key: bytes | None) -> Partition:
        n = len(self.partitions)
        if n == 1:
            return self.partitions[0]
        if key is None:
            self._rr = (self._rr + 1) % n
            return self.partitions[self._rr]
        return self.partitions[zlib.crc32(key) % n]

    def enqueue(self, message: Message, data: bytes | None = None) -> bool:
        """A message routed here by an exchange."""
        self.partition_for(message.key).append_message(message)
        return True

    def _retain(self, p: Partition) -> None:
        if p._pages:
            return  # whole segments, on the broker's retention timer (apply_retention)
        if self.max_bytes is not None and p.bytes > self.max_bytes and len(p.entries) > 1:
            total = p.bytes
            cut = p.start_offset
            for e in p.entries[:-1]:
                if total <= self.max_bytes:
                    break
                total -= e.size
                cut = e.next_offset
            p.trim_before(cut)
        if self.max_age_ms is not None and p.entries:
            horizon = self.vhost.now() - self.max_age_ms
            cut = None
            for e in p.entries[:-1]:
                if e.timestamp >= horizon:
                    break
                cut = e.next_offset
            if cut is not None:
                p.trim_before(cut)

    def apply_retention(self) -> None:
        """Ask the store to drop whole old segments past the limits (a store that pages)."""
        if self.deleted or (self.max_bytes is None and self.max_age_ms is None):
            return
        horizon = None if self.max_age_ms is None else self.vhost.now() - self.max_age_ms
        store = self.vhost.store
        for p in self.partitions:
            if p._pages:
                store.retain_stream(
                    self.vhost.name, self.name, p.index, self.max_bytes, horizon, p.retained
                )

    # -- consumers (AMQP x-stream-offset style push) ------------------------------------------

    def resolve_offset(
        self, partition: Partition, spec: Any, callback: Callable[[int], None]
    ) -> None:
        """``callback(offset)`` with where a reader of ``partition`` starts for ``spec``:
        ``first`` | ``last`` | ``next`` | an integer offset | ``("timestamp", ms)``.

        Called at once, except for a timestamp on a partition partly on disk: the segment files
        are searched first. Any other spec raises PreconditionFailed before calling back.
        """
        if isinstance(spec, bytes):
            spec = spec.decode()
        if spec is None or spec == "next":
            callback(partition.next_offset)
        elif spec == "first":
            callback(partition.start_offset)
        elif spec == "last":
            if not partition.entries:
                # (paged out: the last offset, inside the last entry if it is a batch)
                callback(max(partition.start_offset, partition.next_offset - 1))
            else:
                callback(partition.entries[-1].offset)
        elif isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "timestamp":
            partition.offset_at_time(int(spec[1]), callback)
        elif isinstance(spec, int) and not isinstance(spec, bool):
            callback(max(partition.start_offset, min(spec, partition.next_offset)))
        else:
            raise PreconditionFailed(f"invalid stream offset {spec!r}")

    def add_consumer(self, consumer: Consumer, offset: Any = "next") -> None:
        """Push every partition to ``consumer`` from ``offset`` (see :meth:`resolve_offset`).

        A partition whose start is being searched on disk gets its reader when the answer is
        back, unless the consumer was removed (or the stream deleted) meanwhile.
        """
        consumer.queue = self
        self.consumers.append(consumer)
        resolved: list[StreamReader] | None = []  # the readers of this call, pumped together

        def start(p: Partition, at: int) -> None:
            if self.deleted or consumer not in self.consumers:
                return
            r = StreamReader(self, p, consumer, at)
            p.readers.append(r)
            if resolved is None:
                r.pump()  # resolved later, from the disk
            else:
                resolved.append(r)

        for p in self.partitions:
            self.resolve_offset(p, offset, functools.partial(start, p))
        readers, resolved = resolved, None
        for r in readers:
            r.pump()

    def remove_consumer(self, consumer: Consumer, requeue: bool = True) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        for p in self.partitions:
            p.readers = [r for r in p.readers if r.consumer is not consumer]
        if consumer in consumer.limit.consumers:
            consumer.limit.consumers.remove(consumer)
        consumer.unacked.clear()

    def direct_consumer(self, size: int) -> None:
        """A stream keeps every message: nothing bypasses it."""
        return None

    def dispatch(self) -> None:
        for p in self.partitions:
            for r in p.readers:
                r.pump()

    def ack(self, d: Delivery) -> None:
        """Stream reads remove nothing: an ack only gives the consumer's window back."""
        c = d.consumer
        if c is not None and c.unacked.pop(d.seq, None) is not None:
            d.consumer = None
            c.limit.release()
            self.dispatch()

    def nack(self, d: Delivery, requeue: bool = True) -> None:
        self.ack(d)

    reject = nack

    def requeue(self, deliveries: Any, count: bool = True) -> None:
        for d in deliveries:
            self.ack(d)

    def get(self, no_ack: bool = False, owner: Consumer | None = None) -> None:
        raise PreconditionFailed(f"stream '{self.name}' is read by offset, not by get")

    def purge(self) -> int:
        raise PreconditionFailed(f"stream '{self.name}' cannot be purged")

    def close(self) -> None:
        self.deleted = True
        for p in self.partitions:
            p.readers.clear()
            if p.waiters:
                waiters, p.waiters = p.waiters, []
                for w in waiters:
                    w()
