"""Queues: FIFO with competing consumers, credit, acknowledgement and dead-lettering.

A queue pushes to its consumers while they have room (prefetch window and/or link credit),
round-robin across the ones that do, so prefetch=1 gives fair dispatch. Everything an adapter
needs for delivery semantics is a method of :class:`Queue`: ack, nack/reject with or without
requeue, redelivery with a delivery count, TTL, priorities, max-length, dead-letter exchange,
delivery limit.

This module holds enqueue, dispatch and settlement (the per-message paths). The rest of the
class lives in mixins, one module per concern: paging to the store and reading back
(core/queue_paging.py), TTL, length limits, dead-lettering and queue expiry
(core/queue_expiry.py), browsing (core/queue_browse.py). :class:`Delivery`, :class:`Consumer`
and :class:`Limit` are in core/delivery.py and importable from here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import dispatch as selection
from .delivery import Consumer, Delivery, Limit
from .dispatch import DEFAULT_JMS_PRIORITY, GROUP_ID
from .errors import PreconditionFailed, ResourceLocked
from .message import Message
from .queue_browse import QueueBrowsing
from .queue_expiry import QueueExpiry
from .queue_paging import (
    DEFAULT_IN_MEMORY_BYTES,
    DEFAULT_IN_MEMORY_LENGTH,
    MIN_READ_AHEAD,
    QueuePaging,
)

if TYPE_CHECKING:
    from .vhost import VirtualHost

# imported from here by adapters, plugins and the broker
__all__ = [
    "DEFAULT_IN_MEMORY_BYTES",
    "DEFAULT_IN_MEMORY_LENGTH",
    "OVERFLOW_MODES",
    "Consumer",
    "Delivery",
    "Limit",
    "Queue",
]

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")


class Queue(QueuePaging, QueueExpiry, QueueBrowsing):
    """A FIFO queue of a virtual host."""

    kind = "queue"

    def __init__(
        self,
        vhost: VirtualHost,
        name: str,
        *,
        durable: bool = False,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
        arguments: dict | None = None,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments = dict(arguments or {})
        self.message_ttl = _opt_int(arguments, "x-message-ttl", 0)
        self.expires = _opt_int(arguments, "x-expires", 1)
        self.max_length = _opt_int(arguments, "x-max-length", 0)
        self.max_length_bytes = _opt_int(arguments, "x-max-length-bytes", 0)
        self.max_priority = _opt_int(arguments, "x-max-priority", 0)
        # one level until a message with a non-default priority comes (core/dispatch.py)
        self.priority_on_demand = _opt_int(arguments, selection.PRIORITY_ON_DEMAND, 0) or 0
        if self.priority_on_demand > 255:
            raise PreconditionFailed(f"{selection.PRIORITY_ON_DEMAND} must be at most 255")
        if self.max_priority is not None and self.max_priority > 255:
            raise PreconditionFailed("x-max-priority must be at most 255")
        limit = _opt_int(arguments, "x-delivery-limit", 0)
        self.delivery_limit = limit if limit is not None else vhost.default_delivery_limit
        overflow = arguments.get("x-overflow", "drop-head")
        if isinstance(overflow, bytes):
            overflow = overflow.decode()
        if overflow not in OVERFLOW_MODES:
            raise PreconditionFailed(f"invalid x-overflow {overflow!r}")
        self.overflow = overflow
        self.dead_letter_exchange = _opt_str(arguments, "x-dead-letter-exchange")
        self.dead_letters_dropped = 0  # dead letters dropped: their exchange did not exist
        self.dropped = 0  # messages dropped from the head by the length limits
        self._dlx_missing_logged = False
        self.dead_letter_routing_key = _opt_str(arguments, "x-dead-letter-routing-key")
        levels = (self.max_priority or 0) + 1
        self._levels: list[deque[Delivery]] = [deque() for _ in range(levels)]
        self._count = 0  # ready messages, in memory and paged out
        self._bytes = 0
        # Paging: each level is its in-memory deque followed by _paged[level] messages kept
        # only in the store, every one with a seq above _cursor[level], read back in seq order.
        self._pages = bool(getattr(vhost.store, "pages", False))
        put_queued = getattr(vhost.store, "put_queued", None)
        if put_queued is None:  # a backend written before paging: put_message is all it has
            put_message = vhost.store.put_message

            def put_queued(v, q, seq, data, count, *_meta):
                put_message(v, q, seq, data, count)

        self._put_queued: Callable[..., None] = put_queued
        in_mem_len = _opt_int(arguments, "x-max-in-memory-length", 1)
        in_mem_bytes = _opt_int(arguments, "x-max-in-memory-bytes", 1)
        self.max_in_memory_length: int = in_mem_len or vhost.queue_max_in_memory_length
        self.max_in_memory_bytes: int = in_mem_bytes or vhost.queue_max_in_memory_bytes
        self._paged = [0] * levels
        self._paged_bytes = [0] * levels
        self._paged_total = 0
        self._cursor = [0] * levels
        self._loading = [False] * levels
        self._page_outs = [0] * levels  # messages paged out so far (tells a short read apart)
        self._mem_bytes = 0  # bodies of ready messages held in memory
        self._low_water = MIN_READ_AHEAD // 2
        self._purges = 0  # a read issued before a purge is discarded
        self._spilled = False  # wrote transient messages (a non-durable queue cleans up)
        self._preloads: list[Callable[[], None]] = []
        self._next_seq = 1
        self.consumers: list[Consumer] = []  # the active ones (dispatched to)
        self._rr = 0
        # one active consumer, priorities, groups: see core/dispatch.py
        self.single_active = selection.single_active_argument(arguments)
        self.standby: list[Consumer] = []  # consumers waiting for their turn
        self.prioritized = False  # some consumer has a priority: consumers sorted by it
        self.rr_by_priority: dict[int, int] = {}
        self.groups: dict[Any, Consumer] | None = None  # message group -> its consumer
        self._selective = 0  # consumers with a selector
        self.unacked: dict[int, Delivery] = {}
        self._dispatching = False
        self._again = False
        self._dispatches = 0  # dispatch() calls so far (ack skips one that just ran)
        self._had_consumers = False
        self._expiry_timer: Any = None
        self._expiry_at: int | None = None
        self._idle_timer: Any = None
        self.deleted = False
        self._touch()

    # -- persistence ------------------------------------------------------------------------

    def record(self) -> dict:
        return {
            "type": "classic",
            "durable": self.durable,
            "auto_delete": self.auto_delete,
            "arguments": self.arguments,
        }

    @property
    def persistent(self) -> bool:
        return self.durable

    def restore(self, seq: int, data: bytes, delivery_count: int) -> None:
        """Put back a message read from the store at start-up."""
        message = Message.from_bytes(data)
        if self.priority_on_demand and selection.wants_levels(self, message.priority):
            selection.add_priority_levels(self, restoring=True)
        expires_at = self._expiry_for(message, self.vhost.now())
        d = Delivery(self, seq, message, delivery_count, expires_at)
        d.data = data
        self._next_seq = max(self._next_seq, seq + 1)
        self._append(d)

    # -- stats ------------------------------------------------------------------------------

    @property
    def message_count(self) -> int:
        """Messages ready for delivery (not the unacknowledged ones), as AMQP reports it."""
        return self._count

    @property
    def byte_count(self) -> int:
        return self._bytes

    @property
    def consumer_count(self) -> int:
        return len(self.consumers) + len(self.standby)

    @property
    def paged_count(self) -> int:
        """Ready messages kept only in the store (not in memory)."""
        return self._paged_total

    @property
    def memory_bytes(self) -> int:
        """Body bytes of the ready messages held in memory."""
        return self._mem_bytes

    # -- publishing -------------------------------------------------------------------------

    def enqueue(self, message: Message, data: bytes | None = None) -> bool:
        """Add a routed message. False when refused by ``x-overflow: reject-publish``.

        ``data`` is the message's persisted form, computed once by the publisher for all the
        durable queues a message is routed to.
        """
        size = len(message.body)
        if (self.max_length is not None or self.max_length_bytes is not None) and (
            self._over_limit(1, size)
        ):
            if self.overflow == "drop-head":
                self._drop_head_for(size)
            else:
                if self.overflow == "reject-publish-dlx":
                    self._dead_letter_message(message, "maxlen")
                return False
        if self.priority_on_demand and not self.max_priority:
            p = message.priority
            if p is not None and p != DEFAULT_JMS_PRIORITY:
                selection.add_priority_levels(self)
        if self.groups is None and GROUP_ID in message.annotations:
            # the first grouped message: from now on dispatch takes the slow path
            self.groups = {}
            self._selective += 1
        seq = self._next_seq
        self._next_seq = seq + 1
        if message.expiration is None and self.message_ttl is None:
            now = 0
            d = Delivery(self, seq, message, 0, None)
        else:
            now = self.vhost.now()
            d = Delivery(self, seq, message, 0, self._expiry_for(message, now))
        if self.durable and message.durable:
            if data is None:
                data = message.to_bytes()
            d.data = data
            self._put_queued(
                self.vhost.name,
                self.name,
                seq,
                data,
                0,
                self._level_of(message),
                d.expires_at,
                size,
                False,
            )
        if self.consumers and not self._count and not self._selective:
            # fast path: straight to a consumer, never touching the ready list
            consumers = self.consumers
            if len(consumers) == 1:  # (_next_ready_consumer's common case, without a call)
                c = consumers[0] if consumers[0].ready() else None
            else:
                c = self._next_ready_consumer()
            if c is not None and not self._dispatching:
                if d.expires_at is not None and d.expires_at <= now:
                    self._dead_letter(d, "expired")
                    return True
                self._hand_to(c, d)
                return True
        if self._pages and (
            self._paged_total
            or self._mem_bytes + size > self.max_in_memory_bytes
            or self._count >= self.max_in_memory_length
        ):
            level = self._level_of(message)
            if self._paged[level] or self._mem_full(size):
                self._page_out(d, level, size)
                if self.consumers and self._count == 1:
                    self.dispatch()
                return True
        self._append(d)
        # With a backlog already waiting, no consumer was ready at the last dispatch and
        # every change of readiness (ack, resume, credit) dispatches by itself; only a
        # selector consumer might want this message in particular.
        if self.consumers and (self._count == 1 or self._selective):
            self.dispatch()
        return True

    def _append(self, d: Delivery) -> None:
        # (one level unless priorities are in use: no call then)
        level = 0 if self.max_priority is None else self._level_of(d.message)
        self._levels[level].append(d)
        size = len(d.message.body)
        self._count += 1
        self._bytes += size
        self._mem_bytes += size
        if d.expires_at is not None and self._count == 1:
            self._schedule_expiry()

    def _level_of(self, message: Message) -> int:
        if self.max_priority is None:
            return 0
        p = message.priority
        if p is None:  # (a JMS-style queue puts messages without a priority at JMS's default)
            p = DEFAULT_JMS_PRIORITY if self.priority_on_demand else 0
        return p if p <= self.max_priority else self.max_priority

    def _pop_head(self) -> Delivery | None:
        """The next ready message, or None while the head of the queue is still in the store
        (its read is then under way)."""
        levels = self._levels
        i = len(levels) - 1
        while i >= 0:  # (highest level first; a while loop: no range object per message)
            level = levels[i]
            if level:
                d = level.popleft()
                size = len(d.message.body)
                self._count -= 1
                self._bytes -= size
                self._mem_bytes -= size
                if self._paged_total and self._paged[i] and len(level) <= self._low_water:
                    self._load(i)
                return d
            if self._paged_total and self._paged[i]:
                self._load(i)
                return None
            i -= 1
        raise IndexError("empty queue")

    def _peek_head(self) -> Delivery | None:
        levels = self._levels
        for i in range(len(levels) - 1, -1, -1):
            if levels[i]:
                return levels[i][0]
            if self._paged_total and self._paged[i]:
                return None
        return None

    # -- delivery ---------------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        """Attach a consumer: active at once, or waiting its turn (one active consumer)."""
        if (self.consumers or self.standby) and (
            (consumer.exclusive and not consumer.standby)
            or any(c.exclusive and not c.standby for c in self.consumers)
        ):
            raise ResourceLocked(f"queue '{self.name}' has an exclusive consumer")
        consumer.queue = self
        if (
            self.standby
            or self.single_active
            or self.prioritized
            or consumer.standby
            or consumer.priority
        ):
            selection.attach(self, consumer)
        else:
            self.consumers.append(consumer)
        if consumer.selector is not None:
            self._selective += 1
        self._had_consumers = True
        self._cancel_idle_timer()
        self.dispatch()

    def remove_consumer(self, consumer: Consumer, requeue: bool = True) -> None:
        """Detach a consumer; with ``requeue`` its unacknowledged deliveries go back."""
        if consumer in self.consumers or consumer in self.standby:
            if self.standby or self.prioritized or self.groups:
                selection.detach(self, consumer)
            else:
                self.consumers.remove(consumer)
            if consumer.selector is not None:
                self._selective -= 1
        if consumer in consumer.limit.consumers:
            consumer.limit.consumers.remove(consumer)
        if requeue and consumer.unacked:
            self.requeue(list(consumer.unacked.values()))
        if not self.consumers and not self.standby:
            if self.auto_delete and self._had_consumers and not self.deleted:
                self.vhost.delete_queue(self.name)
                return
            self._touch()
        else:
            self.dispatch()

    def _next_ready_consumer(self) -> Consumer | None:
        consumers = self.consumers
        n = len(consumers)
        if n == 1:
            c = consumers[0]
            return c if c.ready() else None
        if self.prioritized:
            return selection.next_by_priority(self)
        for i in range(n):
            idx = (self._rr + i) % n
            c = consumers[idx]
            if c.ready():
                self._rr = idx + 1
                return c
        return None

    def _hand_to(self, c: Consumer, d: Delivery) -> None:
        if c.credit is not None:
            c.credit -= 1
        if c.no_ack:
            d.consumer = None
            self._settle(d)
            c.deliver(d)
            return
        d.consumer = c
        c.limit.in_flight += 1
        c.unacked[d.seq] = d
        self.unacked[d.seq] = d
        c.deliver(d)

    def direct_consumer(self, size: int) -> Consumer | None:
        """The consumer an enqueue of a ``size``-byte message without expiration would be
        handed to at once, or None.

        For an adapter's fast path: when the delivery needs no acknowledgement (MQTT QoS 0),
        the adapter may write the message to that consumer itself and skip the queue, which
        then records nothing, exactly as for a no-ack delivery.
        """
        consumers = self.consumers
        if (
            len(consumers) != 1
            or self._count
            or self._selective
            or self._dispatching
            or self.message_ttl is not None
            or (self.max_length is not None and self.max_length < 1)
            or (self.max_length_bytes is not None and size > self.max_length_bytes)
        ):
            return None
        c = consumers[0]
        return c if c.ready() else None

    def dispatch(self) -> None:
        """Push ready messages to consumers with room, until one side runs out."""
        self._dispatches += 1
        if self._dispatching:
            self._again = True
            return
        self._dispatching = True
        try:
            while True:
                self._again = False
                if self._selective:
                    self._dispatch_selective()
                else:
                    self._dispatch_fifo()
                if not self._again:
                    break
        finally:
            self._dispatching = False

    def _dispatch_fifo(self) -> None:
        now = None
        while self._count and self.consumers:
            consumers = self.consumers
            if len(consumers) == 1:  # (_next_ready_consumer's common case, without a call)
                c = consumers[0]
                if not c.ready():
                    return
            else:
                c = self._next_ready_consumer()
                if c is None:
                    return
            d = self._pop_head()
            if d is None:
                return  # reading the head back; _loaded dispatches again
            if d.expires_at is not None:
                if now is None:
                    now = self.vhost.now()
                if d.expires_at <= now:
                    self._dead_letter(d, "expired")
                    continue
            self._hand_to(c, d)

    def _dispatch_selective(self) -> None:
        # Slow path: a consumer with a selector takes only matching messages, so walk the
        # ready list in order and find, for each message, a ready consumer that wants it.
        now = self.vhost.now()
        for level in reversed(self._levels):
            i = 0
            while i < len(level):
                d = level[i]
                if d.expires_at is not None and d.expires_at <= now:
                    del level[i]
                    self._count -= 1
                    self._bytes -= len(d.message.body)
                    self._mem_bytes -= len(d.message.body)
                    self._dead_letter(d, "expired")
                    continue
                target = None
                if self.prioritized or self.groups is not None:
                    target = selection.choose(self, d)
                else:
                    n = len(self.consumers)
                    for k in range(n):
                        idx = (self._rr + k) % n
                        c = self.consumers[idx]
                        if c.ready() and (c.selector is None or c.selector(d.message)):
                            target = c
                            self._rr = idx + 1
                            break
                if target is None:
                    if not any(c.ready() for c in self.consumers):
                        return
                    i += 1
                    continue
                del level[i]
                self._count -= 1
                self._bytes -= len(d.message.body)
                self._mem_bytes -= len(d.message.body)
                self._hand_to(target, d)
        if self._paged_total and any(c.ready() for c in self.consumers):
            # No message in memory suits the ready consumers: read further, up to twice the
            # memory budget (beyond it a selector waits, as Artemis' paging cursor does).
            for i in range(len(self._levels) - 1, -1, -1):
                if self._paged[i] and (
                    self._mem_bytes < 2 * self.max_in_memory_bytes
                    and self._count - self._paged_total < 2 * self.max_in_memory_length
                ):
                    self._load(i)

    def get(self, no_ack: bool = False, owner: Consumer | None = None) -> Delivery | None:
        """Pull one message (AMQP basic.get, OpenWire pull, MQTT-less polling).

        With ``owner`` the delivery counts against that consumer's window and is requeued
        with it; without, the caller must ack/nack it.
        """
        self._touch()
        now = self.vhost.now()
        while self._count:
            d = self._pop_head()
            if d is None:
                return None  # the head is being read back from the store
            if d.expires_at is not None and d.expires_at <= now:
                self._dead_letter(d, "expired")
                continue
            if no_ack:
                self._settle(d)
                return d
            d.consumer = owner
            self.unacked[d.seq] = d
            if owner is not None:
                owner.limit.in_flight += 1
                owner.unacked[d.seq] = d
            return d
        return None

    # -- settlement -------------------------------------------------------------------------

    def _detach(self, d: Delivery) -> None:
        self.unacked.pop(d.seq, None)
        c = d.consumer
        if c is not None:
            d.consumer = None
            if c.unacked.pop(d.seq, None) is not None:
                c.limit.release()

    def _settle(self, d: Delivery) -> None:
        if d.data is not None:
            self.vhost.store.delete_message(self.vhost.name, self.name, d.seq)
            d.data = None

    def ack(self, d: Delivery) -> None:
        """The consumer is done with ``d``: forget it for good."""
        # _detach inlined (the window freed through _release): this runs once per
        # acknowledged message
        seq = d.seq
        if self.unacked.pop(seq, None) is None:
            return
        runs = self._dispatches
        c = d.consumer
        if c is not None:
            d.consumer = None
            if c.unacked.pop(seq, None) is not None:
                self._release(c)
        if d.data is not None:
            self._settle(d)
        # (a window that was full and has room again already dispatched, in _release; with
        # no message ready there is nothing to hand out)
        if self._count and self.consumers and self._dispatches == runs:
            self.dispatch()

    def _release(self, c: Consumer) -> None:
        """An acknowledgement freed a place in ``c``'s window: ``Limit.release``, with a fast
        path for the consumer of a queue with a backlog (it runs behind: its window was full
        and messages wait). The next message goes straight to it, without a dispatch run and
        its search for a consumer with room (twice: again once the window is full again)."""
        limit = c.limit
        if (
            limit.in_flight != limit.prefetch
            or not self._count
            or self._dispatching
            or self._selective
            or c.paused
            or c.credit is not None
            or len(limit.consumers) != 1
            or len(self.consumers) != 1
            or self.consumers[0] is not c
        ):
            limit.release()
            return
        limit.in_flight -= 1
        self._dispatches += 1
        d = self._pop_head()
        if d is None:
            return  # the head is being read back from the store: _loaded dispatches
        if d.expires_at is not None and d.expires_at <= self.vhost.now():
            self._dead_letter(d, "expired")
            self.dispatch()  # the next one
            return
        self._hand_to(c, d)

    def nack(self, d: Delivery, requeue: bool = True) -> None:
        """Reject ``d``: back to the queue, or dead-lettered (reason ``rejected``)."""
        if d.seq not in self.unacked:
            return
        if requeue:
            self.requeue([d])
            return
        self._detach(d)
        self._dead_letter(d, "rejected")
        if self.consumers:
            self.dispatch()

    reject = nack

    def requeue(self, deliveries: Iterable[Delivery], count: bool = True) -> None:
        """Put unacknowledged deliveries back at the head, in their original order.

        ``count=False`` is for messages that were sent ahead (prefetched) but never reached
        the application: they go back without counting as a delivery.
        """
        back = [d for d in deliveries if d.seq in self.unacked]
        if not back:
            return
        back.sort(key=lambda d: d.seq, reverse=True)
        # Freeing the consumers' windows (_detach) may dispatch; hold dispatch until the
        # deliveries are back at the head, or the next ready message would overtake them.
        nested = self._dispatching
        self._dispatching = True
        try:
            for d in back:
                self._detach(d)
            if self.deleted:
                return
            for d in back:
                if count:
                    d.delivery_count += 1
                if self.delivery_limit is not None and d.delivery_count >= self.delivery_limit:
                    self._dead_letter(d, "delivery_limit")
                    continue
                level = self._level_of(d.message)
                size = len(d.message.body)
                if d.data is not None:
                    self._put_queued(
                        self.vhost.name,
                        self.name,
                        d.seq,
                        d.data,
                        d.delivery_count,
                        level,
                        d.expires_at,
                        size,
                        not (self.durable and d.message.durable),
                    )
                self._levels[level].appendleft(d)
                self._count += 1
                self._bytes += size
                self._mem_bytes += size
        finally:
            self._dispatching = nested
        if self._count:
            self._schedule_expiry()
        if nested:
            self._again = True
        else:
            self.dispatch()

    def purge(self) -> int:
        """Drop every ready message; returns how many."""
        n = self._count
        for level in self._levels:
            for d in level:
                self._settle(d)
            level.clear()
        for i, paged in enumerate(self._paged):
            if paged:
                self.vhost.store.purge_messages(self.vhost.name, self.name, i, self._cursor[i])
                self._paged[i] = self._paged_bytes[i] = 0
        self._purges += 1
        self._paged_total = 0
        self._count = 0
        self._bytes = 0
        self._mem_bytes = 0
        return n

    def close(self) -> None:
        """Called by the virtual host on deletion: cancel timers and consumers."""
        self.deleted = True
        self._cancel_idle_timer()
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        for d in list(self.unacked.values()):
            self._detach(d)
        if self._preloads:  # pulls waiting for a head that will never be read back
            waiting, self._preloads = self._preloads, []
            for done in waiting:
                done()
        if self._spilled and not self.durable:
            # transient messages written out to bound memory (a durable queue's are removed
            # with it by the virtual host)
            self.vhost.store.delete_queue(self.vhost.name, self.name)


def _opt_int(arguments: dict, name: str, minimum: int) -> int | None:
    v = arguments.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise PreconditionFailed(f"invalid arg '{name}': expected an integer, got {v!r}")
    if v < minimum:
        raise PreconditionFailed(f"invalid arg '{name}': must be >= {minimum}")
    return v


def _opt_str(arguments: dict, name: str) -> str | None:
    v = arguments.get(name)
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if not isinstance(v, str):
        raise PreconditionFailed(f"invalid arg '{name}': expected a string")
    return v
