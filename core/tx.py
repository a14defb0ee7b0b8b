"""Local transactions over publishes and acknowledgements (AMQP tx, JMS transacted sessions).

Work is buffered and applied in order on commit; rollback discards it and hands back the
deliveries whose acknowledgements were discarded. Settlements made through a
:class:`~polymq.core.settlement.DeliveryLedger` (``ledger.settle_in(tx, ...)``) are released
from the ledger on commit and get the ledger's rollback rule on rollback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .message import Message
from .queue import Delivery
from .settlement import requeue_grouped
from .vhost import VirtualHost

if TYPE_CHECKING:
    from .settlement import DeliveryLedger

_PUBLISH, _ACK, _NACK = 0, 1, 2


class Transaction:
    def __init__(self, vhost: VirtualHost) -> None:
        self.vhost = vhost
        self._work: list[tuple] = []

    def __len__(self) -> int:
        return len(self._work)

    def publish(self, exchange: str, routing_key: str, message: Message, **options: Any) -> None:
        self._work.append((_PUBLISH, exchange, routing_key, message, options))

    def ack(self, delivery: Delivery) -> None:
        self._work.append((_ACK, delivery, False, None, None))

    def nack(self, delivery: Delivery, requeue: bool = True) -> None:
        self._work.append((_NACK, delivery, requeue, None, None))

    def settle(
        self, ledger: DeliveryLedger, tag: Any, delivery: Delivery, ack: bool, requeue: bool
    ) -> None:
        """An ack (or nack) of ``tag`` in ``ledger``, which holds it meanwhile (use
        :meth:`DeliveryLedger.settle_in`)."""
        self._work.append((_ACK if ack else _NACK, delivery, requeue, ledger, tag))

    def settlements(self) -> list[tuple[DeliveryLedger, Any]]:
        """The (ledger, tag) pairs settled through a ledger, waiting for commit."""
        return [(w[3], w[4]) for w in self._work if w[0] != _PUBLISH and w[3] is not None]

    def publishes(self) -> list[tuple[str, str, Message]]:
        """The publishes waiting for commit: (exchange, routing key, message)."""
        return [(w[1], w[2], w[3]) for w in self._work if w[0] == _PUBLISH]

    def pending_deliveries(self) -> list[Delivery]:
        """Deliveries whose settlement waits for commit."""
        return [w[1] for w in self._work if w[0] != _PUBLISH]

    def commit(self, on_durable: Callable[[], None] | None = None) -> list[tuple[int, int]]:
        """Apply everything in order. Returns the publish results (routed, refused).

        ``on_durable`` runs once every persistent write of the transaction is on disk: the
        moment to answer commit-ok / a synchronous commit.
        """
        work, self._work = self._work, []
        results = []
        for w in work:
            if w[0] == _PUBLISH:
                results.append(self.vhost.publish(w[1], w[2], w[3], **w[4]))
            else:
                if w[3] is not None:
                    w[3].release(w[4])
                if w[0] == _ACK:
                    w[1].queue.ack(w[1])
                else:
                    w[1].queue.nack(w[1], w[2])
        if on_durable is not None:
            self.vhost.broker.when_durable(on_durable)
        return results

    def rollback(self) -> list[Delivery]:
        """Discard everything; returns the deliveries whose settlement was discarded."""
        work, self._work = self._work, []
        out = []
        back = []
        for w in work:
            if w[0] == _PUBLISH:
                continue
            out.append(w[1])
            if w[3] is not None:
                d = w[3].restore(w[4], w[1])
                if d is not None:
                    back.append(d)
        if back:
            requeue_grouped(back)
        return out
