"""Registers the MQTT adapter through the same hook a third-party adapter uses."""

from __future__ import annotations

from typing import Any

from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec

from .session import DEFAULT_CONFIG


def build_factory(broker: Any, section: dict) -> Any:
    from .transport import MqttFactory

    return MqttFactory(broker, section)


@hookimpl
def polymq_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            name="mqtt",
            default_port=1883,
            build_factory=build_factory,
            default_config=dict(DEFAULT_CONFIG),
            description="MQTT 3.1.1 and 5.0",
        )
    ]
