"""The MQTT protocol state machine: connections, sessions, subscriptions, retained messages.

No sockets here. A :class:`Connection` is fed bytes (``data_received``) and hands the bytes it
wants written to its ``write`` callable (the transport batches them per reactor turn); it asks
the transport to close through ``close``. A :class:`SessionState` outlives connections (persistent
sessions); the :class:`MqttServer` owns the sessions, retained messages and will timers of one
listener.

Mapping to the core (docs/mqtt.md): an MQTT topic ``a/b`` is the ``amq.topic`` routing key
``a.b`` ('/' and '.' swapped both ways); each session has a queue ``mqtt-session.<client id>``
bound to ``amq.topic`` with its translated filters (durable for persistent sessions); a shared
subscription ``$share/g/f`` is a queue ``mqtt-shared.g.<key>`` whose consumers are the members.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from polymq.core.address import key_from_headers
from polymq.core.auth import Refusal
from polymq.core.connection import ProtocolConnection, SessionBase
from polymq.core.errors import BrokerError, ConnectionForced, IdleTimeout
from polymq.core.message import Message, now_ms
from polymq.core.queue import Consumer, Delivery, Limit
from polymq.core.scheduler import headers_delay

from . import codec as c
from .server import (
    DELAY_PROPERTY,
    NEVER,
    MqttServer,
    SessionState,
    Sub,
    reply_to_core,
    static_props,
)

log = Logger(namespace="polymq.mqtt")


class Connection(SessionBase):
    """One network connection speaking MQTT: the session of the connection contract."""

    def __init__(self, server: MqttServer, conn: ProtocolConnection) -> None:
        self.conn = conn
        self.server = server
        self.broker = server.broker
        self.write = conn.write
        # acks sent once the publish they answer is durable, in order, one store wait a read
        self.reply_durable = conn.reply_after_durable
        self.reader = conn.framer
        self.reader.first_type_check = self._check_first
        self.reader.one_at_a_time = True
        self.state = 0  # 0 new, 1 connected, 2 closed
        self.version = c.V311
        self.client_id = ""
        self.session: SessionState | None = None
        self.consumers: list[Consumer] = []
        self.limit: Limit | None = None
        self.inflight: dict[int, Delivery] = {}
        self.own_consumer: Consumer | None = None
        self.next_pid = 1
        self.in_aliases: dict[int, str] = {}
        self.out_aliases: dict[str, int] = {}
        self.out_alias_max = 0
        self.client_max_packet = c.MAX_REMAINING_LENGTH + 5
        self.keep_alive = 0
        self.will: tuple[str, Message, bool, int] | None = None
        self.inbound_pending = 0
        self.qos1_unacked = 0  # 5.0: QoS 1 publishes whose PUBACK waits for the store
        self.paused = False
        # the broker-wide resource alarm: a publisher's socket is no longer read while it holds
        self.publishing_held = False
        self.reading_held = False
        self.request_problem_info = True
        self.user = None

    @property
    def peer(self) -> str:
        return self.conn.peer

    # -- input ------------------------------------------------------------------------------

    def _check_first(self, first: int, length: int) -> None:
        if first >> 4 != c.CONNECT:
            raise c.MalformedPacket(
                f"first packet is {c.PACKET_NAMES.get(first >> 4, first >> 4)}, not CONNECT",
                c.PROTOCOL_ERROR,
            )
        self.reader.first_type_check = None

    def frames_received(self, packets: list) -> None:
        """The packets of one read (the contract's error boundary handles what is raised)."""
        for first, body in packets:
            if self.state != 1:
                if self.state == 2:
                    break
                self.handle(first, body)
                if self.conn.logging_in:  # CONNECT waits for its login: the rest waits too
                    self.conn.hold_frames(packets[packets.index((first, body)) + 1 :])
                    return
            elif first & 0xF0 == 0x30:  # PUBLISH (hot path)
                self.on_publish(first & 0x0F, body)
            elif first == 0x40 and len(body) == 2:  # PUBACK without reason (hot path)
                d = self.inflight.pop((body[0] << 8) | body[1], None)
                if d is not None:
                    d.queue.ack(d)
            else:
                self.handle(first, body)
        reader = self.reader
        if self.state == 1 and reader.one_at_a_time:
            # CONNECT was accepted: what came with it is framed under the session's limits
            reader.one_at_a_time = False
            if reader.buf:
                more = reader.feed(b"")
                if more:
                    self.frames_received(more)

    def protocol_error(self, error: Exception) -> None:
        """Bad input or a refusal: 5.0 clients get DISCONNECT with the reason code."""
        if isinstance(error, IdleTimeout):
            reason, text = c.KEEP_ALIVE_TIMEOUT, f"{error} (keep-alive timeout)"
        elif isinstance(error, ConnectionForced):
            reason, text = c.ADMINISTRATIVE_ACTION, error.text
        elif isinstance(error, BrokerError):
            reason, text = c.IMPLEMENTATION_SPECIFIC, f"broker refused: {error.text}"
        else:
            reason = getattr(error, "reason", None) or c.MALFORMED_PACKET
            text = str(error)
        if self.state == 1 and self.version == c.V5:
            self.send_disconnect(reason, text)
        self.state = 2

    def internal_error(self, error: BaseException) -> None:
        if self.state == 1 and self.version == c.V5:
            self.send_disconnect(c.UNSPECIFIED_ERROR, "internal error")
        self.state = 2

    def publishing_blocked(self, blocked: bool, reason: str) -> None:
        self.publishing_held = blocked
        if not blocked and self.reading_held:
            self.reading_held = False
            self.conn.resume_reading()

    def _hold_publisher(self) -> None:
        # as RabbitMQ does: a connection that publishes while the alarm is on is not read
        # until it clears (its receive maximum fills); subscribers keep draining
        if not self.reading_held:
            self.reading_held = True
            self.conn.pause_reading()

    def shutting_down(self) -> None:
        if self.state == 1 and self.version == c.V5:
            self.send_disconnect(c.SERVER_SHUTTING_DOWN)

    def handle(self, first: int, body: bytes) -> None:
        ptype = first >> 4
        if ptype == c.PUBLISH:
            if self.state != 1:
                raise c.MalformedPacket("PUBLISH before CONNECT", c.PROTOCOL_ERROR)
            self.on_publish(first & 0x0F, body)
            return
        if (first & 0x0F) != c.REQUIRED_FLAGS.get(ptype, -1):
            if ptype == 0 or ptype not in c.REQUIRED_FLAGS:
                raise c.MalformedPacket(f"reserved packet type {ptype}")
            raise c.MalformedPacket(f"bad fixed-header flags on {c.PACKET_NAMES[ptype]}")
        if self.state == 0:
            if ptype != c.CONNECT:
                raise c.MalformedPacket("first packet is not CONNECT", c.PROTOCOL_ERROR)
            self.on_connect(body)
            return
        if ptype == c.PUBACK:
            pid, _ = c.decode_ack(body, self.version)
            d = self.inflight.pop(pid, None)
            if d is not None:
                d.queue.ack(d)
        elif ptype == c.PUBREC:
            pid, reason = c.decode_ack(body, self.version)
            d = self.inflight.pop(pid, None)
            if d is not None:
                d.queue.ack(d)
            if reason >= 0x80:
                return
            s = self.session
            if d is not None or pid in s.pubrel_pending:
                if pid not in s.pubrel_pending:
                    if len(s.pubrel_pending) >= 16384:
                        raise c.MalformedPacket("too many PUBRELs unanswered", c.QUOTA_EXCEEDED)
                    s.pubrel_pending.add(pid)
                    if s.durable:
                        s.save()
                self.write(c.encode_ack(c.PUBREL, pid))
            else:
                self.write(self._ack(c.PUBREL, pid, c.PACKET_ID_NOT_FOUND))
        elif ptype == c.PUBCOMP:
            pid, _ = c.decode_ack(body, self.version)
            s = self.session
            if pid in s.pubrel_pending:
                s.pubrel_pending.discard(pid)
                if s.durable:
                    s.save()
        elif ptype == c.PUBREL:
            pid, _ = c.decode_ack(body, self.version)
            s = self.session
            if pid in s.inbound_qos2:
                s.inbound_qos2.discard(pid)
                self.inbound_pending -= 1
                if s.durable:
                    s.save()
                self.reply_durable(c.encode_ack(c.PUBCOMP, pid))
            else:
                self.reply_durable(self._ack(c.PUBCOMP, pid, c.PACKET_ID_NOT_FOUND))
        elif ptype == c.PINGREQ:
            self.write(b"\xd0\x00")
        elif ptype == c.SUBSCRIBE:
            self.on_subscribe(body)
        elif ptype == c.UNSUBSCRIBE:
            self.on_unsubscribe(body)
        elif ptype == c.DISCONNECT:
            self.on_disconnect(body)
        elif ptype == c.CONNECT:
            raise c.MalformedPacket("second CONNECT", c.PROTOCOL_ERROR)
        elif ptype == c.AUTH and self.version == c.V5:
            raise c.MalformedPacket("AUTH without an authentication method", c.PROTOCOL_ERROR)
        else:
            raise c.MalformedPacket(
                f"{c.PACKET_NAMES.get(ptype, ptype)} is not sent by clients", c.PROTOCOL_ERROR
            )

    def _ack(self, ptype: int, pid: int, reason: int, text: str | None = None) -> bytes:
        if self.version != c.V5:
            return c.encode_ack(ptype, pid)
        props = (
            c.encode_props({"reason_string": text}) if text and self.request_problem_info else None
        )
        if props is None and reason == 0:
            return c.encode_ack(ptype, pid)
        return c.encode_ack(ptype, pid, reason, props if props is not None else b"\x00")

    # -- errors -----------------------------------------------------------------------------

    def fail(self, reason: int, text: str) -> None:
        """A protocol violation: 5.0 DISCONNECT with the reason code, then close."""
        if self.state == 2:
            return
        log.info(
            "mqtt: closing {peer} ({cid}): {text}", peer=self.peer, cid=self.client_id, text=text
        )
        if self.state == 1 and self.version == c.V5:
            self.send_disconnect(reason, text)
        self.close()

    def send_disconnect(self, reason: int, text: str | None = None) -> None:
        props = {"reason_string": text} if text and self.request_problem_info else None
        self.write(c.build_disconnect(reason, props))

    def close(self) -> None:
        if self.state != 2:
            self.conn.close()

    # -- CONNECT ----------------------------------------------------------------------------

    def on_connect(self, body: bytes) -> None:
        # protocol name and level first: an unknown level gets its CONNACK even when the rest
        # of the packet is laid out differently
        nlen = (body[0] << 8) | body[1] if len(body) >= 2 else -1
        name = body[2 : 2 + nlen] if nlen >= 0 else b""
        level = body[2 + nlen] if 0 <= nlen and len(body) > 2 + nlen else -1
        if not (
            (name == b"MQTT" and level in (c.V311, c.V5)) or (name == b"MQIsdp" and level == 3)
        ):
            if name in (b"MQTT", b"MQIsdp") and level >= 0:
                self._connack(0, c.V3_UNACCEPTABLE_PROTOCOL, {}, v5reason=0x84)
            self.fail(c.UNSUPPORTED_PROTOCOL_VERSION, f"unsupported protocol {name!r} {level}")
            return
        pkt = c.decode(c.CONNECT, body, c.V311)
        self.version = level if level == c.V5 else c.V311
        v5 = level == c.V5
        f = pkt.flags
        if f.reserved:
            raise c.MalformedPacket("reserved CONNECT flag set")
        if not f.will and (f.will_qos or f.will_retain):
            raise c.MalformedPacket("will QoS/retain without a will")
        if f.will_qos == 3:
            raise c.MalformedPacket("will QoS 3")
        if not v5 and f.password and not f.username:
            raise c.MalformedPacket("password without user name")
        props = c.props_to_dict(pkt.properties["items"]) if v5 else {}
        if props.get("receive_maximum") == 0 or props.get("maximum_packet_size") == 0:
            raise c.MalformedPacket("receive maximum or maximum packet size of 0", c.PROTOCOL_ERROR)
        self.request_problem_info = props.get("request_problem_information", 1) != 0
        if "authentication_method" in props:
            self._connack(0, c.V3_NOT_AUTHORIZED, {}, v5reason=c.BAD_AUTH_METHOD)
            self.fail(c.BAD_AUTH_METHOD, "enhanced authentication is not supported")
            return
        cid = pkt.client_id
        clean = bool(f.clean_start)
        assigned = None
        if not cid:
            if not v5 and not clean:
                self._connack(0, c.V3_IDENTIFIER_REJECTED, {})
                self.fail(c.CLIENT_ID_NOT_VALID, "empty client id without clean session")
                return
            cid = assigned = "auto-" + secrets.token_hex(12)
        if "\x00" in cid:
            raise c.MalformedPacket("NUL in client id")
        self.client_id = cid
        # will (validated before authentication so that a malformed one is refused as such)
        will = None
        if f.will:
            wtopic = pkt.will_topic
            if not c.valid_topic_name(wtopic):
                raise c.MalformedPacket("invalid will topic", c.TOPIC_NAME_INVALID)
            wprops = c.props_to_dict(pkt.will_properties["items"]) if v5 else {}
            wmsg = self._message(pkt.will_payload, f.will_qos, bool(f.will_retain), wprops)
            will = (wtopic, wmsg, bool(f.will_retain), wprops.get("will_delay_interval", 0))
        # authentication, once per connection; the rest of CONNECT runs once it is answered
        # (a password hash may be verified in a thread meanwhile; later packets wait)
        username = pkt.username
        self.conn.login(
            username,
            pkt.password,
            lambda ident: self._connect_authenticated(ident, pkt, props, will, assigned),
        )

    def _connect_authenticated(
        self, ident: Any, pkt: Any, props: dict, will: Any, assigned: str | None
    ) -> None:
        if self.state == 2:
            return
        username = pkt.username
        if ident is None or isinstance(ident, Refusal):
            reason = getattr(ident, "reason", "refused")
            self._connack(
                0,
                c.V3_BAD_USERNAME_OR_PASSWORD if username else c.V3_NOT_AUTHORIZED,
                {"reason_string": reason},
                v5reason=c.BAD_USERNAME_OR_PASSWORD if username else c.NOT_AUTHORIZED,
            )
            self.fail(c.NOT_AUTHORIZED, f"authentication refused: {reason}")
            return
        self.user = ident
        info = self.conn.info
        info.client_id, info.vhost = self.client_id, self.server.vhost.name  # for %c, vhost
        if will is not None and not self.conn.authorize("write", "topic", will[0]):
            # a will the user may not publish: refused at CONNECT (3.1.1 return code 5, 5.0
            # reason 0x87), as RabbitMQ does, rather than dropped unseen when it fires
            reason = f"not authorized to publish the will to '{will[0]}'"
            self._connack(0, c.V3_NOT_AUTHORIZED, {"reason_string": reason}, c.NOT_AUTHORIZED)
            self.fail(c.NOT_AUTHORIZED, reason)
            return
        v5 = self.version == c.V5
        f = pkt.flags
        clean = bool(f.clean_start)
        cid = self.client_id
        server = self.server
        # keep-alive
        ka = pkt.keep_alive
        server_ka = None
        if v5 and server.max_keep_alive and (ka == 0 or ka > server.max_keep_alive):
            ka = server_ka = server.max_keep_alive
        self.keep_alive = ka
        # session expiry
        if v5:
            expiry = props.get("session_expiry_interval", 0)
            if expiry != NEVER:
                expiry = min(expiry, server.max_session_expiry)
        else:
            expiry = 0 if clean else NEVER
        # take over / resume / start the session
        old = server.sessions.get(cid)
        if old is not None and old.conn is not None:
            old.conn.taken_over()
        # a pending (delayed) will of this client id: the session continues, so it is
        # dropped; or the session ends (clean start), so it is published now
        if clean:
            server.fire_will(cid)
        else:
            server.cancel_will(cid)
        session = None if clean else server.find_session(cid)
        if clean:
            stale = server.find_session(cid)
            if stale is not None:
                stale.destroy()
        present = session is not None
        if session is None:
            session = SessionState(server, cid)
            server.sessions[cid] = session
        session.cancel_expiry()
        session.version = self.version
        session.expiry = expiry
        session.ensure_queue(durable=expiry != 0)
        session.conn = self
        self.session = session
        self.will = will
        if will is not None and will[3] > 0 and (expiry == NEVER or expiry > 0):
            # a delayed will outlives a crash of the broker (published after the restart)
            delay = will[3] if expiry == NEVER else min(will[3], expiry)
            server.keep_will(cid, will[0], will[1], will[2], delay)
        self.state = 1
        self.reader.max_size = server.max_packet_size
        # limits the client asked for
        if v5:
            rm = min(props.get("receive_maximum", 65535), 32768)
            self.client_max_packet = props.get("maximum_packet_size", self.client_max_packet)
            self.out_alias_max = props.get("topic_alias_maximum", 0)
        else:
            rm = min(server.max_inflight, 32768) or 32768
        self.limit = Limit(rm)
        ack_props: dict[str, Any] = {}
        if v5:
            ack_props = {
                "receive_maximum": server.receive_maximum,
                "maximum_packet_size": server.max_packet_size,
                "topic_alias_maximum": server.topic_alias_maximum,
                "retain_available": 1 if server.retain_available else 0,
                "wildcard_subscription_available": 1,
                "subscription_identifier_available": 1,
                "shared_subscription_available": 1,
            }
            if assigned:
                ack_props["assigned_client_identifier"] = assigned
            if server_ka is not None:
                ack_props["server_keep_alive"] = server_ka
            if expiry != props.get("session_expiry_interval", 0):
                ack_props["session_expiry_interval"] = expiry
        self._connack(1 if present else 0, 0, ack_props)
        self.conn.handshake_done(user=ident.user, client_id=cid, vhost=server.vhost.name)
        session.save()
        if ka:
            self.conn.set_liveness(ka * 1.5)  # closed after 1.5 keep-alives of silence
        # resume: PUBRELs still owed, then queued and in-flight messages
        for pid in sorted(session.pubrel_pending):
            self.write(c.encode_ack(c.PUBREL, pid))
        self.inbound_pending = len(session.inbound_qos2)
        self._attach()

    def _connack(self, present: int, v3code: int, props: dict, v5reason: int | None = None) -> None:
        if self.version == c.V5:
            reason = v5reason if v5reason is not None else (0 if v3code == 0 else 0x80)
            if reason and not self.request_problem_info:
                props = {k: v for k, v in props.items() if k != "reason_string"}
            self.write(c.build_connack(c.V5, bool(present), reason, props))
        else:
            self.write(c.build_connack(c.V311, bool(present), v3code))

    def _attach(self) -> None:
        s = self.session
        c_ = Consumer(
            f"mqtt:{s.client_id}",
            self.deliver,
            limit=self.limit,
            owner=self,
            no_ack=s.max_qos() == 0,
        )
        self.own_consumer = c_
        self._bound_queue(c_.no_ack)
        self.consumers.append(c_)
        if self.paused:
            c_.pause()
        s.queue.add_consumer(c_)
        for sub in list(s.shared.values()):
            self._attach_shared(sub)

    def _update_ack_mode(self) -> None:
        # only QoS 0 subscriptions: every delivery is QoS 0, so the queue need not track acks,
        # and what waits for a client that does not read may be dropped past a bound
        qos0_only = self.session.max_qos() == 0
        if self.own_consumer is not None:
            self.own_consumer.no_ack = qos0_only
        self._bound_queue(qos0_only)

    def _bound_queue(self, qos0_only: bool) -> None:
        server = self.server
        bound = server.max_queued_messages or None
        if qos0_only and server.max_queued_qos0:
            bound = min(bound or server.max_queued_qos0, server.max_queued_qos0)
        q = self.session.queue
        if q.max_length != bound and q.overflow == "drop-head":
            q.max_length = bound

    def _attach_shared(self, sub: Sub) -> None:
        server = self.server
        server.add_member(sub.queue_name, sub.key, self.client_id)
        q = server.vhost.declare_queue(sub.queue_name, durable=True)
        server.vhost.bind_queue(sub.queue_name, "amq.topic", sub.key)
        topic_flt = sub.filter

        def deliver(d: Delivery) -> None:
            try:
                topic = c.key_to_topic(d.message.routing_key)
                if not c.valid_topic_name(topic) or not c.topic_matches(topic_flt, topic):
                    d.queue.ack(d)
                    return
                try:
                    tbytes = topic.encode()
                except UnicodeEncodeError:
                    d.queue.ack(d)
                    return
                self._send(
                    d, (topic, tbytes, sub.qos, (sub.sid,) if sub.sid is not None else (), sub.rap)
                )
            except Exception:
                self._delivery_failed()

        cons = Consumer(
            f"mqtt:{self.client_id}:{sub.group}",
            deliver,
            limit=self.limit,
            owner=self,
            arguments={"mqtt.sub": sub},
            no_ack=sub.qos == 0,
        )
        self.consumers.append(cons)
        if self.paused:
            cons.pause()
        q.add_consumer(cons)

    def _detach_shared(self, sub: Sub) -> None:
        for cons in list(self.consumers):
            if cons.arguments.get("mqtt.sub") is sub:
                self.consumers.remove(cons)
                self._drop_inflight_of(cons)
                if cons.queue is not None:
                    cons.queue.remove_consumer(cons, requeue=True)

    def _drop_inflight_of(self, cons: Consumer) -> None:
        for pid, d in list(self.inflight.items()):
            if d.consumer is cons:
                del self.inflight[pid]

    def taken_over(self) -> None:
        """Another connection took this client id: 5.0 DISCONNECT 0x8E; the will is handled
        as for any connection the server closes (published, after its delay)."""
        log.info("mqtt: session {cid} taken over", cid=self.client_id)
        if self.version == c.V5:
            self.send_disconnect(c.SESSION_TAKEN_OVER)
        will, self.will = self.will, None
        s = self.session
        self._detach_session(keep=True)
        if will is not None:
            delay = will[3]
            if s is not None and s.expiry != NEVER:
                delay = min(delay, s.expiry)
            self.server.schedule_will(self.client_id, delay, self._will_publisher(will))
        self.close()

    # -- PUBLISH in -------------------------------------------------------------------------

    def _message(self, payload: bytes, qos: int, retain: bool, props: dict) -> Message:
        ann: dict[str, Any] = {}
        if qos == 2:
            ann["mqtt.qos"] = 2
        if retain:
            ann["mqtt.retain"] = True
        msg = Message(payload, durable=qos > 0, annotations=ann)
        if props:
            if "content_type" in props:
                msg.content_type = props["content_type"]
            if "response_topic" in props:
                msg.reply_to = reply_to_core(props["response_topic"])
            cd = props.get("correlation_data")
            if cd is not None:
                try:
                    msg.correlation_id = cd.decode("utf-8")
                except UnicodeDecodeError:
                    ann["mqtt.correlation_data"] = cd
            mei = props.get("message_expiry_interval")
            if mei is not None:
                msg.expiration = now_ms() + mei * 1000
            pfi = props.get("payload_format_indicator")
            if pfi is not None:
                ann["mqtt.payload_format"] = pfi
            ups = props.get("user_property")
            if ups:
                headers = {}
                for k, v in ups:
                    if k in headers:
                        ann["mqtt.user_properties"] = [[k_, v_] for k_, v_ in ups]
                    headers[k] = v
                msg.headers = headers
                msg.key = key_from_headers(headers)
        return msg

    def _qos1_acked(self) -> None:
        self.qos1_unacked -= 1

    def on_publish(self, flags: int, body: bytes) -> None:
        if self.publishing_held:
            self._hold_publisher()
        qos = (flags >> 1) & 3
        if qos == 3:
            raise c.MalformedPacket("PUBLISH with QoS 3")
        if qos == 0 and flags & 8:
            raise c.MalformedPacket("DUP set on a QoS 0 PUBLISH")
        v5 = self.version == c.V5
        topic, pid, block, payload, _tb = c.decode_publish(flags, body, self.version)
        props = c.props_from_block(block) if block is not None else None
        if props:
            alias = props.pop("topic_alias", None)
            if alias is not None:
                if alias == 0 or alias > self.server.topic_alias_maximum:
                    raise c.MalformedPacket(
                        f"topic alias {alias} out of range", c.TOPIC_ALIAS_INVALID
                    )
                if topic:
                    self.in_aliases[alias] = topic
                else:
                    topic = self.in_aliases.get(alias, "")
                    if not topic:
                        raise c.MalformedPacket(f"unknown topic alias {alias}", c.PROTOCOL_ERROR)
            if "subscription_identifier" in props:
                raise c.MalformedPacket("subscription identifier in PUBLISH", c.PROTOCOL_ERROR)
        server = self.server
        # a topic in the routing-key cache was valid when it got there
        if topic not in server.keys and (
            not topic or "+" in topic or "#" in topic or "\x00" in topic
        ):
            raise c.MalformedPacket(f"invalid topic name {topic!r}", c.TOPIC_NAME_INVALID)
        if len(payload) > self.broker.max_message_size:
            raise c.MalformedPacket("message over the broker's size limit", c.PACKET_TOO_LARGE)
        retain = flags & 1
        if retain and not self.server.retain_available:
            raise c.MalformedPacket("retain is not available", c.RETAIN_NOT_SUPPORTED)
        s = self.session
        if qos:
            if qos == 2 and pid in s.inbound_qos2:
                # a resent QoS 2 PUBLISH we already have: only PUBREC again (exactly once)
                self.reply_durable(c.encode_ack(c.PUBREC, pid))
                return
            if v5 and self.inbound_pending + self.qos1_unacked >= self.server.receive_maximum:
                # QoS 2 until PUBCOMP, QoS 1 until its PUBACK (sent once durable)
                raise c.MalformedPacket("receive maximum exceeded", c.RECEIVE_MAXIMUM_EXCEEDED)
        if not self.conn.authorize("write", "topic", topic):
            # refused (no write permission on the topic): dropped. MQTT 5 says 0x87; a 3.1.1
            # client gets its normal acknowledgement, as Mosquitto does (3.1.1 has no refusal)
            if qos == 1:
                self.conn.reply(
                    c.encode_ack(
                        c.PUBACK, pid, c.NOT_AUTHORIZED if v5 else 0, b"\x00" if v5 else None
                    )
                )
            elif qos == 2:
                if v5:
                    self.conn.reply(c.encode_ack(c.PUBREC, pid, c.NOT_AUTHORIZED, b"\x00"))
                else:
                    s.inbound_qos2.add(pid)
                    self.inbound_pending += 1
                    self.conn.reply(c.encode_ack(c.PUBREC, pid))
            return
        exclude = None
        if s.no_local_count and s.excluded_for_own_publish(topic):
            exclude = s.queue
        if block is not None or retain or qos == 2:
            msg = self._message(payload, qos, bool(retain), props or {})
            delay = headers_delay(msg.headers, DELAY_PROPERTY) if msg.headers else None
            if delay is not None and delay > 0:
                routed = server.schedule(topic, msg, delay)
            else:
                routed = server.publish(topic, msg, bool(retain), exclude)
        else:
            routed = server.publish_plain(topic, _tb, payload, qos, v5, body, exclude)
        if qos == 1:
            if v5:
                self.qos1_unacked += 1
                self.broker.when_durable(self._qos1_acked)
                if not routed:
                    self.reply_durable(
                        c.encode_ack(c.PUBACK, pid, c.NO_MATCHING_SUBSCRIBERS, b"\x00")
                    )
                else:
                    self.reply_durable(c.encode_ack(c.PUBACK, pid))
            else:
                self.reply_durable(c.encode_ack(c.PUBACK, pid))
        elif qos == 2:
            s.inbound_qos2.add(pid)
            self.inbound_pending += 1
            if s.durable:
                s.save()  # before PUBREC (same group commit): exactly-once across a restart
            if v5 and not routed:
                self.reply_durable(c.encode_ack(c.PUBREC, pid, c.NO_MATCHING_SUBSCRIBERS, b"\x00"))
            else:
                self.reply_durable(c.encode_ack(c.PUBREC, pid))

    # -- PUBLISH out ------------------------------------------------------------------------

    def deliver(self, d: Delivery) -> None:
        """Consumer callback of the session queue (hot path). Never raises: the queue calls
        it while routing somebody else's publish."""
        try:
            hit = self.session.match(d.message.routing_key)
            if hit[2] < 0:
                d.queue.ack(d)  # no subscription matches any more ($-topic, unsubscribed)
                return
            self._send(d, hit)
        except Exception:
            self._delivery_failed()

    def _delivery_failed(self) -> None:
        log.failure("mqtt: delivery to {cid} failed", cid=self.client_id)
        self.close()  # the unacknowledged delivery goes back to the queue with the consumer

    def _send(self, d: Delivery, hit: tuple) -> None:
        msg = d.message
        topic, tbytes, subqos, sids, rap = hit
        ann = msg.annotations
        if ann:
            mq = ann.get("mqtt.qos", 1 if msg.durable else 0)
            retain = ann.get("mqtt.retain_delivery", False) or (
                rap and ann.get("mqtt.retain", False)
            )
        else:
            mq = 1 if msg.durable else 0
            retain = False
        qos = mq if mq < subqos else subqos
        v5 = self.version == c.V5
        if qos == 0 and not (v5 and (sids or self.out_alias_max or msg.expiration)):
            slot = self.server.enc[v5]
            if slot[0] is msg and slot[1] == retain and slot[2] == topic:
                frame = slot[3]
                if frame is None:  # built when first needed (a backlog never needs it)
                    frame = slot[3] = c.frame(0x30, slot[4])
            else:
                props = c.encode_props(static_props(msg)) if v5 else None
                frame = c.encode_publish(tbytes, msg.body, 0, 0, retain, False, props)
                self.server.enc[v5] = [msg, retain, topic, frame, b""]
            if len(frame) > self.client_max_packet:
                d.queue.ack(d)
                return
            self.write(frame)
            if d.consumer is not None:
                d.queue.ack(d)
            return
        props = None
        new_alias = None
        if v5:
            p = static_props(msg)
            if msg.expiration is not None:
                left = msg.expiration - now_ms()
                if left <= 0:
                    d.queue.ack(d)
                    return
                p["message_expiry_interval"] = min((left + 999) // 1000, 0xFFFFFFFF)
            if sids:
                p["subscription_identifier"] = list(sids)
            if self.out_alias_max:
                alias = self.out_aliases.get(topic)
                if alias is not None:
                    tbytes = b""
                    p["topic_alias"] = alias
                elif len(self.out_aliases) < self.out_alias_max:
                    alias = self.out_aliases[topic] = len(self.out_aliases) + 1
                    p["topic_alias"] = alias
                    new_alias = topic
            props = c.encode_props(p)
        pid = 0
        if qos:
            pid = 0
            if d.delivery_count:
                sent = self.session.sent_pids
                if sent:
                    pid = sent.pop((d.queue.name, d.seq), 0)
            if not pid or pid in self.inflight or pid in self.session.pubrel_pending:
                pid = self._next_pid()
            self.inflight[pid] = d
        frame = c.encode_publish(
            tbytes, msg.body, qos, pid, retain, qos > 0 and d.delivery_count > 0, props
        )
        if len(frame) > self.client_max_packet:
            if new_alias is not None:  # never sent: the client must not learn it this way
                del self.out_aliases[new_alias]
            if qos:
                self.inflight.pop(pid, None)
            d.queue.ack(d)
            return
        self.write(frame)
        if not qos and d.consumer is not None:
            d.queue.ack(d)

    def _next_pid(self) -> int:
        pid = self.next_pid
        inflight = self.inflight
        pending = self.session.pubrel_pending
        while pid in inflight or pid in pending:
            pid = pid + 1 if pid < 65535 else 1
        self.next_pid = pid + 1 if pid < 65535 else 1
        return pid

    # -- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------------

    def on_subscribe(self, body: bytes) -> None:
        pkt = c.decode(c.SUBSCRIBE, body, self.version)
        v5 = self.version == c.V5
        if not pkt.topics:
            raise c.MalformedPacket("SUBSCRIBE without topics", c.PROTOCOL_ERROR)
        props = c.props_to_dict(pkt.properties["items"]) if v5 else {}
        sids = props.get("subscription_identifier")
        sid = None
        if sids:
            if len(sids) > 1 or sids[0] == 0:
                raise c.MalformedPacket("bad subscription identifier", c.PROTOCOL_ERROR)
            sid = sids[0]
        s = self.session
        codes = []
        retained: list[tuple[Sub, list[Message]]] = []
        for t in pkt.topics:
            o = t.options
            if (
                o.reserved
                or o.qos == 3
                or (not v5 and (o.retain_handling or o.no_local or o.retain_as_published))
            ):
                raise c.MalformedPacket("reserved subscription options")
            if o.retain_handling == 3:
                raise c.MalformedPacket("retain handling 3", c.PROTOCOL_ERROR)
            flt = t.filter
            group = None
            if flt.startswith("$share/"):
                parts = flt.split("/", 2)
                if (
                    len(parts) < 3
                    or not parts[1]
                    or "+" in parts[1]
                    or "#" in parts[1]
                    or not parts[2]
                ):
                    codes.append(c.TOPIC_FILTER_INVALID if v5 else 0x80)
                    continue
                if o.no_local:
                    raise c.MalformedPacket("no local on a shared subscription", c.PROTOCOL_ERROR)
                group, flt = parts[1], parts[2]
            if not c.valid_topic_filter(flt):
                codes.append(c.TOPIC_FILTER_INVALID if v5 else 0x80)
                continue
            if not self.conn.authorize("read", "topic", flt):
                codes.append(c.NOT_AUTHORIZED if v5 else 0x80)
                continue
            limit = self.server.max_subscriptions
            if (
                limit
                and len(s.subs) + len(s.shared) >= limit
                and (flt not in s.subs if group is None else (group, flt) not in s.shared)
            ):
                # a new subscription beyond the limit (replacing one is fine)
                codes.append(c.QUOTA_EXCEEDED if v5 else 0x80)
                continue
            sub = Sub(
                flt,
                o.qos,
                bool(o.no_local),
                bool(o.retain_as_published),
                o.retain_handling,
                sid,
                group,
            )
            try:
                if group is not None:
                    old = s.shared.get((group, flt))
                    if old is not None:
                        self._detach_shared(old)
                    s.add_sub(sub)
                    self._attach_shared(sub)
                    new = old is None
                else:
                    new = s.add_sub(sub)
            except BrokerError as e:
                log.info("mqtt: subscribe {flt} failed: {e}", flt=flt, e=e.text)
                codes.append(c.UNSPECIFIED_ERROR if v5 else 0x80)
                continue
            codes.append(o.qos)
            if group is None and (o.retain_handling == 0 or (o.retain_handling == 1 and new)):
                msgs = self.server.retained_for(flt)
                if msgs:
                    retained.append((sub, msgs))
        s.save()
        self._update_ack_mode()
        suback = c.build_suback(self.version, pkt.packet_id, codes)

        def done() -> None:
            if self.state != 1 or s.conn is not self:
                return
            self.write(suback)
            # retained messages go through the session queue (flow control, acks, persistence)
            for _sub, msgs in retained:
                for m in msgs:
                    copy = m.copy()
                    copy.annotations["mqtt.retain_delivery"] = True
                    s.queue.enqueue(copy)

        if s.durable:
            self.broker.when_durable(done)  # a persistent subscription is on disk first
        else:
            done()

    def on_unsubscribe(self, body: bytes) -> None:
        pkt = c.decode(c.UNSUBSCRIBE, body, self.version)
        if not pkt.filters:
            raise c.MalformedPacket("UNSUBSCRIBE without topics", c.PROTOCOL_ERROR)
        s = self.session
        codes = []
        for flt in pkt.filters:
            group = None
            if flt.startswith("$share/"):
                parts = flt.split("/", 2)
                if len(parts) == 3:
                    group, flt = parts[1], parts[2]
            if group is not None and (group, flt) in s.shared:
                self._detach_shared(s.shared[(group, flt)])
            sub = s.remove_sub(flt, group)
            codes.append(0 if sub is not None else c.NO_SUBSCRIPTION_EXISTED)
        s.save()
        self._update_ack_mode()
        unsuback = c.build_unsuback(self.version, pkt.packet_id, codes)
        if s.durable:
            self.broker.when_durable(lambda: self.state == 1 and self.write(unsuback))
        else:
            self.write(unsuback)

    # -- DISCONNECT and connection loss -----------------------------------------------------

    def on_disconnect(self, body: bytes) -> None:
        reason = 0
        if self.version == c.V5 and body:
            pkt = c.decode(c.DISCONNECT, body, self.version)
            reason = pkt.reason or 0
            if pkt.properties is not None:
                props = c.props_to_dict(pkt.properties["items"])
                exp = props.get("session_expiry_interval")
                if exp is not None:
                    if self.session.expiry == 0 and exp != 0:
                        raise c.MalformedPacket("session expiry set after 0", c.PROTOCOL_ERROR)
                    self.session.expiry = exp
        if reason != c.DISCONNECT_WITH_WILL:
            self.will = None
        self.close()

    def connection_lost(self) -> None:
        """The transport is gone (after close() or a network error)."""
        if self.state == 2 and self.session is None:
            return
        was_connected = self.session is not None and self.session.conn is self
        self.state = 2
        if not was_connected:
            return
        will = self.will
        self.will = None
        s = self.session
        if s is not None and s.conn is self:
            self._detach_session(keep=False)
            if will is not None:
                delay = will[3]
                if s.expiry != NEVER:
                    delay = min(delay, s.expiry)
                self.server.schedule_will(self.client_id, delay, self._will_publisher(will))
            else:
                self.server.forget_will(self.client_id)  # DISCONNECT: the will is discarded
            self._end_or_keep(s)
        elif will is not None:
            self._will_publisher(will)()

    def _will_publisher(self, will: tuple) -> Callable[[], None]:
        topic, msg, retain, _ = will
        server = self.server

        def publish() -> None:
            server.publish(topic, msg, retain)

        return publish

    def _detach_session(self, keep: bool) -> None:
        """Remove this connection's consumers (in-flight messages go back to the queue)."""
        s = self.session
        consumers, self.consumers = self.consumers, []
        self.own_consumer = None
        if s is not None and self.inflight:
            # remember the packet ids, so that the resend after a reconnect reuses them
            sent = s.sent_pids
            if len(sent) > 131072:  # stale entries (messages that went elsewhere)
                sent.clear()
            for pid, d in self.inflight.items():
                sent[(d.queue.name, d.seq)] = pid
        self.inflight.clear()
        for cons in consumers:
            q = cons.queue
            if q is not None:
                q.remove_consumer(cons, requeue=True)
        if s is not None and s.conn is self:
            s.conn = None
            if keep:
                return

    def _end_or_keep(self, s: SessionState) -> None:
        server = self.server
        if s.expiry == 0:
            s.destroy()
            return
        s.save(gone=now_ms())
        if s.expiry != NEVER:
            s.expiry_timer = server.clock.callLater(s.expiry, self._expire, s)

    @staticmethod
    def _expire(s: SessionState) -> None:
        s.expiry_timer = None
        if s.conn is None:
            s.destroy()

    # -- back-pressure ----------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True
        for cons in self.consumers:
            cons.pause()

    def resume(self) -> None:
        self.paused = False
        for cons in list(self.consumers):
            cons.resume()
