"""The start and the end of an MQTT session on a connection: CONNECT (authentication, taking
over or resuming the session, the limits both sides ask for), a second connection taking the
client id over, DISCONNECT and connection loss (the will, the session kept or ended).

:class:`SessionLifecycle` is a part of :class:`~polymq.adapters.mqtt.session.Connection`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from polymq.core.auth import Refusal
from polymq.core.message import now_ms
from polymq.core.queue import Consumer, Limit

from . import codec as c
from .server import NEVER, SessionState

log = Logger(namespace="polymq.mqtt")


class SessionLifecycle:
    """CONNECT, take-over, DISCONNECT and connection loss of a :class:`Connection`."""

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
            for pid, d in self.inflight.unsettled.items():
                sent[(d.queue.name, d.seq)] = pid
        self.inflight.close()  # what was in flight goes back with the consumers, below
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
