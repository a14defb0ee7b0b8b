"""The MQTT listener on the connection contract: its framer and its session.

Every frame a connection produces during one reactor turn is gathered by the contract's
socket writer and sent with one write at the end of the turn, or at once past :data:`FLUSH_AT`
(a backlog dispatched at once is handed over early, so that a full socket pauses the session's
consumers through the contract's push-producer in time).
"""

from __future__ import annotations

from typing import Any

from polymq.core import output
from polymq.core.connection import ConnectionFactory, ProtocolConnection

from . import codec as c
from .session import Connection, MqttServer

# bytes gathered in one turn before they are written at once
FLUSH_AT = 256 * 1024


class MqttFactory(ConnectionFactory):
    """The MQTT listener: connections share one :class:`MqttServer`."""

    protocol_name = "mqtt"
    flush_bytes = FLUSH_AT
    reading = None  # output waits for the turn, not for the end of a read

    def __init__(self, broker: Any, section: dict | None = None) -> None:
        super().__init__(broker, section)
        self.server = MqttServer(broker, section)
        self.server.connection_class = Connection

    def build_framer(self, conn: ProtocolConnection) -> c.FrameReader:
        # the first packet (CONNECT) is capped lower until it is accepted
        return c.FrameReader(self.server.max_connect_size)

    def build_session(self, conn: ProtocolConnection) -> Connection:
        return Connection(self.server, conn)

    @staticmethod
    def flush_all() -> None:
        """Send what every connection has gathered now (in-process benchmarks and tests)."""
        output.flush_pending()
