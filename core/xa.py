"""Prepared transaction branches (XA two-phase commit), kept durable across restarts.

An adapter runs an XA branch as a local :class:`~.tx.Transaction` until the transaction
manager prepares it. :meth:`PreparedBranches.prepare` then writes the branch — its publishes
and the messages it consumed — as one broker record (``broker.kv`` namespace ``xa.prepared``)
and, in the same store batch (one store transaction), removes the consumed messages' rows from
their queues: after a crash they are neither lost (the record holds them) nor delivered again
while the branch is undecided. Commit applies the branch and drops the record; rollback puts
the consumed messages back. A branch prepared before a restart is "restored": it has no live
deliveries, only its record, and is committed or rolled back from that (``recover`` lists it).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from .message import Message
from .queue import Delivery, Queue
from .tx import Transaction

if TYPE_CHECKING:
    from .broker import Broker

log = Logger(namespace="polymq.xa")

NAMESPACE = "xa.prepared"

_per_broker: weakref.WeakKeyDictionary[Any, PreparedBranches] = weakref.WeakKeyDictionary()


class PreparedBranch:
    """A prepared branch: ``tx`` and ``settled`` (the adapter's bookkeeping of the deliveries
    it acknowledged) while it is live, or only ``record`` once restored after a restart."""

    __slots__ = ("key", "xid", "vhost", "tx", "settled", "record")

    def __init__(
        self,
        key: str,
        xid: Any,
        vhost: str,
        tx: Transaction | None,
        settled: list,
        record: dict,
    ) -> None:
        self.key = key
        self.xid = xid  # the adapter's form of the transaction id (msgpack-able)
        self.vhost = vhost
        self.tx = tx
        self.settled = settled
        self.record = record


class PreparedBranches:
    """Every prepared branch of a broker, keyed by the adapter's text form of its xid."""

    @classmethod
    def of(cls, broker: Broker) -> PreparedBranches:
        """The broker's one registry (every listener of every adapter shares it), read from
        the store on first use, after start-up."""
        registry = _per_broker.get(broker)
        if registry is None:
            registry = _per_broker[broker] = cls(broker)
        return registry

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.branches: dict[str, PreparedBranch] = {}
        for key in list(broker.kv(NAMESPACE)):
            rec = broker.kv_get_obj(NAMESPACE, key)
            if not isinstance(rec, dict):
                continue
            self.branches[key] = PreparedBranch(key, rec.get("xid"), rec["vhost"], None, [], rec)
        if self.branches:
            log.info(
                "{n} prepared XA branches wait for their transaction manager",
                n=len(self.branches),
            )

    def prepare(
        self,
        key: str,
        xid: Any,
        tx: Transaction,
        settled: list,
        on_durable: Callable[[], None],
    ) -> None:
        """Make the branch durable; ``on_durable`` runs once it is on disk (answer then)."""
        vhost = tx.vhost
        publishes = [(ex, rk, msg.to_bytes()) for ex, rk, msg in tx.publishes()]
        consumed = []
        for d in tx.pending_deliveries():
            if d.data is None:
                continue  # not persistent: nothing of it survives a restart anyway
            consumed.append((d.queue.name, d.seq, d.data, d.delivery_count))
            vhost.store.delete_message(vhost.name, d.queue.name, d.seq)
        record = {"xid": xid, "vhost": vhost.name, "publish": publishes, "consumed": consumed}
        self.broker.kv_put_obj(NAMESPACE, key, record)
        self.branches[key] = PreparedBranch(key, xid, vhost.name, tx, settled, record)
        self.broker.when_durable(on_durable)

    def take(self, key: str) -> PreparedBranch | None:
        """Remove a branch to commit or roll it back (None: no such prepared branch)."""
        b = self.branches.pop(key, None)
        if b is not None:
            self.broker.kv_delete(NAMESPACE, key)
        return b

    def commit(self, b: PreparedBranch) -> None:
        """Apply a branch returned by :meth:`take`."""
        if b.tx is not None:
            b.tx.commit()
            return
        vhost = self.broker.vhost(b.vhost)
        for ex, rk, data in b.record.get("publish", ()):
            vhost.publish(ex, rk, Message.from_bytes(data))
        # (the consumed messages' rows were removed at prepare)

    def rollback(self, b: PreparedBranch) -> list[Delivery]:
        """Undo a branch returned by :meth:`take`. Returns the live deliveries it had
        acknowledged (the adapter applies its protocol's rule to them); their rows are written
        back while they are still unsettled. The messages of a restored branch go back to the
        tail of their queues."""
        if b.tx is not None:
            deliveries = b.tx.rollback()
            return deliveries
        vhost = self.broker.vhost(b.vhost)
        for qname, _seq, data, _count in b.record.get("consumed", ()):
            q = vhost.queues.get(qname)
            if isinstance(q, Queue):
                q.enqueue(Message.from_bytes(data), data)
        return []

    @staticmethod
    def keep_unsettled(deliveries: list[Delivery]) -> None:
        """Write back the rows of rolled-back deliveries still waiting for an ack (prepare
        removed them; a requeued delivery has had its row written again already)."""
        for d in deliveries:
            q = d.queue
            if d.data is not None and d.seq in q.unacked and not q.deleted:
                q._put_queued(
                    q.vhost.name,
                    q.name,
                    d.seq,
                    d.data,
                    d.delivery_count,
                    q._level_of(d.message),
                    d.expires_at,
                    len(d.message.body),
                    False,
                )

    def xids(self, vhost: str) -> list[Any]:
        return [b.xid for b in self.branches.values() if b.vhost == vhost]
