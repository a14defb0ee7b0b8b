"""The adapter contract: what every protocol connection shares, written once.

An adapter brings three things and the core does the rest:

- a **framer** (:class:`IFramer`, sans-I/O): ``feed(data)`` returns the complete frames in the
  bytes received so far, with a maximum length checked before a frame is buffered
  (:class:`polymq.core.framing.LengthPrefixedFramer` serves every protocol with a length prefix);
- a **session** (:class:`IProtocolSession`, usually a :class:`SessionBase` subclass): the
  protocol's state machine, which gets the frames of each read and answers through its
  :class:`ProtocolConnection`;
- a **factory**: a :class:`ConnectionFactory` subclass naming the protocol and building the two.

:class:`ProtocolConnection` is the one Twisted protocol of every adapter. It owns, for all of
them: connection limits (per listener, per source address, broker-wide) checked before a session
exists; the broker-wide :class:`ConnectionRegistry` entry (protocol, peer, user, vhost, client id,
byte and message counters) that management reads; the handshake timeout and the idle (liveness)
timeout with keep-alives; pause/resume as an ``IPushProducer`` (socket buffer full) and reading
paused for flow control; authentication and the authorization check point; replies kept in
request order when some wait for durability; and one error boundary: bad input
(:class:`~polymq.core.errors.ProtocolError`, or a :class:`~polymq.core.errors.BrokerError` that
escaped the session) is answered in the protocol's own words by ``session.protocol_error`` and
closes the connection with one log line; anything else is a bug, logged with its traceback and
answered by ``session.internal_error`` before the connection closes. Either way the broker goes
on serving everyone else.

Nothing here runs per message except :meth:`ProtocolConnection.write` and the reply helpers.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from . import output
from .auth import Identity, Refusal
from .errors import BrokerError, ConnectionForced, IdleTimeout, ProtocolError
from .registry import (
    ConnectionInfo,
    ConnectionRegistry,
    format_peer,
    peer_of,
    registry_of,
)

__all__ = [
    "CONNECTION_DEFAULTS",
    "ConnectionFactory",
    "ConnectionInfo",
    "ConnectionRegistry",
    "IFramer",
    "IProtocolSession",
    "ProtocolConnection",
    "SessionBase",
]

log = Logger(namespace="polymq.connection")

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


def _set_keepalive(transport: Any, idle: int) -> None:
    import socket

    sock = getattr(transport, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    except OSError:
        pass


_DURABLE = object()  # marks a reply batch that waits for the store (or for reply_later)
_CLOSE_HERE = object()  # a batch the store failed that has no negative answer: close instead


def _ignore(*data: bytes) -> None:
    pass


@implementer(IPushProducer)
class ProtocolConnection(Protocol):
    """One client connection of any protocol: the thin transport every adapter shares.

    Sessions use: :meth:`write`, :meth:`close`, :meth:`reply` / :meth:`reply_after_durable` /
    :meth:`reply_later`,
    :meth:`handshake_done`, :meth:`authenticate`, :meth:`authorize`, :meth:`set_liveness`,
    :meth:`pause_reading` / :meth:`resume_reading`, :meth:`linger`, and :attr:`info` (the
    registry entry).
    """

    framer: Any = None
    session: Any = None
    info: ConnectionInfo | None = None
    closing = False
    # a login is being checked (a password hash in a thread): frames wait in _login_held
    logging_in = False

    def __init__(self, factory: ConnectionFactory) -> None:
        self.factory = factory
        self.broker = factory.broker
        self.clock = factory.clock
        self.identity: Identity | None = None
        self._counted_user: str | None = None  # counted against the per-user limit
        self._seconds = factory.clock.seconds
        # the output turn a read is part of (None: output waits for the reactor turn)
        self._turn = output.current_turn() if factory.reading is not None else None
        self.out: Any = None
        self._handshake_timer: Any = None
        self._linger_timer: Any = None
        self._liveness_timer: Any = None
        self._read_timeout = 0.0
        self._keepalive_interval = 0.0
        self._last_read = 0.0
        self._last_write = 0.0
        self._reading_paused = 0
        self._partial = 0  # bytes this connection's framer holds, as counted in the registry
        self._head: bytes | None = None  # the first bytes received (to name a wrong protocol)
        self._handshaken = False
        self._socket_paused = False
        # replies waiting behind a durable one: lists of frames, or _DURABLE-headed batches
        self._replies: list[list] = []
        self._durable_open: list | None = None
        # negative answers of the open durable batch, one per reply (None: close instead)
        self._durable_negatives: list | None = None
        self._in_read = False

    # -- Twisted protocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        t = self.transport
        peer_host, peer_port = peer_of(t.getPeer())
        registry = f.registry
        refusal = registry.admit(
            f.listener_name, peer_host, f.max_connections, f.max_connections_per_host
        )
        if refusal is not None:
            f.refused(format_peer(peer_host, peer_port), refusal)
            self.closing = True
            t.abortConnection()
            return
        try:
            t.setTcpNoDelay(True)  # output is gathered per turn already: Nagle only delays it
        except Exception:  # not TCP (tests, TLS wrappers decide themselves)
            pass
        if f.tcp_keepalive > 0:
            _set_keepalive(t, f.tcp_keepalive)
        now = self.clock.seconds()
        self._last_read = self._last_write = now
        self.info = info = ConnectionInfo(
            0, f.protocol_name, peer_host, peer_port, getattr(t.getHost(), "port", None), now, self
        )
        info.listener = f.listener_name
        info.tls = f.tls
        registry.add(info)
        self.out = output.SocketWriter(t, self.clock, f.flush_bytes)
        self.framer = f.build_framer(self)
        self.session = f.build_session(self)
        f.connections.add(self)
        t.registerProducer(self, True)
        if f.handshake_timeout > 0:
            self._handshake_timer = self.clock.callLater(
                f.handshake_timeout, self._handshake_expired
            )
        if f.idle_timeout > 0:
            self.set_liveness(f.idle_timeout)
        if registry.blocked:
            self.call_session(self.session.publishing_blocked, True, registry.blocked_reason)
        started = getattr(self.session, "connection_made", None)
        if started is not None:
            self.call_session(started)

    def dataReceived(self, data: bytes) -> None:
        # runs for every read: a few attribute operations beyond the framer and the session
        if self.closing:
            return
        self._last_read = self._seconds()
        self.info.bytes_in += len(data)
        self._in_read = True
        turn = self._turn
        if turn is not None:
            turn.reading += 1
        if self._head is None:
            self._head = bytes(data[:16])
        try:
            frames = self.framer.feed(data)
            framer = self.framer  # the any-protocol listener's framer may have handed over
            if framer.buffered != self._partial:
                self._hold_partial(framer.buffered)
            if frames:
                if self.logging_in:
                    self._login_held.extend(frames)
                else:
                    self.session.frames_received(frames)
            if framer.error is not None and not self.closing:
                raise framer.error
        except (ProtocolError, BrokerError) as e:
            self._fail(e)
        except Exception as e:
            self._crash(e)
        finally:
            self._in_read = False
            if self._durable_open is not None:
                self._register_durable()
            if turn is not None:
                turn.reading -= 1
                # flushed now unless the reactor's turn-end hook will (see core/output.py)
                if (
                    not turn.reading
                    and turn.dirty
                    and (not turn.scheduled or turn.call is not None)
                ):
                    turn.flush_all()

    def _hold_partial(self, held: int) -> None:
        registry = self.factory.registry
        registry.partial_bytes += held - self._partial
        self._partial = held
        limit = registry.max_partial_bytes
        if limit and held and registry.partial_bytes > limit:
            raise ProtocolError(
                f"partial frames of all connections exceed limits.max_partial_frame_bytes "
                f"({limit} bytes); this one holds {held}"
            )

    def connectionLost(self, reason: Any = None) -> None:
        info = self.info
        if info is None:
            return
        self.closing = True
        self._cancel_timers()
        f = self.factory
        if self._handshaken:
            log.info(
                "{protocol}: {peer}{client} disconnected after {secs:.1f} s",
                protocol=info.protocol,
                peer=info.peer,
                client=self._client_text(),
                secs=self._seconds() - info.connected_at,
            )
        if self._partial:
            f.registry.partial_bytes -= self._partial
            self._partial = 0
        f.registry.remove(info)
        f.connections.discard(self)
        info.conn = None
        if self._counted_user is not None:
            self.broker.security.release_connection(self._counted_user)
            self._counted_user = None
        self._replies = []
        self._durable_open = self._durable_negatives = None
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        session = self.session
        if session is not None:
            try:
                session.connection_lost()
            except Exception:
                log.failure(
                    "{protocol}: session teardown failed for {peer}",
                    protocol=f.protocol_name,
                    peer=info.peer,
                )
        f.closed(self)

    # -- output ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the socket; it leaves at the end of this read or reactor turn.

        Unordered with respect to replies waiting for durability: deliveries, keep-alives and
        flow-control frames go out at once. Answers to requests go through :meth:`reply`."""
        if self.closing:
            return
        self.info.bytes_out += len(data)
        self._last_write = self._last_read  # cheap "recently": no clock call per write
        self.out.write(data)

    def reply(self, data: bytes) -> None:
        """The answer to a request that needs nothing from the store; it stays behind earlier
        answers still waiting for durability, so the client sees answers in request order."""
        if self._replies:
            if not self.closing:
                if self._durable_open is not None:
                    # later durable replies of this read must not join the batch before it
                    self._register_durable()
                self._replies.append([data])
            return
        self.write(data)

    def reply_later(self) -> Callable[..., None]:
        """Reserve the place of an answer that waits for something other than the store (a
        long poll, a group join): answers given after this call wait behind it. Call the
        returned function once with the answer's bytes (one or more chunks), whenever it is
        ready; later calls, and calls after the connection closed, are ignored."""
        if self.closing:
            return _ignore
        if self._durable_open is not None:
            self._register_durable()
        entry: list = [_DURABLE]
        self._replies.append(entry)

        def ready(*data: bytes) -> None:
            if entry[0] is not _DURABLE or self.closing:
                return
            entry.extend(data)
            entry[0] = None
            self._release_replies()

        return ready

    def reply_after_durable(self, data: bytes, negative: Callable[[], bytes] | None = None) -> None:
        """A reply that may leave only once everything written to the store so far is durable
        (a publisher confirm, PUBACK, a sync-send response). Replies after it wait for it, so
        the client sees them in request order. Replies of one read share one store callback.

        If the store cannot make the writes durable (its database stays away), ``negative()``
        gives the answer sent instead (the protocol's error for that request); without one
        the connection is closed at that point, so the client never sees the positive answer
        and resends (MQTT's way)."""
        if self.closing:
            return
        batch = self._durable_open
        if batch is None:
            batch = self._durable_open = [_DURABLE]
            self._durable_negatives = []
            self._replies.append(batch)
        batch.append(data)
        self._durable_negatives.append(negative)  # type: ignore[union-attr]
        if not self._in_read:
            self._register_durable()

    def _register_durable(self) -> None:
        batch = self._durable_open
        negatives = self._durable_negatives or []
        self._durable_open = self._durable_negatives = None

        def durable() -> None:
            batch[0] = None  # ready
            self._release_replies()

        def failed(exc: BaseException) -> None:
            if batch[0] is not _DURABLE or self.closing:
                return
            if None in negatives:
                batch[:] = [_CLOSE_HERE]
            else:
                batch[1:] = [negative() for negative in negatives]
                batch[0] = None
            self._release_replies()

        self.broker.when_durable(durable, failed)

    def _release_replies(self) -> None:
        replies = self._replies
        out = self.out
        i = 0
        n = len(replies)
        sent = 0
        close_here = False
        while i < n:
            entry = replies[i]
            if entry[0] is _DURABLE:
                break
            if entry[0] is _CLOSE_HERE:
                close_here = True
                break
            for data in itertools.islice(entry, 1, None) if entry[0] is None else entry:
                sent += len(data)
                out.write(data)
            i += 1
        if i:
            del replies[:i]
            if not self.closing and self.info is not None:
                self.info.bytes_out += sent
        if close_here:
            log.warn(
                "{protocol}: closing {peer}{client}: the store could not make its writes"
                " durable, so they are not confirmed",
                protocol=self.factory.protocol_name,
                peer=self.peer,
                client=self._client_text(),
            )
            self._replies = []
            self.close()

    def switch_protocol(self, factory: ConnectionFactory) -> None:
        """Hand this connection to another adapter's listener (the any-protocol listener does,
        once the first bytes told it which protocol the client speaks): that adapter's framer
        and session take over; the limits counted are those of the listener it came in by."""
        old = self.factory
        old.connections.discard(self)
        self.factory = factory
        factory.connections.add(self)
        info = self.info
        info.protocol = factory.protocol_name
        self.out.flush_bytes = factory.flush_bytes
        self.framer = factory.build_framer(self)
        self.session = factory.build_session(self)
        if factory.idle_timeout > 0:
            self.set_liveness(factory.idle_timeout)
        if factory.registry.blocked:
            self.call_session(
                self.session.publishing_blocked, True, factory.registry.blocked_reason
            )
        started = getattr(self.session, "connection_made", None)
        if started is not None:
            self.call_session(started)

    def flush(self) -> None:
        """Send what this connection has gathered now."""
        if self.out is not None:
            self.out.flush()

    def close(self, abort: bool = False) -> None:
        """Flush what is gathered and close; ``abort`` drops the socket at once."""
        if self.closing:
            return
        self.closing = True
        self._cancel_timers()
        if self.out is not None:
            self.out.flush()
        t = self.transport
        if abort:
            t.abortConnection()
        else:
            t.loseConnection()

    def close_with_reason(self, reason: str) -> None:
        """Management's close: the session says goodbye in its protocol if it can."""
        if self.closing:
            return
        log.info(
            "{protocol}: closing {peer}: {reason}",
            protocol=self.factory.protocol_name,
            peer=self.peer,
            reason=reason,
        )
        self.call_session(self.session.protocol_error, ConnectionForced(reason))
        self.close()

    # -- what sessions ask of the contract ---------------------------------------------------

    @property
    def peer(self) -> str:
        return self.info.peer if self.info is not None else "?"

    def handshake_done(
        self, user: str | None = None, client_id: str | None = None, vhost: str | None = None
    ) -> None:
        """The protocol's handshake finished: stop its timer, record who this is, and say so in
        the log (one line per connection, as brokers do)."""
        t = self._handshake_timer
        if t is not None:
            self._handshake_timer = None
            if t.active():
                t.cancel()
        info = self.info
        if info is not None:
            if user is not None:
                info.user = user
            if client_id is not None:
                info.client_id = client_id
            if vhost is not None:
                info.vhost = vhost
            if not self._handshaken:
                self._handshaken = True
                log.info(
                    "{protocol}: {peer} connected{user}{client}",
                    protocol=info.protocol,
                    peer=info.peer,
                    user=f" as {info.user}" if info.user else "",
                    client=self._client_text(),
                )

    def authenticate(self, username: str | None, password: Any) -> Identity | Refusal | Deferred:
        """Ask the broker's auth plugins; the result's user is recorded on success. The answer
        may be a Deferred (a password hash is verified in a thread): sessions use :meth:`login`,
        which handles both.

        On a TLS listener with ``[tls] cert_login`` set, a verified client certificate names the
        user (whatever user name the client sent) and the password is a
        :class:`~polymq.core.security.CertificateCredential`."""
        cert_login = getattr(self.factory, "cert_login", "")
        if cert_login:
            from .security.manager import CertificateCredential
            from .security.tls import certificate_user

            found = certificate_user(self.transport, cert_login)
            if found is not None:
                username, password = found[0], CertificateCredential(found[1])
        result = self.broker.authenticate(
            self.factory.protocol_name, username, password, self.transport.getPeer()
        )
        if isinstance(result, Deferred):
            return result.addErrback(self._auth_failed).addCallback(self._identified)
        return self._identified(result)

    def _identified(self, result: Any) -> Identity | Refusal:
        if result is None:
            return Refusal("not authorized")
        if isinstance(result, Identity):
            if self.closing:
                return Refusal("connection closed")
            refusal = self.accept_identity(result)
            if refusal is not None:
                return refusal
        return result

    def _auth_failed(self, failure: Any) -> Refusal:
        log.failure("auth plugin failed", failure)
        return Refusal(f"authentication error: {failure.getErrorMessage()}")

    def login(
        self, username: str | None, password: Any, then: Callable[[Identity | Refusal], None]
    ) -> bool:
        """Authenticate and call ``then(Identity or Refusal)``: at once (returns True) or, when
        the answer needs a password hash verified in a thread, later (returns False).

        While the answer is pending the connection stops reading, and frames already received
        wait: the session hands the frames of the current read that follow the login frame to
        :meth:`hold_frames` and returns. Once ``then`` has run, the waiting frames (possibly
        none) go to ``session.frames_received`` as one read, and reading resumes."""
        result = self.authenticate(username, password)
        if not isinstance(result, Deferred):
            then(result)
            return True
        self.logging_in = True
        self._login_held: list = []
        self.pause_reading()
        result.addCallback(self._login_answered, then)
        result.addErrback(lambda f: log.failure("login completion failed", f))
        return False

    def hold_frames(self, frames: list, after: Any = None) -> None:
        """Keep the frames of the current read that follow the frame ``after`` (all of
        ``frames`` when None) until the pending login is answered (see :meth:`login`)."""
        if after is not None:
            for i, frame in enumerate(frames):
                if frame is after:
                    frames = frames[i + 1 :]
                    break
        self._login_held.extend(frames)

    def _login_answered(self, result: Identity | Refusal, then: Callable) -> None:
        self.logging_in = False
        held, self._login_held = self._login_held, []
        if self.closing:
            return
        self._in_read = True
        try:
            then(result)
            if not self.closing and not self.logging_in:
                self.session.frames_received(held)
            elif self.logging_in:
                self._login_held[:0] = held
        except (ProtocolError, BrokerError) as e:
            self._fail(e)
        except Exception as e:
            self._crash(e)
        finally:
            self._in_read = False
            if self._durable_open is not None:
                self._register_durable()
        if not self.closing:
            self.resume_reading()

    def accept_identity(self, identity: Identity) -> Refusal | None:
        """Make ``identity`` this connection's user, within the per-user connection limit
        (``security.max_connections_per_user``, or the user's own ``max_connections``).
        :meth:`authenticate` calls it; an adapter that proved a login itself (a SASL
        exchange) calls it directly. A Refusal says the user holds enough connections."""
        security = getattr(self.broker, "security", None)
        if security is not None and self._counted_user != identity.user:
            reason = security.hold_connection(identity.user)
            if reason is not None:
                return Refusal(reason)
            if self._counted_user is not None:
                security.release_connection(self._counted_user)
            self._counted_user = identity.user
        self.identity = identity
        if self.info is not None:
            self.info.user = identity.user
        return None

    def authorize(self, action: str, kind: str, name: str, vhost: str | None = None) -> bool:
        """The authorization check point: may this connection's user do ``action``
        (``configure``, ``write``, ``read``) on the resource ``kind`` (``exchange``,
        ``queue``, ``topic``, ``group`` ...) called ``name``? Every adapter asks here before
        it declares, publishes or consumes; the answer comes from the broker's authorizer
        (everything is allowed while none is configured): ``authorizer(identity, vhost,
        action, kind, name)``, plus the connection's client id as a sixth argument when the
        authorizer has ``wants_client_id = True`` (the built-in one, for ``%c`` patterns)."""
        authorizer = getattr(self.broker, "authorizer", None)
        if authorizer is None:
            return True
        info = self.info
        vhost = vhost if vhost is not None else info.vhost
        if getattr(authorizer, "wants_client_id", False):
            return authorizer(self.identity, vhost, action, kind, name, info.client_id)
        return authorizer(self.identity, vhost, action, kind, name)

    def may_enter(self, vhost: str) -> bool:
        """May this connection's user use ``vhost`` at all (a permission entry for it)? True
        when no authorizer is configured, or one that does not say (no ``may_enter``)."""
        check = getattr(getattr(self.broker, "authorizer", None), "may_enter", None)
        return True if check is None else bool(check(self.identity, vhost))

    def linger(self, timeout: float) -> None:
        """Called from ``protocol_error`` / ``internal_error``: keep the connection open after
        the answer, until the session calls :meth:`close` or ``timeout`` seconds pass (a
        protocol whose close is a handshake, such as AMQP's connection.close / close-ok).
        Reads still reach the session meanwhile, so the client's last frames are read rather
        than reset; a second error while lingering closes at once."""
        if self.closing or self._linger_timer is not None:
            return
        self._linger_timer = self.clock.callLater(timeout, self.close, True)

    def set_liveness(self, read_timeout: float, keepalive: float = 0.0) -> None:
        """Close the connection after ``read_timeout`` seconds without a byte from the client
        (0: never), and call ``session.keepalive()`` when nothing was written for
        ``keepalive`` seconds (0: never). Replaces the listener's ``idle_timeout``."""
        self._read_timeout = float(read_timeout or 0)
        self._keepalive_interval = float(keepalive or 0)
        if self._liveness_timer is not None and self._liveness_timer.active():
            self._liveness_timer.cancel()
        self._liveness_timer = None
        self._arm_liveness()

    def pause_reading(self) -> None:
        """Stop reading from the client (flow control); nested with :meth:`resume_reading`."""
        self._reading_paused += 1
        if self._reading_paused == 1 and not self.closing:
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self._reading_paused <= 0:
            return
        self._reading_paused -= 1
        if self._reading_paused == 0 and not self.closing:
            self.transport.resumeProducing()

    def call_session(self, method: Callable, *args: Any) -> Any:
        """Run a session method outside a read with the same error boundary."""
        try:
            return method(*args)
        except (ProtocolError, BrokerError) as e:
            self._fail(e)
        except Exception as e:
            self._crash(e)
        return None

    # -- IPushProducer: the socket's buffer -------------------------------------------------

    def pauseProducing(self) -> None:
        # Twisted calls this on every write while its buffer is over its size, and
        # resumeProducing once when it drained: the session hears each change once
        if self._socket_paused:
            return
        self._socket_paused = True
        if self.session is not None and not self.closing:
            self.call_session(self.session.pause)

    def resumeProducing(self) -> None:
        if not self._socket_paused:
            return
        self._socket_paused = False
        if self.session is not None and not self.closing:
            self.call_session(self.session.resume)

    def stopProducing(self) -> None:
        pass

    # -- the error boundary ------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        if self.closing:
            return
        if self._linger_timer is not None:  # already answered, waiting for the client
            self.close()
            return
        log.info(
            "{protocol}: closing {peer}{client}: {error}{hint}",
            protocol=self.factory.protocol_name,
            peer=self.peer,
            client=self._client_text(),
            error=error,
            hint=self._wrong_protocol_hint(),
        )
        try:
            self.session.protocol_error(error)
        except Exception:
            log.failure(
                "{protocol}: answering a protocol error failed", protocol=self.factory.protocol_name
            )
        if self._linger_timer is None:
            self.close()

    def _wrong_protocol_hint(self) -> str:
        """'; it looks like AMQP, which listens on 5672' for a client that speaks another
        adapter's protocol on this port (before its handshake finished)."""
        if self._handshaken or not self._head:
            return ""
        registry = self.factory.registry
        name = registry.identify(self._head)
        if name is None or name == self.factory.protocol_name:
            return ""
        port = registry.ports.get(name)
        where = f", which listens on {port}" if port else " (not enabled here)"
        return f"; it looks like {name}{where}"

    def _client_text(self) -> str:
        info = self.info
        return f" ({info.client_id})" if info is not None and info.client_id else ""

    def _crash(self, error: BaseException) -> None:
        log.failure(
            "{protocol}: internal error on {peer}; closing it",
            protocol=self.factory.protocol_name,
            peer=self.peer,
        )
        if self.closing:
            return
        if self._linger_timer is not None:
            self.close()
            return
        try:
            self.session.internal_error(error)
        except Exception:
            log.failure(
                "{protocol}: answering an internal error failed",
                protocol=self.factory.protocol_name,
            )
        if self._linger_timer is None:
            self.close()

    # -- timers ------------------------------------------------------------------------------

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        self.call_session(
            self._raise, ProtocolError(f"no handshake within {self.factory.handshake_timeout:g} s")
        )

    @staticmethod
    def _raise(error: Exception) -> None:
        raise error

    def _arm_liveness(self) -> None:
        if self.closing:
            return
        steps = [x for x in (self._read_timeout, self._keepalive_interval) if x > 0]
        if not steps:
            return
        # wake at the nearest deadline (at least 10 ms ahead)
        now = self.clock.seconds()
        due = []
        if self._read_timeout > 0:
            due.append(self._last_read + self._read_timeout - now)
        if self._keepalive_interval > 0:
            due.append(self._last_write + self._keepalive_interval - now)
        self._liveness_timer = self.clock.callLater(max(min(due), 0.01), self._check_liveness)

    def _check_liveness(self) -> None:
        self._liveness_timer = None
        if self.closing:
            return
        now = self.clock.seconds()
        if self._reading_paused:
            # not read on purpose (flow control): the silence is ours, not the client's
            self._last_read = now
        if self._read_timeout > 0 and now - self._last_read >= self._read_timeout:
            silent = now - self._last_read
            self.call_session(self._raise, IdleTimeout(f"nothing received for {silent:.1f} s"))
            return
        if self._keepalive_interval > 0 and now - self._last_write >= self._keepalive_interval:
            self.call_session(self.session.keepalive)
            # after the call: write() sets the cheap "recently" (the last read), which for a
            # silent client is long ago and would bring the next keep-alive due at once
            self._last_write = now
        self._arm_liveness()

    def _cancel_timers(self) -> None:
        for name in ("_handshake_timer", "_liveness_timer", "_linger_timer"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, None)
                if t.active():
                    t.cancel()


class ConnectionFactory(ServerFactory):
    """The listener of one adapter. Subclasses set :attr:`protocol_name` and implement
    :meth:`build_framer` and :meth:`build_session`; ``section`` is the adapter's effective
    config table (with the :data:`CONNECTION_DEFAULTS` keys)."""

    protocol = ProtocolConnection
    protocol_name = "?"
    noisy = False
    # bytes gathered before a connection's output is handed to the socket early
    flush_bytes = 65536
    # a connection's output leaves at the end of each read (None: at the end of the reactor
    # turn only, so that a fan-out to the same subscriber from several reads is one write;
    # the same with polymq's reactor, whose turn-end hook flushes either way)
    reading: Any = output.reading()

    def __init__(self, broker: Any, section: dict | None = None) -> None:
        self.broker = broker
        self.clock = broker.clock
        self.registry = registry_of(broker)
        self._configure(dict(CONNECTION_DEFAULTS, **(section or {})))

    def sibling(self, section: dict) -> ConnectionFactory:
        """Another listener of the same adapter (its TLS port, the any-protocol port) that
        shares this one's state — MQTT sessions and retained messages, Kafka groups — with
        the listener settings of ``section`` laid over this one's."""
        twin = copy.copy(self)
        # what was set on this instance from outside (the service's connection tracker wraps
        # buildProtocol) belongs to this listener, not to the twin
        twin.__dict__.pop("buildProtocol", None)
        twin._configure(dict(self.section, **section))
        return twin

    def _configure(self, section: dict) -> None:
        self.section = section
        self.listener_name = section.get("listener_name") or self.protocol_name
        self.tls = bool(section.get("tls", False))
        # [tls] cert_login on a TLS listener: the client certificate names the user
        self.cert_login = str(section.get("cert_login") or "") if self.tls else ""
        self.max_connections = int(section.get("max_connections") or 0)
        self.max_connections_per_host = int(section.get("max_connections_per_host") or 0)
        self.handshake_timeout = float(section.get("handshake_timeout") or 0)
        self.idle_timeout = float(section.get("idle_timeout") or 0)
        self.tcp_keepalive = int(section.get("tcp_keepalive") or 0)
        self.connections: set[ProtocolConnection] = set()
        self._refusals_logged = 0.0

    def buildProtocol(self, addr: Any) -> ProtocolConnection | None:
        if self.registry.accept_paused:
            # Twisted accepts a batch of connections per poll: the rest of a batch that crossed
            # the descriptor budget is closed at once, not held (None closes the socket)
            return None
        return self.protocol(self)

    def build_framer(self, conn: ProtocolConnection) -> Any:
        raise NotImplementedError

    def build_session(self, conn: ProtocolConnection) -> Any:
        raise NotImplementedError

    def closed(self, conn: ProtocolConnection) -> None:
        """A connection of this listener is gone (after its session's teardown)."""

    def refused(self, peer: str, reason: str) -> None:
        # one line a second at most: a storm of refused connections must not flood the log
        now = self.clock.seconds()
        if now - self._refusals_logged >= 1.0:
            self._refusals_logged = now
            log.warn(
                "{protocol}: refusing {peer}: {reason}",
                protocol=self.protocol_name,
                peer=peer,
                reason=reason,
            )

    def shutting_down(self) -> None:
        """The broker is stopping: each session may say so before its connection closes."""
        for conn in list(self.connections):
            if conn.session is not None and not conn.closing:
                conn.call_session(conn.session.shutting_down)
                conn.flush()
