"""Settlement of deliveries, the same for every protocol: one ledger per subscription (AMQP
channel, JMS consumer, STOMP subscription) of what was sent and not yet settled.

A :class:`DeliveryLedger` maps the protocol's delivery tag (an int, a JMS dispatch sequence, a
STOMP ack id: any hashable) to the core :class:`~polymq.core.queue.Delivery`, in dispatch
order. It settles one tag, every tag up to one (cumulative acks) or a range, takes deliveries
out for a nack / reject, and requeues everything in dispatch order, grouped by queue.

Settlements inside a core :class:`~polymq.core.tx.Transaction` are *held*: the deliveries stay
in the ledger, in place, until the transaction ends. Commit settles them; rollback applies the
rule the adapter chose for its protocol:

- :data:`RESTORE` (AMQP ``tx.rollback``, JMS ``session.rollback``, STOMP ``ABORT``): they are
  unsettled again under the same tags and in dispatch order (the JMS client redelivers from its
  own buffer); a subscription that closed meanwhile has its deliveries requeued instead.
- :data:`REDELIVER`: they go back to their queue for redelivery, the delivery count bumped.

A delivery the client rejects without requeue goes to its queue's dead-letter policy
(``Queue.nack(d, requeue=False)``: the dead-letter exchange, or dropped). Broker-side
redelivery with a delay (:func:`redeliver_later`) uses the broker's scheduler, the one clock
for everything delayed.

Unknown tags are not errors here: the methods return ``None`` or an empty list and the adapter
answers in its protocol's terms.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

from .queue import Consumer, Delivery

if TYPE_CHECKING:
    from .redelivery import RedeliveryPolicy
    from .tx import Transaction

RESTORE = "restore"
REDELIVER = "redeliver"

# annotation: broker-side redeliveries of a message so far (see redeliver_later)
REDELIVERIES = "polymq.redeliveries"


def requeue_grouped(deliveries: Iterable[Delivery], count: bool = True) -> None:
    """Requeue ``deliveries`` with one ``Queue.requeue`` per queue, keeping their order."""
    by_queue: dict[int, tuple] = {}
    for d in deliveries:
        q = d.queue
        entry = by_queue.get(id(q))
        if entry is None:
            by_queue[id(q)] = (q, [d])
        else:
            entry[1].append(d)
    for q, group in by_queue.values():
        q.requeue(group, count)


class DeliveryLedger:
    """The unsettled deliveries of one subscription, in dispatch order.

    ``unsettled`` is public for the protocol's delivery hot path (``ledger.unsettled[tag] = d``
    is the whole cost of recording a delivery); everything else goes through the methods.
    ``ordered``: the tags increase in dispatch order (AMQP delivery tags), so settling "up to" a
    tag that is no longer here settles those before it.
    """

    __slots__ = ("unsettled", "held", "rollback_rule", "ordered", "closed")

    def __init__(self, rollback_rule: str = RESTORE, ordered: bool = False) -> None:
        if rollback_rule not in (RESTORE, REDELIVER):
            raise ValueError(f"unknown rollback rule {rollback_rule!r}")
        # an OrderedDict: settling removes from the front, where a plain dict would leave
        # holes that every look at the oldest entry scans again
        self.unsettled: OrderedDict[Hashable, Delivery] = OrderedDict()
        self.held: set[Hashable] = set()  # tags whose settlement waits in a transaction
        self.rollback_rule = rollback_rule
        self.ordered = ordered
        self.closed = False

    def __len__(self) -> int:
        """Deliveries still to settle (held ones included: they are not settled yet)."""
        return len(self.unsettled)

    def __contains__(self, tag: Hashable) -> bool:
        return tag in self.unsettled

    def add(self, tag: Hashable, delivery: Delivery) -> None:
        self.unsettled[tag] = delivery

    # -- settling outside a transaction --------------------------------------------------------

    def ack_one(self, tag: Hashable) -> Delivery | None:
        """Acknowledge one tag (the fast path: a dict pop and ``queue.ack``). None when the
        tag is unknown or its settlement is held by a transaction."""
        if self.held and tag in self.held:
            return None
        d = self.unsettled.pop(tag, None)
        if d is not None:
            d.queue.ack(d)
        return d

    def ack_oldest(self, tag: Hashable) -> Delivery | None:
        """Acknowledge ``tag`` only if it is the oldest unsettled one and nothing is held (what
        a client acknowledging each message in turn sends); None, with nothing done, else."""
        unsettled = self.unsettled
        if self.held or not unsettled:
            return None
        # one popitem, cheaper than a look at the front and a pop by key; a tag that is not
        # the oldest (rare: another acknowledgement mode) is put back in front
        oldest, d = unsettled.popitem(False)
        if oldest != tag:
            unsettled[oldest] = d
            unsettled.move_to_end(oldest, False)
            return None
        d.queue.ack(d)
        return d

    def take(self, tag: Hashable) -> Delivery | None:
        """Remove one tag without settling it (the caller nacks, rejects, dead-letters)."""
        if self.held and tag in self.held:
            return None
        return self.unsettled.pop(tag, None)

    def tags_up_to(self, tag: Hashable) -> list[Hashable]:
        """The unsettled, not held tags dispatched up to and including ``tag``, oldest first.
        Empty when ``tag`` is not here (for an ``ordered`` ledger: those below it)."""
        held = self.held
        out = []
        if tag in self.unsettled:
            for t in self.unsettled:
                if t not in held:
                    out.append(t)
                if t == tag:
                    break
        elif self.ordered:
            for t in self.unsettled:
                if t > tag:  # type: ignore[operator]
                    break
                if t not in held:
                    out.append(t)
        return out

    def tags_range(self, first: Hashable, last: Hashable) -> list[Hashable]:
        """The unsettled, not held tags from ``first`` to ``last`` in dispatch order (from the
        oldest when ``first`` is not here). Empty when ``last`` is not here."""
        unsettled = self.unsettled
        if last not in unsettled:
            return []
        if first not in unsettled:
            return self.tags_up_to(last)
        held = self.held
        out = []
        collecting = False
        for t in unsettled:
            if t == first:
                collecting = True
            if collecting and t not in held:
                out.append(t)
            if t == last:
                break
        return out

    def tags_all(self) -> list[Hashable]:
        """Every unsettled tag that is not held, oldest first."""
        held = self.held
        return [t for t in self.unsettled if t not in held]

    def take_up_to(self, tag: Hashable) -> list[tuple[Hashable, Delivery]]:
        """Remove what :meth:`tags_up_to` lists (cumulative acks)."""
        unsettled = self.unsettled
        if not self.held and tag in unsettled:
            out = []
            popitem = unsettled.popitem
            while True:
                item = popitem(last=False)
                out.append(item)
                if item[0] == tag:
                    return out
        return self.take_tags(self.tags_up_to(tag))

    def take_range(self, first: Hashable, last: Hashable) -> list[tuple[Hashable, Delivery]]:
        """Remove what :meth:`tags_range` lists."""
        return self.take_tags(self.tags_range(first, last))

    def take_all(self) -> list[tuple[Hashable, Delivery]]:
        """Remove every unsettled tag that is not held, in dispatch order."""
        if not self.held:
            out = list(self.unsettled.items())
            self.unsettled.clear()
            return out
        return self.take_tags(self.tags_all())

    def take_consumer(self, consumer: Consumer) -> list[tuple[Hashable, Delivery]]:
        """:meth:`close` for one subscription of a ledger that serves several: remove the
        deliveries made through ``consumer``, which its queue requeues with it; those a
        transaction holds stay here and leave the consumer, as :meth:`close` does."""
        held = self.held
        mine = []
        for t, d in self.unsettled.items():
            if d.consumer is consumer:
                if t in held:
                    consumer.detach(d)
                else:
                    mine.append(t)
        return self.take_tags(mine)

    def take_tags(self, tags: Iterable[Hashable]) -> list[tuple[Hashable, Delivery]]:
        """Remove ``tags`` (unsettled, not held ones; the others are left out)."""
        held = self.held
        unsettled = self.unsettled
        return [(t, unsettled.pop(t)) for t in tags if t in unsettled and t not in held]

    @staticmethod
    def ack(taken: Iterable[tuple[Hashable, Delivery]]) -> None:
        for _, d in taken:
            d.queue.ack(d)

    @staticmethod
    def nack(taken: Iterable[tuple[Hashable, Delivery]], requeue: bool) -> None:
        """Reject what :meth:`take_up_to` & co. removed: requeued (grouped by queue, in
        order), or each to its queue's dead-letter policy."""
        if requeue:
            requeue_grouped(d for _, d in taken)
            return
        for _, d in taken:
            d.queue.nack(d, False)

    def requeue_all(self) -> None:
        """Every unsettled delivery that no transaction holds goes back to its queue, in
        dispatch order (AMQP basic.recover, a closing channel)."""
        taken = self.take_all()
        if taken:
            requeue_grouped(d for _, d in taken)

    # -- transactions ----------------------------------------------------------------------------

    def hold(self, tags: Iterable[Hashable]) -> list[tuple[Hashable, Delivery]]:
        """Mark unsettled, not yet held ``tags`` as settled by a transaction; returns those
        marked. They stay here until :meth:`release` (commit) or :meth:`restore` (rollback)."""
        out = []
        held = self.held
        unsettled = self.unsettled
        for t in tags:
            d = unsettled.get(t)
            if d is not None and t not in held:
                held.add(t)
                out.append((t, d))
        return out

    def settle_in(
        self, tx: Transaction, tags: Iterable[Hashable], ack: bool = True, requeue: bool = True
    ) -> list[tuple[Hashable, Delivery]]:
        """Settle ``tags`` inside ``tx`` (an ack, or a nack with ``requeue``): held until the
        transaction ends. Returns the (tag, delivery) pairs held (unknown and already held
        tags are left out)."""
        taken = self.hold(tags)
        for t, d in taken:
            tx.settle(self, t, d, ack, requeue)
        return taken

    def release(self, tag: Hashable) -> None:
        """The transaction holding ``tag`` committed: forget it (its queue is settled by the
        transaction)."""
        self.held.discard(tag)
        self.unsettled.pop(tag, None)

    def restore(self, tag: Hashable, delivery: Delivery) -> Delivery | None:
        """The transaction holding ``tag`` rolled back: apply the rollback rule. Returns the
        delivery when it is to be requeued (the caller requeues, grouped), None when it is
        unsettled again."""
        self.held.discard(tag)
        if self.rollback_rule == RESTORE and not self.closed and tag in self.unsettled:
            return None
        self.unsettled.pop(tag, None)
        return delivery

    def close(self) -> None:
        """The subscription is going: forget what is unsettled (the caller requeues it, e.g.
        with the core consumer), except that deliveries a transaction holds leave their
        consumer, so they are not requeued with it: the transaction settles them later, or
        its rollback requeues them."""
        self.closed = True
        unsettled = self.unsettled
        for t in self.held:
            d = unsettled.get(t)
            if d is not None and d.consumer is not None:
                d.consumer.detach(d)
        unsettled.clear()


def redeliver_later(
    d: Delivery, policy: RedeliveryPolicy, annotate=None, key: str = REDELIVERIES
) -> bool:
    """Broker-side redelivery of a message a consumer gave up on: while ``policy`` allows, a
    copy goes back to its queue after the policy's delay through the broker's scheduler (the
    one clock for delayed work) and ``d`` is settled; True then. False (nothing done): the
    policy is off or spent, the caller dead-letters. ``annotate(copy)`` may add what the
    protocol needs to the copy."""
    q = d.queue
    if not policy.enabled or q.deleted:
        return False
    msg = d.message
    n = msg.annotations.get(key, 0)
    if not isinstance(n, int) or n >= policy.maximum:
        return False
    again = msg.copy()
    again.annotations[key] = n + 1
    if annotate is not None:
        annotate(again)
    vhost = q.vhost
    vhost.broker.scheduler.schedule(vhost.name, "", q.name, again, delay_ms=policy.delay_for(n))
    q.ack(d)
    return True


__all__ = [
    "REDELIVER",
    "REDELIVERIES",
    "RESTORE",
    "DeliveryLedger",
    "redeliver_later",
    "requeue_grouped",
]
