"""The AMQP 0-9-1 session: one client connection's state machine, sans I/O.

:class:`AMQPSession` is the adapter's :class:`~polymq.core.connection.IProtocolSession`. The
connection contract (:class:`~polymq.core.connection.ProtocolConnection`) feeds it the frames of
each read (split by :class:`~polymq.adapters.amqp.framing.AMQPFramer`) and owns the socket, the
handshake and liveness timers, authentication and the error boundary: a
:class:`~polymq.adapters.amqp.codec.FrameError` raised here comes back through
:meth:`AMQPSession.protocol_error` and closes the connection with ``connection.close``.

The hot frames (basic.publish with its content, basic.ack) are handled here; the connection
class (channel 0) is in :mod:`~polymq.adapters.amqp.connection`, the other channel methods in
:mod:`~polymq.adapters.amqp.channel`. Deliveries arrive from the core synchronously
(``Consumer.deliver``) and are written as one buffer per message (deliver, content header and
body frames).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from polymq.core.connection import ProtocolConnection, SessionBase
from polymq.core.errors import BrokerError, IdleTimeout
from polymq.core.message import Message

from . import codec as C
from .channel import (
    _CHANNEL_HANDLERS,
    _SERVER_ONLY,
    DIRECT_REPLY_TO,
    Channel,
    ChannelError,
    reply_text,
)
from .connection import connection_method, send_start
from .framing import HEADER, BadProtocolHeader
from .mapping import PROPS_KEY, message_from_properties, properties_for

log = Logger(namespace="polymq.amqp")

# the adapter's own keys; the contract's (handshake_timeout, max_connections ...) are added by
# the config loader
DEFAULTS = {
    "frame_max": 131072,
    "channel_max": 2047,
    "heartbeat": 60,
    "publish_burst": 256,
}

CLOSE_OK_TIMEOUT = 2.0  # seconds the client has to answer our connection.close

_PUBLISH_ID = (60, 40)
_ACK_ID = (60, 80)


class AMQPSession(SessionBase):
    """The state machine of one client connection."""

    def __init__(self, conn: ProtocolConnection, config: dict | None = None) -> None:
        super().__init__(conn)
        cfg = dict(DEFAULTS)
        if config:
            cfg.update({k: v for k, v in config.items() if k in DEFAULTS})
        self.broker = broker = conn.broker
        self.clock = conn.clock
        self.info = conn.info  # the registry entry: counters are added to on the hot path
        self.framer = conn.framer
        self.write: Callable[[bytes], None] = conn.write
        self.server_frame_max = max(C.FRAME_MIN_SIZE, int(cfg["frame_max"]))
        self.server_channel_max = int(cfg["channel_max"])
        self.server_heartbeat = int(cfg["heartbeat"])
        self.frame_max = self.server_frame_max
        self.channel_max = self.server_channel_max
        self.heartbeat = 0
        self.state = "header"  # header start-ok tune-ok open opened closing closed
        self.channels: dict[int, Channel] = {}
        self.vhost: Any = None
        self.identity: Any = None
        self.client_properties: dict = {}
        self.cancel_notify = False
        self.paused = False
        self.max_message_size = int(getattr(broker, "max_message_size", 16 * 1024 * 1024))
        self._torn_down = False
        self._confirming: list[Channel] = []
        self._pub_cache: dict[bytes, dict] = {}
        self.publish_burst = int(cfg["publish_burst"]) or 1 << 62
        self._burst = 0  # publishes handled since this connection last yielded
        self._yield_call: Any = None
        # frames of earlier reads held back (reading paused: blocked, or yielding); None: none
        self._held: list | None = None
        # set when the frame loop must stop and look why (closed, blocked, burst, frame_max)
        self._stop = False
        self._recheck_frame_max = False
        # the broker-wide resource alarm: a connection that publishes is no longer read from
        self.blocked = False
        self.blocked_reason = ""
        self.reading_paused = False
        self.blocked_notify = False

    # -- output ---------------------------------------------------------------------------

    def send_method(self, channel: int, name: str, **args: Any) -> None:
        self.write(C.method_frame(channel, name, **args))

    def close_transport(self) -> None:
        """The connection is done (close / close-ok exchanged): drop the socket after what was
        written; the rest of this read is not handled."""
        self.state = "closed"
        self._stop = True
        self.conn.close()

    # -- input ----------------------------------------------------------------------------

    def frames_received(self, frames: list) -> None:
        held = self._held
        if held is not None:  # earlier frames wait (blocked or yielding): these go after
            held.extend(frames)
            return
        if self._yield_call is None:
            self._burst = 0
        on_body, on_method, on_header = self._on_body, self._on_method, self._on_header
        self._stop = False
        i = 0
        n = len(frames)
        try:
            while i < n:
                ftype, ch, payload = frames[i]
                i += 1
                if ftype == 3:
                    on_body(ch, payload)
                elif ftype == 1:
                    on_method(ch, payload)
                elif ftype == 2:
                    on_header(ch, payload)
                elif ftype == C.FRAME_HEARTBEAT:
                    if ch != 0:
                        raise C.FrameError(C.FRAME_ERROR, "heartbeat frame on a channel")
                elif ftype == HEADER:
                    send_start(self)
                else:
                    raise C.FrameError(C.FRAME_ERROR, f"unknown frame type {ftype}")
                if self._stop:
                    if self._stopped(frames, i):
                        break
                    n = len(frames)
        finally:
            self._flush_confirms()

    def _stopped(self, frames: list, i: int) -> bool:
        """The loop was asked to stop after ``frames[i - 1]``: True if it must (the rest is
        dropped, or held for later), False to go on."""
        if self.state == "closed":
            return True
        if self.conn.logging_in:  # start-ok's login is being checked: the rest waits for it
            self.conn.hold_frames(frames[i:])
            return True
        if self._recheck_frame_max:
            # tune-ok lowered frame_max: the frames after it in this read were split under the
            # server's maximum; the first one over the new limit ends the connection
            self._recheck_frame_max = False
            limit = self.frame_max - 8
            for j in range(i, len(frames)):
                if len(frames[j][2]) > limit:
                    size = len(frames[j][2])
                    del frames[j:]
                    self.framer.error = C.FrameError(
                        C.FRAME_ERROR, f"frame size {size} exceeds frame_max {self.frame_max}"
                    )
                    break
        if self.reading_paused:  # blocked: the rest waits until unblocked
            self._held = frames[i:]
            return True
        if self._burst >= self.publish_burst:
            # share the reactor: the rest of this read is handled on the next turn, after the
            # other connections (consumers acknowledging) had theirs
            self._held = frames[i:]
            self._yield()
            return True
        self._stop = False
        return False

    # -- frames ---------------------------------------------------------------------------

    def _on_method(self, ch: int, payload: bytes) -> None:
        if len(payload) < 4:
            raise C.FrameError(C.FRAME_ERROR, "method frame too short")
        ids = (payload[0] << 8 | payload[1], payload[2] << 8 | payload[3])
        if ch == 0:
            spec, args = C.decode_method(payload)
            if spec.class_id != 10:
                raise C.FrameError(
                    C.COMMAND_INVALID, f"{spec.name} on channel 0", spec.class_id, spec.method_id
                )
            connection_method(self, spec, args)
            return
        if self.state != "opened":
            if self.state == "closing":
                return
            raise C.FrameError(C.COMMAND_INVALID, "connection not open", *ids)
        channel = self.channels.get(ch)
        if channel is None:
            spec, args = C.decode_method(payload)
            if spec.name == "channel.open":
                if ch > self.channel_max:
                    raise C.FrameError(C.CHANNEL_ERROR, f"channel {ch} above channel_max", *ids)
                self.channels[ch] = Channel(self, ch)
                self.send_method(ch, "channel.open-ok")
                return
            raise C.FrameError(C.CHANNEL_ERROR, f"channel {ch} is not open", *ids)
        if channel.closing:
            # after our channel.close, only close / close-ok count (spec 2.3.5.2)
            spec, args = C.decode_method(payload)
            if spec.name == "channel.close-ok":
                self.drop_channel(channel)
            elif spec.name == "channel.close":
                self.send_method(ch, "channel.close-ok")
                self.drop_channel(channel)
            return
        if channel.pub is not None:
            raise C.FrameError(
                C.UNEXPECTED_FRAME, f"method frame while content of {ch} is incomplete", *ids
            )
        if ids == _PUBLISH_ID:
            # publishers repeat the same exchange and key: decode (and authorize) each distinct
            # method once
            pub = self._pub_cache.get(payload)
            if pub is None:
                pub = C.decode_publish(payload)
                exchange = pub["exchange"]
                if not self.conn.authorize("write", "exchange", exchange):
                    self.channel_error(
                        channel,
                        C.ACCESS_REFUSED,
                        self._refused("write", "exchange", exchange),
                        60,
                        40,
                    )
                    return
                if len(self._pub_cache) >= 256:
                    self._pub_cache.clear()
                self._pub_cache[payload] = pub
            channel.pub = pub
            channel.props = None
            return
        if ids == _ACK_ID:
            args = C.decode_ack(payload)
            try:
                channel.ack(args["delivery_tag"], args["multiple"])
            except (ChannelError, BrokerError) as e:
                self.channel_error(channel, e.code, e.text, 60, 80)
            return
        spec, args = C.decode_method(payload)
        handler = _CHANNEL_HANDLERS.get(spec.name)
        if handler is None:
            raise C.FrameError(
                C.COMMAND_INVALID if spec.name in _SERVER_ONLY else C.NOT_IMPLEMENTED,
                f"{spec.name} is not accepted from a client",
                *ids,
            )
        try:
            handler(self, channel, args)
        except (ChannelError, BrokerError) as e:
            code = e.code
            if code in C.CHANNEL_ERRORS:
                self.channel_error(channel, code, e.text, *ids)
            else:
                raise C.FrameError(code, e.text, *ids) from e

    def _on_header(self, ch: int, payload: bytes) -> None:
        channel = self.channels.get(ch)
        if channel is None:
            if self.state == "closing":  # after our connection.close: discarded
                return
            raise C.FrameError(C.CHANNEL_ERROR, f"content header on channel {ch}, not open")
        if channel.closing:
            return
        if channel.pub is None or channel.props is not None:
            raise C.FrameError(C.UNEXPECTED_FRAME, f"unexpected content header on channel {ch}")
        class_id, size, props, raw = C.decode_content_header(payload)
        if class_id != 60:
            raise C.FrameError(C.UNEXPECTED_FRAME, f"content header for class {class_id}")
        if size > self.max_message_size:
            channel.pub = None
            self.channel_error(
                channel,
                C.PRECONDITION_FAILED,
                f"message size {size} is larger than the maximum {self.max_message_size}",
                60,
                40,
            )
            return
        channel.props = props
        channel.raw_props = raw
        channel.body_size = size
        if size == 0:
            self._publish(channel, b"")
        else:
            channel.body_parts = []
            channel.body_received = 0

    def _on_body(self, ch: int, payload: bytes) -> None:
        channel = self.channels.get(ch)
        if channel is None:
            if self.state == "closing":
                return
            raise C.FrameError(C.CHANNEL_ERROR, f"body frame on channel {ch}, not open")
        if channel.closing:
            return
        if channel.props is None:
            raise C.FrameError(C.UNEXPECTED_FRAME, f"unexpected body frame on channel {ch}")
        got = channel.body_received + len(payload)
        if got > channel.body_size:
            raise C.FrameError(C.FRAME_ERROR, "body larger than announced in the content header")
        if got == channel.body_size:
            if channel.body_parts:
                channel.body_parts.append(payload)
                body = b"".join(channel.body_parts)
                channel.body_parts = []
            else:
                body = payload
            self._publish(channel, body)
        else:
            channel.body_parts.append(payload)
            channel.body_received = got

    # -- publishing -----------------------------------------------------------------------

    def _publish(self, channel: Channel, body: bytes) -> None:
        pub = channel.pub
        props = channel.props
        raw = channel.raw_props
        channel.pub = None
        channel.props = None
        try:
            message = message_from_properties(body, props, raw, self.broker)
        except ValueError as e:
            self.channel_error(channel, C.PRECONDITION_FAILED, str(e), 60, 40)
            return
        if (
            message.user_id is not None
            and self.identity is not None
            and (message.user_id != self.identity.user)
        ):
            self.channel_error(
                channel,
                C.PRECONDITION_FAILED,
                f"user_id property set to '{message.user_id}' but authenticated user was "
                f"'{self.identity.user}'",
                60,
                40,
            )
            return
        if message.reply_to == DIRECT_REPLY_TO:
            if channel.reply_queue is None:
                self.channel_error(
                    channel, C.PRECONDITION_FAILED, "fast reply consumer does not exist", 60, 40
                )
                return
            # the reply address is the channel's own reply queue (properties re-encoded)
            message.reply_to = channel.reply_queue
            message.annotations.pop(PROPS_KEY, None)
            raw = None
        exchange = pub["exchange"]
        ex = self.vhost.exchanges.get(exchange)
        if ex is None:
            self.channel_error(
                channel,
                C.NOT_FOUND,
                f"no exchange '{exchange}' in vhost '{self.vhost.name}'",
                60,
                40,
            )
            return
        if ex.internal:
            self.channel_error(
                channel,
                C.ACCESS_REFUSED,
                f"cannot publish to internal exchange '{exchange}'",
                60,
                40,
            )
            return
        rk = pub["routing_key"]
        self.info.messages_in += 1
        self._burst = burst = self._burst + 1
        if burst >= self.publish_burst:
            self._stop = True
        if self.blocked and not self.reading_paused:
            # the publish that arrived while blocked is taken; the frames after it wait
            self.reading_paused = True
            self._stop = True
            self.conn.pause_reading()
        if channel.tx is not None:
            channel.tx.publish(exchange, rk, message)
            channel.tx_returns.append((pub["mandatory"], message, raw))
            return
        try:
            routed, refused = self.vhost.publish(exchange, rk, message)
        except BrokerError as e:
            if e.code not in C.CHANNEL_ERRORS:
                raise
            self.channel_error(channel, e.code, e.text, 60, 40)
            return
        if not routed and not refused and pub["mandatory"]:
            self.basic_return(channel, message, raw)
        if channel.confirm:
            channel.publish_seq = seq = channel.publish_seq + 1
            ok = not (refused and not routed)
            channel.confirm_out.append((seq, ok))
            if ok and routed and message.durable:
                channel.confirm_durable = True
            if channel not in self._confirming:
                self._confirming.append(channel)

    def basic_return(self, channel: Channel, message: Message, raw: bytes | None) -> None:
        out = C.method_frame(
            channel.number,
            "basic.return",
            reply_code=C.NO_ROUTE,
            reply_text="NO_ROUTE",
            exchange=message.exchange,
            routing_key=message.routing_key,
        )
        if raw is None or message.expiration is not None:
            raw = properties_for(message, None, self.broker)
        self.write(out + C.content_frames(channel.number, raw, message.body, self.frame_max))

    def _flush_confirms(self) -> None:
        """Send the confirms of this read: at once, or once durable when persistent. A
        channel's confirms stay in order: once one waits for the store, later ones wait too."""
        if not self._confirming:
            return
        channels, self._confirming = self._confirming, []
        for channel in channels:
            out, channel.confirm_out = channel.confirm_out, []
            if not out:
                continue
            if channel.confirm_durable or channel.confirm_waiting:
                channel.confirm_durable = False
                channel.confirm_waiting += 1
                # basic.nack for each if the store cannot make them durable
                self.broker.when_durable(
                    lambda ch=channel, o=out: self._send_confirms(ch, o, 1),
                    lambda exc, ch=channel, o=out: self._send_confirms(
                        ch, [(seq, False) for seq, _ in o], 1
                    ),
                )
            else:
                self._send_confirms(channel, out, 0)

    def _send_confirms(self, channel: Channel, out: list[tuple[int, bool]], waited: int) -> None:
        if waited:
            channel.confirm_waiting -= 1
        if not channel.open or self.state == "closed":
            return
        frames = []
        n = channel.number
        run_end = 0
        run_len = 0
        for seq, ok in out:
            if ok:
                run_end = seq
                run_len += 1
                continue
            if run_len:
                frames.append(C.ack_frame(n, run_end, run_len > 1))
                run_len = 0
            frames.append(
                C.method_frame(n, "basic.nack", delivery_tag=seq, multiple=False, requeue=False)
            )
            channel.confirmed_seq = seq
        if run_len:
            frames.append(C.ack_frame(n, run_end, run_len > 1))
            channel.confirmed_seq = run_end
        self.write(b"".join(frames))

    # -- consumers ------------------------------------------------------------------------

    def make_deliver(self, channel: Channel, consumer_tag: str, no_ack: bool) -> Callable:
        """The ``deliver`` callback of a consumer on ``channel``."""
        prefix = C.deliver_prefix(consumer_tag)
        number = channel.number
        unacked = channel.unacked
        broker = self.broker
        info = self.info
        write = self.write
        frame_max = self.frame_max
        deliver_frame = C.deliver_frame
        content_frames = C.content_frames
        tails: dict[tuple[str, str], bytes] = {}  # encoded (exchange, routing key)

        def deliver(d: Any) -> None:
            channel.next_tag = tag = channel.next_tag + 1
            if not no_ack:
                unacked[tag] = d
            m = d.message
            raw = m.annotations.get(PROPS_KEY)
            if raw is None or m.expiration is not None or d.offset is not None:
                raw = properties_for(m, d.offset, broker)
            where = (m.exchange, m.routing_key)
            tail = tails.get(where)
            if tail is None:
                if len(tails) >= 256:
                    tails.clear()
                tail = tails[where] = C.deliver_tail(*where)
            info.messages_out += 1
            write(
                deliver_frame(number, prefix, tag, d.delivery_count > 0, tail)
                + content_frames(number, raw, m.body, frame_max)
            )

        return deliver

    # -- contract: authorization, frame size ----------------------------------------------

    def require(self, action: str, kind: str, name: str) -> None:
        """The authorization check point: refuse with 403 (a channel error) unless allowed."""
        if not self.conn.authorize(action, kind, name):
            raise ChannelError(C.ACCESS_REFUSED, self._refused(action, kind, name))

    def _refused(self, action: str, kind: str, name: str) -> str:
        user = self.identity.user if self.identity is not None else "?"
        vhost = self.vhost.name if self.vhost is not None else "?"
        return f"{action} access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"

    def set_frame_max(self, frame_max: int) -> None:
        """``connection.tune-ok`` settled the largest frame, both ways."""
        if frame_max < self.frame_max:
            self._recheck_frame_max = True
            self._stop = True
        self.frame_max = frame_max
        self.framer.max_length = frame_max

    # -- errors ---------------------------------------------------------------------------

    def channel_error(
        self, channel: Channel, code: int, text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        """Close one channel with ``code``; the connection stays up."""
        if channel.closing:
            return
        log.info("amqp: channel {n} error {code}: {text}", n=channel.number, code=code, text=text)
        channel.teardown()
        channel.closing = True
        self.send_method(
            channel.number,
            "channel.close",
            reply_code=code,
            reply_text=reply_text(code, text),
            class_id=class_id,
            method_id=method_id,
        )

    def protocol_error(self, error: Exception) -> None:
        """Bad input (or a broker refusal that concerns the whole connection): answered with
        ``connection.close`` and its reply code; the contract then closes the socket. A wrong
        protocol header is answered with ours; a silent client gets nothing."""
        if isinstance(error, BadProtocolHeader):
            self.write(C.PROTOCOL_HEADER)
            self.state = "closed"
            return
        code = getattr(error, "code", None)
        if isinstance(error, IdleTimeout) or not isinstance(code, int):
            # missed heartbeats, no handshake in time: the socket is closed, as RabbitMQ does
            self._close_connection(None, "")
            return
        self._close_connection(
            code,
            error.text if hasattr(error, "text") else str(error),
            getattr(error, "class_id", 0),
            getattr(error, "method_id", 0),
        )

    def internal_error(self, error: BaseException) -> None:
        self._close_connection(C.INTERNAL_ERROR, f"internal error ({type(error).__name__})")

    def shutting_down(self) -> None:
        """The broker stops: connection.close 320 (as RabbitMQ), consumers released now."""
        if self.state == "opened":
            self._close_connection(C.CONNECTION_FORCED, "broker shutdown")

    def _close_connection(
        self, code: int | None, text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        """Release everything and send ``connection.close`` with ``code`` (none: nothing, or
        before the protocol header was answered)."""
        if self.state in ("closing", "closed"):
            return
        was = self.state
        self.teardown()
        self._stop = True
        if code is None or was == "header":
            self.state = "closed"
            return
        self.state = "closing"
        self.send_method(
            0,
            "connection.close",
            reply_code=code,
            reply_text=reply_text(code, text),
            class_id=class_id,
            method_id=method_id,
        )
        # the socket closes on the client's close-ok (connection.py) or after this long
        self.conn.linger(CLOSE_OK_TIMEOUT)

    def drop_channel(self, channel: Channel) -> None:
        channel.teardown()
        self.channels.pop(channel.number, None)

    def teardown(self) -> None:
        """Release every channel (consumers cancelled, unacknowledged deliveries requeued)
        and what the connection owns in its vhost (exclusive queues)."""
        if self._torn_down:
            return
        self._torn_down = True
        for channel in list(self.channels.values()):
            channel.teardown()
        self.channels.clear()
        if self.vhost is not None:
            self.vhost.connection_closed(self)
        # nothing is held back any more: read again (a close-ok may be on its way)
        t, self._yield_call = self._yield_call, None
        if t is not None:
            if t.active():
                t.cancel()
            self.conn.resume_reading()
        if self.reading_paused:
            self.reading_paused = False
            self.conn.resume_reading()
        self._held = None

    def connection_lost(self) -> None:
        """The transport is gone: release everything."""
        self.teardown()
        self.state = "closed"

    # -- back-pressure and flow control ---------------------------------------------------

    def pause(self) -> None:
        self.paused = True
        for channel in self.channels.values():
            for consumer in channel.consumers.values():
                consumer.pause()

    def resume(self) -> None:
        self.paused = False
        for channel in list(self.channels.values()):
            if channel.flow_active:
                for consumer in list(channel.consumers.values()):
                    if self.paused:  # a delivery filled the socket buffer again
                        return
                    consumer.resume()

    def _yield(self) -> None:
        if self._yield_call is None:
            self.conn.pause_reading()
            self._yield_call = self.clock.callLater(0, self._resume_after_yield)

    def _resume_after_yield(self) -> None:
        self._yield_call = None
        self._burst = 0
        if self.state == "closed":
            return
        if not self.reading_paused:
            self._handle_held()
        self.conn.resume_reading()

    def _handle_held(self) -> None:
        held, self._held = self._held, None
        if held:
            self.conn.call_session(self.frames_received, held)

    def publishing_blocked(self, blocked: bool, reason: str) -> None:
        """The broker-wide resource alarm on/off: tell the client (connection.blocked /
        unblocked) and stop reading from this connection once it publishes while blocked."""
        if blocked == self.blocked:
            return
        self.blocked = blocked
        self.blocked_reason = reason
        if self.state == "opened" and self.blocked_notify:
            if blocked:
                self.send_method(0, "connection.blocked", reason=reason[:255])
            else:
                self.send_method(0, "connection.unblocked")
        if not blocked and self.reading_paused:
            self.reading_paused = False
            if self._yield_call is None and self.state not in ("closing", "closed"):
                self._handle_held()  # the frames that arrived with the blocking publish
            self.conn.resume_reading()

    def keepalive(self) -> None:
        self.write(C.HEARTBEAT_FRAME)
