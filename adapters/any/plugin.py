"""Registers the any-protocol listener (off by default) through the adapter hook."""

from __future__ import annotations

from typing import Any

from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec


def build_factory(broker: Any, section: dict) -> Any:
    from .transport import AnyFactory

    return AnyFactory(broker, section)


@hookimpl
def polymq_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            name="any",
            default_port=61610,
            build_factory=build_factory,
            default_config={"enabled": False},
            description="every enabled protocol on one port, told apart by its first bytes",
        )
    ]
