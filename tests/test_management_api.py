"""The management HTTP API against a real broker driven by real clients of each protocol."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

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

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))
import jmsrun  # noqa: E402


@pytest.fixture(scope="module")
def mbroker(tmp_path_factory):
    broker, url = start_broker(tmp_path_factory.mktemp("mgmt-api"))
    with stopping(broker):
        yield broker, Api(url)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def amqp(broker) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            broker.host, broker.port("amqp"), credentials=pika.PlainCredentials("guest", "guest")
        )
    )


def paho_client(broker, client_id: str, clean: bool = True) -> mqtt.Client:
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean,
    )
    c.connect(broker.host, broker.port("mqtt"))
    c.loop_start()
    wait_for(c.is_connected, what="MQTT connect")
    return c


# -- authentication, discovery ------------------------------------------------------------------


def test_basic_auth_is_required_and_checked(mbroker):
    _, api = mbroker
    status, body, headers = api.call("GET", "/api/overview", auth=False)
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Basic")
    # the console's own requests get no challenge (no browser dialog)
    status, _, headers = api.call(
        "GET", "/api/overview", auth=False, headers={"X-Polymq-Console": "1"}
    )
    assert status == 401 and "WWW-Authenticate" not in headers
    assert Api(api.base, "guest", "wrong").call("GET", "/api/overview")[0] == 401
    assert Api(api.base, "nobody", "x").call("GET", "/api/overview")[0] == 401
    broker = mbroker[0]
    wait_for(lambda: "management: login refused for 127.0.0.1" in broker.log_text())
    assert api.get("/api/whoami")["name"] == "guest"


def test_overview_and_nodes(mbroker):
    _, api = mbroker
    ov = api.get("/api/overview")
    assert ov["product_name"] == "polymq"
    assert ov["uptime"] > 0
    assert set(ov["protocols"]) >= {"amqp", "mqtt", "kafka", "openwire"}
    assert ov["object_totals"]["exchanges"] >= 6
    assert ov["mem_used"] > 1_000_000
    assert ov["mem_alarm"] is False
    assert api.get("/api/nodes")[0]["running"] is True
    assert api.get("/api/vhosts") == [{"name": "/"}]
    assert api.get("/api/health/checks/alarms") == {"status": "ok"}
    assert api.call("GET", "/api/nope")[0] == 404
    assert api.call("PATCH", "/api/overview")[0] in (404, 405)
    assert api.call("POST", "/api/overview")[0] == 405


def test_cross_origin_changes_are_refused(mbroker):
    _, api = mbroker
    q = name("csrf")
    status, body, _ = api.call(
        "PUT", f"/api/queues/%2F/{q}", {"durable": False}, headers={"Origin": "http://evil.example"}
    )
    assert status == 403, body
    assert api.call("GET", f"/api/queues/%2F/{q}")[0] == 404


# -- queues, exchanges, bindings with pika ------------------------------------------------------


def test_queue_declare_publish_get_purge_delete(mbroker):
    broker, api = mbroker
    q = name("q")
    status, _, _ = api.call("PUT", f"/api/queues/%2F/{q}", {"durable": True})
    assert status == 201
    assert api.call("PUT", f"/api/queues/%2F/{q}", {"durable": True})[0] == 204
    conn = amqp(broker)
    ch = conn.channel()
    ch.queue_declare(q, passive=True)
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    conn.process_data_events(0.2)
    info = wait_for(
        lambda: (x := api.get(f"/api/queues/%2F/{q}"))["messages_ready"] == 3 and x,
        what="3 messages ready",
    )
    assert info["durable"] is True and info["type"] == "classic"
    assert info["message_bytes"] == 6
    # publish through the default exchange (amq.default in URLs, as in RabbitMQ)
    assert api.ok(
        "POST", "/api/exchanges/%2F/amq.default/publish", {"routing_key": q, "payload": "from-api"}
    ) == {"routed": True}
    routed = api.ok(
        "POST", "/api/exchanges/%2F/amq.direct/publish", {"routing_key": "nowhere", "payload": "x"}
    )
    assert routed == {"routed": False}
    ch.queue_bind(q, "amq.direct", routing_key="k1")
    conn.process_data_events(0.1)
    routed = api.ok(
        "POST",
        "/api/exchanges/%2F/amq.direct/publish",
        {
            "routing_key": "k1",
            "payload": "aGk=",
            "payload_encoding": "base64",
            "properties": {"headers": {"h": "v"}},
        },
    )
    assert routed == {"routed": True}
    # get with requeue: messages stay
    got = api.ok("POST", f"/api/queues/%2F/{q}/get", {"count": 2, "ackmode": "ack_requeue_true"})
    assert [m["payload"] for m in got] == ["m0", "m1"]
    assert api.get(f"/api/queues/%2F/{q}")["messages_ready"] == 5
    # get with ack: the message is gone, and pika sees what is left
    got = api.ok("POST", f"/api/queues/%2F/{q}/get", {"count": 1, "ackmode": "ack_requeue_false"})
    assert got[0]["payload"] == "m0" and got[0]["message_count"] == 4
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m1"
    # purge, then the queue is empty for pika too
    api.ok("DELETE", f"/api/queues/%2F/{q}/contents")
    assert api.get(f"/api/queues/%2F/{q}")["messages_ready"] == 0
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)
    # delete with if-empty on an empty queue works; pika's passive declare then fails
    api.ok("DELETE", f"/api/queues/%2F/{q}?if-empty=true")
    assert api.call("GET", f"/api/queues/%2F/{q}")[0] == 404
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.queue_declare(q, passive=True)
    conn.close()


def test_delete_if_empty_refuses_a_queue_with_messages(mbroker):
    broker, api = mbroker
    q = name("full")
    api.ok("PUT", f"/api/queues/%2F/{q}", {"durable": False})
    conn = amqp(broker)
    ch = conn.channel()
    ch.basic_publish("", q, b"x")
    conn.close()
    wait_for(lambda: api.get(f"/api/queues/%2F/{q}")["messages_ready"] == 1)
    status, body, _ = api.call("DELETE", f"/api/queues/%2F/{q}?if-empty=true")
    assert status == 400 and "not empty" in body["reason"]
    api.ok("DELETE", f"/api/queues/%2F/{q}")


def test_exchanges_and_bindings(mbroker):
    broker, api = mbroker
    x, q = name("x"), name("bq")
    assert api.call("PUT", f"/api/exchanges/%2F/{x}", {"type": "topic", "durable": True})[0] == 201
    assert api.get(f"/api/exchanges/%2F/{x}")["type"] == "topic"
    api.ok("PUT", f"/api/queues/%2F/{q}", {"durable": False})
    status, _, headers = api.call("POST", f"/api/bindings/%2F/e/{x}/q/{q}", {"routing_key": "a.*"})
    assert status == 201
    location = headers["Location"]
    assert location == f"/api/bindings/%2F/e/{x}/q/{q}/a.%2A"
    listed = api.get(f"/api/bindings/%2F/e/{x}/q/{q}")
    assert [b["routing_key"] for b in listed] == ["a.*"]
    assert api.get(location)["destination"] == q
    assert any(b["source"] == x for b in api.get(f"/api/queues/%2F/{q}/bindings"))
    # a pika publisher's message follows the binding
    conn = amqp(broker)
    ch = conn.channel()
    ch.basic_publish(x, "a.b", b"routed")
    ch.basic_publish(x, "b.b", b"not routed")
    conn.process_data_events(0.1)
    wait_for(lambda: api.get(f"/api/queues/%2F/{q}")["messages_ready"] == 1)
    # in use: if-unused refuses; unbind, then it works
    assert api.call("DELETE", f"/api/exchanges/%2F/{x}?if-unused=true")[0] == 400
    api.ok("DELETE", location)
    assert api.get(f"/api/bindings/%2F/e/{x}/q/{q}") == []
    api.ok("DELETE", f"/api/exchanges/%2F/{x}?if-unused=true")
    assert api.call("GET", f"/api/exchanges/%2F/{x}")[0] == 404
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.exchange_declare(x, passive=True)
    conn.close()
    # exchange-to-exchange
    a, b = name("xa"), name("xb")
    api.ok("PUT", f"/api/exchanges/%2F/{a}", {"type": "fanout"})
    api.ok("PUT", f"/api/exchanges/%2F/{b}", {"type": "fanout"})
    assert api.call("POST", f"/api/bindings/%2F/e/{a}/e/{b}", {})[0] == 201
    assert api.get(f"/api/bindings/%2F/e/{a}/e/{b}")[0]["destination_type"] == "exchange"
    assert api.call("PUT", "/api/exchanges/%2F/amq.nope", {"type": "direct"})[0] == 403


def test_consumers_show_prefetch_and_unacknowledged(mbroker):
    broker, api = mbroker
    q = name("cq")
    conn = amqp(broker)
    ch = conn.channel()
    ch.queue_declare(q)
    for i in range(8):
        ch.basic_publish("", q, str(i).encode())
    ch.basic_qos(prefetch_count=5)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag), consumer_tag="mgmt-c1")
    while len(got) < 5:
        conn.process_data_events(0.1)
    consumers = [c for c in api.get("/api/consumers") if c["queue"]["name"] == q]
    assert len(consumers) == 1
    c = consumers[0]
    assert c["consumer_tag"] == "mgmt-c1"
    assert c["prefetch_count"] == 5
    assert c["unacknowledged"] == 5
    assert c["ack_required"] is True
    queue = api.get(f"/api/queues/%2F/{q}")
    assert queue["consumers"] == 1
    assert queue["messages_unacknowledged"] == 5 and queue["messages_ready"] == 3
    ch.basic_ack(got[-1], multiple=True)
    conn.process_data_events(0.2)
    wait_for(lambda: api.get(f"/api/queues/%2F/{q}")["messages_ready"] == 0)
    assert api.get("/api/consumers/%2F") != []
    conn.close()


# -- Kafka topics and groups --------------------------------------------------------------------


def test_kafka_topics_partitions_groups_and_lag(mbroker):
    broker, api = mbroker
    topic, group = name("t"), name("g")
    boot = f"{broker.host}:{broker.port('kafka')}"
    p = KafkaProducer(bootstrap_servers=boot)
    for i in range(10):
        p.send(topic, value=b"v%d" % i)
    p.flush(15)
    c = KafkaConsumer(
        topic,
        bootstrap_servers=boot,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15000,
    )
    n = 0
    for _ in c:
        n += 1
        if n == 10:
            break
    c.commit()
    live = api.get(f"/api/groups/{group}")  # the consumer is still a member
    assert live["state"] == "Stable" and len(live["members"]) == 1, live
    assert live["members"][0]["client_id"] == c.config["client_id"]
    c.close()
    for i in range(4):
        p.send(topic, value=b"w%d" % i)
    p.flush(15)
    p.close()
    s = api.get(f"/api/streams/%2F/{topic}")
    assert s["partition_count"] == 1
    assert s["partitions"][0]["end_offset"] == 14
    assert s["partitions"][0]["start_offset"] == 0
    assert s["bytes"] > 0
    assert s["groups"] == [group]
    assert any(x["name"] == topic for x in api.get("/api/streams"))
    g = api.get(f"/api/groups/{group}")
    assert g["partitions"] == [
        {"topic": topic, "partition": 0, "current_offset": 10, "log_end_offset": 14, "lag": 4}
    ]
    assert g["lag"] == 4
    assert api.get(f"/api/queues/%2F/{topic}")["type"] == "stream"
    # a stream is not purged, it is deleted
    assert api.call("DELETE", f"/api/queues/%2F/{topic}/contents")[0] == 400
    api.ok("DELETE", f"/api/streams/%2F/{topic}")
    assert api.call("GET", f"/api/streams/%2F/{topic}")[0] == 404


# -- MQTT sessions and retained messages --------------------------------------------------------


def test_mqtt_sessions_and_retained(mbroker):
    broker, api = mbroker
    cid, topic = name("sess"), f"mgmt/{uuid.uuid4().hex[:6]}/r"
    c = paho_client(broker, cid, clean=False)
    c.subscribe("mgmt/+/x", qos=1)
    info = c.publish(topic, b"retained-payload", qos=1, retain=True)
    info.wait_for_publish(5)

    def session():
        for s in api.get("/api/mqtt/sessions"):
            if s["client_id"] == cid and s["subscriptions"]:
                return s
        return None

    s = wait_for(session, what="session listed")
    assert s["connected"] is True and s["persistent"] is True
    assert s["subscriptions"] == [{"filter": "mgmt/+/x", "qos": 1}]
    assert s["protocol_version"] == "3.1.1"
    retained = {r["topic"]: r for r in api.get("/api/mqtt/retained")}
    assert retained[topic]["payload"] == "retained-payload"
    assert retained[topic]["payload_bytes"] == 16
    c.disconnect()
    c.loop_stop()
    s = wait_for(lambda: (x := session()) and not x["connected"] and x, what="offline session")
    assert s["connection"] is None


# -- definitions --------------------------------------------------------------------------------


def test_definitions_export_import_round_trip(mbroker, tmp_path):
    broker, api = mbroker
    x, q, s = name("dx"), name("dq"), name("ds")
    api.ok("PUT", f"/api/exchanges/%2F/{x}", {"type": "topic", "durable": True})
    api.ok("PUT", f"/api/queues/%2F/{q}", {"durable": True, "arguments": {"x-max-length": 5}})
    api.ok(
        "PUT",
        f"/api/queues/%2F/{s}",
        {"durable": True, "arguments": {"x-queue-type": "stream", "x-partitions": 3}},
    )
    api.ok("POST", f"/api/bindings/%2F/e/{x}/q/{q}", {"routing_key": "k.#"})
    exported = api.get("/api/definitions")
    assert {
        "name": x,
        "vhost": "/",
        "type": "topic",
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    } in exported["exchanges"]
    assert any(e["name"] == s and e["arguments"]["x-partitions"] == 3 for e in exported["queues"])
    other, other_url = start_broker(tmp_path / "other", adapters=["amqp"])
    try:
        api2 = Api(other_url)
        counts = api2.ok("POST", "/api/definitions", exported)
        assert counts["exchanges"] >= 1 and counts["queues"] >= 2 and counts["bindings"] >= 1
        again = api2.get("/api/definitions")
        for key in ("exchanges", "queues", "bindings"):
            assert sorted(map(repr, again[key])) == sorted(map(repr, exported[key])), key
        # importing twice changes nothing
        assert api2.ok("POST", "/api/definitions", exported)["queues"] == 0
        # and a real client uses what was imported
        conn = pika.BlockingConnection(pika.ConnectionParameters(other.host, other.port("amqp")))
        ch = conn.channel()
        ch.basic_publish(x, "k.1", b"via-import")
        conn.process_data_events(0.1)
        wait_for(lambda: api2.get(f"/api/queues/%2F/{q}")["messages_ready"] == 1)
        conn.close()
        status, body, _ = api2.call("POST", "/api/definitions", {"queues": "nope"})
        assert status == 400 and "list" in body["reason"]
    finally:
        other.stop()
        other.kill9()


# -- connections of every protocol --------------------------------------------------------------

OPENWIRE_HOLDER = """
import org.apache.activemq.ActiveMQConnectionFactory;
public class MgmtHold {
    public static void main(String[] a) throws Exception {
        javax.jms.Connection c = new ActiveMQConnectionFactory(a[0]).createConnection();
        c.setClientID(a[1]);
        // the broker closing the connection reaches a JMS client as a connection exception
        c.setExceptionListener(e -> { System.out.println("CLOSED"); System.exit(0); });
        c.start();
        System.out.println("CONNECTED");
        System.out.flush();
        System.in.read();
        c.close();
    }
}
"""


@pytest.mark.parametrize("protocol", ["amqp", "mqtt", "kafka", "openwire"])
def test_connections_of_every_protocol_listed_and_closed(mbroker, protocol, tmp_path):
    broker, api = mbroker
    cid = name(protocol)
    closers = []
    if protocol == "amqp":
        conn = amqp(broker)
        closers.append(lambda: conn.is_open and conn.close())

        def alive():
            try:
                conn.process_data_events(0.05)
            except pika.exceptions.ConnectionClosedByBroker as e:
                assert e.reply_code == 320 and "test" in e.reply_text  # CONNECTION_FORCED
                return False
            return conn.is_open

    elif protocol == "mqtt":
        c = paho_client(broker, cid)
        closers.append(lambda: (c.disconnect(), c.loop_stop()))
        alive = c.is_connected
    elif protocol == "kafka":
        consumer = KafkaConsumer(
            bootstrap_servers=f"{broker.host}:{broker.port('kafka')}", client_id=cid
        )
        consumer.topics()
        closers.append(consumer.close)
        alive = None
    else:
        assert jmsrun.missing() is None, jmsrun.missing()
        src = tmp_path / "MgmtHold.java"
        src.write_text(OPENWIRE_HOLDER)
        classes = jmsrun.compile_java(tmp_path / "classes", [str(src)])
        proc = subprocess.Popen(
            jmsrun.java_cmd(
                classes, "MgmtHold", f"tcp://{broker.host}:{broker.port('openwire')}", cid
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        closers.append(lambda: (proc.kill(), proc.wait()))
        assert proc.stdout.readline().strip() == "CONNECTED"

        def alive():
            if proc.poll() is None:
                return True
            assert proc.stdout.read().strip() == "CLOSED"  # the client learnt of the close
            return False

    try:

        def listed():
            return [c for c in api.get("/api/connections") if c["protocol"] == protocol]

        conns = wait_for(listed, timeout=5, what=f"{protocol} connection listed")
        entry = conns[-1]
        assert entry["peer_host"] == "127.0.0.1"
        assert entry["bytes_in"] > 0
        if protocol in ("mqtt", "openwire"):
            assert entry["client_id"] == cid
        assert api.get(f"/api/connections/{entry['id']}")["name"] == entry["name"]
        assert api.get("/api/overview")["protocols"][protocol]["connections"] >= 1
        api.ok("DELETE", f"/api/connections/{entry['id']}", headers={"X-Reason": "test"})
        wait_for(
            lambda: not any(c["id"] == entry["id"] for c in api.get("/api/connections")),
            what="connection gone",
        )
        if alive is not None:
            wait_for(lambda: not alive(), timeout=10, what="client saw the close")
    finally:
        for close in closers:
            try:
                close()
            except Exception:
                pass


def test_bad_input_is_a_400_and_the_broker_keeps_serving(mbroker):
    broker, api = mbroker
    q = name("bad")
    api.ok("PUT", f"/api/queues/%2F/{q}", {})
    cases = [
        ("PUT", f"/api/queues/%2F/{name('b')}", b"{not json"),
        ("PUT", f"/api/queues/%2F/{name('b')}", b"[1, 2]"),
        ("PUT", f"/api/queues/%2F/{name('b')}", {"arguments": [1]}),
        ("PUT", f"/api/queues/%2F/{name('b')}", {"arguments": {"x-queue-type": "nope"}}),
        (
            "PUT",
            f"/api/queues/%2F/{name('b')}",
            {"arguments": {"x-queue-type": "stream", "x-partitions": "3"}},
        ),
        ("PUT", f"/api/exchanges/%2F/{name('b')}", {"type": "no-such-type"}),
        ("POST", "/api/exchanges/%2F/amq.direct/publish", {"payload": 5}),
        ("POST", "/api/exchanges/%2F/amq.direct/publish", {"payload": "x", "routing_key": 1}),
        (
            "POST",
            "/api/exchanges/%2F/amq.direct/publish",
            {"payload": "x", "properties": {"priority": "high"}},
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.direct/publish",
            {"payload": "%%", "payload_encoding": "base64"},
        ),
        ("POST", f"/api/queues/%2F/{q}/get", {"count": 0}),
        ("POST", f"/api/queues/%2F/{q}/get", {"ackmode": "later"}),
        ("POST", f"/api/queues/%2F/{q}/get", {"truncate": "x"}),
        ("POST", "/api/definitions", {"queues": [{"name": "x", "arguments": "y"}]}),
        ("POST", "/api/definitions", {"exchanges": [{"vhost": "/"}]}),
    ]
    for method, path, body in cases:
        if isinstance(body, bytes):
            req = urllib.request.Request(
                api.base + path,
                data=body,
                method=method,
                headers={"Authorization": f"Basic {api.auth}", "Content-Type": "application/json"},
            )
            try:
                urllib.request.urlopen(req, timeout=10)
                status = 200
            except urllib.error.HTTPError as e:
                status, reply = e.code, json.loads(e.read())
        else:
            status, reply, _ = api.call(method, path, body)
        assert status == 400, (method, path, body, status, reply)
        assert reply["reason"]
    # a body over 20 MiB is refused without being kept
    big = b'{"payload": "' + b"x" * (21 * 1024 * 1024) + b'"}'
    req = urllib.request.Request(
        api.base + "/api/exchanges/%2F/amq.direct/publish",
        data=big,
        method="POST",
        headers={"Authorization": f"Basic {api.auth}"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    # still serving: the API and an AMQP client
    assert api.get("/api/overview")["product_name"] == "polymq"
    conn = amqp(broker)
    conn.channel().queue_declare(q, passive=True)
    conn.close()
    assert "Traceback" not in broker.log_text()


def test_list_options_filter_sort_columns_pages(mbroker):
    _, api = mbroker
    tag = uuid.uuid4().hex[:6]
    for i, depth in enumerate((3, 1, 2)):
        q = f"page-{tag}-{i}"
        api.ok("PUT", f"/api/queues/%2F/{q}", {})
        for _ in range(depth):
            api.ok(
                "POST", "/api/exchanges/%2F/amq.default/publish", {"routing_key": q, "payload": "x"}
            )
    rows = api.get(f"/api/queues?name=page-{tag}&sort=messages_ready&columns=name,messages_ready")
    assert rows == [
        {"name": f"page-{tag}-1", "messages_ready": 1},
        {"name": f"page-{tag}-2", "messages_ready": 2},
        {"name": f"page-{tag}-0", "messages_ready": 3},
    ]
    # message_stats.publish counts what the stats sampler (every second here) has seen
    wait_for(lambda: api.get(f"/api/queues/%2F/page-{tag}-2")["message_stats"]["publish"] == 2)
    rows = api.get(
        f"/api/queues?name=^page-{tag}-[02]$&use_regex=true&sort=name"
        "&sort_reverse=true&columns=name,message_stats.publish"
    )
    assert rows == [
        {"name": f"page-{tag}-2", "message_stats": {"publish": 2}},
        {"name": f"page-{tag}-0", "message_stats": {"publish": 3}},
    ]
    page = api.get(f"/api/queues?name=page-{tag}&sort=name&page=2&page_size=2&columns=name")
    assert page["items"] == [{"name": f"page-{tag}-2"}]
    assert (page["page"], page["page_count"], page["filtered_count"], page["item_count"]) == (
        2,
        2,
        3,
        1,
    )
    assert page["total_count"] >= 3
    assert api.call("GET", "/api/queues?page=1&page_size=501")[0] == 400
    assert api.call("GET", "/api/queues?name=(&use_regex=true")[0] == 400


RABBITMQ_EXPORT = {
    "rabbit_version": "3.12.13",
    "rabbitmq_version": "3.12.13",
    "product_name": "RabbitMQ",
    "product_version": "3.12.13",
    "users": [
        {
            "name": "guest",
            "password_hash": "dGVzdA==",
            "tags": ["administrator"],
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "limits": {},
        }
    ],
    "vhosts": [
        {"name": "/", "limits": [], "metadata": {"description": "", "tags": []}},
        {"name": "shop", "limits": [], "metadata": {"description": "", "tags": []}},
    ],
    "permissions": [
        {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
    ],
    "topic_permissions": [],
    "parameters": [],
    "global_parameters": [{"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-x"}],
    "policies": [],
    "queues": [
        {
            "name": "orders",
            "vhost": "shop",
            "durable": True,
            "auto_delete": False,
            "arguments": {"x-queue-type": "quorum"},
        },
        {
            "name": "events",
            "vhost": "shop",
            "durable": True,
            "auto_delete": False,
            "arguments": {"x-queue-type": "stream", "x-max-length-bytes": 20000000},
        },
    ],
    "exchanges": [
        {
            "name": "shop.events",
            "vhost": "shop",
            "type": "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
    ],
    "bindings": [
        {
            "source": "shop.events",
            "vhost": "shop",
            "destination": "orders",
            "destination_type": "queue",
            "routing_key": "order.#",
            "arguments": {},
        },
        {
            "source": "shop.events",
            "vhost": "shop",
            "destination": "events",
            "destination_type": "queue",
            "routing_key": "#",
            "arguments": {},
        },
    ],
}


def test_a_rabbitmq_definitions_file_imports(tmp_path):
    broker, url = start_broker(tmp_path, adapters=["amqp"])
    api = Api(url)
    try:
        counts = api.ok("POST", "/api/definitions", RABBITMQ_EXPORT)
        assert counts == {
            "vhosts": 1,
            "exchanges": 1,
            "queues": 2,
            "bindings": 2,
            "ignored": ["global_parameters", "permissions", "users"],
        }
        assert api.get("/api/queues/shop/events")["type"] == "stream"
        conn = pika.BlockingConnection(
            pika.ConnectionParameters(broker.host, broker.port("amqp"), virtual_host="shop")
        )
        ch = conn.channel()
        ch.basic_publish("shop.events", "order.created", b"o-1")
        conn.process_data_events(0.2)
        wait_for(lambda: api.get("/api/queues/shop/orders")["messages_ready"] == 1)
        wait_for(lambda: api.get("/api/streams/shop/events")["messages"] == 1)
        conn.close()
    finally:
        broker.stop()
        broker.kill9()


def test_an_mqtt5_client_closed_by_the_operator_hears_administrative_action(mbroker):
    broker, api = mbroker
    cid = name("mqtt5")
    reasons = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.on_disconnect = lambda client, userdata, flags, rc, props: reasons.append(rc)
    c.connect(broker.host, broker.port("mqtt"))
    c.loop_start()
    try:
        wait_for(c.is_connected, what="MQTT connect")
        entry = wait_for(
            lambda: [x for x in api.get("/api/connections") if x["client_id"] == cid],
            what="listed",
        )[0]
        api.ok("DELETE", f"/api/connections/{entry['id']}", headers={"X-Reason": "maintenance"})
        wait_for(lambda: reasons, timeout=10, what="DISCONNECT seen")
        assert reasons[0].value == 0x98  # Administrative action, as Mosquitto's admin kick
    finally:
        c.loop_stop()


def test_amqp_channels_with_their_consumers_and_prefetch(mbroker):
    broker, api = mbroker
    conn = amqp(broker)
    try:
        one, two = conn.channel(), conn.channel()
        q = name("chq")
        one.queue_declare(q)
        two.basic_qos(prefetch_count=7)
        two.basic_consume(q, lambda *a: None)
        conn.process_data_events(0.2)
        port = conn._impl._transport._sock.getsockname()[1]  # this connection's entry
        mine = [
            c for c in api.get("/api/channels")
            if c["protocol"] == "amqp" and f"127.0.0.1:{port} " in c["connection"]
        ]  # fmt: skip
        assert len(mine) == 2, mine
        by_number = {c["number"]: c for c in mine}
        assert by_number[two.channel_number]["consumer_count"] == 1
        assert by_number[two.channel_number]["prefetch_count"] == 7
        assert by_number[one.channel_number]["consumer_count"] == 0
    finally:
        conn.close()
