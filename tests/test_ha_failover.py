"""Shared-store HA: two polymq nodes on one real PostgreSQL, real clients of every protocol.

* kill -9 of the active under load from pika (confirms), paho (QoS 1, persistent session),
  confluent-kafka (acks=all, idempotent, both nodes in the bootstrap list) and the ActiveMQ JMS
  client (persistent sync sends over failover:(tcp://a,tcp://b)): the standby takes over, every
  acknowledged message is consumed afterwards; duplicates are counted and allowed only where the
  protocol is at-least-once (Kafka's idempotent producer must see none).
* A standby keeps every client port closed; the killed node restarted comes back as standby.
"""

from __future__ import annotations

import time
from collections import Counter

from hanodes import (
    Load,
    amqp_drain,
    amqp_publish,
    jms_classes,
    jms_drain,
    jms_send,
    kafka_drain,
    kafka_produce,
    make_nodes,
    mqtt_drain,
    mqtt_publish,
    mqtt_subscribe,
)

COUNT = 3000  # per protocol
RATE = 250  # messages per second per protocol: the load runs about 12 s, the kill comes early


def wait_for(predicate, timeout: float, what: str, progress=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            more = f" ({progress()})" if progress else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{more}")
        time.sleep(0.02)


def standby_ready(node) -> bool:
    return "is standby; " in node.log_text()


def test_kill9_active_under_load_every_protocol_fails_over(pg_server, tmp_path):
    jms_classes()  # compiled before the load starts, not during it
    _dsn, (a, b) = make_nodes(pg_server, tmp_path)
    a.start()
    b.launch()
    try:
        wait_for(lambda: standby_ready(b), 30, "node b to be standby")
        assert b.open_ports() == [], "a standby must keep its client ports closed"

        def both(adapter):
            return [a.address(adapter), b.address(adapter)]

        mqtt_subscribe(a.address("mqtt"), "ha-sub", "ha/mqtt")
        loads = [
            Load("amqp", amqp_publish, both("amqp"), "ha.amqp", COUNT, RATE),
            Load("mqtt", mqtt_publish, both("mqtt"), "ha-pub", "ha/mqtt", COUNT, RATE),
            Load("kafka", kafka_produce, both("kafka"), "ha.kafka", COUNT, RATE),
            Load("jms", jms_send, both("openwire"), "ha.jms", COUNT, 1000 // RATE),
        ]
        for load in loads:
            load.start()
        wait_for(
            lambda: all(len(x.acked) >= 100 for x in loads),
            60,
            "load on every protocol",
            lambda: {x.name: len(x.acked) for x in loads},
        )
        before = {x.name: len(x.acked) for x in loads}
        print(f"killing the active after {before}")
        killed = time.monotonic()
        a.kill9()
        b.wait_active(30)
        takeover = time.monotonic() - killed
        for load in loads:
            load.wait(120)
        for load in loads:
            assert load.done.is_set(), f"{load.name} load did not finish"
            assert not load.errors, f"{load.name}: {load.errors}"
            assert len(load.acked) > before[load.name], f"{load.name}: nothing acked after kill"

        jms_info: dict = {}
        consumed = {
            "amqp": amqp_drain(b.address("amqp"), "ha.amqp"),
            "mqtt": mqtt_drain(b.address("mqtt"), "ha-sub"),
            "kafka": kafka_drain([b.address("kafka")], "ha.kafka"),
            "jms": jms_drain([b.address("openwire")], "ha.jms", info=jms_info),
        }
        host, port = b.address("openwire")
        assert jms_info["broker_url"] == f"tcp://{host}:{port}"
        report = []
        for load in loads:
            got = Counter(consumed[load.name])
            lost = sorted(set(load.acked) - set(got))
            dups = sum(n - 1 for n in got.values())
            report.append(
                f"{load.name}: acked {len(set(load.acked))}, consumed {len(got)} distinct,"
                f" {dups} duplicates, lost {len(lost)}"
            )
            assert not lost, f"{load.name} lost acknowledged messages {lost[:20]}"
        print(f"takeover {takeover:.2f}s; " + "; ".join(report))
        kafka_dups = sum(n - 1 for n in Counter(consumed["kafka"]).values())
        assert kafka_dups == 0, "the idempotent Kafka producer's retries were appended twice"

        # the killed node comes back as a standby: ports closed, b stays active
        a.launch()
        wait_for(lambda: standby_ready(a), 30, "node a to come back as standby")
        assert a.open_ports() == []
        assert sorted(b.open_ports()) == ["amqp", "kafka", "mqtt", "openwire"]
    finally:
        for node in (a, b):
            node.kill9()
