"""Shared-store HA, what real clients resend after a failover: recognised, never stored twice.

Each client reaches the active node through a relay (``ReplyCutter``) that can lose the node's
answers: the node stores a message, its answer never arrives, then the node is killed (-9) and
the relay closes, as when a node dies between its commit and its reply. The client fails over
to the node that took over and sends the message again:

* the ActiveMQ JMS client, configured with the relay's address only
  (``failover:(tcp://relay)``), learns both nodes from the ConnectionControl the active node
  sends (ActiveMQ's ``updateClusterClients``) and so finds the new active at all; its resent
  persistent message has a MessageId the new node finds among the stored messages (the
  producer audit rebuilt at takeover): answered, not enqueued twice;
* paho QoS 2 with a persistent session resends the PUBLISH with DUP; the new node finds its
  packet id among the session's stored incoming QoS 2 ids: PUBREC only, delivered once.

Every test counts duplicates among what is consumed afterwards: there must be none.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from hanodes import (
    Load,
    ReplyCutter,
    _fail_over,
    _paho,
    amqp_drain,
    jms_classes,
    jms_send,
    make_nodes,
    mqtt_drain,
    mqtt_subscribe,
)
from test_ha_failover import standby_ready, wait_for


def _start_pair(pg_server, tmp_path, *adapters: str):
    _dsn, (a, b) = make_nodes(pg_server, tmp_path, adapters=adapters)
    a.start()
    b.launch()
    wait_for(lambda: standby_ready(b), 30, "node b to be standby")
    return a, b


def test_jms_client_naming_one_node_fails_over_and_its_resend_is_not_stored_twice(
    pg_server, tmp_path
):
    jms_classes()
    a, b = _start_pair(pg_server, tmp_path, "openwire", "amqp")
    relay = None
    try:
        urls = [f"tcp://{h}:{p}" for h, p in (a.address("openwire"), b.address("openwire"))]
        # the active names itself first, then the standby
        wait_for(
            lambda: f"nodes for OpenWire clients: {', '.join(urls)}" in a.log_text(),
            30,
            "node a to know both nodes",
        )
        relay = ReplyCutter(a.address("openwire"))
        load = Load("jms", jms_send, [relay.address], "ha.resend", 40, 50, 60.0).start()
        wait_for(lambda: len(load.acked) >= 10, 30, "sends through the relay", load.errors.copy)
        relay.hold_replies()
        held_at = len(load.acked)
        time.sleep(1.5)  # node a stores the message in flight; its answer is dropped
        assert len(load.acked) <= held_at + 1  # an answer already on its way may arrive
        a.kill9()
        relay.close()
        b.wait_active(30)
        load.wait(60)
        assert load.done.is_set() and not load.errors, load.errors
        assert load.acked == list(range(40)), "the client must go on with node b to the end"

        # drained with pika: the JMS client's own consumer drops duplicate MessageIds
        got = Counter(amqp_drain(b.address("amqp"), "ha.resend"))
        assert sorted(got) == list(range(40)), f"lost: {sorted(set(range(40)) - set(got))}"
        dups = {i: n for i, n in got.items() if n > 1}
        assert not dups, f"resent messages stored twice: {dups}"
        # the resend was indeed of a stored message (else this test proves nothing)
        assert "again (stored before a failover" in b.log_text(), b.log_tail()
    finally:
        if relay is not None:
            relay.close()
        a.kill9()
        b.kill9()


def test_paho_qos2_resent_with_dup_after_failover_is_delivered_once(pg_server, tmp_path):
    a, b = _start_pair(pg_server, tmp_path, "mqtt")
    relay = ReplyCutter(a.address("mqtt"))
    try:
        mqtt_subscribe(a.address("mqtt"), "q2-sub", "ha/q2")
        nodes = [relay.address, b.address("mqtt")]
        c = _paho("q2-pub")
        c.reconnect_delay_set(0.05, 0.5)
        c.on_disconnect = lambda client, *x: _fail_over(client, nodes)
        c.on_connect_fail = lambda client, *x: _fail_over(client, nodes)
        completed: set[int] = set()
        lock = threading.Lock()

        def on_publish(client, userdata, mid, rc, props):
            with lock:
                completed.add(mid)

        c.on_publish = on_publish
        c.connect(*relay.address)
        c.loop_start()
        mids = []

        def publish(i: int) -> None:
            mids.append(c.publish("ha/q2", f"m-{i}".encode(), qos=2).mid)

        for i in range(5):
            publish(i)
        wait_for(lambda: len(completed) == 5, 20, "PUBCOMP of the first messages")
        relay.hold_replies()
        publish(5)  # node a stores it and the session's packet id; PUBREC is dropped
        time.sleep(1.5)
        assert mids[5] not in completed
        a.kill9()
        relay.close()
        b.wait_active(30)
        # paho reconnects to b and resends message 5 with DUP
        wait_for(lambda: mids[5] in completed, 30, "PUBCOMP of the resent message from b")
        for i in range(6, 10):
            publish(i)
        wait_for(lambda: len(completed) == 10, 20, "PUBCOMP of the last messages")
        c.disconnect()
        c.loop_stop()

        got = Counter(mqtt_drain(b.address("mqtt"), "q2-sub"))
        assert sorted(got) == list(range(10)), f"lost: {sorted(set(range(10)) - set(got))}"
        dups = {i: n for i, n in got.items() if n > 1}
        assert not dups, f"QoS 2 messages delivered twice: {dups}"
    finally:
        relay.close()
        a.kill9()
        b.kill9()
