"""The listener: a ``ConnectionFactory`` of the adapter contract naming the protocol and
building each connection's framer and session. Everything else a connection needs (limits,
timeouts, the error boundary, ordered replies, back-pressure) is the contract's."""

from __future__ import annotations

from polymq.core.connection import ConnectionFactory, ProtocolConnection

from .framing import LineFramer
from .session import PROTOCOL, LineSession


class LineFactory(ConnectionFactory):
    protocol_name = PROTOCOL

    def build_framer(self, conn: ProtocolConnection) -> LineFramer:
        # a line carries at most one message body and its command word and queue name
        return LineFramer(self.broker.max_message_size + 300)

    def build_session(self, conn: ProtocolConnection) -> LineSession:
        return LineSession(conn, self.section)
