"""The plugin module named by the ``polymq`` entry point: it contributes the STOMP adapter."""

from __future__ import annotations

from typing import Any

from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec

DEFAULT_CONFIG: dict[str, Any] = {
    "enabled": True,
    # heart-beating offered in CONNECTED (ms): how often we can send, how often we want to hear
    "heart_beat_send_ms": 10000,
    "heart_beat_receive_ms": 10000,
    # unacknowledged messages per subscription when SUBSCRIBE names none (prefetch-count,
    # activemq.prefetchSize); 0: no limit
    "prefetch": 0,
    # a frame's header block: bytes and lines (the body's limit is limits.max_message_size)
    "max_header_bytes": 65536,
    "max_headers": 1000,
    # STOMP over WebSocket (polymq's core WebSocket listener): RabbitMQ Web-STOMP's port and path
    "websocket_port": 15674,
    "websocket_path": "/ws",
    "websocket_subprotocols": ["v12.stomp", "v11.stomp", "v10.stomp"],
}


def build_factory(broker: Any, section: dict) -> Any:
    from .transport import StompFactory

    return StompFactory(broker, section)


def looks_like(head: bytes) -> bool | None:
    """A STOMP client starts with a CONNECT or STOMP frame (maybe after end-of-lines)."""
    head = head.lstrip(b"\r\n")
    if not head:
        return None
    for command in (b"CONNECT", b"STOMP"):
        n = min(len(head), len(command) + 1)
        if (command + b"\n")[:n] == head[:n] or (command + b"\r")[:n] == head[:n]:
            return True if n == len(command) + 1 else None
    return False


@hookimpl
def polymq_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            name="stomp",
            default_port=61613,
            build_factory=build_factory,
            default_config=dict(DEFAULT_CONFIG),
            description="STOMP 1.0, 1.1 and 1.2",
            looks_like=looks_like,
        )
    ]
