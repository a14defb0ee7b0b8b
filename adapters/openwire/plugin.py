"""Registers the OpenWire adapter through the same hook a third-party adapter uses."""

from __future__ import annotations

from typing import Any

from polymq.core.framing import starts_as
from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec

DEFAULT_CONFIG = {
    "max_frame_size": 0,  # 0: the broker's max_message_size plus 1 MiB
    "max_inactivity_ms": 30000,
    "inactivity_initial_delay_ms": 10000,
    "cache_size": 1024,  # marshalling cache entries offered to clients; 0: no cache
    # consumers one connection may hold, advisory consumers aside (ActiveMQ's
    # maximumConsumersAllowedPerConnection); 0: no limit
    "max_consumers_per_connection": 0,
    # dead letters (expired, poisoned): "shared" -> dead_letter_queue; "individual" -> one
    # queue per destination, prefix + name (ActiveMQ's individualDeadLetterStrategy)
    "dead_letter_strategy": "shared",
    "dead_letter_queue": "ActiveMQ.DLQ",
    "dead_letter_queue_prefix": "ActiveMQ.DLQ.Queue.",
    "dead_letter_topic_prefix": "ActiveMQ.DLQ.Topic.",
    # broker-side redelivery of poisoned messages (ActiveMQ's redeliveryPlugin); -1: off
    "redelivery_maximum": -1,
    "redelivery_initial_delay_ms": 1000,
    "redelivery_delay_ms": 1000,
    "redelivery_backoff_multiplier": 1.0,
    "redelivery_max_delay_ms": -1,
}


def build_factory(broker: Any, section: dict) -> Any:
    from .transport import OpenWireFactory

    return OpenWireFactory(broker, section)


def looks_like(head: bytes) -> bool | None:
    """An OpenWire client starts with WireFormatInfo: a 4-byte size, type 1, ``ActiveMQ``."""
    return starts_as(head[4:], b"\x01ActiveMQ") if len(head) > 4 else None


@hookimpl
def polymq_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            name="openwire",
            default_port=61616,
            build_factory=build_factory,
            default_config=dict(DEFAULT_CONFIG),
            description="OpenWire (ActiveMQ 5.x JMS clients)",
            looks_like=looks_like,
        )
    ]
