"""MQTT per-listener state: sessions (persistent or not), their subscriptions and queues,
retained messages, wills, shared subscriptions, and the property mapping to the core Message.
The per-connection state machine is in session.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from polymq.core.address import headers_with_key, parse_address, topic_address
from polymq.core.errors import BrokerError
from polymq.core.message import Message, now_ms

from . import codec as c

if TYPE_CHECKING:
    from .session import Connection

log = Logger(namespace="polymq.mqtt")

SESSIONS_NS = "mqtt.sessions"
RETAINED_NS = "mqtt.retained"
SHARED_NS = "mqtt.shared"
# delayed wills (5.0 Will Delay Interval > 0), so that a crash does not lose them:
# client id -> [topic, message bytes, retain, delay s, due ms (None while connected)]
WILLS_NS = "mqtt.wills"
NEVER = 0xFFFFFFFF
# MQTT 5 user property that delays a publish by its value in milliseconds (the name of the
# RabbitMQ delayed exchange's header, so one name serves both protocols)
DELAY_PROPERTY = "x-delay"

DEFAULT_CONFIG: dict[str, Any] = {
    "max_packet_size": 0,  # 0: broker max_message_size + 64 KiB
    "max_connect_size": 65536 * 4,  # cap on the first packet (CONNECT), before the state check
    "receive_maximum": 1024,  # inbound QoS>0 in flight per connection (5.0: advertised)
    "max_inflight": 1024,  # outbound QoS>0 window for 3.1.1 clients
    "topic_alias_maximum": 64,
    "max_keep_alive": 65535,  # 5.0: a longer (or zero) keep-alive gets Server Keep Alive
    "max_session_expiry": NEVER,
    "retain_available": True,
    "max_queued_messages": 0,  # per session queue (0: unlimited); the oldest are dropped
    # a session whose subscriptions are all QoS 0 holds at most this many messages for a
    # client that does not read them (the oldest are dropped and counted, as Mosquitto does)
    "max_queued_qos0": 1000,
    # subscriptions one client (session) may hold, shared ones included; a SUBSCRIBE beyond
    # gets 0x97 Quota exceeded (5.0) / 0x80 (3.1.1) for that filter; 0: no limit
    "max_subscriptions": 0,
    "vhost": "",
    # MQTT over WebSocket (core/websocket.py), as Mosquitto and RabbitMQ offer it to browsers
    "websocket_port": 8080,
    "websocket_path": "/mqtt",
    "websocket_subprotocols": ["mqtt", "mqttv3.1"],
}


class Sub:
    """One subscription of a session."""

    __slots__ = ("filter", "qos", "no_local", "rap", "rh", "sid", "group", "key", "queue_name")

    def __init__(
        self,
        flt: str,
        qos: int,
        no_local: bool = False,
        rap: bool = False,
        rh: int = 0,
        sid: int | None = None,
        group: str | None = None,
    ) -> None:
        self.filter = flt
        self.qos = qos
        self.no_local = no_local
        self.rap = rap
        self.rh = rh
        self.sid = sid
        self.group = group
        self.key = c.topic_to_key(flt)
        self.queue_name = f"mqtt-shared.{group}.{self.key}" if group is not None else None

    def record(self) -> list:
        return [self.filter, self.qos, self.no_local, self.rap, self.rh, self.sid, self.group]

    @classmethod
    def from_record(cls, r: list) -> Sub:
        return cls(r[0], r[1], r[2], r[3], r[4], r[5], r[6])


class SessionState:
    """What MQTT calls the session: it survives the connection when it is persistent."""

    def __init__(self, server: MqttServer, client_id: str) -> None:
        self.server = server
        self.client_id = client_id
        self.queue_name = "mqtt-session." + client_id
        self.queue: Any = None
        self.durable = False
        self.expiry: int = 0  # seconds after disconnect; NEVER = never
        self.subs: dict[str, Sub] = {}  # plain subscriptions by filter
        self.shared: dict[tuple[str, str], Sub] = {}  # (group, filter) -> Sub
        self.key_refs: dict[str, int] = {}
        self.match_cache: dict[str, tuple] = {}
        self.no_local_count = 0
        self.conn: Connection | None = None  # the session's live connection
        self.inbound_qos2: set[int] = set()
        self.pubrel_pending: set[int] = set()
        # (queue name, seq) -> packet id of QoS > 0 deliveries not yet acknowledged, so that a
        # resend after a reconnect uses the original packet id [MQTT-4.4.0-1]
        self.sent_pids: dict[tuple[str, int], int] = {}
        self.expiry_timer: Any = None
        self.version = c.V311

    # -- queue and bindings -----------------------------------------------------------------

    def ensure_queue(self, durable: bool) -> None:
        vh = self.server.vhost
        q = vh.queues.get(self.queue_name)
        if q is not None and q.durable != durable:
            if durable:
                # a clean session becoming persistent: recreate durable, keep bindings
                vh.delete_queue(self.queue_name)
                q = None
            # a durable queue serving a session that is now transient stays durable
        if q is None:
            args = {}
            if self.server.max_queued_messages:
                args["x-max-length"] = self.server.max_queued_messages
            q = vh.declare_queue(self.queue_name, durable=durable, arguments=args)
            for key in self.key_refs:
                vh.bind_queue(self.queue_name, "amq.topic", key)
        self.queue = q
        self.durable = q.durable

    def add_sub(self, sub: Sub) -> bool:
        """Add or replace a subscription; True when it is new."""
        if sub.group is not None:
            ident = (sub.group, sub.filter)
            new = ident not in self.shared
            self.shared[ident] = sub
            self.server.add_member(sub.queue_name, sub.key, self.client_id)
            return new
        old = self.subs.get(sub.filter)
        self.subs[sub.filter] = sub
        if old is None:
            n = self.key_refs.get(sub.key, 0)
            self.key_refs[sub.key] = n + 1
            if n == 0:
                self.server.vhost.bind_queue(self.queue_name, "amq.topic", sub.key)
        else:
            self.no_local_count -= old.no_local
        self.no_local_count += sub.no_local
        self.match_cache.clear()
        return old is None

    def remove_sub(self, flt: str, group: str | None) -> Sub | None:
        if group is not None:
            sub = self.shared.pop((group, flt), None)
            if sub is not None:
                self.server.remove_member(sub.queue_name, self.client_id)
            return sub
        sub = self.subs.pop(flt, None)
        if sub is None:
            return None
        self.no_local_count -= sub.no_local
        n = self.key_refs.get(sub.key, 0) - 1
        if n <= 0:
            self.key_refs.pop(sub.key, None)
            try:
                self.server.vhost.unbind_queue(self.queue_name, "amq.topic", sub.key)
            except BrokerError:
                pass
        else:
            self.key_refs[sub.key] = n
        self.match_cache.clear()
        return sub

    def max_qos(self) -> int:
        """The highest QoS of the plain subscriptions (0 lets the consumer skip acks)."""
        return max((sub.qos for sub in self.subs.values()), default=0)

    def match(self, key: str) -> tuple:
        """(topic, topic bytes, max qos, subscription ids, retain-as-published) for a key."""
        hit = self.match_cache.get(key)
        if hit is not None:
            return hit
        topic = c.key_to_topic(key)
        qos = -1
        sids = []
        rap = False
        # a key from another protocol that is no valid MQTT topic is not delivered
        try:
            tbytes = topic.encode()
            subs = self.subs.values() if c.valid_topic_name(topic) else ()
        except UnicodeEncodeError:  # lone surrogates: no UTF-8 for MQTT clients
            tbytes = b""
            subs = ()
        for sub in subs:
            if c.topic_matches(sub.filter, topic):
                if sub.qos > qos:
                    qos = sub.qos
                if sub.sid is not None:
                    sids.append(sub.sid)
                rap = rap or sub.rap
        hit = (topic, tbytes, qos, tuple(sids), rap)
        if len(self.match_cache) > 4096:
            self.match_cache.clear()
        self.match_cache[key] = hit
        return hit

    def excluded_for_own_publish(self, topic: str) -> bool:
        """No Local: True when every own subscription matching ``topic`` has no_local set."""
        any_match = False
        for sub in self.subs.values():
            if c.topic_matches(sub.filter, topic):
                if not sub.no_local:
                    return False
                any_match = True
        return any_match

    # -- persistence ------------------------------------------------------------------------

    def save(self, gone: int = 0) -> None:
        if not self.durable:
            return
        rec = {
            "subs": [s.record() for s in self.subs.values()]
            + [s.record() for s in self.shared.values()],
            "expiry": self.expiry,
            "gone": gone,
            "v": self.version,
            # QoS 2 state that must survive a restart to stay exactly-once
            "q2in": sorted(self.inbound_qos2),
            "relout": sorted(self.pubrel_pending),
        }
        self.server.broker.kv_put_obj(SESSIONS_NS, self.client_id, rec)

    def load(self, rec: dict) -> None:
        self.expiry = rec.get("expiry", NEVER)
        self.version = rec.get("v", c.V311)
        self.inbound_qos2 = set(rec.get("q2in", ()))
        self.pubrel_pending = set(rec.get("relout", ()))
        for r in rec.get("subs", ()):
            sub = Sub.from_record(r)
            if sub.group is not None:
                self.shared[(sub.group, sub.filter)] = sub
            else:
                self.subs[sub.filter] = sub
                self.key_refs[sub.key] = self.key_refs.get(sub.key, 0) + 1
                self.no_local_count += sub.no_local

    def destroy(self) -> None:
        """End the session: its queue, its record, its pending will."""
        server = self.server
        if server.sessions.get(self.client_id) is self:
            del server.sessions[self.client_id]
        self.cancel_expiry()
        server.fire_will(self.client_id)
        for sub in self.shared.values():
            server.remove_member(sub.queue_name, self.client_id)
        try:
            server.vhost.delete_queue(self.queue_name)
        except BrokerError:
            pass
        server.broker.kv_delete(SESSIONS_NS, self.client_id)

    def cancel_expiry(self) -> None:
        if self.expiry_timer is not None and self.expiry_timer.active():
            self.expiry_timer.cancel()
        self.expiry_timer = None


class MqttServer:
    """Per-listener state shared by all connections."""

    def __init__(self, broker: Any, config: dict | None = None) -> None:
        cfg = dict(DEFAULT_CONFIG)
        cfg.update(config or {})
        self.config = cfg
        self.broker = broker
        self.clock = broker.clock
        self.vhost = broker.vhost(cfg.get("vhost") or None)
        self.max_packet_size = cfg["max_packet_size"] or min(
            c.MAX_REMAINING_LENGTH, broker.max_message_size + 65536
        )
        self.max_connect_size = cfg["max_connect_size"]
        self.receive_maximum = max(1, min(65535, cfg["receive_maximum"]))
        self.max_inflight = cfg["max_inflight"]
        self.topic_alias_maximum = cfg["topic_alias_maximum"]
        self.max_keep_alive = cfg["max_keep_alive"]
        self.max_session_expiry = cfg["max_session_expiry"]
        self.retain_available = cfg["retain_available"]
        self.max_queued_messages = cfg["max_queued_messages"]
        self.max_queued_qos0 = cfg["max_queued_qos0"]
        self.max_subscriptions = int(cfg["max_subscriptions"] or 0)
        self.sessions: dict[str, SessionState] = {}
        self.retained: dict[str, Message] = {}
        self.will_timers: dict[str, tuple[Any, Callable[[], None]]] = {}
        self.expiry_timers: dict[str, Any] = {}
        # the last QoS 0 PUBLISH frame encoded per protocol family (3.x, 5.0), for fan-out:
        # [message, retain flag, topic, frame or None, received body to build it from]; a
        # fan-out delivers one message to every subscriber in a row, so one slot per family
        # is enough
        self.enc: list[list] = [[None, False, "", b"", b""], [None, False, "", b"", b""]]
        self.keys: dict[str, str] = {}  # topic -> routing key
        for topic, data in list(broker.kv(RETAINED_NS).items()):
            try:
                self.retained[topic] = Message.from_bytes(data)
            except Exception:
                log.warn("mqtt: dropping unreadable retained message for {topic}", topic=topic)
        self.shared_members: dict[str, set[str]] = {}
        # the class of this listener's connections (session.Connection, set by the factory):
        # publish_plain writes straight to a connection of exactly that class
        self.connection_class: type | None = None
        # the callbacks of publish_plain, bound once (not per publish)
        self._direct_callbacks = (self._plain_message, self._deliver_direct)
        for qname in list(broker.kv(SHARED_NS)):
            self.shared_members[qname] = set(broker.kv_get_obj(SHARED_NS, qname) or ())
        self._arm_stored_expiries()
        self._arm_stored_wills()

    # -- stored sessions --------------------------------------------------------------------

    def _arm_stored_expiries(self) -> None:
        now = now_ms()
        for cid in list(self.broker.kv(SESSIONS_NS)):
            rec = self.broker.kv_get_obj(SESSIONS_NS, cid) or {}
            expiry = rec.get("expiry", NEVER)
            if expiry == NEVER:
                continue
            gone = rec.get("gone") or now
            left = max(0.0, (gone + expiry * 1000 - now) / 1000.0)
            self.expiry_timers[cid] = self.clock.callLater(left, self._expire_stored, cid)

    def _expire_stored(self, cid: str) -> None:
        self.expiry_timers.pop(cid, None)
        s = self.sessions.get(cid)
        if s is not None:
            if s.conn is None:
                s.destroy()
            return
        rec = self.broker.kv_get_obj(SESSIONS_NS, cid) or {}
        for r in rec.get("subs", ()):
            sub = Sub.from_record(r)
            if sub.group is not None:
                self.remove_member(sub.queue_name, cid)
        try:
            self.vhost.delete_queue("mqtt-session." + cid)
        except BrokerError:
            pass
        self.broker.kv_delete(SESSIONS_NS, cid)

    def find_session(self, cid: str) -> SessionState | None:
        s = self.sessions.get(cid)
        if s is not None:
            return s
        rec = self.broker.kv_get_obj(SESSIONS_NS, cid)
        if rec is None:
            return None
        t = self.expiry_timers.pop(cid, None)
        if t is not None and t.active():
            t.cancel()
        s = SessionState(self, cid)
        s.load(rec)
        s.durable = True
        self.sessions[cid] = s
        return s

    # -- shared subscriptions -----------------------------------------------------------------

    def add_member(self, qname: str, key: str, cid: str) -> None:
        """A session subscribes to a shared subscription: its queue exists (durable, so that
        messages wait for persistent members) as long as some session is a member."""
        members = self.shared_members.get(qname)
        if members is None:
            members = self.shared_members[qname] = set()
            self.vhost.declare_queue(qname, durable=True)
            self.vhost.bind_queue(qname, "amq.topic", key)
        if cid not in members:
            members.add(cid)
            self.broker.kv_put_obj(SHARED_NS, qname, sorted(members))

    def remove_member(self, qname: str, cid: str) -> None:
        members = self.shared_members.get(qname)
        if members is None or cid not in members:
            return
        members.discard(cid)
        if members:
            self.broker.kv_put_obj(SHARED_NS, qname, sorted(members))
            return
        del self.shared_members[qname]
        self.broker.kv_delete(SHARED_NS, qname)
        try:
            self.vhost.delete_queue(qname)
        except BrokerError:
            pass

    # -- wills ------------------------------------------------------------------------------

    def keep_will(self, cid: str, topic: str, msg: Message, retain: bool, delay: int) -> None:
        """Record a connected client's delayed will in the store (published after a crash)."""
        self.broker.kv_put_obj(WILLS_NS, cid, [topic, msg.to_bytes(), retain, delay, None])

    def forget_will(self, cid: str) -> None:
        self.broker.kv_delete(WILLS_NS, cid)

    def _arm_stored_wills(self) -> None:
        """Wills recorded before a restart: a client that was connected lost its connection
        when the broker went down, so its will is due its delay after now; a will that was
        already waiting keeps its due time."""
        now = now_ms()
        for cid in list(self.broker.kv(WILLS_NS)):
            if cid in self.will_timers:
                continue
            try:
                topic, data, retain, delay, due = self.broker.kv_get_obj(WILLS_NS, cid)
                msg = Message.from_bytes(data)
            except Exception:
                log.warn("mqtt: dropping an unreadable stored will of {cid}", cid=cid)
                self.forget_will(cid)
                continue
            if due is None:
                due = now + delay * 1000
                self.broker.kv_put_obj(WILLS_NS, cid, [topic, data, retain, delay, due])

            def publish(topic=topic, msg=msg, retain=retain) -> None:
                self.publish(topic, msg, retain)

            call = self.clock.callLater(max(0.0, (due - now) / 1000.0), self._will_due, cid)
            self.will_timers[cid] = (call, publish)

    def schedule_will(self, cid: str, delay: int, publish: Callable[[], None]) -> None:
        entry = self.will_timers.pop(cid, None)
        if entry is not None and entry[0].active():
            entry[0].cancel()
        if delay <= 0:
            publish()
            self.forget_will(cid)
            return
        call = self.clock.callLater(delay, self._will_due, cid)
        self.will_timers[cid] = (call, publish)
        rec = self.broker.kv_get_obj(WILLS_NS, cid)
        if rec is not None:  # waiting now: due at a fixed time, whenever the broker restarts
            rec[3], rec[4] = delay, now_ms() + delay * 1000
            self.broker.kv_put_obj(WILLS_NS, cid, rec)

    def _will_due(self, cid: str) -> None:
        entry = self.will_timers.pop(cid, None)
        if entry is not None:
            entry[1]()
        self.forget_will(cid)

    def cancel_will(self, cid: str) -> None:
        entry = self.will_timers.pop(cid, None)
        if entry is not None and entry[0].active():
            entry[0].cancel()
        self.forget_will(cid)

    def fire_will(self, cid: str) -> None:
        entry = self.will_timers.pop(cid, None)
        if entry is not None:
            if entry[0].active():
                entry[0].cancel()
            entry[1]()
        self.forget_will(cid)

    # -- publishing -------------------------------------------------------------------------

    def schedule(self, topic: str, msg: Message, delay_ms: int) -> int:
        """A publish with the ``x-delay`` user property (MQTT 5): routed ``delay_ms`` later by
        the broker's scheduler (never retained). Returns 1: accepted."""
        key = self.keys.get(topic) or c.topic_to_key(topic)
        self.broker.scheduler.schedule(self.vhost.name, "amq.topic", key, msg, delay_ms=delay_ms)
        return 1

    def publish(self, topic: str, msg: Message, retain: bool, exclude: Any = None) -> int:
        """Route a message published to ``topic``; handles the retained store. Returns routed."""
        keys = self.keys
        key = keys.get(topic)
        if key is None:
            if len(keys) > 8192:
                keys.clear()
            key = keys[topic] = c.topic_to_key(topic)
        routed, _ = self.vhost.publish("amq.topic", key, msg, exclude=exclude)
        if retain:
            if msg.body:
                self.retained[topic] = msg
                self.broker.kv_put(RETAINED_NS, topic, msg.to_bytes())
            elif self.retained.pop(topic, None) is not None:
                self.broker.kv_delete(RETAINED_NS, topic)
        return routed

    def publish_plain(
        self,
        topic: str,
        tbytes: bytes,
        payload: bytes,
        qos: int,
        v5: bool,
        body: bytes,
        exclude: Any = None,
    ) -> int:
        """Route a PUBLISH without properties and without retain (hot path); returns routed.

        The core routes (``VirtualHost.publish_direct``) and offers each consumer that would
        get the message at once to :meth:`_deliver_direct`; every other destination gets one
        core Message from :meth:`_plain_message`. ``body`` is the received packet body (reused
        as the outgoing frame for QoS 0 to the same family).
        """
        keys = self.keys
        key = keys.get(topic)
        if key is None:
            if len(keys) > 8192:
                keys.clear()
            key = keys[topic] = c.topic_to_key(topic)
        # what both callbacks read, a list (the cheapest to build per message): routing key,
        # QoS, publisher is 5.0, received body, topic bytes, payload, topic, then the QoS 0
        # frame per protocol family (3.x, 5.0), built once for all subscribers of the family
        publish = [key, qos, v5, body, tbytes, payload, topic, None, None]
        make_message, direct = self._direct_callbacks
        routed, _ = self.vhost.publish_direct(
            "amq.topic", key, len(payload), qos > 0, make_message, direct, publish, exclude=exclude
        )
        return routed

    def _deliver_direct(self, cons: Any, publish: list) -> bool:
        """Write a plain PUBLISH straight to a subscriber, when ``cons`` is the own consumer
        of a connected session of this listener and the delivery is QoS 0 and needs no
        per-subscriber properties (5.0 subscription ids, topic aliases): no core Message,
        Delivery or consumer callback. False: the queue takes the message."""
        conn = cons.owner
        if not (
            type(conn) is self.connection_class
            and cons is conn.own_consumer
            and conn.state == 1
            and cons.credit is None
        ):
            return False
        session = conn.session
        hit = session.match_cache.get(publish[0]) or session.match(publish[0])
        subqos = hit[2]
        if subqos < 0:  # the session queue's bindings match, its filters not
            return True
        sv5 = conn.version == c.V5
        qos = publish[1]
        # (a QoS 1 publish comes here only for sessions whose subscriptions are all QoS 0)
        if (qos and subqos) or (sv5 and (hit[3] or conn.out_alias_max)):
            return False
        frame = publish[7 + sv5]
        if frame is None:
            if qos == 0 and sv5 == publish[2]:
                frame = c.frame(0x30, publish[3])
            else:
                frame = c.encode_publish(
                    publish[4], publish[5], 0, 0, False, False, b"\x00" if sv5 else None
                )
            publish[7 + sv5] = frame
        if len(frame) <= conn.client_max_packet:
            conn.write(frame)
        return True

    def _plain_message(self, publish: list) -> Message:
        """The core Message of a plain PUBLISH, for the destinations that need one."""
        qos = publish[1]
        msg = Message(publish[5], durable=qos > 0)
        if qos == 0:
            # deliveries the core makes at once reuse the frame (see Connection._send)
            v5 = publish[2]
            self.enc[v5] = [msg, False, publish[6], publish[7 + v5], publish[3]]
        return msg

    def retained_for(self, flt: str) -> list[Message]:
        now = now_ms()
        out = []
        expired = []
        for topic, msg in self.retained.items():
            if c.topic_matches(flt, topic):
                if msg.expiration is not None and msg.expiration <= now:
                    expired.append(topic)
                    continue
                out.append(msg)
        for topic in expired:
            self.retained.pop(topic, None)
            self.broker.kv_delete(RETAINED_NS, topic)
        return out


def _str(v: Any) -> str:
    """A value from another protocol as an MQTT string (U+0000, which MQTT strings must not
    contain and clients reject, becomes U+FFFD)."""
    if isinstance(v, str):
        s = v
    elif isinstance(v, bool):
        return "true" if v else "false"
    elif isinstance(v, bytes | bytearray | memoryview):
        s = bytes(v).decode("utf-8", "replace")
    elif v is None:
        return ""
    else:
        s = str(v)
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


def reply_to_core(response_topic: str) -> str:
    """A Response Topic as a core reply-to address, ``topic://<amq.topic key>``."""
    return topic_address(c.key_to_topic(response_topic))


def reply_to_mqtt(reply_to: str) -> str:
    """A core reply-to address as a Response Topic: the queue name or routing key of the
    address, as a topic ('.' and '/' swapped), so a responder publishing there reaches
    ``amq.topic`` with that name as the key."""
    return c.key_to_topic(parse_address(reply_to)[1])


def static_props(msg: Message) -> dict[str, Any]:
    """The 5.0 PUBLISH properties that depend only on the message (no expiry, alias, ids)."""
    ann = msg.annotations
    props: dict[str, Any] = {}
    pfi = ann.get("mqtt.payload_format")
    if pfi in (0, 1):
        props["payload_format_indicator"] = pfi
    if msg.content_type is not None:
        props["content_type"] = _str(msg.content_type)
    if msg.reply_to is not None:
        props["response_topic"] = reply_to_mqtt(_str(msg.reply_to))
    cd = ann.get("mqtt.correlation_data")
    if isinstance(cd, bytes | bytearray | memoryview):
        props["correlation_data"] = bytes(cd)
    elif msg.correlation_id is not None:
        props["correlation_data"] = _str(msg.correlation_id).encode("utf-8", "replace")
    ups = ann.get("mqtt.user_properties")
    if isinstance(ups, list) and all(isinstance(x, list | tuple) and len(x) == 2 for x in ups):
        props["user_property"] = [(_str(k), _str(v)) for k, v in ups]
    elif msg.headers or msg.key is not None:
        # the Kafka key rides along as a user property, as AMQP and JMS see it
        props["user_property"] = [(_str(k), _str(v)) for k, v in headers_with_key(msg).items()]
    return props
