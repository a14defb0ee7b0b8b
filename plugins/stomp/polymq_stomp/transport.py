"""The STOMP listener: a ``ConnectionFactory`` of the adapter contract naming the protocol and
building each connection's framer and session. Limits, timeouts, the error boundary, ordered
replies and back-pressure are the contract's."""

from __future__ import annotations

from polymq.core.connection import ConnectionFactory, ProtocolConnection

from .codec import StompFramer
from .session import PROTOCOL, StompSession


class StompFactory(ConnectionFactory):
    protocol_name = PROTOCOL

    def build_framer(self, conn: ProtocolConnection) -> StompFramer:
        section = self.section
        return StompFramer(
            self.broker.max_message_size,
            max_header_bytes=int(section.get("max_header_bytes", 65536)),
            max_headers=int(section.get("max_headers", 1000)),
        )

    def build_session(self, conn: ProtocolConnection) -> StompSession:
        return StompSession(conn, self.section)
