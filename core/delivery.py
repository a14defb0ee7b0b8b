"""What queues and streams hand out: a delivery, the consumer it goes to, and the consumer's
unacknowledged-message window.

Adapters import these from ``polymq.core.queue`` (re-exported there) or from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .message import Message
    from .queue import Queue


class Delivery:
    """One message on one queue. The same object is handed out again on redelivery.

    ``delivery_count`` is how many times it was delivered before the current delivery, so
    ``redelivered`` (AMQP) is ``delivery_count > 0`` and JMSXDeliveryCount is ``delivery_count+1``.
    """

    __slots__ = (
        "queue",
        "seq",
        "message",
        "delivery_count",
        "consumer",
        "expires_at",
        "data",
        "offset",
    )

    def __init__(
        self, queue: Queue, seq: int, message: Message, delivery_count: int, expires_at: int | None
    ) -> None:
        self.queue = queue
        self.seq = seq
        self.message = message
        self.delivery_count = delivery_count
        self.consumer: Consumer | None = None
        self.expires_at = expires_at
        self.data: bytes | None = None  # persisted form, when stored
        self.offset: int | None = None  # stream offset, for deliveries from a stream

    @property
    def redelivered(self) -> bool:
        return self.delivery_count > 0

    def __repr__(self) -> str:
        return f"Delivery({self.queue.name!r}, seq={self.seq}, count={self.delivery_count})"


class Limit:
    """An unacknowledged-message window (AMQP prefetch, OpenWire prefetch, MQTT receive max).

    Shared by several consumers for AMQP ``basic.qos(global=True)``. ``prefetch == 0`` is
    unlimited.
    """

    __slots__ = ("prefetch", "in_flight", "consumers")

    def __init__(self, prefetch: int = 0) -> None:
        self.prefetch = prefetch
        self.in_flight = 0
        self.consumers: list[Consumer] = []

    def has_room(self) -> bool:
        return self.prefetch == 0 or self.in_flight < self.prefetch

    def set_prefetch(self, prefetch: int) -> None:
        grew = prefetch == 0 or prefetch > self.prefetch
        self.prefetch = prefetch
        if grew:
            self._wake()

    def release(self, n: int = 1) -> None:
        in_flight = self.in_flight
        self.in_flight = in_flight - n
        prefetch = self.prefetch
        # (has_room before and after, spelt out: this runs once per acknowledged message)
        if prefetch and in_flight >= prefetch > in_flight - n:  # was full, has room now
            self._wake()

    def _wake(self) -> None:
        consumers = self.consumers
        if len(consumers) == 1:  # the common window of one consumer: no copy of the list
            q = consumers[0].queue
            if q is not None:
                q.dispatch()
            return
        for c in list(consumers):
            if c.queue is not None:
                c.queue.dispatch()


class Consumer:
    """A subscription of an adapter's session to a queue.

    ``deliver(delivery)`` is a plain callable, invoked synchronously by the queue: it must write
    the delivery out and return, never raise. ``credit`` is None (no link credit, only the
    window) or a count decremented per delivery (AMQP 1.0 link credit, pull requests).
    """

    __slots__ = (
        "queue",
        "tag",
        "deliver",
        "limit",
        "no_ack",
        "exclusive",
        "selector",
        "owner",
        "unacked",
        "paused",
        "credit",
        "arguments",
        "on_cancel",
        "standby",
        "priority",
    )

    def __init__(
        self,
        tag: str,
        deliver: Callable[[Delivery], None],
        *,
        prefetch: int = 0,
        limit: Limit | None = None,
        no_ack: bool = False,
        exclusive: bool = False,
        selector: Callable[[Message], bool] | None = None,
        owner: Any = None,
        credit: int | None = None,
        arguments: dict | None = None,
        on_cancel: Callable[[], None] | None = None,
        standby: bool = False,
        priority: int = 0,
    ) -> None:
        self.queue: Any = None  # the Queue or Stream it is attached to
        self.tag = tag
        self.deliver = deliver
        self.limit = limit if limit is not None else Limit(prefetch)
        self.limit.consumers.append(self)
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.selector = selector
        self.owner = owner
        self.unacked: dict[int, Delivery] = {}
        self.paused = False
        self.credit = credit
        self.arguments = arguments or {}
        # called when the broker ends the subscription (queue deleted): AMQP basic.cancel
        self.on_cancel = on_cancel
        # exclusive, but waiting its turn behind another exclusive consumer instead of being
        # refused (OpenWire exclusive consumers); see core/dispatch.py
        self.standby = standby
        self.priority = priority  # consumer priority (AMQP x-priority): higher goes first

    def ready(self) -> bool:
        if self.paused:
            return False
        if self.credit is not None and self.credit <= 0:
            return False
        if self.no_ack:
            return True
        limit = self.limit  # (Limit.has_room, inlined: asked twice per dispatched message)
        return limit.prefetch == 0 or limit.in_flight < limit.prefetch

    def pause(self) -> None:
        """Stop deliveries (the transport's buffer is full)."""
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.queue is not None:
                self.queue.dispatch()

    def add_credit(self, n: int) -> None:
        self.credit = (self.credit or 0) + n
        if self.queue is not None:
            self.queue.dispatch()

    def set_prefetch(self, prefetch: int) -> None:
        self.limit.set_prefetch(prefetch)

    def set_credit(self, credit: int | None) -> None:
        """Replace the link credit (0 takes back what is left, as an expired pull does)."""
        self.credit = credit
        if self.queue is not None and (credit is None or credit > 0):
            self.queue.dispatch()

    def detach(self, delivery: Delivery) -> None:
        """Stop counting ``delivery`` against this consumer; it stays unacknowledged.

        For settlements held by a transaction that outlives the consumer: the delivery is no
        longer requeued with the consumer, and its ack or nack still applies later.
        """
        if self.unacked.pop(delivery.seq, None) is not None:
            delivery.consumer = None
            self.limit.release()
