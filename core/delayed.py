"""RabbitMQ's ``x-delayed-message`` exchange type.

The exchange routes like the type named by its ``x-delayed-type`` argument (direct, fanout,
topic, headers). A message published with an ``x-delay`` header greater than zero (ms) is
handed to the broker's scheduler instead, and routed by the same exchange when it is due; the
delivered message carries ``x-delay`` negated (as RabbitMQ's plugin does), so it is not delayed
again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import PreconditionFailed
from .message import Message
from .routing import EXCHANGE_CLASSES, Binding, Exchange
from .scheduler import ScheduleError, headers_delay


class _SchedulerSink:
    """What the delayed exchange routes a delayed message to: the scheduler."""

    kind = "scheduler"
    durable = False

    def __init__(self, exchange: DelayedMessageExchange) -> None:
        self.exchange = exchange

    def enqueue(self, message: Message, data: bytes | None) -> bool:
        ex = self.exchange
        delay = headers_delay(message.headers, "x-delay") or 0
        try:
            ex.vhost.broker.scheduler.schedule(
                ex.vhost.name, message.exchange, message.routing_key, message, delay_ms=delay
            )
        except ScheduleError:
            return False
        return True


class DelayedMessageExchange(Exchange):
    type = "x-delayed-message"

    def __init__(self, vhost: Any, name: str, **kw: Any) -> None:
        super().__init__(vhost, name, **kw)
        inner = self.arguments.get("x-delayed-type")
        if isinstance(inner, bytes):
            inner = inner.decode("utf-8", "replace")
        cls = EXCHANGE_CLASSES.get(inner) if isinstance(inner, str) else None
        if cls is None or cls is DelayedMessageExchange:
            raise PreconditionFailed(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type"
            )
        # the routing of the named type, over this exchange's bindings
        self._inner = cls(vhost, name)
        self._inner.bindings = self.bindings
        self._sink = (_SchedulerSink(self),)

    def _add(self, binding: Binding) -> None:
        self._inner._add(binding)

    def _remove(self, binding: Binding) -> None:
        self._inner._remove(binding)

    def match(self, routing_key: str, headers: dict) -> Iterable[Any]:
        d = headers.get("x-delay") if headers else None
        if d is not None and (headers_delay(headers, "x-delay") or 0) > 0:
            return self._sink
        return self._inner.match(routing_key, headers)


EXCHANGE_CLASSES["x-delayed-message"] = DelayedMessageExchange
