"""The ``memory_high_watermark`` watcher of the AMQP listener.

Every :attr:`MemoryWatermark.interval` seconds, while the broker has connections (or the alarm
is on), it sums the bytes of message bodies ready in the broker's queues; above the watermark it
raises the broker-wide publishing alarm of the connection registry
(:meth:`~polymq.core.connection.ConnectionRegistry.set_publishing_blocked`), below it clears it
again. Each session holds its publishers back in its protocol's way (AMQP:
``connection.blocked``, then its publishers are no longer read from).

It lives in the AMQP adapter, whose setting it is, until the core has a resource alarm of its
own (memory and disk) to drive the same registry call.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from polymq.core.connection import registry_of

log = Logger(namespace="polymq.amqp")

REASON = "memory high watermark"


class MemoryWatermark:
    """Raises and clears the publishing alarm from the bytes held in queues."""

    interval = 0.25

    def __init__(self, broker: Any, high_watermark: int) -> None:
        self.broker = broker
        self.high_watermark = high_watermark
        self.registry = registry_of(broker)
        self.blocked = False  # this watcher raised the alarm
        self._timer: Any = None

    def watch(self) -> None:
        """Check periodically from now on (a connection arrived)."""
        if self._timer is None:
            self._timer = self.broker.clock.callLater(self.interval, self._check)

    def stop(self) -> None:
        t, self._timer = self._timer, None
        if t is not None and t.active():
            t.cancel()

    def held_bytes(self) -> int:
        """Bytes of message bodies ready in the broker's queues (streams keep their own)."""
        total = 0
        for vh in self.broker.vhosts.values():
            for q in vh.queues.values():
                if q.kind == "queue":
                    total += q.byte_count
        return total

    def _check(self) -> None:
        self._timer = None
        held = self.held_bytes()
        registry = self.registry
        if not self.blocked and held > self.high_watermark:
            self.blocked = True
            log.info(
                "amqp: {held} bytes held in queues, above the high watermark {hw}: "
                "blocking publishers",
                held=held,
                hw=self.high_watermark,
            )
            registry.set_publishing_blocked(True, REASON)
        elif self.blocked and held <= self.high_watermark:
            self.blocked = False
            log.info("amqp: {held} bytes held in queues: unblocking publishers", held=held)
            # another alarm raised since keeps the publishers blocked
            if registry.blocked_reason == REASON:
                registry.set_publishing_blocked(False)
        if len(registry) or self.blocked:
            self.watch()
