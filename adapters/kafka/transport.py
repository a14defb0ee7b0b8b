"""Twisted transport for the Kafka adapter: length-prefixed frames in, byte chunks out.

Responses go through an :class:`~polymq.adapters.output.SocketWriter`: those of one read (or,
for answers made outside a read such as a fetch that waited, of one reactor turn) leave
together."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from polymq.core import output

from .session import KafkaServer, KafkaSession

log = Logger(namespace="polymq.kafka")

_LEN = struct.Struct(">i")
_reading = output.reading()


@implementer(IPushProducer)
class KafkaProtocol(Protocol):
    """Splits the byte stream into frames (each length checked before it is buffered)."""

    def __init__(self, server: KafkaServer) -> None:
        self.server = server
        self.session: KafkaSession | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._need = 4
        self._closing = False

    def connectionMade(self) -> None:
        if hasattr(self.transport, "setTcpNoDelay"):
            # responses are often small (produce acks, heartbeats): Nagle would hold them
            self.transport.setTcpNoDelay(True)
        peer = self.transport.getPeer()
        host = self.transport.getHost()
        self.out = output.SocketWriter(self.transport, self.server.broker.clock)
        self.session = KafkaSession(
            self.server, self._send, self._abort,
            peer=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
            local_port=getattr(host, "port", 0),
        )
        self.transport.registerProducer(self, True)

    def _send(self, chunks: list[bytes]) -> None:
        write = self.out.write
        for chunk in chunks:
            write(chunk)

    def _abort(self) -> None:
        self._closing = True
        self._parts = []
        self._size = 0
        self.out.flush()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        with _reading:
            self._data_received(data)

    def _data_received(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size < self._need:
            return
        buf = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        end = len(buf)
        pos = 0
        need = 4
        session = self.session
        limit = self.server.max_request_size
        mv = memoryview(buf)
        while end - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n < 0 or n > limit:
                log.info("kafka client {peer}: frame length {n} refused (max {m}); closing",
                         peer=session.peer, n=n, m=limit)
                session.close()
                self._abort()
                return
            if end - pos - 4 < n:
                need = 4 + n
                break
            frame = mv[pos + 4:pos + 4 + n]
            pos += 4 + n
            session.handle_frame(frame)
            if self._closing:
                return
        rest = buf[pos:] if pos else buf
        self._parts = [rest] if rest else []
        self._size = len(rest)
        self._need = need

    def connectionLost(self, reason: Any = None) -> None:
        if self.session is not None:
            self.session.close()
        self._parts = []

    # IPushProducer: when our writes back up, stop reading requests from this client
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self._closing and not getattr(self.transport, "disconnecting", False):
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class KafkaFactory(ServerFactory):
    protocol = KafkaProtocol

    def __init__(self, broker: Any, section: dict) -> None:
        self.broker = broker
        self.section = section
        self.server = KafkaServer(broker, section)

    def buildProtocol(self, addr: Any) -> KafkaProtocol:
        p = KafkaProtocol(self.server)
        p.factory = self
        return p

    def stopFactory(self) -> None:
        self.server.coordinator.close()
