"""The storage interface every backend implements.

Writes are fire-and-forget and ordered: a backend queues them and makes them durable in batches
(group commit). ``after_durable`` is the only way to learn that a write reached the disk, and it
takes a plain callable, not a Deferred, because it sits on the per-message path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zope.interface import Attribute, Interface


@dataclass
class StoreSnapshot:
    """Everything a backend holds, as read at open time.

    Records (exchange, queue, binding arguments) are msgpack-able dicts the core wrote itself.
    """

    exchanges: list[tuple[str, str, dict]] = field(default_factory=list)  # (vhost, name, record)
    queues: list[tuple[str, str, dict]] = field(default_factory=list)  # (vhost, name, record)
    # (vhost, source exchange, destination kind "queue"|"exchange", destination, key, arguments)
    bindings: list[tuple[str, str, str, str, str, dict]] = field(default_factory=list)
    # (vhost, queue) -> [(seq, message bytes, delivery_count)] in seq order
    messages: dict[tuple[str, str], list[tuple[int, bytes, int]]] = field(default_factory=dict)
    # (vhost, stream, partition) -> [(offset, count, timestamp, format, data)] in offset order
    stream_entries: dict[tuple[str, str, int], list[tuple[int, int, int, str, bytes]]] = field(
        default_factory=dict
    )
    # namespace -> {key: value}
    kv: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # Stores that page (``pages`` true) leave ``messages`` and ``stream_entries`` empty and
    # describe what they hold instead, without reading any body:
    # (vhost, queue) -> [(priority level, message count, body bytes, highest seq)], one tuple per
    # priority level that holds messages (level 0 only for queues without x-max-priority).
    queue_levels: dict[tuple[str, str], list[tuple[int, int, int, int]]] = field(
        default_factory=dict
    )
    # (vhost, stream, partition) -> (log start offset, next offset, bytes on disk)
    stream_partitions: dict[tuple[str, str, int], tuple[int, int, int]] = field(
        default_factory=dict
    )
    # Scheduled messages (core/scheduler.py): [(job id, due ms, record)] in (due, id) order.
    # Stores that page leave the list empty and report only how many jobs they hold; the
    # scheduler reads them back in due order (``read_scheduled``).
    scheduled: list[tuple[int, int, bytes]] = field(default_factory=list)
    scheduled_count: int = 0
    scheduled_top_id: int = 0  # the highest job id stored (new jobs are numbered above it)


class IStore(Interface):
    """A place where durable broker state lives."""

    name = Attribute("The backend name used in config (``store.backend``).")

    def open():
        """Open or create the store; return a Deferred firing with a :class:`StoreSnapshot`."""

    def close():
        """Finish every queued write, close; return a Deferred."""

    def put_exchange(vhost: str, name: str, record: dict) -> None:
        """Create or replace a durable exchange."""

    def delete_exchange(vhost: str, name: str) -> None:
        """Forget an exchange and every binding whose source it is."""

    def put_queue(vhost: str, name: str, record: dict) -> None:
        """Create or replace a durable queue or stream."""

    def delete_queue(vhost: str, name: str) -> None:
        """Forget a queue or stream, its bindings, messages and stream entries."""

    def put_binding(
        vhost: str, source: str, kind: str, destination: str, key: str, arguments: dict
    ) -> None:
        """Record a binding (idempotent)."""

    def delete_binding(
        vhost: str, source: str, kind: str, destination: str, key: str, arguments: dict
    ) -> None:
        """Remove a binding."""

    def put_message(vhost: str, queue: str, seq: int, data: bytes, delivery_count: int) -> None:
        """Record a persistent message on a durable queue (or update its delivery count)."""

    def delete_message(vhost: str, queue: str, seq: int) -> None:
        """Remove an acknowledged (or dropped) message."""

    def append_stream(
        vhost: str,
        stream: str,
        partition: int,
        offset: int,
        count: int,
        timestamp: int,
        fmt: str,
        data: bytes,
    ) -> None:
        """Append one stream entry (a batch of ``count`` offsets starting at ``offset``)."""

    def trim_stream(vhost: str, stream: str, partition: int, before_offset: int) -> None:
        """Drop entries whose offset is below ``before_offset`` (retention)."""

    def put_kv(namespace: str, key: str, value: bytes) -> None:
        """Store a small adapter-owned record (MQTT session, retained message, group offset)."""

    def delete_kv(namespace: str, key: str) -> None:
        """Remove an adapter-owned record."""

    def put_scheduled(job_id: int, due: int, record: bytes) -> None:
        """Create or replace a scheduled message (a job of the scheduler) due at ``due`` ms."""

    def delete_scheduled(job_id: int) -> None:
        """Forget a scheduled message (delivered for the last time, or cancelled)."""

    def after_durable(callback: Callable[[], None]) -> None:
        """Call ``callback`` on the reactor thread once every write issued before it is durable.

        Callbacks run in the order they were registered.

        A store whose ``reports_write_failures`` attribute is true also takes
        ``after_durable(callback, failed)``: when it cannot make those writes durable but keeps
        serving (its database stays away), it calls ``failed(exc)`` instead of ``callback``
        and the caller answers its client negatively. Other stores stop the broker on such a
        failure; ``Broker.when_durable`` hides the difference.
        """


class IPagingStore(IStore):
    """A store that keeps message bodies and stream entries on disk and reads them back on
    demand (the sqlite store): queues then keep only a bounded window of bodies in memory and
    streams only a recent tail. A store providing only :class:`IStore` (memory, postgres) is
    given every write and reports everything at ``open``; the core keeps it all in memory.
    """

    pages = Attribute(
        """True when the backend keeps message bodies and stream entries on disk and reads them
        back on demand (``read_messages``, ``read_stream``, ``retain_stream``): queues then keep
        only a bounded window of bodies in memory and streams only a recent tail. False (the
        ``memory`` store) keeps everything in memory as the core holds it."""
    )

    def put_queued(
        vhost: str,
        queue: str,
        seq: int,
        data: bytes,
        delivery_count: int,
        priority: int,
        expires_at: int | None,
        size: int,
        transient: bool,
    ) -> None:
        """``put_message`` with what a paging queue needs to know without reading the body.

        ``priority`` is the queue's priority level of the message (0 without x-max-priority),
        ``expires_at`` its absolute expiry in ms (message expiration and queue TTL applied at
        enqueue) or None, ``size`` the length of its body. ``transient`` rows hold a message
        that is not persistent (or is on a queue that is not durable), written only to bound
        memory: ``open`` deletes them and never reports them. A later put of the same
        (vhost, queue, seq) replaces the row; ``put_message(v, q, seq, data, n)`` is
        ``put_queued(v, q, seq, data, n, 0, None, len(data), False)``.
        """

    def read_messages(
        vhost: str,
        queue: str,
        priority: int,
        after_seq: int,
        limit: int,
        callback: Callable[[list[tuple[int, bytes, int, int | None]]], None],
    ) -> None:
        """Read back up to ``limit`` messages of one priority level with seq > ``after_seq``.

        ``callback(rows)`` runs on the reactor thread with ``[(seq, data, delivery_count,
        expires_at)]`` in seq order; the read runs off the reactor thread and sees every write
        issued before the call (fewer than ``limit`` rows: nothing more at that moment).
        Only for stores that page.
        """

    def read_scheduled(
        after_due: int,
        after_id: int,
        limit: int,
        callback: Callable[[list[tuple[int, int, bytes]]], None],
    ) -> None:
        """Read up to ``limit`` scheduled messages whose (due, id) is at or after
        (``after_due``, ``after_id``), in that order: ``callback([(id, due, record)])`` on the
        reactor thread; the read sees every write issued before the call. Only for stores
        that page.
        """

    def purge_messages(vhost: str, queue: str, priority: int, after_seq: int) -> None:
        """Delete a queue's messages of one priority level whose seq is above ``after_seq``
        (the paged-out part of a purged queue)."""

    def read_stream(
        vhost: str,
        stream: str,
        partition: int,
        offset: int,
        max_bytes: int,
        callback: Callable[[list[tuple[int, int, int, str, bytes]]], None],
    ) -> None:
        """Read stream entries from the one containing ``offset`` (or the first after it).

        ``callback(entries)`` runs on the reactor thread with ``[(offset, count, timestamp,
        format, data)]`` in offset order: at least one entry when there is one at or after
        ``offset``, then more while their total size stays within ``max_bytes``. Reads run off
        the reactor thread and see every append issued before the call. An empty list means
        nothing at or after ``offset`` (e.g. it was removed by retention). Only for stores
        that page.
        """

    def find_stream_timestamp(
        vhost: str,
        stream: str,
        partition: int,
        timestamp: int,
        callback: Callable[[tuple[int, int, int, str, bytes] | None], None],
    ) -> None:
        """Find the first stream entry, in offset order, whose timestamp is >= ``timestamp``.

        ``callback(entry)`` runs on the reactor thread with ``(offset, count, timestamp,
        format, data)``, or None when no entry is that new. The search runs off the reactor
        thread and sees every append issued before the call. Only for stores that page.
        """

    def retain_stream(
        vhost: str,
        stream: str,
        partition: int,
        max_bytes: int | None,
        min_timestamp: int | None,
        callback: Callable[[int, int], None],
    ) -> None:
        """Apply retention to one partition by deleting whole segments, oldest first.

        A segment goes while the partition holds more than ``max_bytes`` without it, or when
        its newest entry's timestamp is below ``min_timestamp``; the segment being written is
        never deleted. ``callback(start_offset, bytes)`` runs on the reactor thread with the
        new log start and the bytes left. Only for stores that page.
        """
