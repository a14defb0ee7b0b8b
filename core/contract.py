"""The adapter contract's interfaces: what an adapter's framer and session offer the core.

:class:`IFramer` splits a connection's bytes into frames (sans-I/O); :class:`IProtocolSession` is
the protocol's state machine as :class:`~polymq.core.connection.ProtocolConnection` drives it, and
:class:`SessionBase` gives its optional parts empty defaults. :data:`CONNECTION_DEFAULTS` are the
listener settings every adapter's config table has. All of them are importable from
:mod:`polymq.core.connection` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from .connection import ProtocolConnection

__all__ = ["CONNECTION_DEFAULTS", "IFramer", "IProtocolSession", "SessionBase"]

# The keys every adapter's config table has, whatever the protocol (merged into each
# adapter's defaults by the config loader; an adapter may give its own default for any).
CONNECTION_DEFAULTS: dict[str, Any] = {
    # connections this listener accepts at once (0: no limit but the process's descriptors)
    "max_connections": 0,
    # connections one source address may hold on this listener at once (0: no limit)
    "max_connections_per_host": 0,
    # seconds a new connection has to finish its protocol's handshake
    "handshake_timeout": 10.0,
    # seconds of silence after which a connection is closed, unless the protocol negotiates
    # its own liveness (MQTT keep-alive, AMQP heartbeat, OpenWire inactivity); 0: never
    "idle_timeout": 0.0,
    # pending connections the kernel queues for this listener (listen(2) backlog)
    "listen_backlog": 128,
    # seconds a connection may be silent before the kernel probes its peer (TCP keep-alive,
    # then 6 probes 10 s apart), so that sockets to vanished peers are found; 0: off
    "tcp_keepalive": 60,
    # the same protocol over WebSocket (core/websocket.py): its port (-1: none), the request
    # path ("": any) and the Sec-WebSocket-Protocol values accepted ([]: any)
    "websocket_port": -1,
    "websocket_path": "",
    "websocket_subprotocols": [],
}


class IFramer(Interface):
    """Splits one connection's byte stream into frames, without I/O.

    A framer keeps one buffer for the frame in progress and checks a frame's announced length
    against ``max_length`` before it keeps any of its bytes.
    """

    max_length = Attribute("The largest frame accepted; may change between frames.")
    error = Attribute(
        "None, or the ProtocolError that ended the stream; the frames before it were returned."
    )
    buffered = Attribute("Bytes held for the frame in progress.")

    def feed(data: bytes) -> list:
        """Return the frames completed by ``data`` (maybe none), in order.

        On bad framing either raise :class:`~polymq.core.errors.ProtocolError` or set
        :attr:`error` and return the frames before the bad one.
        """


class IProtocolSession(Interface):
    """An adapter's protocol state machine, as the contract drives it."""

    def frames_received(frames: list) -> None:
        """Handle the frames of one read, in order. Raise ProtocolError on bad input."""

    def protocol_error(error: Exception) -> None:
        """The client broke the protocol (or the broker refused something the session did not
        answer itself): tell it in the protocol's words. The connection closes afterwards."""

    def internal_error(error: BaseException) -> None:
        """A bug in the broker: tell the client with the protocol's internal-error code, if it
        has one. The connection closes afterwards; the traceback is already logged."""

    def connection_lost() -> None:
        """The connection is gone: release consumers, requeue what was in flight."""

    def pause() -> None:
        """The socket's buffer is full: stop pushing deliveries until :meth:`resume`."""

    def resume() -> None:
        """The socket drained: deliveries may flow again."""

    def publishing_blocked(blocked: bool, reason: str) -> None:
        """The broker-wide resource alarm set (``blocked``) or cleared: hold publishers back
        in the protocol's own way (AMQP connection.blocked, fewer reads, delayed acks ...)."""

    def keepalive() -> None:
        """Nothing was written for the negotiated keep-alive interval: send the protocol's
        keep-alive frame (called only after ``conn.set_liveness(..., keepalive=...)``)."""

    def shutting_down() -> None:
        """The broker is stopping; say so if the protocol can (MQTT 5 DISCONNECT 0x8B)."""


@implementer(IProtocolSession)
class SessionBase:
    """Defaults for the optional parts of :class:`IProtocolSession`. ``conn`` is the
    :class:`ProtocolConnection` the session writes to."""

    def __init__(self, conn: ProtocolConnection) -> None:
        self.conn = conn

    def frames_received(self, frames: list) -> None:
        raise NotImplementedError

    def protocol_error(self, error: Exception) -> None:
        pass

    def internal_error(self, error: BaseException) -> None:
        pass

    def connection_lost(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def publishing_blocked(self, blocked: bool, reason: str) -> None:
        pass

    def keepalive(self) -> None:
        pass

    def shutting_down(self) -> None:
        pass
