"""Wire-protocol adapters (AMQP, MQTT, Kafka, OpenWire), registered through the polymq hooks."""

from typing import Any


def peer_text(peer: Any) -> str:
    """``127.0.0.1:44280`` for a Twisted address (or any object with host and port), so that
    every adapter's log lines name a client the same way."""
    host = getattr(peer, "host", None)
    if host is None:
        return str(peer)
    port = getattr(peer, "port", "?")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
