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
from .watermark import MemoryWatermark

__all__ = ["FLUSH_BYTES", "AMQPFactory"]


class AMQPFactory(ConnectionFactory):
    """The AMQP listener. With ``memory_high_watermark`` set it also runs the
    :class:`~polymq.adapters.amqp.watermark.MemoryWatermark` watcher, which raises the
    broker-wide publishing alarm (every protocol's publishers are held back, AMQP's with
    ``connection.blocked``)."""

    protocol_name = "amqp"
    flush_bytes = FLUSH_BYTES

    def __init__(self, broker: Any, section: dict | None = None) -> None:
        super().__init__(broker, section)
        self.frame_max = max(
            FRAME_MIN_SIZE, int(self.section.get("frame_max", DEFAULTS["frame_max"]))
        )
        high = int(self.section.get("memory_high_watermark", 0) or 0)
        self.watermark = MemoryWatermark(broker, high) if high else None

    def build_framer(self, conn: ProtocolConnection) -> AMQPFramer:
        return AMQPFramer(self.frame_max)

    def build_session(self, conn: ProtocolConnection) -> AMQPSession:
        if self.watermark is not None:
            self.watermark.watch()
        return AMQPSession(conn, self.section)

    def stopFactory(self) -> None:
        if self.watermark is not None:
            self.watermark.stop()
