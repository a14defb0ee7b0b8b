"""Static group membership (``group.instance.id``) with confluent-kafka: a member whose process
restarts within its session timeout gets its partitions back without a rebalance of the
others."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic


def test_static_member_restart_keeps_assignment_without_rebalance(kbroker):
    bs = f"{kbroker.host}:{kbroker.port('kafka')}"
    t = "st-" + uuid.uuid4().hex[:10]
    a = AdminClient({"bootstrap.servers": bs})
    a.create_topics([NewTopic(t, 2, 1)])[t].result(10)
    group = "g-" + t
    events: list[tuple[str, str, frozenset]] = []
    assigned: dict[str, frozenset] = {}

    def make(instance: str) -> Consumer:
        c = Consumer(
            {
                "bootstrap.servers": bs,
                "group.id": group,
                "group.instance.id": instance,
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 200,
            }
        )

        def on_assign(consumer, parts):
            assigned[instance] = frozenset(p.partition for p in parts)
            events.append(("assign", instance, assigned[instance]))

        def on_revoke(consumer, parts):
            events.append(("revoke", instance, frozenset(p.partition for p in parts)))
            assigned[instance] = frozenset()

        c.subscribe([t], on_assign=on_assign, on_revoke=on_revoke)
        return c

    def settle(consumers, pred, timeout=30.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for c in consumers:
                c.poll(0.05)
            if pred():
                return True
        return False

    def split() -> bool:
        a_, b_ = assigned.get("a", frozenset()), assigned.get("b", frozenset())
        return len(a_) == 1 and len(b_) == 1 and a_ | b_ == {0, 1}

    ca, cb = make("a"), make("b")
    try:
        assert settle([ca, cb], split), assigned
        before_a = assigned["a"]
        mark = len(events)
        ca.close()  # a static member does not leave the group when it closes
        ca = make("a")
        assert settle([ca, cb], lambda: assigned.get("a") == before_a and split()), assigned
        # b kept polling throughout and was never revoked or reassigned
        settle([ca, cb], lambda: False, timeout=2.0)
        assert [e for e in events[mark:] if e[1] == "b"] == [], events[mark:]
    finally:
        ca.close()
        cb.close()
