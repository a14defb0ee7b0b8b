"""Twisted transport for AMQP 0-9-1: bytes in to the session, frames out to the socket."""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from .session import Connection

log = Logger(namespace="polymq.amqp")


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
        self.session = Connection(
            factory.broker, t.write, self._close, peer=t.getPeer(), config=factory.section
        )
        t.registerProducer(self, True)

    def _close(self, abort: bool) -> None:
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
    protocol = AMQPProtocol

    def __init__(self, broker: Any, section: dict | None = None) -> None:
        self.broker = broker
        self.section = dict(section or {})
