"""Registers the MQTT adapter through the same hook a third-party adapter uses."""

from __future__ import annotations

from typing import Any

from polymq.core.framing import starts_as
from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec

from .server import DEFAULT_CONFIG


def build_factory(broker: Any, section: dict) -> Any:
    from .transport import MqttFactory

    return MqttFactory(broker, section)


def looks_like(head: bytes) -> bool | None:
    """An MQTT client starts with CONNECT: 0x10, a remaining length of one to four bytes, then
    the protocol name ``MQTT`` (or 3.1's ``MQIsdp``) with its length."""
    if not head:
        return None
    if head[0] != 0x10:
        return False
    i = 1
    while i < len(head) and i <= 4 and head[i] & 0x80:
        i += 1
    if i >= len(head):
        return None if i <= 4 else False
    name = head[i + 1 :]
    mqtt, isdp = starts_as(name, b"\x00\x04MQTT"), starts_as(name, b"\x00\x06MQIsdp")
    if mqtt or isdp:
        return True
    return None if mqtt is None or isdp is None else False


@hookimpl
def polymq_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            name="mqtt",
            default_port=1883,
            build_factory=build_factory,
            default_config=dict(DEFAULT_CONFIG),
            description="MQTT 3.1.1 and 5.0",
            looks_like=looks_like,
        )
    ]
