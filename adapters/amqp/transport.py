"""The AMQP 0-9-1 listener: a :class:`~polymq.core.connection.ConnectionFactory` building, for
each connection, an :class:`~polymq.adapters.amqp.framing.AMQPFramer` and an
:class:`~polymq.adapters.amqp.session.AMQPSession`. The socket, output gathering, timers,
limits and the error boundary are the contract's
(:class:`~polymq.core.connection.ProtocolConnection`)."""

from __future__ import annotations

from typing import Any

from polymq.core.connection import ConnectionFactory, ProtocolConnection
from polymq.core.output import FLUSH_BYTES

from .codec import FRAME_MIN_SIZE
from .framing import AMQPFramer
from .session import DEFAULTS, AMQPSession

__all__ = ["FLUSH_BYTES", "AMQPFactory"]


class AMQPFactory(ConnectionFactory):
    """The AMQP listener. Publishers are held back (``connection.blocked``) by the
    broker-wide resource alarm (``limits.memory_high_watermark``, ``limits.disk_free_limit``),
    which the session observes through the contract."""

    protocol_name = "amqp"
    flush_bytes = FLUSH_BYTES

    def __init__(self, broker: Any, section: dict | None = None) -> None:
        super().__init__(broker, section)
        self.frame_max = max(
            FRAME_MIN_SIZE, int(self.section.get("frame_max", DEFAULTS["frame_max"]))
        )

    def build_framer(self, conn: ProtocolConnection) -> AMQPFramer:
        return AMQPFramer(self.frame_max)

    def build_session(self, conn: ProtocolConnection) -> AMQPSession:
        return AMQPSession(conn, self.section)
