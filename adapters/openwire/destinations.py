"""Destinations of an OpenWire session: queues made on first use, the write check of a
publish, sends scheduled by ActiveMQ's ``AMQ_SCHEDULED_*`` properties, temporary destinations
(DestinationInfo) and the removal of durable subscriptions (a mixin of
:class:`.session.OpenWireSession`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from polymq.core.errors import AccessRefused, BrokerError, NotFound
from polymq.core.message import Message
from polymq.core.queue import Queue
from polymq.core.scheduler import ScheduleError, headers_delay

from . import codec as c
from .codec import Obj
from .mapping import (
    ADVISORY_PREFIX,
    JMS_QUEUE_ARGUMENTS,
    is_topic,
    key_of,
    split_dest,
    topic_pattern,
    virtual_topic_of,
)

if TYPE_CHECKING:
    from .hub import OpenWireHub


def error_class(e: BrokerError) -> str:
    """The Java exception class a client gets for a broker refusal."""
    if isinstance(e, NotFound):
        return "javax.jms.InvalidDestinationException"
    if isinstance(e, AccessRefused):
        return "java.lang.SecurityException"
    return "javax.jms.JMSException"


class DestinationHandling:
    """Destinations of one session (the session provides ``hub``, ``vhost``, ``conn``,
    ``temp_dests``, ``_may_write`` and the reply helpers)."""

    hub: OpenWireHub

    def _check_write(self, t: int, name: str) -> None:
        """The authorization check point of a publish, asked once per destination."""
        topic = is_topic(t)
        if not self.conn.authorize("write", "topic" if topic else "queue", name):
            raise AccessRefused(f"not allowed to write to {'topic' if topic else 'queue'} {name}")
        self._may_write.add((t, name))

    def _ensure_queue(self, name: str) -> Queue:
        q = self.vhost.queues.get(name)
        if q is None:
            if not self.conn.authorize("configure", "queue", name):
                raise AccessRefused(f"not allowed to create queue {name}")
            # JMSPriority orders delivery once a message with a non-default one arrives
            # (ActiveMQ's prioritizedMessages); until then the queue stays a single FIFO
            q = self.vhost.declare_queue(name, durable=True, arguments=JMS_QUEUE_ARGUMENTS)
            topic = virtual_topic_of(name)
            if topic is not None:
                # Consumer.<name>.VirtualTopic.<topic>: every message published to topic
                # VirtualTopic.<topic> gets a copy here
                self.vhost.bind_queue(name, "amq.topic", topic_pattern(topic))
        self._use_dead_letter_queue(q)
        return q

    def _schedule(self, m: Obj, msg: Message, dest: Obj) -> None:
        """A send with ActiveMQ's ``AMQ_SCHEDULED_*`` properties: to the broker's scheduler,
        which routes it (again) when due. Outside and inside a transaction alike, at once."""
        parts = split_dest(dest)
        if not parts or not all(name for _, name in parts):
            self.respond_error(m, "javax.jms.InvalidDestinationException", "empty destination name")
            return
        try:
            delay, period, repeat, cron = scheduled_properties(msg.headers)
            for t, name in parts:
                if (t, name) not in self._may_write:
                    self._check_write(t, name)
            for t, name in parts:
                if is_topic(t):
                    if name.startswith(ADVISORY_PREFIX):
                        continue
                    exchange = "amq.topic"
                else:
                    exchange = ""
                    if t == c.QUEUE:
                        self._ensure_queue(name)
                self.vhost.broker.scheduler.schedule(
                    self.vhost.name,
                    exchange,
                    name,
                    msg if len(parts) == 1 else msg.copy(),
                    delay_ms=delay,
                    period_ms=period,
                    repeat=repeat,
                    cron=cron,
                )
        except ScheduleError as e:
            self.respond_error(m, "javax.jms.MessageFormatException", str(e))
            return
        except BrokerError as e:
            self.respond_error(m, error_class(e), e.text)
            return
        self._after_publish(m, msg, False)

    # -- temp destinations ---------------------------------------------------------------------

    def on_destination_info(self, cmd: Obj) -> None:
        dest = cmd.destination
        if dest is None or not dest.physical_name:
            self.respond_error(
                cmd, "javax.jms.InvalidDestinationException", "empty destination name"
            )
            return
        if cmd.operation_type == 0:
            if dest.type in (c.TEMP_QUEUE, c.TEMP_TOPIC):
                kind = "queue" if dest.type == c.TEMP_QUEUE else "topic"
                if not self.conn.authorize("configure", kind, dest.physical_name):
                    raise AccessRefused(f"not allowed to create {kind} {dest.physical_name}")
            if dest.type == c.TEMP_QUEUE:
                if dest.physical_name not in self.vhost.queues:
                    self.vhost.declare_queue(dest.physical_name, exclusive_owner=self)
            if dest.type in (c.TEMP_QUEUE, c.TEMP_TOPIC):
                self.temp_dests.append(dest)
                self.hub.add_temp(
                    Obj(
                        c.DESTINATION_INFO,
                        connection_id=cmd.connection_id,
                        destination=dest,
                        operation_type=0,
                    )
                )
            elif dest.type == c.QUEUE:
                self._ensure_queue(dest.physical_name)
        elif cmd.operation_type == 1:
            if dest.type in (c.TEMP_QUEUE, c.TEMP_TOPIC):
                self.temp_dests = [d for d in self.temp_dests if key_of(d) != key_of(dest)]
                self._drop_temp(dest)
        self.respond(cmd)

    def _drop_temp(self, dest: Obj) -> None:
        if dest.type == c.TEMP_QUEUE:
            q = self.vhost.queues.get(dest.physical_name)
            if q is not None and q.exclusive_owner is self:
                self.vhost.delete_queue(dest.physical_name)
        self.hub.remove_temp(dest, self.connection_id)

    # -- durable subscriptions -------------------------------------------------------------

    def on_remove_subscription(self, cmd: Obj) -> None:
        qname = f"{cmd.client_id or self.client_id}.{cmd.subscription_name}"
        q = self.vhost.queues.get(qname)
        if q is None:
            # as ActiveMQ: unsubscribing a subscription that does not exist fails
            self.respond_error(
                cmd,
                "javax.jms.InvalidDestinationException",
                f"no durable subscription {cmd.subscription_name} for client "
                f"{cmd.client_id or self.client_id}",
            )
            return
        if q.consumer_count:
            self.respond_error(
                cmd,
                "javax.jms.JMSException",
                f"durable subscription {cmd.subscription_name} is in use",
            )
            return
        self.vhost.delete_queue(qname)
        self.respond(cmd)


# ActiveMQ's message properties that schedule a send (its broker's schedulerSupport)
SCHEDULE_PROPERTIES = frozenset(
    ("AMQ_SCHEDULED_DELAY", "AMQ_SCHEDULED_PERIOD", "AMQ_SCHEDULED_REPEAT", "AMQ_SCHEDULED_CRON")
)


def scheduled_properties(headers: dict) -> tuple[int, int, int, str | None]:
    """(delay ms, period ms, repeat, cron) from a JMS message's properties.

    A cron entry alone repeats for ever at its times (as in ActiveMQ); ``AMQ_SCHEDULED_DELAY``
    is then added to each of them.
    """
    delay = headers_delay(headers, "AMQ_SCHEDULED_DELAY") or 0
    period = headers_delay(headers, "AMQ_SCHEDULED_PERIOD") or 0
    repeat = headers_delay(headers, "AMQ_SCHEDULED_REPEAT") or 0
    cron = headers.get("AMQ_SCHEDULED_CRON")
    if isinstance(cron, bytes):
        cron = cron.decode("utf-8", "replace")
    if not isinstance(cron, str) or not cron.strip():
        cron = None
    if cron is not None:
        repeat = -1
    elif repeat < 0:
        raise ScheduleError("AMQ_SCHEDULED_REPEAT must not be negative")
    return delay, period, repeat, cron
