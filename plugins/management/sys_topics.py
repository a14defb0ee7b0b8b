"""MQTT ``$SYS/broker/...`` topics with Mosquitto's names and payloads (plain decimal text),
counted across every protocol and published through the core every ``sys_interval`` seconds.

They go to ``amq.topic`` with the MQTT mapping's key (``/`` becomes ``.``), so MQTT clients
subscribed to ``$SYS/#`` receive them, and so does any AMQP or OpenWire consumer bound to
``$SYS.#``. Every value is sent every interval: they are not retained (the retained store is
the MQTT adapter's), so a new subscriber has all of them within one interval.
"""

from __future__ import annotations

from typing import Any

from polymq.core.cli import version
from polymq.core.message import Message

from .state import MQTT_RETAINED_NS, State, memory_bytes

EXCHANGE = "amq.topic"


def mqtt_key(topic: str) -> str:
    """The routing key an MQTT topic maps to (``docs/mapping.md``)."""
    return topic.replace("/", ".")


class SysPublisher:
    def __init__(self, state: State) -> None:
        self.state = state
        self.last: dict[str, str] = {}

    def values(self) -> dict[str, str]:
        st = self.state
        point = st.sampler.history[-1] if st.sampler.history else st.sampler.sample()
        totals = st.sampler.totals
        reg = st.registry
        broker = st.broker
        sessions = st.mqtt_sessions()
        connected = reg.count()
        offline = sum(1 for s in sessions if s["persistent"] and not s["connected"])
        subs = sum(len(s["subscriptions"]) for s in sessions)
        stored = sum(
            q.message_count
            for vh in broker.vhosts.values()
            for q in vh.queues.values()
            if q.kind == "queue"
        )
        stored_bytes = sum(
            q.byte_count
            for vh in broker.vhosts.values()
            for q in vh.queues.values()
            if q.kind == "queue"
        )
        uptime = int(st.sampler.clock.seconds() - st.sampler.started_at)
        received = point["messages_in"]
        sent = point["messages_out"]
        return {
            "$SYS/broker/version": f"polymq version {version()}",
            "$SYS/broker/uptime": f"{uptime} seconds",
            "$SYS/broker/clients/connected": str(connected),
            "$SYS/broker/clients/total": str(connected + offline),
            "$SYS/broker/clients/disconnected": str(offline),
            "$SYS/broker/clients/maximum": str(
                max(connected, int(self.last.get("$SYS/broker/clients/maximum", "0")))
            ),
            "$SYS/broker/messages/received": str(received),
            "$SYS/broker/messages/sent": str(sent),
            "$SYS/broker/publish/messages/received": str(received),
            "$SYS/broker/publish/messages/sent": str(sent),
            "$SYS/broker/bytes/received": str(point["bytes_in"]),
            "$SYS/broker/bytes/sent": str(point["bytes_out"]),
            "$SYS/broker/store/messages/count": str(stored),
            "$SYS/broker/store/messages/bytes": str(stored_bytes),
            "$SYS/broker/retained messages/count": str(len(broker.kv(MQTT_RETAINED_NS))),
            "$SYS/broker/subscriptions/count": str(subs),
            "$SYS/broker/heap/current": str(memory_bytes()),
            "$SYS/broker/messages/stored": str(stored),
            "$SYS/broker/connections/total": str(reg.opened),
            "$SYS/broker/queued/total": str(totals.enqueued + totals.appended),
        }

    def publish(self) -> int:
        """Publish every value; returns how many went out."""
        vh = self.state.broker.vhost()
        if EXCHANGE not in vh.exchanges:
            return 0
        sent = 0
        for topic, value in self.values().items():
            self.last[topic] = value
            msg = Message(value.encode(), content_type="text/plain")
            vh.publish(EXCHANGE, mqtt_key(topic), msg)
            sent += 1
        return sent


def publish_safely(publisher: SysPublisher, log: Any) -> None:
    try:
        publisher.publish()
    except Exception:
        log.failure("management: publishing $SYS topics failed")
