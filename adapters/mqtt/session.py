"""The MQTT protocol state machine of one connection: packet dispatch, PUBLISH in both
directions, acknowledgements, back-pressure; the session's start and end are in connect.py,
SUBSCRIBE and UNSUBSCRIBE in subscribe.py.

No sockets here. A :class:`Connection` is fed the framed packets of each read
(``frames_received``) and hands the bytes it wants written to its ``write`` callable (the
transport batches them per reactor turn); it asks the transport to close through ``close``. A
:class:`SessionState` outlives connections (persistent sessions); the :class:`MqttServer` owns
the sessions, retained messages and will timers of one listener.

Mapping to the core (docs/mqtt.md): an MQTT topic ``a/b`` is the ``amq.topic`` routing key
``a.b`` ('/' and '.' swapped both ways); each session has a queue ``mqtt-session.<client id>``
bound to ``amq.topic`` with its translated filters (durable for persistent sessions); a shared
subscription ``$share/g/f`` is a queue ``mqtt-shared.g.<key>`` whose consumers are the members.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from polymq.core.address import key_from_headers
from polymq.core.connection import ProtocolConnection, SessionBase
from polymq.core.errors import BrokerError, ConnectionForced, IdleTimeout
from polymq.core.message import Message, now_ms
from polymq.core.queue import Consumer, Delivery, Limit
from polymq.core.scheduler import headers_delay
from polymq.core.settlement import DeliveryLedger

from . import codec as c
from .connect import SessionLifecycle
from .server import (
    DELAY_PROPERTY,
    MqttServer,
    SessionState,
    reply_to_core,
    static_props,
)
from .subscribe import Subscriptions

log = Logger(namespace="polymq.mqtt")


class Connection(SessionLifecycle, Subscriptions, SessionBase):
    """One network connection speaking MQTT: the session of the connection contract.

    The packets that start and end the session are handled in connect.py, SUBSCRIBE and
    UNSUBSCRIBE in subscribe.py; PUBLISH in both directions and the acknowledgements here.
    """

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
        # QoS 1/2 deliveries sent and not yet acknowledged, by packet id
        self.inflight = DeliveryLedger()
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
        # the broker-wide resource alarm is on: a publish holds this connection
        self.publishing_held = False
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
        for i, (first, body) in enumerate(packets):
            if self.state != 1:
                if self.state == 2:
                    break
                self.handle(first, body)
                if self.conn.logging_in:  # CONNECT waits for its login: the rest waits too
                    self.conn.hold_frames(packets[i + 1 :])
                    return
            elif first & 0xF0 == 0x30:  # PUBLISH (hot path)
                self.on_publish(first & 0x0F, body)
                if self.publishing_held:
                    self.conn.hold_publisher(packets[i + 1 :])
                    return
            elif first == 0x40 and len(body) == 2:  # PUBACK without reason (hot path)
                self.inflight.ack_one((body[0] << 8) | body[1])
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
        # MQTT cannot say it: the next publish holds the connection (conn.hold_publisher),
        # its PUBACKs wait; subscribers keep draining
        self.publishing_held = blocked

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
            self.inflight.ack_one(pid)
        elif ptype == c.PUBREC:
            pid, reason = c.decode_ack(body, self.version)
            d = self.inflight.ack_one(pid)
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
            s = self.session
            key = d.message.routing_key
            hit = s.match_cache.get(key) or s.match(key)  # (the cache inline: once a delivery)
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
            self.inflight.unsettled[pid] = d
        frame = c.encode_publish(
            tbytes, msg.body, qos, pid, retain, qos > 0 and d.delivery_count > 0, props
        )
        if len(frame) > self.client_max_packet:
            if new_alias is not None:  # never sent: the client must not learn it this way
                del self.out_aliases[new_alias]
            if qos:
                self.inflight.take(pid)
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

    # -- back-pressure ----------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True
        for cons in self.consumers:
            cons.pause()

    def resume(self) -> None:
        self.paused = False
        for cons in list(self.consumers):
            cons.resume()
