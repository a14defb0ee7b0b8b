"""Twisted transport for MQTT: bytes in to the session, batched bytes out.

Every frame a connection produces during one reactor turn is collected and written with one
``transport.write`` at the end of the turn (one ``callLater(0)`` per listener per turn, not per
connection or per frame). The protocol is a streaming push producer for its transport: when
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

from .session import Connection, MqttServer

log = Logger(namespace="polymq.mqtt")

# every factory built, so that the broker-stopping hook can say goodbye on each connection
FACTORIES: weakref.WeakSet = weakref.WeakSet()

FLUSH_AT = 256 * 1024  # bytes collected in one turn before they are written at once


@implementer(IPushProducer)
class MqttProtocol(Protocol):
    def __init__(self, factory: MqttFactory) -> None:
        self.factory = factory
        self.conn: Connection | None = None
        self._out: list[bytes] | None = None
        self._pending = 0
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
        self.conn = Connection(server, self._write, self._close, peer)
        f.protocols.add(self)
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.data_received(data)

    def _write(self, data: bytes) -> None:
        if self._closing:
            return
        out = self._out
        if out is None:
            self._out = [data]
            self._pending = len(data)
            self.factory.mark_dirty(self)
        else:
            out.append(data)
            self._pending += len(data)
        if self._pending > FLUSH_AT:
            # a big burst (a backlog dispatched at once): hand it over now, so that the
            # transport's buffer limit can pause the consumers through pauseProducing
            self.flush()

    def flush(self) -> None:
        out = self._out
        if out:
            self._out = None
            self._pending = 0
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

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
        self._out = None
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
        self._dirty: list[MqttProtocol] = []
        self.per_host: dict[str | None, int] = {}
        self.protocols: set[MqttProtocol] = set()
        FACTORIES.add(self)
        self._flush_call: Any = None

    def buildProtocol(self, addr: Any) -> MqttProtocol:
        p = MqttProtocol(self)
        return p

    def mark_dirty(self, proto: MqttProtocol) -> None:
        self._dirty.append(proto)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush_all)

    def shutting_down(self) -> None:
        """The broker is stopping: 5.0 clients get DISCONNECT 0x8B (server shutting down)."""
        for p in list(self.protocols):
            if p.conn is not None:
                p.conn.server_shutting_down()
                p.flush()

    def flush_all(self) -> None:
        self._flush_call = None
        dirty, self._dirty = self._dirty, []
        for p in dirty:
            if p._out:
                p.flush()
