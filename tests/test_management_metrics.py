"""Prometheus /metrics, the OpenAPI document and MQTT $SYS topics, against a real broker."""

from __future__ import annotations

import urllib.request
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
from conftest import stopping
from kafka import KafkaConsumer, KafkaProducer
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from test_management_support import Api, start_broker, wait_for

from polymq.plugins.management.api import ManagementApi


@pytest.fixture(scope="module")
def mbroker(tmp_path_factory):
    broker, url = start_broker(tmp_path_factory.mktemp("mgmt-metrics"), sys_interval=0.5)
    with stopping(broker):
        yield broker, Api(url)


def scrape(api: Api, path: str = "/metrics") -> dict[str, dict[tuple, float]]:
    with urllib.request.urlopen(api.base + path, timeout=10) as res:
        assert res.headers["Content-Type"].startswith("text/plain")
        text = res.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_parse_and_follow_real_clients(mbroker):
    broker, api = mbroker
    q = "metrics-" + uuid.uuid4().hex[:6]
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    ch.queue_declare(q)
    for _ in range(7):
        ch.basic_publish("", q, b"x" * 10)
    conn.process_data_events(0.2)
    labels = (("queue", q), ("vhost", "/"))
    m = wait_for(
        lambda: (
            (x := scrape(api, "/metrics/per-object"))
            .get("polymq_queue_messages_ready", {})
            .get(labels)
            == 7
            and x
        ),
        what="queue depth metric",
    )
    assert m["polymq_queue_messages_bytes"][labels] == 70
    assert m["polymq_queue_consumers"][labels] == 0
    # the default endpoint sums over queues: no per-queue series
    m = scrape(api)
    assert list(m["polymq_queue_messages_ready"]) == [()]
    assert m["polymq_queue_messages_ready"][()] >= 7
    assert m["polymq_queue_messages_bytes"][()] >= 70
    assert m["polymq_queue_messages_published_total"][()] >= 7
    assert m["polymq_build_info"][(("version", api.get("/api/overview")["polymq_version"]),)] == 1
    for proto in ("amqp", "mqtt", "kafka", "openwire"):
        assert (("protocol", proto),) in m["polymq_connections"]
        assert (("protocol", proto),) in m["polymq_messages_received_total"]
    assert m["polymq_resident_memory_bytes"][()] > 1_000_000
    assert m["polymq_alarm"][()] == 0
    assert "process_resident_memory_bytes" in m
    # a consumer appears, the depth drains
    got = []
    ch.basic_consume(q, lambda c, mth, p, b: got.append(mth.delivery_tag), auto_ack=True)
    while len(got) < 7:
        conn.process_data_events(0.1)
    m = wait_for(
        lambda: (
            (x := scrape(api, "/metrics/per-object"))["polymq_queue_messages_ready"][labels] == 0
            and x
        )
    )
    assert m["polymq_queue_consumers"][labels] == 1
    assert scrape(api)["polymq_queue_consumers"][()] >= 1
    conn.close()


def test_kafka_group_lag_in_metrics(mbroker):
    broker, api = mbroker
    topic, group = "mt-" + uuid.uuid4().hex[:6], "mg-" + uuid.uuid4().hex[:6]
    boot = f"{broker.host}:{broker.port('kafka')}"
    p = KafkaProducer(bootstrap_servers=boot)
    for i in range(6):
        p.send(topic, b"a%d" % i)
    p.flush(15)
    c = KafkaConsumer(
        topic,
        bootstrap_servers=boot,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15000,
    )
    for n, _ in enumerate(c, 1):
        if n == 6:
            break
    c.commit()
    c.close()
    for i in range(3):
        p.send(topic, b"b%d" % i)
    p.flush(15)
    p.close()
    m = scrape(api)
    key = (("consumergroup", group), ("partition", "0"), ("topic", topic))
    assert m["kafka_consumergroup_lag"][key] == 3
    assert m["kafka_consumergroup_current_offset"][key] == 6
    assert m["kafka_consumergroup_lag_sum"][(("consumergroup", group), ("topic", topic))] == 3
    assert m["kafka_topic_partition_current_offset"][(("partition", "0"), ("topic", topic))] == 9
    assert m["kafka_topic_partitions"][(("topic", topic),)] == 1
    assert m["polymq_stream_messages_appended_total"][()] >= 9


def test_openapi_document_is_valid_and_complete(mbroker):
    _, api = mbroker
    doc = api.get("/api/openapi.json")
    validate(doc)
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    served = ManagementApi.__new__(ManagementApi)
    served.state = None
    from polymq.plugins.management.api import Router

    served.router = Router()
    served._routes()
    for method, pattern, _ in served.router.routes:
        path = "/api/" + "/".join(pattern) if pattern else "/api"
        if path == "/api":
            continue
        assert (path, method.lower()) in documented, f"{method} {path} not in the OpenAPI doc"


def test_sys_topics_with_paho(mbroker):
    broker, api = mbroker
    got: dict[str, str] = {}
    plain: list[str] = []

    def on_message(client, userdata, msg):
        if msg.topic.startswith("$SYS/"):
            got[msg.topic] = msg.payload.decode()
        else:
            plain.append(msg.topic)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sys-" + uuid.uuid4().hex[:6])
    c.on_message = on_message
    c.connect(broker.host, broker.port("mqtt"))
    c.subscribe([("$SYS/#", 0), ("#", 0)])
    c.loop_start()
    try:
        wait_for(lambda: "$SYS/broker/uptime" in got, timeout=10, what="$SYS uptime")
        wait_for(lambda: "$SYS/broker/version" in got, timeout=10, what="$SYS version")
        assert got["$SYS/broker/version"].startswith("polymq version ")
        uptime = got["$SYS/broker/uptime"]
        assert uptime.endswith(" seconds") and int(uptime.split()[0]) >= 0
        wait_for(lambda: got["$SYS/broker/uptime"] != uptime, timeout=10, what="uptime moves")
        for topic in (
            "clients/connected",
            "messages/received",
            "messages/sent",
            "bytes/received",
            "bytes/sent",
            "store/messages/count",
            "retained messages/count",
            "subscriptions/count",
        ):
            got.pop(f"$SYS/broker/{topic}", None)
        # values change when the broker's state does: a queue gets a message
        conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
        ch = conn.channel()
        ch.queue_declare("sys-q")
        ch.basic_publish("", "sys-q", b"x")
        conn.close()
        wait_for(
            lambda: int(got.get("$SYS/broker/store/messages/count", "0")) >= 1,
            timeout=10,
            what="store count",
        )
        # a persistent session going offline is counted as a disconnected client
        before = int(got.get("$SYS/broker/clients/disconnected", "0"))
        p = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="sys-persistent", clean_session=False
        )
        p.connect(broker.host, broker.port("mqtt"))
        p.loop_start()
        p.subscribe("sys/persistent", 1)
        wait_for(
            lambda: any(
                s["client_id"] == "sys-persistent" and s["subscriptions"]
                for s in api.get("/api/mqtt/sessions")
            )
        )
        p.disconnect()
        p.loop_stop()
        wait_for(
            lambda: int(got.get("$SYS/broker/clients/disconnected", "0")) == before + 1,
            timeout=10,
            what="$SYS clients/disconnected",
        )
        assert int(got["$SYS/broker/subscriptions/count"]) >= 1
        # '#' never matches $SYS topics (MQTT 4.7.2)
        assert not [t for t in plain if t.startswith("$")]
    finally:
        c.disconnect()
        c.loop_stop()


def test_store_counters_with_sqlite(tmp_path):
    broker, url = start_broker(tmp_path, adapters=["amqp"], store="sqlite")
    api = Api(url)
    try:
        before = scrape(api)["polymq_store_commits_total"][(("backend", "sqlite"),)]
        conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("durable-q", durable=True)
        for _ in range(20):
            ch.basic_publish("", "durable-q", b"p", pika.BasicProperties(delivery_mode=2))
        conn.close()
        m = scrape(api)
        key = (("backend", "sqlite"),)
        assert m["polymq_store_commits_total"][key] > before
        assert m["polymq_store_operations_total"][key] >= 21  # the queue and its 20 messages
        assert m["polymq_store_flushes_total"][key] >= 1
        # the commit latency and group-commit size histograms count the same commits
        commits = m["polymq_store_commits_total"][key]
        lat = m["polymq_store_commit_duration_seconds_count"][key]
        assert lat == m["polymq_store_group_commit_operations_count"][key] >= commits - 1
        inf = m["polymq_store_commit_duration_seconds_bucket"][key + (("le", "+Inf"),)]
        assert inf == lat and m["polymq_store_commit_duration_seconds_sum"][key] > 0
        ops = m["polymq_store_group_commit_operations_sum"][key]
        assert ops >= 21  # every operation written went through a counted commit
    finally:
        broker.stop()
        broker.kill9()
