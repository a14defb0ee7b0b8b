"""Broker-side redelivery with a delay and back-off (ActiveMQ's redeliveryPolicy on the broker).

A message a consumer gave up on (OpenWire: a POISON acknowledgement, what the JMS client sends
once its own redeliveries are spent) is routed back to its queue later by the scheduler, up to
``maximum`` times; then it goes to the dead-letter queue. The delay before redelivery ``n``
(0 = the first) is ``initial_delay_ms``, then ``delay_ms``, or with a back-off multiplier above
1 the previous delay times the multiplier, capped at ``max_delay_ms`` when that is >= 0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedeliveryPolicy:
    maximum: int = -1  # redeliveries before the dead-letter queue; < 0: no broker redelivery
    initial_delay_ms: int = 1000
    delay_ms: int = 1000
    backoff_multiplier: float = 1.0
    max_delay_ms: int = -1

    @property
    def enabled(self) -> bool:
        return self.maximum > 0

    def delay_for(self, n: int) -> int:
        """Milliseconds to wait before redelivery ``n`` (0-based)."""
        if n <= 0:
            d = float(self.initial_delay_ms)
        elif self.backoff_multiplier > 1.0:
            d = float(self.initial_delay_ms or self.delay_ms) * self.backoff_multiplier**n
        else:
            d = float(self.delay_ms)
        if self.max_delay_ms >= 0:
            d = min(d, float(self.max_delay_ms))
        return max(0, int(d))

    @classmethod
    def from_config(cls, section: dict, prefix: str = "redelivery_") -> RedeliveryPolicy:
        def get(key: str, default):
            return section.get(prefix + key, default)

        return cls(
            maximum=int(get("maximum", -1)),
            initial_delay_ms=int(get("initial_delay_ms", 1000)),
            delay_ms=int(get("delay_ms", 1000)),
            backoff_multiplier=float(get("backoff_multiplier", 1.0)),
            max_delay_ms=int(get("max_delay_ms", -1)),
        )
