"""MQTT subscriptions on a connection: SUBSCRIBE and UNSUBSCRIBE (filters, options, limits,
retained messages), the consumers of shared subscriptions, and the acknowledgement mode of
the session queue's consumer.

:class:`Subscriptions` is a part of :class:`~polymq.adapters.mqtt.session.Connection`.
"""

from __future__ import annotations

from twisted.logger import Logger

from polymq.core.errors import BrokerError
from polymq.core.message import Message
from polymq.core.queue import Consumer, Delivery

from . import codec as c
from .server import Sub

log = Logger(namespace="polymq.mqtt")


class Subscriptions:
    """SUBSCRIBE, UNSUBSCRIBE and the subscription consumers of a :class:`Connection`."""

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

    # -- consumers and their acknowledgement mode ----------------------------------------

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
                self.inflight.take_consumer(cons)  # requeued with the consumer below
                if cons.queue is not None:
                    cons.queue.remove_consumer(cons, requeue=True)
