"""The Kafka listener on the adapter contract: length-prefixed frames, one session each.

Every request frame is an int32 length and that many bytes. The framer checks the length against
``max_request_size`` before it keeps a byte of the frame, so one connection holds at most one
partly received request of that size (plus what one socket read brings)."""

from __future__ import annotations

from typing import Any

from polymq.core.connection import ConnectionFactory, ProtocolConnection
from polymq.core.framing import LengthPrefixedFramer

from .server import KafkaServer
from .session import KafkaSession


class KafkaFactory(ConnectionFactory):
    protocol_name = "kafka"

    def __init__(self, broker: Any, section: dict | None = None) -> None:
        super().__init__(broker, section)
        self.server = KafkaServer(broker, self.section)

    def build_framer(self, conn: ProtocolConnection) -> LengthPrefixedFramer:
        # frames as memoryview slices of the read: the session decodes them at once
        return LengthPrefixedFramer(self.server.max_request_size, views=True)

    def build_session(self, conn: ProtocolConnection) -> KafkaSession:
        return KafkaSession(conn, self.server)

    def stopFactory(self) -> None:
        self.server.coordinator.close()
        self.server.txn.close()
