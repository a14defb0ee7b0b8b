"""Registers the AMQP 0-9-1 adapter through the same hook third-party adapters use."""

from __future__ import annotations

from typing import Any

from polymq.core.framing import starts_as
from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec

from .session import DEFAULTS


def build_factory(broker: Any, section: dict) -> Any:
    from .transport import AMQPFactory

    return AMQPFactory(broker, section)


def looks_like(head: bytes) -> bool | None:
    """An AMQP client starts with the protocol header ``AMQP`` + version bytes."""
    return starts_as(head, b"AMQP")


@hookimpl
def polymq_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            name="amqp",
            default_port=5672,
            build_factory=build_factory,
            default_config=dict(DEFAULTS),
            description="AMQP 0-9-1 (RabbitMQ clients)",
            looks_like=looks_like,
        )
    ]
