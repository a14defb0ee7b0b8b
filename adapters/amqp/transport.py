"""Twisted transport for AMQP 0-9-1: bytes in to the session, frames out to the socket.

Output goes through an :class:`~polymq.adapters.output.SocketWriter`: gathered per read (the
session runs each ``data_received`` inside :class:`~polymq.adapters.output.reading`) or reactor
turn, and written at once past :data:`FLUSH_BYTES`."""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from polymq.core import output

from .session import Connection

log = Logger(namespace="polymq.amqp")

# gathered output is handed over at once past this (so that a full socket buffer still pauses
# the consumers in time)
FLUSH_BYTES = 65536
_reading = output.reading()


@implementer(IPushProducer)
class AMQPProtocol(protocol.Protocol):
    """One client connection. Registered as a push producer on its transport so that a full
    socket buffer pauses the connection's consumers (back-pressure instead of buffering)."""

    session: Connection | None = None

    def connectionMade(self) -> None:
        t = self.transport
        try:
            t.setTcpNoDelay(True)
        except Exception:  # not a TCP transport (tests)
            pass
        factory = self.factory
        self.out = output.SocketWriter(t, factory.broker.clock, FLUSH_BYTES)
        self.session = Connection(
            factory.broker, self.out.write, self._close, peer=t.getPeer(),
            config=factory.section, pause_reading=self._pause_reading, reading=_reading,
        )
        t.registerProducer(self, True)
        factory.connection_made(self.session)

    def _pause_reading(self, pause: bool) -> None:
        if pause:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def _close(self, abort: bool) -> None:
        self.out.flush()
        t = self.transport
        if abort and hasattr(t, "abortConnection"):
            t.abortConnection()
        else:
            t.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        s = self.session
        if s is not None and s.state != "closed":
            s.data_received(data)

    def connectionLost(self, reason: Any = None) -> None:
        s = self.session
        if s is not None:
            s.connection_lost()
            self.factory.sessions.discard(s)
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass

    # IPushProducer
    def pauseProducing(self) -> None:
        if self.session is not None:
            self.session.pause()

    def resumeProducing(self) -> None:
        if self.session is not None:
            self.session.resume()

    def stopProducing(self) -> None:
        pass


class AMQPFactory(protocol.ServerFactory):
    """Builds connections; watches how many message bytes the broker holds in queues and
    raises the resource alarm (connection.blocked) above ``memory_high_watermark``."""

    protocol = AMQPProtocol
    check_interval = 0.25

    def __init__(self, broker: Any, section: dict | None = None) -> None:
        self.broker = broker
        self.section = dict(section or {})
        self.sessions: set[Connection] = set()
        self.high_watermark = int(self.section.get("memory_high_watermark", 0) or 0)
        self.blocked = False
        self._timer: Any = None

    def connection_made(self, session: Connection) -> None:
        self.sessions.add(session)
        if self.blocked:
            session.set_blocked(True, "memory high watermark")
        if self.high_watermark and self._timer is None:
            self._timer = self.broker.clock.callLater(self.check_interval, self._check)

    def held_bytes(self) -> int:
        """Bytes of message bodies ready in the broker's queues (streams keep their own)."""
        total = 0
        for vh in self.broker.vhosts.values():
            for q in vh.queues.values():
                if q.kind == "queue":
                    total += q.byte_count
        return total

    def _check(self) -> None:
        self._timer = None
        held = self.held_bytes()
        if not self.blocked and held > self.high_watermark:
            self.blocked = True
            log.info("amqp: {held} bytes held in queues, above the high watermark {hw}: "
                     "blocking publishers", held=held, hw=self.high_watermark)
            for s in list(self.sessions):
                s.set_blocked(True, "memory high watermark")
        elif self.blocked and held <= self.high_watermark:
            self.blocked = False
            log.info("amqp: {held} bytes held in queues: unblocking publishers", held=held)
            for s in list(self.sessions):
                s.set_blocked(False)
        if self.sessions or self.blocked:
            self._timer = self.broker.clock.callLater(self.check_interval, self._check)

    def stopFactory(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
