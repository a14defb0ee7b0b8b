"""Paging of a queue (stores that keep bodies on disk): the ready messages beyond the memory
budget wait in the store and are read back, per priority level and in order, on the store's
thread as consumers get near them (see docs/storage.md, *Backlogs larger than memory*).

:class:`QueuePaging` is a mixin of :class:`polymq.core.queue.Queue`: its methods work on the
queue's own attributes (``_levels``, ``_paged``, ``_cursor``...), set in ``Queue.__init__``.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from . import dispatch as selection
from .delivery import Delivery
from .message import Message

log = Logger()

# A queue holds at most this many ready messages / body bytes in memory unless
# x-max-in-memory-length / x-max-in-memory-bytes or the broker's
# store.queue_max_in_memory_length / _bytes say otherwise; the rest waits in the store.
DEFAULT_IN_MEMORY_LENGTH = 4096
DEFAULT_IN_MEMORY_BYTES = 8 * 1024 * 1024
MIN_READ_AHEAD = 128


class QueuePaging:
    """Start-up accounting of a backlog left in the store, paging out and reading back."""

    def restore_level(self, level: int, count: int, size: int, top_seq: int) -> None:
        """Account for ``count`` messages of a priority level left in the store at start-up
        (a store that pages): they are read back when consumers get near them."""
        if level and self.priority_on_demand and not self.max_priority:
            selection.add_priority_levels(self, restoring=True)
        level = min(max(level, 0), len(self._levels) - 1)
        self._paged[level] += count
        self._paged_bytes[level] += size
        self._paged_total += count
        self._count += count
        self._bytes += size
        self._cursor[level] = 0
        self._next_seq = max(self._next_seq, top_seq + 1)

    def preload(self, done: Callable[[], None]) -> None:
        """Read the head of a backlog left in the store back before anyone asks (start-up);
        ``done()`` runs once it is in memory (at once when there is nothing to read)."""
        for i in range(len(self._levels) - 1, -1, -1):
            if self._levels[i]:
                break
            if self._paged[i]:
                self._preloads.append(done)
                # a small first read: start-up cost stays bounded however many queues have
                # backlogs; the first consumer or get reads further
                self._load(i, MIN_READ_AHEAD)
                return
        done()

    def when_head_ready(self, callback: Callable[[], None]) -> bool:
        """For a pull (basic.get, an OpenWire pull) that got None from :meth:`get`.

        False: the queue really has nothing ready, answer "empty" now. True: its head is being
        read back from the store; ``callback()`` runs once it is in memory (then ``get`` again).
        """
        if not self._count or self._peek_head() is not None:
            return False
        self._preloads.append(callback)
        for i in range(len(self._levels) - 1, -1, -1):
            if self._paged[i]:
                self._load(i)
                break
        return True

    def _mem_full(self, size: int) -> bool:
        return (
            self._mem_bytes + size > self.max_in_memory_bytes
            or self._count - self._paged_total >= self.max_in_memory_length
        )

    def _page_out(self, d: Delivery, level: int, size: int) -> None:
        """Leave a new message in the store only (written now if it was not persistent)."""
        if not self._paged[level]:
            # every message of this level with a lower seq is in memory, with a consumer or
            # gone: the store is read back from here on
            self._cursor[level] = d.seq - 1
        if d.data is None:
            self._put_queued(
                self.vhost.name,
                self.name,
                d.seq,
                d.message.to_bytes(),
                0,
                level,
                d.expires_at,
                size,
                True,
            )
            self._spilled = True
        self._paged[level] += 1
        self._paged_bytes[level] += size
        self._paged_total += 1
        self._page_outs[level] += 1
        self._count += 1
        self._bytes += size

    def _read_ahead(self, level: int) -> int:
        """How many messages to read back: what the consumers have room for, twice, within
        the memory budget."""
        room = 0
        for c in self.consumers:
            if c.no_ack or c.limit.prefetch == 0:
                room = self.max_in_memory_length
                break
            room += max(c.limit.prefetch - c.limit.in_flight, 0)
        if not self.consumers:
            # read by basic.get / pulls, one round trip each: read far ahead, so that the next
            # read is back long before the head runs out
            room = self.max_in_memory_length
        n = min(max(room * 2, MIN_READ_AHEAD), self.max_in_memory_length)
        avg = self._paged_bytes[level] // max(self._paged[level], 1) + 1
        n = min(n, max(1, (self.max_in_memory_bytes - self._mem_bytes) // avg))
        return max(1, min(n, self._paged[level]))

    def _load(self, level: int, limit: int | None = None) -> None:
        """Read the next paged-out messages of ``level`` back (on the store's thread)."""
        if self._loading[level] or self.deleted or not self._paged[level]:
            return
        self._loading[level] = True
        n = self._read_ahead(level)
        if limit is not None:
            n = min(n, limit)
        self._low_water = max(MIN_READ_AHEAD // 2, n // 2)
        epoch, outs = self._purges, self._page_outs[level]
        self.vhost.store.read_messages(
            self.vhost.name,
            self.name,
            level,
            self._cursor[level],
            n,
            lambda rows: self._loaded(level, epoch, outs, rows),
        )

    def _loaded(self, level: int, epoch: int, outs: int, rows: list) -> None:
        self._loading[level] = False
        if self.deleted or epoch != self._purges:
            if not self.deleted:
                self._load(level)
            return
        lv = self._levels[level]
        cursor = self._cursor[level]
        taken = 0
        for seq, data, delivery_count, expires_at in rows:
            if seq <= cursor or not self._paged[level]:
                continue
            message = Message.from_bytes(data)
            d = Delivery(self, seq, message, delivery_count, expires_at)
            if expires_at is None and self.message_ttl is not None:
                d.expires_at = self._expiry_for(message, self.vhost.now())
            d.data = data
            size = len(message.body)
            self._paged[level] -= 1
            self._paged_bytes[level] -= size
            self._paged_total -= 1
            self._mem_bytes += size
            cursor = seq
            lv.append(d)
            taken += 1
        self._cursor[level] = cursor
        if not taken and self._paged[level]:
            if self._page_outs[level] == outs:
                # nothing more in the store although the books say so (rows lost outside the
                # broker): believe the store
                log.warn(
                    "queue {q}: {n} paged messages of priority level {lvl} were not in the store",
                    q=self.name,
                    n=self._paged[level],
                    lvl=level,
                )
                self._count -= self._paged[level]
                self._bytes -= self._paged_bytes[level]
                self._paged_total -= self._paged[level]
                self._paged[level] = 0
                self._paged_bytes[level] = 0
            else:
                self._load(level)  # written after the read was queued: read again
                return
        elif self._paged[level] and not lv:
            self._load(level)  # every row read had expired or was skipped: go on
        if taken:
            if self.overflow == "drop-head" and self._over_limit(0, 0):
                # over x-max-length while the head was in the store: drop it now it is here
                self._drop_head_for(0, extra=0)
            self._schedule_expiry()
        if self._preloads:
            waiting, self._preloads = self._preloads, []
            for done in waiting:
                done()
        if self.consumers:
            self.dispatch()
