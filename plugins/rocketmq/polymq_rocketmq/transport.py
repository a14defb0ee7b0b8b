"""The listener: a ``ConnectionFactory`` of the adapter contract that builds each
connection's framer and session; limits, timeouts, the error boundary and ordered replies are
the contract's."""

from __future__ import annotations

from typing import Any

from polymq.core.connection import ConnectionFactory, ProtocolConnection
from polymq.core.framing import LengthPrefixedFramer

from .server import PROTOCOL, RocketServer
from .session import RocketSession


class RocketFactory(ConnectionFactory):
    protocol_name = PROTOCOL

    def __init__(self, broker: Any, section: dict | None = None) -> None:
        super().__init__(broker, section)
        self.server = RocketServer(broker, self.section)
        # one message (or a batch of them) plus its JSON header
        self.max_frame = int(self.section.get("max_frame_size") or 0) or (
            broker.max_message_size + 1024 * 1024
        )

    def build_framer(self, conn: ProtocolConnection) -> LengthPrefixedFramer:
        return LengthPrefixedFramer(self.max_frame, min_length=4)

    def build_session(self, conn: ProtocolConnection) -> RocketSession:
        return RocketSession(conn, self.server)
