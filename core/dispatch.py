"""Consumer selection beyond plain round-robin: one active consumer, consumer priorities and
message groups.

A :class:`~.queue.Queue` calls in here only when one of these is in use, so a queue that never
sees them keeps its fast path.

- **One active consumer** (``x-single-active-consumer`` queues, OpenWire exclusive consumers):
  the queue dispatches to ``queue.consumers`` only; the others wait in ``queue.standby``, in
  the order they came, and the first of them takes over when the active one leaves. An
  exclusive consumer (OpenWire ``consumer.exclusive=true``) takes a queue over from
  non-exclusive ones, as ActiveMQ does; a second exclusive one waits behind it.
- **Consumer priorities** (AMQP ``x-priority``, OpenWire ``consumer.priority``): a message goes
  to the highest-priority consumer with room, round-robin among equals; lower ones get messages
  only while every higher one is full.
- **Message groups** (JMSXGroupID): every message of a group goes to the consumer that took the
  group's first message, until it leaves or a message with JMSXGroupSeq -1 closes the group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import PreconditionFailed

if TYPE_CHECKING:
    from .queue import Consumer, Delivery, Queue

GROUP_ID = "openwire.group_id"
GROUP_SEQ = "openwire.group_seq"


def single_active_argument(arguments: dict) -> bool:
    """The x-single-active-consumer queue argument: a boolean (anything else is refused, as
    RabbitMQ does)."""
    value = arguments.get("x-single-active-consumer")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PreconditionFailed(
            f"invalid arg 'x-single-active-consumer': expected a boolean, got {value!r}"
        )
    return value


def attach(queue: Queue, consumer: Consumer) -> bool:
    """Place a new consumer: True when it is active (dispatched to), False when it waits."""
    active = queue.consumers
    if consumer.standby:
        # an exclusive consumer: the queue's one active consumer, unless another exclusive
        # one holds it already
        if any(c.standby for c in active):
            queue.standby.append(consumer)
            return False
        queue.standby[:0] = active  # non-exclusive ones wait behind it, in their order
        if queue.groups:
            _drop_groups(queue, active)
        active.clear()
        _insert(queue, consumer)
        return True
    if (active or queue.standby) and (queue.single_active or any(c.standby for c in active)):
        queue.standby.append(consumer)
        return False
    _insert(queue, consumer)
    return True


def _insert(queue: Queue, consumer: Consumer) -> None:
    active = queue.consumers
    if consumer.priority:
        queue.prioritized = True
    if not queue.prioritized:
        active.append(consumer)
        return
    # kept in descending priority, newcomers after their equals
    i = 0
    while i < len(active) and active[i].priority >= consumer.priority:
        i += 1
    active.insert(i, consumer)


def detach(queue: Queue, consumer: Consumer) -> None:
    """Forget a consumer that leaves; the first waiting one takes over when the queue has
    only one active consumer."""
    if consumer in queue.standby:
        queue.standby.remove(consumer)
        return
    if consumer not in queue.consumers:
        return
    queue.consumers.remove(consumer)
    if queue.groups:
        _drop_groups(queue, [consumer])
    if queue.prioritized and not any(c.priority for c in queue.consumers):
        queue.prioritized = False
    if queue.standby and not queue.consumers:
        if queue.single_active:
            _insert(queue, queue.standby.pop(0))
            return
        # the exclusive one left: the next exclusive one in line takes over, or else every
        # waiting consumer is active again
        nxt = next((c for c in queue.standby if c.standby), None)
        if nxt is not None:
            queue.standby.remove(nxt)
            _insert(queue, nxt)
            return
        waiting = list(queue.standby)
        queue.standby.clear()
        for c in waiting:
            _insert(queue, c)


def _drop_groups(queue: Queue, consumers: list[Consumer]) -> None:
    """Forget the groups of consumers that stop getting messages (reassigned on their next
    message)."""
    groups = queue.groups
    if groups:
        for group in [g for g, c in groups.items() if c in consumers]:
            del groups[group]


def next_by_priority(queue: Queue, message: object = None) -> Consumer | None:
    """The ready consumer of highest priority (round-robin among equals) that takes
    ``message`` (its selector), or None. ``queue.consumers`` is in descending priority."""
    consumers = queue.consumers
    n = len(consumers)
    i = 0
    while i < n:
        p = consumers[i].priority
        j = i
        while j < n and consumers[j].priority == p:
            j += 1
        size = j - i
        start = queue.rr_by_priority.get(p, 0)
        for k in range(size):
            c = consumers[i + (start + k) % size]
            if c.ready() and (
                message is None or c.selector is None or c.selector(message)  # type: ignore[arg-type]
            ):
                queue.rr_by_priority[p] = (start + k + 1) % size
                return c
        i = j
    return None


def _next_any(queue: Queue, message: object) -> Consumer | None:
    if queue.prioritized:
        return next_by_priority(queue, message)
    consumers = queue.consumers
    n = len(consumers)
    for k in range(n):
        idx = (queue._rr + k) % n
        c = consumers[idx]
        if c.ready() and (c.selector is None or c.selector(message)):  # type: ignore[arg-type]
            queue._rr = idx + 1
            return c
    return None


def choose(queue: Queue, d: Delivery) -> Consumer | None:
    """The consumer ``d`` goes to now, or None when it has to wait (slow path: selectors,
    priorities, groups)."""
    message = d.message
    group = message.annotations.get(GROUP_ID) if queue.groups is not None else None
    if group is None:
        return _next_any(queue, message)
    owner = queue.groups.get(group)  # type: ignore[union-attr]
    if owner is not None:
        if not owner.ready() or (owner.selector is not None and not owner.selector(message)):
            return None
        target = owner
    else:
        target = _next_any(queue, message)
        if target is None:
            return None
        queue.groups[group] = target  # type: ignore[index]
    if message.annotations.get(GROUP_SEQ) == -1:
        del queue.groups[group]  # type: ignore[union-attr]
    return target


# -- priority levels on demand ------------------------------------------------------------------

PRIORITY_ON_DEMAND = "x-priority-on-demand"
DEFAULT_JMS_PRIORITY = 4


def wants_levels(queue: Queue, priority: int | None) -> bool:
    """A message of ``priority`` arrives at a queue with priorities on demand and one level:
    does it need the levels? (JMS sends 4 unless told otherwise.)"""
    return priority is not None and priority != DEFAULT_JMS_PRIORITY and not queue.max_priority


def add_priority_levels(queue: Queue, restoring: bool = False) -> bool:
    """Give a one-level queue its priority levels (0 .. ``x-priority-on-demand``), the first
    time a message with a non-default priority arrives, so a queue that never sees one keeps
    the single FIFO. Ready messages move to their level. Not while part of the backlog is paged
    out (it is read back in order first), except while restoring at start-up."""
    top = queue.priority_on_demand
    if not top or queue.max_priority or (queue._paged_total and not restoring):
        return False
    extra = top  # levels added above level 0
    old = queue._levels[0]
    queue.max_priority = top
    queue._levels = [old] + [type(old)() for _ in range(extra)]
    for name in ("_paged", "_paged_bytes", "_cursor", "_page_outs"):
        getattr(queue, name).extend([0] * extra)
    queue._loading.extend([False] * extra)
    if old and not queue._paged[0]:
        moved = list(old)
        old.clear()
        for d in moved:
            queue._levels[queue._level_of(d.message)].append(d)
    return True
