"""AMQP 0-9-1 connection and channel state machines (no sockets).

A :class:`Connection` is fed raw bytes (:meth:`Connection.data_received`) and writes frames through
the ``write`` callable it was given; it calls the core for everything else. Deliveries arrive from
the core synchronously (``Consumer.deliver``) and are encoded as one buffer per message (deliver +
content header + body frames). Gathering output per read or reactor turn is the ``write``
callable's business (the transport's :class:`polymq.adapters.output.SocketWriter`); each
``data_received`` runs inside the ``reading`` context it was given, so that the output of a read
(the session's own resumed reads too) can leave when the read ends.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from twisted.logger import Logger

from polymq.adapters import peer_text
from polymq.core import __version__
from polymq.core.auth import Refusal
from polymq.core.errors import BrokerError, NotFound
from polymq.core.message import Message
from polymq.core.queue import Consumer, Limit
from polymq.core.tx import Transaction

from . import codec as C
from .mapping import PROPS_KEY, message_from_properties, properties_for

log = Logger(namespace="polymq.amqp")

DEFAULTS = {
    "frame_max": 131072,
    "channel_max": 2047,
    "heartbeat": 60,
    "handshake_timeout": 10,
    "memory_high_watermark": 1 << 30,
    "publish_burst": 256,
}

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "per_consumer_qos": True,
    "authentication_failure_close": True,
    "consumer_priorities": False,
    "direct_reply_to": False,
}

_PUBLISH_ID = (60, 40)
_unpack_frame_head = C._unpack_frame_head
_ACK_ID = (60, 80)


class ChannelError(Exception):
    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id


def _reply_text(code: int, text: str) -> str:
    name = C.REPLY_NAMES.get(code, "ERROR")
    out = text if text.startswith(name) else f"{name} - {text}"
    return out[:255]


class Channel:
    """One AMQP channel: its consumers, unacknowledged deliveries, confirms and transaction."""

    def __init__(self, conn: Connection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.open = True
        self.closing = False
        self.consumers: dict[str, Consumer] = {}
        self.unacked: OrderedDict[int, Any] = OrderedDict()
        self.next_tag = 0
        self.prefetch_count = 0
        self.global_limit: Limit | None = None
        self.confirm = False
        self.publish_seq = 0
        self.confirmed_seq = 0
        self.confirm_out: list[tuple[int, bool]] = []
        self.confirm_durable = False
        self.confirm_waiting = 0
        self.tx: Transaction | None = None
        self.tx_settled: list[tuple[int, Any]] = []
        self.tx_returns: list[tuple[bool, Message, bytes | None]] = []
        self.flow_active = True
        # content being received: (publish args, props, raw props, body size, parts, received)
        self.pub: dict | None = None
        self.props: dict | None = None
        self.raw_props: bytes | None = None
        self.body_size = 0
        self.body_parts: list[bytes] = []
        self.body_received = 0

    # -- teardown -------------------------------------------------------------------------

    def teardown(self) -> None:
        """Cancel every consumer and requeue every unacknowledged delivery."""
        self.open = False
        if self.tx is not None:
            # settlements not committed are discarded: those deliveries are unacked again
            self.tx.rollback()
            self.tx = None
            for tag, d in self.tx_settled:
                self.unacked[tag] = d
            self.tx_settled = []
        for consumer in list(self.consumers.values()):
            q = consumer.queue
            if q is not None:
                # unacknowledged deliveries are requeued below, all together and in order
                q.remove_consumer(consumer, requeue=False)
        self.consumers.clear()
        self._requeue_all()
        self.pub = None
        self.body_parts = []

    def _requeue_all(self) -> None:
        if not self.unacked:
            return
        by_queue: dict[int, tuple[Any, list]] = {}
        for d in self.unacked.values():
            q = d.queue
            entry = by_queue.get(id(q))
            if entry is None:
                by_queue[id(q)] = (q, [d])
            else:
                entry[1].append(d)
        self.unacked.clear()
        for q, ds in by_queue.values():
            q.requeue(ds)


class Connection:
    """The state machine of one client connection."""

    def __init__(
        self,
        broker: Any,
        write: Callable[[bytes], None],
        close_transport: Callable[[bool], None],
        peer: Any = None,
        config: dict | None = None,
        pause_reading: Callable[[bool], None] | None = None,
        reading: AbstractContextManager[Any] = nullcontext(),
    ) -> None:
        cfg = dict(DEFAULTS)
        if config:
            cfg.update({k: v for k, v in config.items() if k in DEFAULTS})
        self.broker = broker
        self._write = write
        self._reading = reading
        self._close_transport = close_transport
        self.peer = peer
        self.server_frame_max = max(C.FRAME_MIN_SIZE, int(cfg["frame_max"]))
        self.server_channel_max = int(cfg["channel_max"])
        self.server_heartbeat = int(cfg["heartbeat"])
        self.frame_max = self.server_frame_max
        self.channel_max = self.server_channel_max
        self.heartbeat = 0
        self.state = "header"  # header start-ok tune-ok open opened closing closed
        self.buf = b""
        self.channels: dict[int, Channel] = {}
        self.vhost: Any = None
        self.identity: Any = None
        self.client_properties: dict = {}
        self.cancel_notify = False
        self.paused = False
        self.max_message_size = int(getattr(broker, "max_message_size", 16 * 1024 * 1024))
        self._rx = True
        self._tx_idle = True
        self._missed = 0
        self._hb_timer: Any = None
        self._close_timer: Any = None
        self._confirming: list[Channel] = []
        self._pub_cache: dict[bytes, dict] = {}
        self.publish_burst = int(cfg["publish_burst"]) or 1 << 62
        self._burst = 0  # publishes handled since this connection last yielded
        self._yield_call: Any = None
        # connection.blocked: the broker holds too much; a publishing connection stops being read
        self._pause_reading = pause_reading
        self.blocked = False
        self.reading_paused = False
        self.blocked_notify = False
        clock = broker.clock
        self.clock = clock
        self._handshake_timer = clock.callLater(
            float(cfg["handshake_timeout"]), self._handshake_timeout
        )

    # -- output ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the ``write`` callable (which gathers it per read or turn, see the
        module docstring)."""
        self._tx_idle = False
        self._write(data)

    def _close(self, abort: bool) -> None:
        """Close the transport (whose ``close_transport`` sends what is gathered first)."""
        self._close_transport(abort)

    def send_method(self, channel: int, name: str, **args: Any) -> None:
        self.write(C.method_frame(channel, name, **args))

    # -- input ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        with self._reading:
            self._data_received(data)

    def _data_received(self, data: bytes) -> None:
        self._rx = True
        if data and self._yield_call is None:
            self._burst = 0
        buf = self.buf + data if self.buf else data
        if self.state == "header":
            if len(buf) < 8:
                self.buf = buf
                return
            if buf[:8] != C.PROTOCOL_HEADER:
                log.info("amqp: unsupported protocol header {h!r} from {p}", h=buf[:8],
                         p=peer_text(self.peer))
                self.write(C.PROTOCOL_HEADER)
                self.state = "closed"
                self._close(False)
                return
            buf = buf[8:]
            self._send_start()
        pos = 0
        n = len(buf)
        limit = self.frame_max - 8
        unpack = _unpack_frame_head
        on_body, on_method, on_header = self._on_body, self._on_method, self._on_header
        try:
            while n - pos >= 7:
                ftype, ch, size = unpack(buf, pos)
                if size > limit:
                    raise C.FrameError(
                        C.FRAME_ERROR, f"frame size {size} exceeds frame_max {self.frame_max}"
                    )
                end = pos + 7 + size
                if end >= n:
                    break
                if buf[end] != 206:  # frame-end
                    raise C.FrameError(C.FRAME_ERROR, f"bad frame end byte {buf[end]:#x}")
                payload = buf[pos + 7 : end]
                pos = end + 1
                if ftype == 3:
                    on_body(ch, payload)
                elif ftype == 1:
                    on_method(ch, payload)
                elif ftype == 2:
                    on_header(ch, payload)
                elif ftype == C.FRAME_HEARTBEAT:
                    if ch != 0:
                        raise C.FrameError(C.FRAME_ERROR, "heartbeat frame on a channel")
                else:
                    raise C.FrameError(C.FRAME_ERROR, f"unknown frame type {ftype}")
                if self.state == "closed":
                    return
                if self.reading_paused:  # blocked: the rest waits until unblocked
                    break
                if self._burst >= self.publish_burst:
                    # share the reactor: the rest of this read is handled on the next turn,
                    # after the other connections (consumers acknowledging) had theirs
                    self._yield()
                    break
                limit = self.frame_max - 8
        except C.FrameError as e:
            self.connection_error(e.code, e.text, e.class_id, e.method_id)
            return
        except BrokerError as e:
            self.connection_error(e.code, e.text)
            return
        except Exception as e:  # a bug must not take the broker down: close this connection
            log.failure("amqp: internal error")
            self.connection_error(C.INTERNAL_ERROR, f"internal error: {e!r}")
            return
        finally:
            self._flush_confirms()
        self.buf = buf[pos:] if pos < n else b""

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
            self._connection_method(spec, args)
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
                self._drop_channel(channel)
            elif spec.name == "channel.close":
                self.send_method(ch, "channel.close-ok")
                self._drop_channel(channel)
            return
        if channel.pub is not None:
            raise C.FrameError(
                C.UNEXPECTED_FRAME, f"method frame while content of {ch} is incomplete", *ids
            )
        if ids == _PUBLISH_ID:
            # publishers repeat the same exchange and key: decode each distinct method once
            pub = self._pub_cache.get(payload)
            if pub is None:
                pub = C.decode_publish(payload)
                if len(self._pub_cache) >= 256:
                    self._pub_cache.clear()
                self._pub_cache[payload] = pub
            channel.pub = pub
            channel.props = None
            return
        if ids == _ACK_ID:
            args = C.decode_ack(payload)
            try:
                self._ack(channel, args["delivery_tag"], args["multiple"])
            except (ChannelError, BrokerError) as e:
                self.channel_error(channel, e.code, e.text, 60, 80)
            return
        spec, args = C.decode_method(payload)
        handler = _CHANNEL_HANDLERS.get(spec.name)
        if handler is None:
            raise C.FrameError(
                C.COMMAND_INVALID if spec.name in _SERVER_ONLY else C.NOT_IMPLEMENTED,
                f"{spec.name} is not accepted from a client", *ids,
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
                channel, C.PRECONDITION_FAILED,
                f"message size {size} is larger than the maximum {self.max_message_size}", 60, 40,
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
        if message.user_id is not None and self.identity is not None and (
            message.user_id != self.identity.user
        ):
            self.channel_error(
                channel, C.PRECONDITION_FAILED,
                f"user_id property set to '{message.user_id}' but authenticated user was "
                f"'{self.identity.user}'", 60, 40,
            )
            return
        exchange = pub["exchange"]
        ex = self.vhost.exchanges.get(exchange)
        if ex is None:
            self.channel_error(
                channel, C.NOT_FOUND, f"no exchange '{exchange}' in vhost '{self.vhost.name}'",
                60, 40,
            )
            return
        if ex.internal:
            self.channel_error(
                channel, C.ACCESS_REFUSED, f"cannot publish to internal exchange '{exchange}'",
                60, 40,
            )
            return
        rk = pub["routing_key"]
        self._burst += 1
        if self.blocked and not self.reading_paused and self._pause_reading is not None:
            self.reading_paused = True
            self._pause_reading(True)
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
            self._basic_return(channel, message, raw)
        if channel.confirm:
            channel.publish_seq = seq = channel.publish_seq + 1
            ok = not (refused and not routed)
            channel.confirm_out.append((seq, ok))
            if ok and routed and message.durable:
                channel.confirm_durable = True
            if channel not in self._confirming:
                self._confirming.append(channel)

    def _basic_return(self, channel: Channel, message: Message, raw: bytes | None) -> None:
        out = C.method_frame(
            channel.number, "basic.return", reply_code=C.NO_ROUTE, reply_text="NO_ROUTE",
            exchange=message.exchange, routing_key=message.routing_key,
        )
        if raw is None or message.expiration is not None:
            raw = properties_for(message, None, self.broker)
        self.write(out + C.content_frames(channel.number, raw, message.body, self.frame_max))

    def _flush_confirms(self) -> None:
        """Send the confirms of this read: at once, or once durable when persistent."""
        if not self._confirming:
            return
        channels, self._confirming = self._confirming, []
        for channel in channels:
            out, channel.confirm_out = channel.confirm_out, []
            if not out:
                continue
            if channel.confirm_durable:
                channel.confirm_durable = False
                channel.confirm_waiting += 1
                self.broker.when_durable(lambda ch=channel, o=out: self._send_confirms(ch, o, 1))
            elif channel.confirm_waiting:
                channel.confirm_waiting += 1
                self.broker.when_durable(lambda ch=channel, o=out: self._send_confirms(ch, o, 1))
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
                frames.append(_ack_frame(n, run_end, run_len > 1))
                run_len = 0
            frames.append(C.method_frame(n, "basic.nack", delivery_tag=seq, multiple=False,
                                         requeue=False))
            channel.confirmed_seq = seq
        if run_len:
            frames.append(_ack_frame(n, run_end, run_len > 1))
            channel.confirmed_seq = run_end
        self.write(b"".join(frames))

    # -- acknowledgements -----------------------------------------------------------------

    def _take(self, channel: Channel, tag: int, multiple: bool) -> list[tuple[int, Any]]:
        """Remove and return the (tag, delivery) pairs an ack/nack/reject settles."""
        unacked = channel.unacked
        if multiple:
            if tag == 0:
                out = list(unacked.items())
                unacked.clear()
                return out
            out = []
            while unacked:
                first = next(iter(unacked))
                if first > tag:
                    break
                out.append(unacked.popitem(last=False))
            if not out:
                raise ChannelError(C.PRECONDITION_FAILED, f"unknown delivery tag {tag}")
            return out
        d = unacked.pop(tag, None)
        if d is None:
            raise ChannelError(C.PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        return [(tag, d)]

    def _ack(self, channel: Channel, tag: int, multiple: bool) -> None:
        if not multiple and channel.tx is None:
            d = channel.unacked.pop(tag, None)
            if d is None:
                raise ChannelError(C.PRECONDITION_FAILED, f"unknown delivery tag {tag}")
            d.queue.ack(d)
            return
        taken = self._take(channel, tag, multiple)
        tx = channel.tx
        if tx is not None:
            for _, d in taken:
                tx.ack(d)
            channel.tx_settled.extend(taken)
            return
        for _, d in taken:
            d.queue.ack(d)

    def _nack(self, channel: Channel, tag: int, multiple: bool, requeue: bool) -> None:
        taken = self._take(channel, tag, multiple)
        tx = channel.tx
        if tx is not None:
            for _, d in taken:
                tx.nack(d, requeue)
            channel.tx_settled.extend(taken)
            return
        if requeue:
            by_queue: dict[int, tuple[Any, list]] = {}
            for _, d in taken:
                by_queue.setdefault(id(d.queue), (d.queue, []))[1].append(d)
            for q, group in by_queue.values():
                q.requeue(group)
            return
        for _, d in taken:
            d.queue.nack(d, False)

    # -- consumers ------------------------------------------------------------------------

    def _make_deliver(self, channel: Channel, consumer_tag: str, no_ack: bool) -> Callable:
        prefix = C.deliver_prefix(consumer_tag)
        number = channel.number
        unacked = channel.unacked
        broker = self.broker
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
            self.write(
                deliver_frame(number, prefix, tag, d.delivery_count > 0, tail)
                + content_frames(number, raw, m.body, self.frame_max)
            )

        return deliver

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
            channel.number, "channel.close", reply_code=code, reply_text=_reply_text(code, text),
            class_id=class_id, method_id=method_id,
        )

    def connection_error(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Close the whole connection with ``code`` (connection.close, then drop)."""
        if self.state in ("closing", "closed"):
            return
        log.info(
            "amqp: closing connection from {peer}: {code} {text}", peer=peer_text(self.peer),
            code=code, text=text,
        )
        was = self.state
        self._teardown()
        self.buf = b""
        if was in ("header",):
            self.state = "closed"
            self._close(False)
            return
        self.state = "closing"
        self.send_method(
            0, "connection.close", reply_code=code, reply_text=_reply_text(code, text),
            class_id=class_id, method_id=method_id,
        )
        self._close_timer = self.clock.callLater(2.0, self._force_close)

    def _force_close(self) -> None:
        self._close_timer = None
        if self.state != "closed":
            self.state = "closed"
            self._close(True)

    def _drop_channel(self, channel: Channel) -> None:
        channel.teardown()
        self.channels.pop(channel.number, None)

    def _teardown(self) -> None:
        for channel in list(self.channels.values()):
            channel.teardown()
        self.channels.clear()
        if self.vhost is not None:
            self.vhost.connection_closed(self)
        for attr in ("_hb_timer", "_handshake_timer", "_yield_call"):
            t = getattr(self, attr)
            if t is not None and t.active():
                t.cancel()
            setattr(self, attr, None)

    def connection_lost(self) -> None:
        """The transport is gone: release everything."""
        if self.state != "closed":
            self._teardown()
        self.state = "closed"
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None

    # -- back-pressure --------------------------------------------------------------------

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
            if self._pause_reading is not None and not self.reading_paused:
                self._pause_reading(True)
            self._yield_call = self.clock.callLater(0, self._resume_after_yield)

    def _resume_after_yield(self) -> None:
        self._yield_call = None
        self._burst = 0
        if self.state == "closed":
            return
        if self.buf:
            self.data_received(b"")
        if self._yield_call is None and not self.reading_paused and self.state != "closed":
            if self._pause_reading is not None:
                self._pause_reading(False)

    def set_blocked(self, blocked: bool, reason: str = "") -> None:
        """Resource alarm on/off: tell the client (connection.blocked / unblocked) and stop
        reading from this connection once it publishes while blocked."""
        if blocked == self.blocked:
            return
        self.blocked = blocked
        if self.state == "opened" and self.blocked_notify:
            if blocked:
                self.send_method(0, "connection.blocked", reason=reason[:255])
            else:
                self.send_method(0, "connection.unblocked")
        if not blocked and self.reading_paused:
            self.reading_paused = False
            if self._pause_reading is not None:
                self._pause_reading(False)
            if self.buf and self.state not in ("closing", "closed"):
                self.data_received(b"")  # frames that arrived with the blocking publish

    # -- timers ---------------------------------------------------------------------------

    def _handshake_timeout(self) -> None:
        self._handshake_timer = None
        if self.state not in ("opened", "closing", "closed"):
            log.info("amqp: handshake timeout from {peer}", peer=peer_text(self.peer))
            self.state = "closed"
            self._teardown()
            self._close(True)

    def _heartbeat_tick(self) -> None:
        self._hb_timer = None
        if self.state in ("closed",):
            return
        if self._rx or self.reading_paused:  # a blocked connection is not read from
            self._rx = False
            self._missed = 0
        else:
            self._missed += 1
            if self._missed >= 4:  # two heartbeat intervals (ticks are half intervals)
                log.info("amqp: missed heartbeats from {peer}, closing", peer=peer_text(self.peer))
                self.state = "closed"
                self._teardown()
                self._close(True)
                return
        if self._tx_idle:
            self.write(C.HEARTBEAT_FRAME)
        self._tx_idle = True
        self._hb_timer = self.clock.callLater(self.heartbeat / 2.0, self._heartbeat_tick)

    # -- connection class -----------------------------------------------------------------

    def _send_start(self) -> None:
        self.state = "start-ok"
        props = {
            "product": "polymq",
            "version": __version__,
            "platform": "Python/Twisted",
            "copyright": "polymq authors",
            "information": f"polymq {__version__}: one broker for AMQP 0-9-1, MQTT, Kafka and "
            "OpenWire clients; licensed under Apache-2.0",
            "cluster_name": "polymq",
            "capabilities": dict(SERVER_CAPABILITIES),
        }
        self.send_method(
            0, "connection.start", version_major=0, version_minor=9, server_properties=props,
            mechanisms=b"PLAIN AMQPLAIN", locales=b"en_US",
        )

    def _connection_method(self, spec: C.MethodSpec, args: dict) -> None:
        name = spec.name
        state = self.state
        if state == "closing":
            if name == "connection.close-ok":
                self.state = "closed"
                self._close(False)
            elif name == "connection.close":
                self.write(C.method_frame(0, "connection.close-ok"))
                self.state = "closed"
                self._close(False)
            return
        if name == "connection.close":
            self._teardown()
            self.write(C.method_frame(0, "connection.close-ok"))
            self.state = "closed"
            self._close(False)
            return
        if name == "connection.start-ok" and state == "start-ok":
            self._start_ok(args)
        elif name == "connection.secure-ok" and state == "secure-ok":
            raise C.FrameError(C.NOT_IMPLEMENTED, "no challenge was sent", 10, 21)
        elif name == "connection.tune-ok" and state == "tune-ok":
            self._tune_ok(args)
        elif name == "connection.open" and state == "open":
            self._open(args)
        elif name == "connection.update-secret" and state == "opened":
            self.send_method(0, "connection.update-secret-ok")
        elif name in ("connection.blocked", "connection.unblocked") and state == "opened":
            pass
        else:
            raise C.FrameError(
                C.COMMAND_INVALID, f"unexpected {name} in state {state}", spec.class_id,
                spec.method_id,
            )

    def _start_ok(self, args: dict) -> None:
        self.client_properties = args.get("client_properties") or {}
        caps = self.client_properties.get("capabilities") or {}
        self.cancel_notify = bool(isinstance(caps, dict) and caps.get("consumer_cancel_notify"))
        self.blocked_notify = bool(isinstance(caps, dict) and caps.get("connection.blocked"))
        mechanism = args["mechanism"]
        response = bytes(args["response"])
        if mechanism == "PLAIN":
            parts = response.split(b"\x00")
            if len(parts) != 3:
                raise C.FrameError(C.ACCESS_REFUSED, "malformed PLAIN response", 10, 11)
            user, password = parts[1], parts[2]
        elif mechanism == "AMQPLAIN":
            table = C.decode_table_body(response)
            user, password = table.get("LOGIN"), table.get("PASSWORD")
        else:
            raise C.FrameError(
                C.ACCESS_REFUSED, f"unsupported authentication mechanism {mechanism!r}", 10, 11
            )

        def text(v: Any) -> str | None:
            if v is None:
                return None
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

        result = self.broker.authenticate("amqp", text(user), text(password), self.peer)
        if result is None or isinstance(result, Refusal):
            reason = getattr(result, "reason", "refused")
            raise C.FrameError(
                C.ACCESS_REFUSED,
                f"Login was refused using authentication mechanism {mechanism}: {reason}",
                10, 11,
            )
        self.identity = result
        self.state = "tune-ok"
        self.send_method(
            0, "connection.tune", channel_max=self.server_channel_max,
            frame_max=self.server_frame_max, heartbeat=self.server_heartbeat,
        )

    def _tune_ok(self, args: dict) -> None:
        fm = args["frame_max"]
        if fm == 0 or fm > self.server_frame_max:
            if fm > self.server_frame_max:
                raise C.FrameError(
                    C.NOT_ALLOWED, f"frame_max {fm} above the maximum {self.server_frame_max}",
                    10, 31,
                )
            fm = self.server_frame_max
        if fm < C.FRAME_MIN_SIZE:
            raise C.FrameError(C.NOT_ALLOWED, f"frame_max {fm} below {C.FRAME_MIN_SIZE}", 10, 31)
        self.frame_max = fm
        cm = args["channel_max"]
        self.channel_max = self.server_channel_max if cm == 0 else min(cm, self.server_channel_max)
        self.heartbeat = args["heartbeat"]
        self.state = "open"
        if self.heartbeat:
            self._hb_timer = self.clock.callLater(self.heartbeat / 2.0, self._heartbeat_tick)

    def _open(self, args: dict) -> None:
        name = args["virtual_host"] or "/"
        try:
            self.vhost = self.broker.vhost(name)
        except NotFound:
            raise C.FrameError(C.NOT_ALLOWED, f"vhost '{name}' not found", 10, 40) from None
        self.state = "opened"
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self.send_method(0, "connection.open-ok")
        if self.blocked and self.blocked_notify:
            self.send_method(0, "connection.blocked", reason="memory high watermark")


def _ack_frame(channel: int, tag: int, multiple: bool) -> bytes:
    return C.method_frame(channel, "basic.ack", delivery_tag=tag, multiple=multiple)


# ---------------------------------------------------------------------------------------------
# channel method handlers
# ---------------------------------------------------------------------------------------------

_SERVER_ONLY = frozenset(
    name for name in C.BY_NAME if name.endswith("-ok") or name in (
        "basic.deliver", "basic.return", "basic.get-empty", "connection.start",
        "connection.tune", "connection.secure",
    )
)


def _channel_close(conn: Connection, ch: Channel, args: dict) -> None:
    conn._drop_channel(ch)
    conn.send_method(ch.number, "channel.close-ok")


def _channel_close_ok(conn: Connection, ch: Channel, args: dict) -> None:
    pass


def _channel_open(conn: Connection, ch: Channel, args: dict) -> None:
    raise C.FrameError(C.CHANNEL_ERROR, f"channel {ch.number} is already open", 20, 10)


def _channel_flow(conn: Connection, ch: Channel, args: dict) -> None:
    active = args["active"]
    ch.flow_active = active
    for consumer in ch.consumers.values():
        if active and not conn.paused:
            consumer.resume()
        elif not active:
            consumer.pause()
    conn.send_method(ch.number, "channel.flow-ok", active=active)


def _channel_flow_ok(conn: Connection, ch: Channel, args: dict) -> None:
    pass


def _access_request(conn: Connection, ch: Channel, args: dict) -> None:
    conn.send_method(ch.number, "access.request-ok", ticket=1)


def _exchange_declare(conn: Connection, ch: Channel, args: dict) -> None:
    name = args["exchange"]
    if not args["passive"] and name == "":
        raise ChannelError(C.ACCESS_REFUSED, "operation not permitted on the default exchange")
    conn.vhost.declare_exchange(
        name, args["type"] or "direct", durable=args["durable"], auto_delete=args["auto_delete"],
        internal=args["internal"], arguments=args["arguments"], passive=args["passive"],
    )
    if not args["nowait"]:
        conn.send_method(ch.number, "exchange.declare-ok")


def _exchange_delete(conn: Connection, ch: Channel, args: dict) -> None:
    conn.vhost.delete_exchange(args["exchange"], if_unused=args["if_unused"])
    if not args["nowait"]:
        conn.send_method(ch.number, "exchange.delete-ok")


def _exchange_bind(conn: Connection, ch: Channel, args: dict) -> None:
    conn.vhost.bind_exchange(
        args["destination"], args["source"], args["routing_key"], args["arguments"]
    )
    if not args["nowait"]:
        conn.send_method(ch.number, "exchange.bind-ok")


def _exchange_unbind(conn: Connection, ch: Channel, args: dict) -> None:
    conn.vhost.unbind_exchange(
        args["destination"], args["source"], args["routing_key"], args["arguments"]
    )
    if not args["nowait"]:
        conn.send_method(ch.number, "exchange.unbind-ok")


def _queue_declare(conn: Connection, ch: Channel, args: dict) -> None:
    passive = args["passive"]
    q = conn.vhost.declare_queue(
        args["queue"], durable=args["durable"],
        exclusive_owner=conn if (args["exclusive"] or passive) else None,
        auto_delete=args["auto_delete"], arguments=args["arguments"], passive=passive,
    )
    if not args["nowait"]:
        conn.send_method(
            ch.number, "queue.declare-ok", queue=q.name, message_count=q.message_count,
            consumer_count=q.consumer_count,
        )


def _queue_bind(conn: Connection, ch: Channel, args: dict) -> None:
    conn.vhost.bind_queue(
        args["queue"], args["exchange"], args["routing_key"], args["arguments"], owner=conn
    )
    if not args["nowait"]:
        conn.send_method(ch.number, "queue.bind-ok")


def _queue_unbind(conn: Connection, ch: Channel, args: dict) -> None:
    conn.vhost.unbind_queue(
        args["queue"], args["exchange"], args["routing_key"], args["arguments"], owner=conn
    )
    conn.send_method(ch.number, "queue.unbind-ok")


def _queue_purge(conn: Connection, ch: Channel, args: dict) -> None:
    n = conn.vhost.purge_queue(args["queue"], owner=conn)
    if not args["nowait"]:
        conn.send_method(ch.number, "queue.purge-ok", message_count=n)


def _queue_delete(conn: Connection, ch: Channel, args: dict) -> None:
    n = conn.vhost.delete_queue(
        args["queue"], if_unused=args["if_unused"], if_empty=args["if_empty"], owner=conn
    )
    if not args["nowait"]:
        conn.send_method(ch.number, "queue.delete-ok", message_count=n)


def _basic_qos(conn: Connection, ch: Channel, args: dict) -> None:
    count = args["prefetch_count"]
    if args["global_"]:
        if ch.global_limit is None:
            ch.global_limit = Limit(count)
        else:
            ch.global_limit.set_prefetch(count)
    else:
        ch.prefetch_count = count
    conn.send_method(ch.number, "basic.qos-ok")


def _stream_offset(value: Any) -> Any:
    if value is None:
        return "next"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, C.Timestamp):
        return ("timestamp", int(value) * 1000)
    if isinstance(value, str):
        if value in ("first", "last", "next"):
            return value
        raise ChannelError(C.PRECONDITION_FAILED, f"invalid x-stream-offset {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ChannelError(C.PRECONDITION_FAILED, f"invalid x-stream-offset {value!r}")


def _basic_consume(conn: Connection, ch: Channel, args: dict) -> None:
    q = conn.vhost.get_queue(args["queue"], owner=conn)
    tag = args["consumer_tag"] or "amq.ctag-" + secrets.token_urlsafe(16)
    if tag in ch.consumers:
        raise C.FrameError(C.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", 60, 20)
    no_ack = args["no_ack"]
    arguments = args["arguments"] or {}
    if q.consumers and (args["exclusive"] or any(c.exclusive for c in q.consumers)):
        raise ChannelError(
            C.ACCESS_REFUSED, f"queue '{q.name}' in vhost '{conn.vhost.name}' in exclusive use"
        )
    consumer = Consumer(
        tag, conn._make_deliver(ch, tag, no_ack), prefetch=ch.prefetch_count,
        limit=ch.global_limit, no_ack=no_ack, exclusive=args["exclusive"], owner=conn,
        arguments=arguments,
    )
    consumer.on_cancel = lambda: _server_cancel(conn, ch, tag)
    consumer.paused = True
    if q.kind == "stream":
        q.add_consumer(consumer, _stream_offset(arguments.get("x-stream-offset")))
    else:
        q.add_consumer(consumer)
    ch.consumers[tag] = consumer
    if not args["nowait"]:
        conn.send_method(ch.number, "basic.consume-ok", consumer_tag=tag)
    if ch.flow_active and not conn.paused:
        consumer.resume()


def _server_cancel(conn: Connection, ch: Channel, tag: str) -> None:
    if ch.consumers.pop(tag, None) is None or not ch.open:
        return
    if conn.cancel_notify and conn.state == "opened":
        conn.send_method(ch.number, "basic.cancel", consumer_tag=tag, nowait=True)


def _basic_cancel(conn: Connection, ch: Channel, args: dict) -> None:
    tag = args["consumer_tag"]
    consumer = ch.consumers.pop(tag, None)
    if consumer is not None and consumer.queue is not None:
        consumer.queue.remove_consumer(consumer, requeue=False)
    if not args["nowait"]:
        conn.send_method(ch.number, "basic.cancel-ok", consumer_tag=tag)


def _basic_get(conn: Connection, ch: Channel, args: dict) -> None:
    q = conn.vhost.get_queue(args["queue"], owner=conn)
    no_ack = args["no_ack"]
    d = q.get(no_ack=no_ack)
    if d is None:
        conn.send_method(ch.number, "basic.get-empty")
        return
    ch.next_tag = tag = ch.next_tag + 1
    if not no_ack:
        ch.unacked[tag] = d
    m = d.message
    raw = m.annotations.get(PROPS_KEY)
    if raw is None or m.expiration is not None:
        raw = properties_for(m, d.offset, conn.broker)
    conn.write(
        C.method_frame(
            ch.number, "basic.get-ok", delivery_tag=tag, redelivered=d.delivery_count > 0,
            exchange=m.exchange, routing_key=m.routing_key, message_count=q.message_count,
        )
        + C.content_frames(ch.number, raw, m.body, conn.frame_max)
    )


def _basic_reject(conn: Connection, ch: Channel, args: dict) -> None:
    conn._nack(ch, args["delivery_tag"], False, args["requeue"])


def _basic_nack(conn: Connection, ch: Channel, args: dict) -> None:
    conn._nack(ch, args["delivery_tag"], args["multiple"], args["requeue"])


def _basic_recover(conn: Connection, ch: Channel, args: dict) -> None:
    ch._requeue_all()
    conn.send_method(ch.number, "basic.recover-ok")


def _basic_recover_async(conn: Connection, ch: Channel, args: dict) -> None:
    ch._requeue_all()


def _confirm_select(conn: Connection, ch: Channel, args: dict) -> None:
    if ch.tx is not None:
        raise ChannelError(C.PRECONDITION_FAILED, "cannot switch from tx to confirm mode")
    ch.confirm = True
    if not args["nowait"]:
        conn.send_method(ch.number, "confirm.select-ok")


def _tx_select(conn: Connection, ch: Channel, args: dict) -> None:
    if ch.confirm:
        raise ChannelError(C.PRECONDITION_FAILED, "cannot switch from confirm to tx mode")
    if ch.tx is None:
        ch.tx = Transaction(conn.vhost)
    conn.send_method(ch.number, "tx.select-ok")


def _tx_commit(conn: Connection, ch: Channel, args: dict) -> None:
    tx = ch.tx
    if tx is None:
        raise ChannelError(C.PRECONDITION_FAILED, "channel is not transactional")
    returns, ch.tx_returns = ch.tx_returns, []
    ch.tx_settled = []
    number = ch.number

    def done() -> None:
        if ch.open and conn.state == "opened":
            conn.send_method(number, "tx.commit-ok")

    results = tx.commit(on_durable=done)
    for (mandatory, message, raw), (routed, refused) in zip(returns, results, strict=False):
        if mandatory and not routed and not refused:
            conn._basic_return(ch, message, raw)


def _tx_rollback(conn: Connection, ch: Channel, args: dict) -> None:
    tx = ch.tx
    if tx is None:
        raise ChannelError(C.PRECONDITION_FAILED, "channel is not transactional")
    tx.rollback()
    ch.tx_returns = []
    settled, ch.tx_settled = ch.tx_settled, []
    if settled:
        for tag, d in settled:
            ch.unacked[tag] = d
        items = sorted(ch.unacked.items())
        ch.unacked.clear()
        ch.unacked.update(items)
    conn.send_method(ch.number, "tx.rollback-ok")


_CHANNEL_HANDLERS: dict[str, Callable[[Connection, Channel, dict], None]] = {
    "channel.close": _channel_close,
    "channel.close-ok": _channel_close_ok,
    "channel.open": _channel_open,
    "channel.flow": _channel_flow,
    "channel.flow-ok": _channel_flow_ok,
    "access.request": _access_request,
    "exchange.declare": _exchange_declare,
    "exchange.delete": _exchange_delete,
    "exchange.bind": _exchange_bind,
    "exchange.unbind": _exchange_unbind,
    "queue.declare": _queue_declare,
    "queue.bind": _queue_bind,
    "queue.unbind": _queue_unbind,
    "queue.purge": _queue_purge,
    "queue.delete": _queue_delete,
    "basic.qos": _basic_qos,
    "basic.consume": _basic_consume,
    "basic.cancel": _basic_cancel,
    "basic.get": _basic_get,
    "basic.reject": _basic_reject,
    "basic.nack": _basic_nack,
    "basic.recover": _basic_recover,
    "basic.recover-async": _basic_recover_async,
    "confirm.select": _confirm_select,
    "tx.select": _tx_select,
    "tx.commit": _tx_commit,
    "tx.rollback": _tx_rollback,
}
