"""Any adapter's listener over WebSocket (RFC 6455), for browser and other WebSocket clients.

:class:`WebSocketListenerFactory` wraps one adapter's :class:`~polymq.core.connection.
ConnectionFactory` (a sibling of its plain listener, so MQTT sessions and the like are shared).
Each TCP connection first does the HTTP upgrade, with its path and subprotocol checked; then the
adapter's own :class:`~polymq.core.connection.ProtocolConnection` is started on a
:class:`WebSocketTransport`, which carries its bytes in binary WebSocket messages. The adapter
sees a byte stream as on TCP (message boundaries mean nothing to it), so the contract's
connection limits, authentication, liveness timers, back-pressure and error boundary all apply
unchanged.

The WebSocket protocol itself is ``wsproto`` (sans-I/O, python-hyper). No extension is
negotiated (no permessage-deflate: nothing to decompress, no compression bomb). The upgrade
request is bounded by h11's limit (16 KiB) and by the listener's ``handshake_timeout``; frame
payloads are streamed into the adapter's framer as they arrive, never buffered whole, so the
adapter's own frame limits are what bounds memory.

Config keys (every adapter has them, see docs/config.md): ``websocket_port`` (-1: no
WebSocket listener), ``websocket_path`` (the request path; ``""`` accepts any) and
``websocket_subprotocols`` (accepted ``Sec-WebSocket-Protocol`` values, in order of preference;
a client that offers none is accepted too, a client offering only others is refused).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError
from zope.interface import implementer

__all__ = ["WS_SUFFIX", "WebSocketListenerFactory", "WebSocketProtocol", "WebSocketTransport"]

log = Logger(namespace="polymq.websocket")

# the listener's name (port file, registry, logs) is the adapter's name with this suffix
WS_SUFFIX = "+ws"


class WebSocketTransport:
    """What the adapter's connection writes to: each write is one binary WebSocket message on
    the TCP connection underneath. Everything else is the TCP transport's."""

    def __init__(self, outer: WebSocketProtocol) -> None:
        self.outer = outer
        self.tcp = outer.transport
        self.disconnecting = False

    @property
    def connected(self) -> bool:
        return self.outer.open

    def write(self, data: bytes) -> None:
        if self.outer.open and data:
            self.tcp.write(self.outer.ws.send(BytesMessage(data=data)))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.outer.close(1000)

    def abortConnection(self) -> None:
        # a reset would discard the 101 answer still unread by the client (a connection
        # refused by the limits is aborted right after the upgrade): a close frame says why,
        # and the socket is dropped if the client does not read it
        self.disconnecting = True
        self.outer.close(1013)
        self.outer.factory.clock.callLater(5.0, self._drop)

    def _drop(self) -> None:
        if self.tcp.connected:
            self.tcp.abortConnection()

    @property
    def socket(self) -> Any:
        # the contract sets TCP keep-alive on it (output still goes through write())
        return getattr(self.tcp, "socket", None)

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.tcp.setTcpNoDelay(enabled)

    def getPeer(self) -> Any:
        return self.tcp.getPeer()

    def getHost(self) -> Any:
        return self.tcp.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # the TCP socket's buffer pauses the adapter's connection directly
        self.tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        self.tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self.tcp.resumeProducing()

    def stopProducing(self) -> None:
        self.tcp.stopProducing()

    def getPeerCertificate(self) -> Any:
        get = getattr(self.tcp, "getPeerCertificate", None)
        return get() if get is not None else None


@implementer(IPushProducer)
class WebSocketProtocol(Protocol):
    """One TCP connection of a WebSocket listener: the upgrade, then the adapter's connection
    (``inner``) fed with the payload of every data frame as it arrives."""

    def __init__(self, factory: WebSocketListenerFactory, inner: Protocol) -> None:
        self.factory = factory
        self.inner = inner
        self.ws = WSConnection(ConnectionType.SERVER)
        self.open = False  # the upgrade was accepted and no close was sent
        self.started = False  # inner has its transport
        self._timer: Any = None

    def connectionMade(self) -> None:
        timeout = self.factory.handshake_timeout
        if timeout > 0:
            self._timer = self.factory.clock.callLater(timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        log.info(
            "{listener}: no WebSocket upgrade from {peer} within {secs:g} s",
            listener=self.factory.listener_name,
            peer=_peer(self.transport),
            secs=self.factory.handshake_timeout,
        )
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if not data:  # wsproto (h11) reads empty data as the end of the stream
            return
        ws = self.ws
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    if self.started:
                        self.inner.dataReceived(bytes(event.data))
                elif isinstance(event, TextMessage):
                    if self.started:
                        self.inner.dataReceived(event.data.encode("utf-8"))
                elif isinstance(event, Request):
                    self._upgrade(event)
                elif isinstance(event, Ping):
                    self.transport.write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if event.code not in (1000, 1001, 1005):  # wsproto's own on bad frames
                        log.info(
                            "{listener}: closing {peer}: WebSocket close {code} {reason}",
                            listener=self.factory.listener_name,
                            peer=_peer(self.transport),
                            code=event.code,
                            reason=event.reason or "",
                        )
                    if self.open:
                        self.open = False
                        try:
                            self.transport.write(ws.send(event.response()))
                        except LocalProtocolError:
                            pass
                    self.transport.loseConnection()
                    return
                if self.transport.disconnecting:
                    return
        except RemoteProtocolError as e:
            log.info(
                "{listener}: closing {peer}: bad WebSocket input: {error}",
                listener=self.factory.listener_name,
                peer=_peer(self.transport),
                error=e,
            )
            hint = e.event_hint
            try:
                if isinstance(hint, RejectConnection):
                    self.transport.write(ws.send(hint))
                elif self.open:
                    self.transport.write(ws.send(CloseConnection(code=1002, reason=str(e)[:100])))
            except LocalProtocolError:
                pass
            self.open = False
            self.transport.loseConnection()

    def _upgrade(self, request: Request) -> None:
        f = self.factory
        path = request.target.partition("?")[0]
        if f.path and path != f.path:
            self._reject(404, f"path {path[:100]!r} is not {f.path!r}")
            return
        chosen = None
        if request.subprotocols:
            chosen = next((p for p in request.subprotocols if p in f.subprotocols), None)
            if chosen is None:
                offered = ", ".join(request.subprotocols)[:200]
                self._reject(400, f"subprotocols {offered} are none of {', '.join(f.subprotocols)}")
                return
        self.transport.write(self.ws.send(AcceptConnection(subprotocol=chosen)))
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self.open = True
        if self.inner is None:  # the adapter refused to build a connection (descriptors)
            self.close(1013)
            return
        self.started = True
        self.inner.makeConnection(WebSocketTransport(self))

    def _reject(self, status: int, why: str) -> None:
        log.info(
            "{listener}: refusing the WebSocket upgrade of {peer}: {why}",
            listener=self.factory.listener_name,
            peer=_peer(self.transport),
            why=why,
        )
        self.transport.write(self.ws.send(RejectConnection(status_code=status)))
        self.transport.loseConnection()

    def close(self, code: int) -> None:
        """Send a close frame and end the TCP connection once it has left."""
        if self.open:
            self.open = False
            try:
                self.transport.write(self.ws.send(CloseConnection(code=code)))
            except LocalProtocolError:
                pass
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.open = False
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self.started:
            self.started = False
            self.inner.connectionLost(reason)

    # the TCP transport's producer until the adapter's connection registers its own
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class WebSocketListenerFactory(ServerFactory):
    """A WebSocket listener around the adapter listener ``wrapped`` (its
    ``websocket_path`` and ``websocket_subprotocols`` come from ``wrapped.section``)."""

    protocol = WebSocketProtocol
    noisy = False

    def __init__(self, wrapped: Any, clock: Any) -> None:
        self.wrappedFactory = wrapped
        self.clock = clock
        section = getattr(wrapped, "section", {}) or {}
        self.listener_name = getattr(wrapped, "listener_name", "?")
        self.path = str(section.get("websocket_path", "") or "")
        self.subprotocols = [str(p) for p in section.get("websocket_subprotocols", []) or []]
        self.handshake_timeout = float(section.get("handshake_timeout") or 0)

    def buildProtocol(self, addr: Any) -> WebSocketProtocol:
        return self.protocol(self, self.wrappedFactory.buildProtocol(addr))

    def shutting_down(self) -> None:
        inner = getattr(self.wrappedFactory, "shutting_down", None)
        if inner is not None:
            inner()


def _peer(transport: Any) -> str:
    from .registry import format_peer, peer_of

    try:
        return format_peer(*peer_of(transport.getPeer()))
    except Exception:
        return "?"
