"""Wire-protocol adapters (AMQP, MQTT, Kafka, OpenWire), registered through the polymq hooks."""

from typing import Any

from polymq.core.registry import format_peer, peer_of


def peer_text(peer: Any) -> str:
    """``127.0.0.1:44280`` for a Twisted address (or any object with host and port), so that
    every adapter's log lines name a client as the connection registry does."""
    host, port = peer_of(peer)
    return str(peer) if host is None else format_peer(host, port)
