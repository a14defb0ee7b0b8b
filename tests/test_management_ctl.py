"""``polymq ctl``: the real command (a subprocess) against a running broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
from conftest import stopping
from kafka import KafkaConsumer, KafkaProducer
from test_management_support import (
    Api,
    start_broker,
    wait_for,
)


@pytest.fixture(scope="module")
def mbroker(tmp_path_factory):
    broker, url = start_broker(tmp_path_factory.mktemp("mgmt-ctl"))
    with stopping(broker):
        yield broker, url


def ctl(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polymq.core", "ctl", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def ctl_json(url: str, *args: str):
    r = ctl(url, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_list_every_kind_as_table_and_json(mbroker):
    broker, url = mbroker
    q, topic, group, cid = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("cq", "ct", "cg", "cc"))
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    ch.queue_declare(q)
    ch.queue_bind(q, "amq.topic", "ctl.#")
    ch.basic_publish("", q, b"one")
    ch.basic_qos(prefetch_count=3)
    ch.basic_consume(q, lambda *a: None, consumer_tag="ctl-consumer")
    conn.process_data_events(0.2)
    boot = f"{broker.host}:{broker.port('kafka')}"
    p = KafkaProducer(bootstrap_servers=boot)
    p.send(topic, b"k1")
    p.send(topic, b"k2")
    p.flush(15)
    p.close()
    kc = KafkaConsumer(
        topic,
        bootstrap_servers=boot,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15000,
    )
    next(iter(kc))
    kc.commit()
    kc.close()
    m = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    m.connect(broker.host, broker.port("mqtt"))
    m.loop_start()
    m.subscribe("ctl/x", 1)
    try:
        queues = ctl_json(url, "list", "queues")
        assert any(x["name"] == q and x["consumers"] == 1 for x in queues)
        assert any(x["name"] == "amq.topic" for x in ctl_json(url, "list", "exchanges"))
        assert any(
            b["destination"] == q and b["routing_key"] == "ctl.#"
            for b in ctl_json(url, "list", "bindings")
        )
        consumers = [
            c for c in ctl_json(url, "list", "consumers") if c["consumer_tag"] == "ctl-consumer"
        ]
        assert consumers and consumers[0]["prefetch_count"] == 3
        topics = {t["name"]: t for t in ctl_json(url, "list", "topics")}
        assert topics[topic]["messages"] == 2 and topics[topic]["groups"] == [group]
        groups = {g["group"]: g for g in ctl_json(url, "list", "groups")}
        assert groups[group]["partitions"][0]["lag"] == 1
        sessions = {s["client_id"]: s for s in ctl_json(url, "list", "sessions")}
        for _ in range(50):
            if sessions.get(cid, {}).get("subscriptions"):
                break
            sessions = {s["client_id"]: s for s in ctl_json(url, "list", "sessions")}
        assert sessions[cid]["subscriptions"] == [{"filter": "ctl/x", "qos": 1}]
        assert isinstance(ctl_json(url, "list", "connections"), list)
        # tables: the names appear in the rendered output
        r = ctl(url, "list", "queues")
        assert r.returncode == 0 and q in r.stdout and "messages_ready" in r.stdout
        r = ctl(url, "list", "groups")
        assert r.returncode == 0 and group in r.stdout and "log_end_offset" in r.stdout
        r = ctl(url, "overview")
        assert r.returncode == 0 and "version" in r.stdout
    finally:
        m.disconnect()
        m.loop_stop()
        conn.close()


def test_purge_delete_and_errors(mbroker):
    broker, url = mbroker
    q, x = f"pq-{uuid.uuid4().hex[:6]}", f"px-{uuid.uuid4().hex[:6]}"
    api = Api(url)
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    ch.queue_declare(q)
    ch.exchange_declare(x, "fanout")
    for _ in range(4):
        ch.basic_publish("", q, b"m")
    conn.process_data_events(0.2)
    r = ctl(url, "purge", q)
    assert r.returncode == 0 and f"purged {q}" in r.stdout
    assert ch.basic_get(q) == (None, None, None)  # pika sees the queue empty
    r = ctl(url, "delete", "queue", q)
    assert r.returncode == 0
    assert api.call("GET", f"/api/queues/%2F/{q}")[0] == 404
    assert ctl(url, "delete", "exchange", x).returncode == 0
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.exchange_declare(x, passive=True)
    conn.close()
    # one line errors with exit codes
    r = ctl(url, "purge", "no-such-queue")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "404" in r.stderr and "no-such-queue" in r.stderr
    r = ctl(url, "-p", "wrong", "list", "queues")
    assert r.returncode == 4 and r.stderr.count("\n") == 1
    r = ctl("http://127.0.0.1:1", "list", "queues")
    assert r.returncode == 3 and "cannot reach" in r.stderr
    r = ctl(url, "list", "nonsense")
    assert r.returncode == 2
    r = ctl(url, "close", "no-such-connection")
    assert r.returncode == 1 and "404" in r.stderr


def test_export_import(mbroker, tmp_path):
    broker, url = mbroker
    api = Api(url)
    x, q = f"ex-{uuid.uuid4().hex[:6]}", f"eq-{uuid.uuid4().hex[:6]}"
    api.ok("PUT", f"/api/exchanges/%2F/{x}", {"type": "direct"})
    api.ok("PUT", f"/api/queues/%2F/{q}", {"durable": True})
    api.ok("POST", f"/api/bindings/%2F/e/{x}/q/{q}", {"routing_key": "rk"})
    path = tmp_path / "defs.json"
    r = ctl(url, "export", str(path))
    assert r.returncode == 0
    defs = json.loads(path.read_text())
    assert any(b["source"] == x and b["destination"] == q for b in defs["bindings"])
    other, other_url = start_broker(tmp_path / "other", adapters=["amqp"])
    try:
        r = ctl(other_url, "import", str(path))
        assert r.returncode == 0, r.stderr
        assert "imported" in r.stdout
        conn = pika.BlockingConnection(pika.ConnectionParameters(other.host, other.port("amqp")))
        ch = conn.channel()
        ch.basic_publish(x, "rk", b"imported-route")
        _, _, body = ch.basic_get(q, auto_ack=True) if _wait_ready(other_url, q) else (0, 0, 0)
        assert body == b"imported-route"
        conn.close()
        r = ctl(other_url, "import", str(tmp_path / "missing.json"))
        assert r.returncode == 2 and "cannot read" in r.stderr
        r = ctl(other_url, "import", "-", stdin="not json")
        assert r.returncode == 2 and "not JSON" in r.stderr
    finally:
        other.stop()
        other.kill9()


def _wait_ready(url: str, q: str) -> bool:
    api = Api(url)
    for _ in range(100):
        if api.get(f"/api/queues/%2F/{q}")["messages_ready"] == 1:
            return True
        time.sleep(0.05)
    return False


def test_close_connection(mbroker):
    broker, url = mbroker
    cid = f"close-{uuid.uuid4().hex[:6]}"
    gone = []
    m = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    m.on_disconnect = lambda *a: gone.append(True)
    m.connect(broker.host, broker.port("mqtt"))
    m.loop_start()
    try:
        conns = []
        for _ in range(50):
            conns = [c for c in ctl_json(url, "list", "connections") if c["client_id"] == cid]
            if conns:
                break
        assert conns, "the MQTT connection is not listed"
        r = ctl(url, "close", str(conns[0]["id"]), "--reason", "maintenance")
        assert r.returncode == 0
        wait_for(lambda: gone, what="the client saw the close")
    finally:
        m.loop_stop()
