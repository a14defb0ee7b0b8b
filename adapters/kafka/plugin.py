"""Registers the Kafka adapter through the same hook a third-party adapter uses."""

from __future__ import annotations

from typing import Any

from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec

DEFAULT_CONFIG = {
    "advertised_host": "127.0.0.1",
    "advertised_port": 0,
    "auto_create_topics": True,
    "num_partitions": 1,
    "sasl": False,
    "max_request_size": 100 * 1024 * 1024,
    "group_initial_rebalance_delay_ms": 0,
    "vhost": "",
    # Kafka's connections.max.idle.ms: a connection that sends nothing for this long is closed
    "idle_timeout": 600.0,
}


def build_factory(broker: Any, section: dict) -> Any:
    from .transport import KafkaFactory

    return KafkaFactory(broker, section)


def looks_like(head: bytes) -> bool | None:
    """A Kafka request: a 4-byte size, then an API key and version of sensible size (the
    first request is ApiVersions, Metadata or SASL); OpenWire has type 1 where the API key's
    high byte stands, so it is told apart by the adapters tried first."""
    if len(head) < 8:
        return None
    size = int.from_bytes(head[:4], "big", signed=True)
    api_key = int.from_bytes(head[4:6], "big", signed=True)
    version = int.from_bytes(head[6:8], "big", signed=True)
    return 8 <= size <= 100 * 1024 * 1024 and 0 <= api_key < 100 and 0 <= version < 50


@hookimpl
def polymq_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            name="kafka",
            default_port=9092,
            build_factory=build_factory,
            default_config=dict(DEFAULT_CONFIG),
            description="Kafka wire protocol (produce, fetch, consumer groups, idempotence)",
            looks_like=looks_like,
        )
    ]
