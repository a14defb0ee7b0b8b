"""Twisted transport for MQTT: bytes in to the session, batched bytes out.

Every frame a connection produces during one reactor turn is collected by its
:class:`~polymq.adapters.output.SocketWriter` and sent with one write at the end of the turn
(reads are not marked as such: output waits for the turn, not for the end of a read), or at
once past :data:`FLUSH_AT`. The protocol is a streaming push producer for its transport: when
the socket buffer fills, ``pauseProducing`` pauses the session's queue consumers, and
``resumeProducing`` resumes them.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from polymq.core import output
from .session import Connection, MqttServer

log = Logger(namespace="polymq.mqtt")

# every factory built, so that the broker-stopping hook can say goodbye on each connection
FACTORIES: weakref.WeakSet = weakref.WeakSet()

# bytes collected in one turn before they are written at once: a big burst (a backlog dispatched
# at once) is handed over early, so that the transport's buffer limit can pause the consumers
FLUSH_AT = 256 * 1024


@implementer(IPushProducer)
class MqttProtocol(Protocol):
    def __init__(self, factory: MqttFactory) -> None:
        self.factory = factory
        self.conn: Connection | None = None
        self.out: output.SocketWriter | None = None
        self._closing = False
        self._host: str | None = None

    def connectionMade(self) -> None:
        f = self.factory
        server = f.server
        if server.connections >= server.max_connections:
            log.warn("mqtt: connection limit {n} reached, refusing {peer}",
                     n=server.max_connections, peer=self.transport.getPeer())
            self._closing = True
            self.transport.abortConnection()
            return
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        per_host = f.per_host.get(host, 0)
        if per_host >= server.max_connections_per_host:
            log.warn("mqtt: {host} already has {n} connections, refusing another",
                     host=host, n=per_host)
            self._closing = True
            self.transport.abortConnection()
            return
        f.per_host[host] = per_host + 1
        self._host = host
        server.connections += 1
        # we batch per reactor turn ourselves; Nagle would hold small deliveries back until
        # the client's delayed ACK (tens of ms) on connections where the client sends nothing
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass
        self.out = output.SocketWriter(self.transport, f.clock, FLUSH_AT)
        self.conn = Connection(server, self._write, self._close, peer)
        f.protocols.add(self)
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.data_received(data)

    def _write(self, data: bytes) -> None:
        if not self._closing:
            self.out.write(data)

    def flush(self) -> None:
        """Send what this connection has gathered now."""
        if self.out is not None:
            self.out.flush()

    def _close(self) -> None:
        if self._closing:
            return
        self.flush()
        self._closing = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        self._closing = True
        f = self.factory
        f.protocols.discard(self)
        f.server.connections -= 1
        n = f.per_host.get(self._host, 1) - 1
        if n > 0:
            f.per_host[self._host] = n
        else:
            f.per_host.pop(self._host, None)
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        conn.connection_lost()

    # -- IPushProducer ----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self.conn is not None:
            self.conn.pause()

    def resumeProducing(self) -> None:
        if self.conn is not None:
            self.conn.resume()

    def stopProducing(self) -> None:
        pass


class MqttFactory(ServerFactory):
    """Builds :class:`MqttProtocol` instances sharing one :class:`MqttServer`."""

    protocol = MqttProtocol
    noisy = False

    def __init__(self, broker: Any, section: dict | None = None) -> None:
        self.broker = broker
        self.server = MqttServer(broker, section)
        self.clock = broker.clock
        self.per_host: dict[str | None, int] = {}
        self.protocols: set[MqttProtocol] = set()
        FACTORIES.add(self)

    def buildProtocol(self, addr: Any) -> MqttProtocol:
        p = MqttProtocol(self)
        return p

    def shutting_down(self) -> None:
        """The broker is stopping: 5.0 clients get DISCONNECT 0x8B (server shutting down)."""
        for p in list(self.protocols):
            if p.conn is not None:
                p.conn.server_shutting_down()
                p.flush()

    @staticmethod
    def flush_all() -> None:
        """Send what every connection has gathered now (in-process benchmarks and tests)."""
        output.flush_pending()
