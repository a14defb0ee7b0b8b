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

The contract's parts live in their own modules and are all importable from this one:
:mod:`polymq.core.contract` (the interfaces, :class:`SessionBase`, :data:`CONNECTION_DEFAULTS`),
:mod:`polymq.core.login` (authentication and authorization) and :mod:`polymq.core.timers`
(handshake, liveness and linger timers); :mod:`polymq.core.registry` holds the registry.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from . import output
from .auth import Identity
from .contract import CONNECTION_DEFAULTS, IFramer, IProtocolSession, SessionBase
from .errors import BrokerError, ConnectionForced, ProtocolError
from .login import ConnectionLogin
from .registry import (
    ConnectionInfo,
    ConnectionRegistry,
    format_peer,
    peer_of,
    registry_of,
)
from .timers import ConnectionTimers, set_tcp_keepalive

__all__ = [
    "CONNECTION_DEFAULTS",
    "ConnectionFactory",
    "ConnectionInfo",
    "ConnectionRegistry",
    "IFramer",
    "IProtocolSession",
    "ProtocolConnection",
    "SessionBase",
    "registry_of",
]

log = Logger(namespace="polymq.connection")

_DURABLE = object()  # marks a reply batch that waits for the store (or for reply_later)
_CLOSE_HERE = object()  # a batch the store failed that has no negative answer: close instead


def _ignore(*data: bytes) -> None:
    pass


@implementer(IPushProducer)
class ProtocolConnection(ConnectionLogin, ConnectionTimers, Protocol):
    """One client connection of any protocol: the thin transport every adapter shares.

    Sessions use: :meth:`write`, :meth:`close`, :meth:`reply` / :meth:`reply_after_durable` /
    :meth:`reply_later`,
    :meth:`handshake_done`, :meth:`authenticate`, :meth:`authorize`, :meth:`set_liveness`,
    :meth:`pause_reading` / :meth:`resume_reading`, :meth:`hold_publisher`, :meth:`linger`,
    and :attr:`info` (the registry entry).
    """

    framer: Any = None
    session: Any = None
    info: ConnectionInfo | None = None
    closing = False
    # a login is being checked (a password hash in a thread): frames wait in _login_held
    logging_in = False
    # the resource alarm holds this publisher: the rest of its read (None: not held)
    _publisher_rest: list | None = None

    def __init__(self, factory: ConnectionFactory) -> None:
        self.factory = factory
        self.broker = factory.broker
        self.clock = factory.clock
        self.identity: Identity | None = None
        self._counted_user: str | None = None  # counted against the per-user limit
        self._seconds = factory.clock.seconds
        # the output turn a read is part of (None: output waits for the reactor turn, which
        # polymq's reactor ends with a flush of its own: then reads need not be counted)
        self._turn = (
            output.current_turn()
            if factory.reading is not None and not hasattr(self.clock, "call_at_turn_end")
            else None
        )
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
            set_tcp_keepalive(t, f.tcp_keepalive)
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

    def hold_publisher(self, rest: list) -> None:
        """The session took a publish while the broker-wide alarm is on: as RabbitMQ blocks a
        connection that publishes (and only such a connection), reading stops until the alarm
        clears, and ``rest``, the frames of the current read after that publish, wait too, or
        a client's whole burst would be answered at once. The session returns from its read
        after the call. :meth:`release_publisher` runs them when the alarm clears."""
        if self._publisher_rest is None:
            self._publisher_rest = []
            self.pause_reading()
        self._publisher_rest.extend(rest)

    def release_publisher(self) -> None:
        """The alarm cleared (the registry calls this after ``session.publishing_blocked``)."""
        rest = self._publisher_rest
        if rest is None:
            return
        self._publisher_rest = None
        if rest and not self.closing:
            self.call_session(self.session.frames_received, rest)
        self.resume_reading()

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
