"""The consuming side of an OpenWire session: JMS MessageConsumers on core queues, dispatch,
browsing, pull, and acknowledgements (a mixin of :class:`.session.OpenWireSession`)."""

from __future__ import annotations

import struct
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from polymq.core.address import queue_address, topic_address
from polymq.core.errors import AccessRefused, BrokerError
from polymq.core.message import Message, now_ms
from polymq.core.queue import Consumer, Delivery, Queue
from polymq.core.settlement import REDELIVERIES, RESTORE, DeliveryLedger, redeliver_later

from . import codec as c
from .codec import Obj
from .mapping import (
    ADVISORY_PREFIX,
    core_to_jms,
    is_topic,
    is_wildcard,
    key_of,
    split_dest,
    topic_pattern,
    wildcard_matcher,
)

if TYPE_CHECKING:
    from .hub import OpenWireHub

log = Logger(namespace="polymq.openwire")

DLQ = "ActiveMQ.DLQ"
BROWSE_MAX = 400  # messages one queue browser sees (ActiveMQ's maxBrowsePageSize)

ACK_DELIVERED, ACK_POISON, ACK_STANDARD, ACK_REDELIVERED = 0, 1, 2, 3
ACK_INDIVIDUAL, ACK_UNMATCHED, ACK_EXPIRED = 4, 5, 6
_I = c._I
_ZERO = _I.pack(0)

# -- consumers ---------------------------------------------------------------------------------


class ConsumerState:
    """One JMS MessageConsumer: its core consumer (or advisory/browse role) and what it has
    been sent but not yet settled."""

    def __init__(self, info: Obj) -> None:
        self.info = info
        self.id = info.consumer_id
        self.key = key_of(info.consumer_id)
        self.session_key = (info.consumer_id.connection_id, info.consumer_id.session_id)
        self.destination = info.destination
        self.prefetch = info.prefetch_size
        self.core: Consumer | None = None
        self.queue: Queue | None = None
        self.temp_queue: str | None = None  # per-consumer subscription queue (topics)
        # dispatch seq -> delivery, in order. JMS's rollback rule: the client redelivers what a
        # rolled-back session received from its own buffer, so those stay unsettled here (and
        # go back to the queue if the consumer closed meanwhile)
        self.ledger = DeliveryLedger(RESTORE)
        self.dispatched = self.ledger.unsettled  # (the dispatch hot path records here)
        self.in_tx = self.ledger.held  # seqs acknowledged inside an open transaction
        self.delivered: set[int] = set()  # DELIVERED-acked, still unsettled
        self.advisory: set[str] | None = None
        self.pull_timer: Any = None
        self.pull_pending = False
        self.removed = False
        self.no_local = False
        self.head = c.dispatch_head(self.id, self.destination)
        self.head_later: bytes | None = None  # cached form: the head after the first dispatch
        # a wildcard queue consumer: one core consumer per matching queue, one shared window
        # (``core`` is then a stand-in holding that window, attached to no queue)
        self.wildcard: Any = None  # the name matcher
        self.cores: dict[str, Consumer] = {}
        self.selector: Any = None

    def wants_advisory(self, dest_type: int) -> bool:
        if self.advisory is None:
            return False
        if dest_type == c.TEMP_QUEUE:
            return "TempQueue" in self.advisory
        return "TempTopic" in self.advisory

    def credit_back(self) -> None:
        """The window is prefetch + DELIVERED-acked messages still unsettled."""
        if self.core is not None and self.prefetch > 0:
            self.core.set_prefetch(self.prefetch + len(self.delivered))

    def all_cores(self) -> list[Consumer]:
        if self.core is None:
            return []
        return [self.core, *self.cores.values()] if self.wildcard is not None else [self.core]


def _keep_destination(again: Message) -> None:
    """A message redelivered by the broker keeps the destination it was sent to."""
    if "openwire.dest" not in again.annotations:
        again.annotations["openwire.dest"] = (
            topic_address(again.routing_key)
            if again.exchange == "amq.topic"
            else queue_address(again.routing_key)
        )


class ConsumerHandling:
    """Consumers, dispatch and acknowledgements of one session (state in :class:`ConsumerState`;
    the session provides ``hub``, ``vhost``, ``conn``, ``consumers``, ``transactions`` and the
    reply helpers)."""

    hub: OpenWireHub

    # -- consumers ---------------------------------------------------------------------------

    def on_consumer_info(self, cmd: Obj) -> None:
        dest = cmd.destination
        if dest is None or cmd.consumer_id is None:
            self.respond_error(cmd, "javax.jms.InvalidDestinationException", "no destination")
            return
        cs = ConsumerState(cmd)
        parts = split_dest(dest)
        if not parts or not all(name for _, name in parts):
            self.respond_error(
                cmd, "javax.jms.InvalidDestinationException", "empty destination name"
            )
            return
        if all(is_topic(t) and n.startswith(ADVISORY_PREFIX) for t, n in parts):
            cs.advisory = {n[len(ADVISORY_PREFIX) :] for _, n in parts}
            self.consumers[cs.key] = cs
            self.respond(cmd)
            self.hub.add_advisory_consumer(self, cs)
            return
        if len(parts) != 1:
            self.respond_error(
                cmd,
                "javax.jms.InvalidDestinationException",
                "composite destinations are not supported for consumers",
            )
            return
        limit = self.settings["max_consumers"]
        if limit and cs.key not in self.consumers:
            held = sum(1 for other in self.consumers.values() if other.advisory is None)
            if held >= limit:
                # ActiveMQ's words for maximumConsumersAllowedPerConnection
                where = getattr(self.connection_id, "value", "?")
                self.respond_error(
                    cmd,
                    "java.lang.IllegalStateException",
                    f"Can't add consumer on connection {where}: at maximum limit: {limit}",
                )
                return
        selector = None
        if cmd.selector:
            try:
                from polymq.core.selector import InvalidSelector, compile_selector
            except ImportError:  # pragma: no cover
                compile_selector = None
            if compile_selector is not None:
                try:
                    selector = compile_selector(cmd.selector)
                except InvalidSelector as e:
                    self.respond_error(cmd, "javax.jms.InvalidSelectorException", str(e))
                    return
        if cmd.no_local:
            self.hub.no_local_consumers += 1
            cs.no_local = True
            mine = self.conn_key
            base = selector

            def selector(msg: Message, base=base, mine=mine) -> bool:
                if msg.annotations.get("openwire.conn") == mine:
                    return False
                return base is None or base(msg)

        t, name = parts[0]
        kind = "topic" if is_topic(t) else "queue"
        if not self.conn.authorize("read", kind, name):
            raise AccessRefused(f"not allowed to read from {kind} {name}")
        if cmd.browser:
            self.consumers[cs.key] = cs
            self.respond(cmd)
            self._browse(cs, name, selector)
            return
        if is_topic(t):
            pattern = topic_pattern(name)
            if cmd.subscription_name:
                qname = f"{self.client_id or cmd.client_id}.{cmd.subscription_name}"
                q = self.vhost.queues.get(qname)
                if q is None:
                    q = self.vhost.declare_queue(qname, durable=True)
                self._use_dead_letter_queue(q, name)
                ex = self.vhost.get_exchange("amq.topic")
                stale = [b for b in ex.bindings_to(q) if b.key != pattern]
                for b in stale:
                    self.vhost.unbind_queue(qname, "amq.topic", b.key)
                    q.purge()
                self.vhost.bind_queue(qname, "amq.topic", pattern)
            else:
                q = self.vhost.declare_queue("", exclusive_owner=self, auto_delete=True)
                self.vhost.bind_queue(q.name, "amq.topic", pattern, owner=self)
                cs.temp_queue = q.name
        else:
            if t == c.TEMP_QUEUE:
                q = self.vhost.queues.get(name)
                if q is None:
                    self.respond_error(
                        cmd,
                        "javax.jms.InvalidDestinationException",
                        f"temporary queue {name} does not exist",
                    )
                    return
            elif is_wildcard(name):
                self._wildcard_consumer(cs, cmd, name, selector)
                return
            else:
                q = self._ensure_queue(name)
        if not isinstance(q, Queue):
            self.respond_error(cmd, "javax.jms.InvalidDestinationException", f"{name} is a stream")
            return
        prefetch = cmd.prefetch_size
        core = Consumer(
            f"ow-{cs.key}",
            partial(self._deliver, cs),  # (no Python frame of its own per delivery)
            prefetch=max(prefetch, 0),
            selector=selector,
            owner=self,
            credit=0 if prefetch <= 0 else None,
            # ActiveMQ: an exclusive consumer takes the queue, a second one waits as standby
            standby=bool(cmd.exclusive),
            priority=cmd.priority or 0,
        )
        # attached paused, so that a refusal (an AMQP exclusive consumer holds the queue) is
        # the answer, and the answer comes before the first dispatch
        core.paused = True
        try:
            q.add_consumer(core)
        except BrokerError as e:
            if cs.no_local:
                self.hub.no_local_consumers -= 1
            self.respond_error(cmd, "javax.jms.JMSException", e.text)
            return
        cs.core = core
        cs.queue = q
        self.consumers[cs.key] = cs
        if self.cached:
            cs.head, cs.head_later = c.dispatch_heads_cached(
                cs.id, cs.destination, self._cache_slots()
            )
        self.respond(cmd)
        if not self.paused:
            core.resume()

    def _wildcard_consumer(self, cs: ConsumerState, cmd: Obj, name: str, selector: Any) -> None:
        """A consumer of ``queue://a.>``: it reads every queue whose name matches, now and
        later (queues made through OpenWire), within one prefetch window."""
        if cmd.prefetch_size <= 0:
            self.respond_error(
                cmd,
                "javax.jms.JMSException",
                "a wildcard queue consumer needs a prefetch of at least 1",
            )
            return
        cs.wildcard = wildcard_matcher(name)
        cs.core = Consumer(f"ow-{cs.key}", lambda d: None, prefetch=cmd.prefetch_size)
        cs.selector = selector
        self.consumers[cs.key] = cs
        if self.cached:
            cs.head, cs.head_later = c.dispatch_heads_cached(
                cs.id, cs.destination, self._cache_slots()
            )
        self.respond(cmd)
        self.hub.add_wildcard_consumer(self, cs)
        for qname, q in list(self.vhost.queues.items()):
            if isinstance(q, Queue) and cs.wildcard(qname):
                self.attach_wildcard(cs, q)

    def attach_wildcard(self, cs: ConsumerState, q: Queue) -> None:
        """Add queue ``q`` to what wildcard consumer ``cs`` reads."""
        if cs.removed or q.name in cs.cores or cs.core is None:
            return
        if q.exclusive_owner is not None or not self.conn.authorize("read", "queue", q.name):
            return  # temporary and exclusive queues, and those it may not read, are left out
        core = Consumer(
            f"ow-{cs.key}-{q.name}",
            partial(self._deliver, cs),  # (no Python frame of its own per delivery)
            limit=cs.core.limit,
            selector=cs.selector,
            owner=self,
        )
        core.paused = self.paused
        try:
            q.add_consumer(core)
        except BrokerError as e:  # e.g. the queue has an exclusive consumer: left out
            log.info("openwire: wildcard consumer skips queue {q}: {e}", q=q.name, e=e.text)
            return
        cs.cores[q.name] = core

    def remove_consumer(self, cs: ConsumerState, last_delivered: int = -1) -> None:
        """Detach a consumer; what it was sent and did not settle goes back to its queue.

        ``last_delivered`` (RemoveInfo.lastDeliveredSequenceId) is the dispatch sequence of the
        last message the application saw: the ones after it were only prefetched, so going back
        does not count as a delivery (the core's requeue adds one; take it off first).
        """
        if cs.advisory is not None:
            cs.removed = True
            self.hub.remove_advisory_consumer(cs)
            return
        if cs.pull_timer is not None and cs.pull_timer.active():
            cs.pull_timer.cancel()
        cs.removed = True
        if cs.no_local:
            cs.no_local = False
            self.hub.no_local_consumers -= 1
        if cs.wildcard is not None:
            self._remove_wildcard(cs, last_delivered)
            return
        if last_delivered >= 0 and cs.core is not None and cs.queue is not None:
            # dispatch order: what follows the last delivered message was only prefetched,
            # so it goes back without counting as a delivery
            cs.core.pause()
            undelivered = last_delivered not in cs.dispatched
            prefetched = []
            for seq, d in cs.dispatched.items():
                if undelivered and seq not in cs.in_tx:
                    prefetched.append(d)
                elif seq == last_delivered:
                    undelivered = True
            cs.queue.requeue(prefetched, count=False)
        # deliveries acknowledged inside an open transaction stay with the transaction:
        # settled by its commit, requeued by its rollback
        cs.ledger.close()
        if cs.core is not None and cs.queue is not None:
            cs.queue.remove_consumer(cs.core, requeue=True)
        if cs.temp_queue is not None:
            q = self.vhost.queues.get(cs.temp_queue)
            if q is not None and not q.consumers:
                self.vhost.delete_queue(cs.temp_queue)

    def _remove_wildcard(self, cs: ConsumerState, last_delivered: int) -> None:
        self.hub.wildcard_consumers = [x for x in self.hub.wildcard_consumers if x[1] is not cs]
        for core in cs.cores.values():
            core.pause()
        if last_delivered >= 0:
            undelivered = last_delivered not in cs.dispatched
            for seq, d in cs.dispatched.items():
                if undelivered and seq not in cs.in_tx:
                    d.queue.requeue([d], count=False)
                elif seq == last_delivered:
                    undelivered = True
        cs.ledger.close()
        for core in cs.cores.values():
            if core.queue is not None:
                core.queue.remove_consumer(core, requeue=True)
        cs.cores.clear()

    def _deliver(self, cs: ConsumerState, d: Delivery) -> None:
        # the encoding the message keeps (OpenWireHub.encoded), read here: once per message
        e = d.message.encoded
        if e is not None and e[0] is self.hub and self.cached and e[4] is not None:
            seq, data = e[1], e[4]
        else:
            seq, data = self._encoded(d)
        if seq in cs.dispatched:  # the same message twice on one consumer: a fresh id
            seq = self.hub.next_id()
            data = c.encode_message(
                core_to_jms(d.message, self.hub.synthetic_pid, seq), self.cached
            )
        cs.dispatched[seq] = d
        cs.pull_pending = False
        self.conn.info.messages_out += 1
        if not self.closed:
            # encode_dispatch_raw, inlined (once per message)
            head = cs.head
            count = d.delivery_count
            self.write(
                b"".join(
                    (
                        _I.pack(len(head) + len(data) + 4),
                        head,
                        data,
                        _I.pack(count) if count else _ZERO,
                    )
                )
            )
            if cs.head_later is not None:
                cs.head = cs.head_later
                cs.head_later = None

    def _encoded(self, d: Delivery) -> tuple[int, bytes]:
        """The broker sequence id and encoding of a delivery's message (OpenWireHub.encoded);
        the body alone for a message that does not convert."""
        try:
            return self.encoded(d.message, self.cached)
        except (ValueError, TypeError, OverflowError, struct.error) as e:
            # never let one odd message from another protocol break the queue's dispatch
            log.info(
                "openwire: delivering the body only of a message that does not convert: {err}",
                err=e,
            )
            seq = self.hub.next_id()
            data = c.encode_message(
                core_to_jms(Message(d.message.body), self.hub.synthetic_pid, seq), self.cached
            )
            return seq, data

    def dispatch_advisory(self, cs: ConsumerState, info: Obj) -> None:
        seq = self.hub.next_id()
        topic = ADVISORY_PREFIX + (
            "TempQueue" if info.destination.type == c.TEMP_QUEUE else "TempTopic"
        )
        dest = Obj(c.TOPIC, physical_name=topic)
        mid = Obj(
            c.MESSAGE_ID,
            producer_id=self.hub.synthetic_pid,
            producer_sequence_id=seq,
            broker_sequence_id=seq,
        )
        m = Obj(
            c.MESSAGE,
            producer_id=self.hub.synthetic_pid,
            destination=dest,
            message_id=mid,
            priority=4,
            timestamp=now_ms(),
            data_structure=info,
        )
        self.send(Obj(c.MESSAGE_DISPATCH, consumer_id=cs.id, destination=cs.destination, message=m))

    def _browse(self, cs: ConsumerState, name: str, selector: Any) -> None:
        q = self.vhost.queues.get(name)
        if isinstance(q, Queue):
            # like ActiveMQ (maxBrowsePageSize) a browser sees at most BROWSE_MAX messages;
            # messages paged out to the store are read back for it
            q.browse_all(BROWSE_MAX, selector, lambda found: self._browsed(cs, found))
        else:
            self._browsed(cs, [])

    def _browsed(self, cs: ConsumerState, found: list) -> None:
        if self.consumers.get(cs.key) is not cs:
            return  # the browser closed while paged messages were read
        for d in found:
            seq = self.hub.next_id()
            m = core_to_jms(d.message, self.hub.synthetic_pid, seq)
            self.send(
                Obj(
                    c.MESSAGE_DISPATCH,
                    consumer_id=cs.id,
                    destination=cs.destination,
                    message=m,
                    redelivery_counter=d.delivery_count,
                )
            )
        self.send(Obj(c.MESSAGE_DISPATCH, consumer_id=cs.id, destination=cs.destination))

    def pause(self) -> None:
        self.paused = True
        for cs in self.consumers.values():
            for core in cs.all_cores():
                core.pause()

    def resume(self) -> None:
        self.paused = False
        for cs in list(self.consumers.values()):
            for core in cs.all_cores():
                core.resume()

    # -- pull ------------------------------------------------------------------------------

    def on_pull(self, cmd: Obj) -> None:
        cs = self.consumers.get(key_of(cmd.consumer_id))
        if cs is None or cs.core is None:
            return
        if cs.prefetch > 0:
            return
        if cs.pull_timer is not None and cs.pull_timer.active():
            cs.pull_timer.cancel()
            cs.pull_timer = None
        if not cs.pull_pending:
            cs.pull_pending = True
            cs.core.add_credit(1)
        if not cs.pull_pending:
            return  # answered synchronously
        if cmd.timeout == -1 or cmd.timeout < 0:
            # "now", but not "empty" while the queue's head is being read back from the store
            q = cs.queue
            if q is not None and q.when_head_ready(lambda cs=cs: self._pull_head_ready(cs)):
                return
            self._pull_expired(cs)
        elif cmd.timeout > 0:
            cs.pull_timer = self.broker.clock.callLater(
                cmd.timeout / 1000.0, self._pull_expired, cs
            )

    def _pull_head_ready(self, cs: ConsumerState) -> None:
        if cs.removed or not cs.pull_pending:
            return
        if cs.queue is not None and not cs.queue.deleted:
            cs.queue.dispatch()  # hands the head over on the pull's credit
        self._pull_expired(cs)  # (answers "empty" only if that did not)

    def _pull_expired(self, cs: ConsumerState) -> None:
        cs.pull_timer = None
        if not cs.pull_pending or cs.core is None:
            return
        cs.pull_pending = False
        cs.core.set_credit(0)
        self.send(Obj(c.MESSAGE_DISPATCH, consumer_id=cs.id, destination=cs.destination))

    # -- acknowledgements ---------------------------------------------------------------------

    def standard_ack(self, fields: tuple) -> bool:
        """The common ack (:func:`c.ack_fields`): a standard ack, outside a transaction, of
        the oldest message in flight. Settled here without decoding the frame; False (nothing
        done) for anything else, which then goes through :meth:`on_ack`."""
        command_id, response_required, cid, tid, kind, last = fields
        cs = self._ack_cs
        if (
            kind != ACK_STANDARD
            or tid is not None
            or cid is not self._ack_cid
            or cs is None
            or cs.removed
            or self.connection_id is None
        ):
            return False
        if not self._settle_if_oldest(cs, last):
            return False
        if response_required:
            self._respond_id(command_id)
        return True

    def _settle_if_oldest(self, cs: ConsumerState, last: int) -> bool:
        """A standard ack outside a transaction: when ``last`` is the oldest message in
        flight (AUTO_ACKNOWLEDGE acks each on its own, oldest first), settle it, recompute
        the window only while DELIVERED acks are outstanding, and say so."""
        d = cs.ledger.ack_oldest(last)
        if d is None:
            return False
        if cs.delivered:
            cs.delivered.discard(last)
            cs.credit_back()
        return True

    def on_ack(self, ack: Obj) -> None:
        cid = ack.consumer_id
        cs = self._ack_cs
        if cid is not self._ack_cid or cs is None or cs.removed:
            # (with the marshalling cache every ack carries the very same consumer id object)
            cs = self.consumers.get(key_of(cid))
            self._ack_cid, self._ack_cs = cid, cs
        if cs is None or cs.advisory is not None or cs.core is None:
            self.respond(ack)
            return
        last = ack.last_message_id.broker_sequence_id if ack.last_message_id else None
        if last is None:
            self.respond(ack)
            return
        kind = ack.ack_type
        if kind == ACK_STANDARD and ack.transaction_id is None and self._settle_if_oldest(cs, last):
            self.respond(ack)
            return
        ledger = cs.ledger
        if kind in (ACK_INDIVIDUAL, ACK_UNMATCHED, ACK_EXPIRED):
            seqs = [last] if last in ledger and last not in ledger.held else []
        elif kind == ACK_POISON and ack.first_message_id is not None:
            seqs = ledger.tags_range(ack.first_message_id.broker_sequence_id, last)
        else:
            seqs = ledger.tags_up_to(last)  # everything dispatched up to ``last``
        if kind in (ACK_DELIVERED, ACK_REDELIVERED):
            before = len(cs.delivered)
            cs.delivered.update(seqs)
            if len(cs.delivered) != before:
                cs.credit_back()
            self.respond(ack)
            return
        if kind == ACK_POISON or (kind == ACK_EXPIRED and ack.transaction_id is None):
            # (the client found it expired before handing it to the application)
            if kind == ACK_POISON:
                cause = ack.poison_cause[1] if ack.poison_cause else None
            else:
                cause = "expired"
            for s, d in ledger.take_tags(seqs):
                cs.delivered.discard(s)
                self._dead_letter(d, cause, kind == ACK_POISON)
            cs.credit_back()
            self.respond(ack)
            return
        if ack.transaction_id is not None:
            entry = self.transactions.get(key_of(ack.transaction_id))
            if entry is None:
                entry = self._begin(ack.transaction_id)
            tx, settled = entry
            for s, d in ledger.settle_in(tx, seqs):
                settled.append((cs, s, d))
            self.respond(ack)
            return
        for s, d in ledger.take_tags(seqs):
            cs.delivered.discard(s)
            d.queue.ack(d)
        cs.credit_back()
        self.respond(ack)

    def _dead_letter(self, d: Delivery, cause: str | None, poisoned: bool = True) -> None:
        """A message the client gave up on (or found expired): redelivered later by the
        broker while the redelivery policy allows, then to its dead-letter queue."""
        msg = d.message
        q = d.queue
        if poisoned and redeliver_later(d, self.hub.redelivery, _keep_destination):
            return
        dlq = self.hub.dead_letter_queue(q.name, self._topic_of(q, msg))
        if dlq is not None:
            headers = dict(msg.headers)
            if cause:
                headers["dlqDeliveryFailureCause"] = cause
            dead = msg.copy(headers=headers, expiration=None)
            dead.annotations.pop(REDELIVERIES, None)
            self._dead_letter_queue(dlq)
            self.vhost.publish("", dlq, dead)
        q.ack(d)

    @staticmethod
    def _topic_of(q: Queue, msg: Message) -> str | None:
        """The topic of a durable subscription's queue (for the individual strategy)."""
        return msg.routing_key if msg.exchange == "amq.topic" and q.durable else None

    def _dead_letter_queue(self, name: str) -> Queue:
        q = self.vhost.queues.get(name)
        if q is None:  # created by the broker itself, whatever the client may configure
            q = self.vhost.declare_queue(name, durable=True)
        return q

    def _use_dead_letter_queue(self, q: Queue, topic: str | None = None) -> None:
        """A durable queue an OpenWire client uses and that has no dead-letter exchange of
        its own sends what expires (or exceeds the delivery limit) to its dead-letter queue."""
        if q.dead_letter_exchange is not None or not q.durable or not isinstance(q, Queue):
            return
        dlq = self.hub.dead_letter_queue(q.name, topic)
        if dlq is None:
            return
        self._dead_letter_queue(dlq)
        q.dead_letter_exchange = ""
        q.dead_letter_routing_key = dlq
