"""The broker-wide resource alarm, raised for real (the memory high watermark lowered below the
broker's own memory through the management API, as an operator would with
``polymq ctl set-memory-high-watermark``), holds back the publishers of every protocol, one
client after the other, and lets them go when the watermark is raised again.

Each round: pika, paho (QoS 1), confluent-kafka (acks=all) and the ActiveMQ JMS client
(persistent synchronous sends). While the alarm is on, a publisher's later messages are neither
acknowledged nor stored; once it clears, every one of them is acknowledged and arrives.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pika
import pytest
from confluent_kafka import Consumer, Producer
from conftest import stopping

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))
import jmsrun  # noqa: E402
from stompclient import connect as stomp_connect  # noqa: E402
from test_management_support import ALL_ADAPTERS, Api, start_broker, wait_for  # noqa: E402

HELD_S = 1.5  # how long a held-back publisher is watched for a leak


@pytest.fixture(scope="module")
def alarm_broker(tmp_path_factory):
    broker, url = start_broker(
        tmp_path_factory.mktemp("alarm-clients"), [*ALL_ADAPTERS, "stomp"], store="sqlite"
    )
    api = Api(url)
    with stopping(broker):
        yield broker, api


@pytest.fixture
def alarmed(alarm_broker):
    yield alarm_broker
    # a test that fails with the alarm on must not leave it on for the next one
    alarm_broker[1].call("PUT", "/api/limits", {"memory_high_watermark": 0.95})


def set_alarm(api: Api, on: bool) -> None:
    # 1 MB is below any Python process; 0.95 of the machine is far above this broker
    status, limits, _ = api.call(
        "PUT", "/api/limits", {"memory_high_watermark": 1e6 if on else 0.95}
    )
    assert status == 200, limits
    wait_for(
        lambda: api.get("/api/limits")["mem_alarm"] is on,
        what=f"memory alarm {'set' if on else 'cleared'}",
    )
    assert api.call("GET", "/api/health/checks/alarms")[0] == (503 if on else 200)


def queue_depth(api: Api, name: str) -> int:
    return api.get(f"/api/queues/%2F/{name}")["messages"]


def declare_queue(broker, name: str, bind_topic: str | None = None) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    ch.queue_declare(name, durable=True)
    if bind_topic:
        ch.queue_bind(name, "amq.topic", bind_topic)
    conn.close()


def test_pika_publisher_is_blocked_then_released(alarmed):
    broker, api = alarmed
    q = f"alarm-amqp-{uuid.uuid4().hex[:6]}"
    declare_queue(broker, q)
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    events: list[str] = []
    conn.add_on_connection_blocked_callback(lambda c, f: events.append("blocked"))
    conn.add_on_connection_unblocked_callback(lambda c, f: events.append("unblocked"))
    ch = conn.channel()
    set_alarm(api, True)
    conn.process_data_events(0.5)
    assert events == ["blocked"]
    for i in range(5):
        ch.basic_publish("", q, b"amqp-%d" % i, pika.BasicProperties(delivery_mode=2))
    conn.process_data_events(HELD_S)
    # the publish that found the connection blocked is taken; the frames after it wait unread
    assert queue_depth(api, q) <= 1
    set_alarm(api, False)
    wait_for(lambda: (conn.process_data_events(0.1), "unblocked" in events)[1], what="unblocked")
    wait_for(lambda: queue_depth(api, q) == 5, what="all five AMQP messages stored")
    got = [ch.basic_get(q, auto_ack=True)[2] for _ in range(5)]
    assert got == [b"amqp-%d" % i for i in range(5)]
    conn.close()


def test_paho_publisher_is_not_acknowledged_then_released(alarmed):
    broker, api = alarmed
    q = f"alarm-mqtt-{uuid.uuid4().hex[:6]}"
    declare_queue(broker, q, bind_topic=f"{q}.t")
    set_alarm(api, True)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=q, protocol=mqtt.MQTTv311)
    client.connect(broker.host, broker.port("mqtt"))
    client.loop_start()
    try:
        infos = [client.publish(f"{q}/t", b"mqtt-%d" % i, qos=1) for i in range(5)]
        time.sleep(HELD_S)
        acked = sum(info.is_published() for info in infos)
        assert acked <= 1, f"{acked} of 5 QoS 1 publishes acknowledged during the alarm"
        assert queue_depth(api, q) <= 1
        set_alarm(api, False)
        for info in infos:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in infos)
        wait_for(lambda: queue_depth(api, q) == 5, what="all five MQTT messages stored")
    finally:
        client.loop_stop()
        client.disconnect()


def test_stomp_publisher_is_held_while_a_subscriber_keeps_acknowledging(alarmed):
    broker, api = alarmed
    q = f"alarm-stomp-{uuid.uuid4().hex[:6]}"
    port = broker.port("stomp")
    publisher, sent = stomp_connect(port)
    for i in range(3):  # a backlog, queued before the alarm
        publisher.send(f"/queue/{q}", f"before-{i}", receipt=f"b{i}")
    sent.wait_receipt("b2")
    set_alarm(api, True)
    for i in range(5):
        publisher.send(f"/queue/{q}", f"held-{i}", receipt=f"h{i}")
    # a connection that does not publish is still read: it subscribes, receives, acknowledges
    subscriber, got = stomp_connect(port)
    subscriber.subscribe(f"/queue/{q}", id="s", ack="client-individual")
    frames = got.take(3)
    for frame in frames:
        subscriber.ack(frame.headers["ack"], receipt=f"a-{frame.body}")
    got.wait_receipt("a-before-2")
    time.sleep(HELD_S)
    held = [r for r in sent.receipts if r.startswith("h")]
    assert len(held) <= 1, f"receipts for SENDs during the alarm: {held}"
    # the SEND that found the alarm on was taken (and delivered); the rest wait unread
    assert got.messages.qsize() <= 1
    set_alarm(api, False)
    sent.wait_receipt("h4")
    rest = got.take(5)
    assert [f.body for f in frames + rest] == [f"before-{i}" for i in range(3)] + [
        f"held-{i}" for i in range(5)
    ]
    publisher.disconnect()
    subscriber.disconnect()


def test_kafka_producer_gets_no_answer_then_released(alarmed):
    broker, api = alarmed
    topic = f"alarm-kafka-{uuid.uuid4().hex[:6]}"
    bootstrap = f"{broker.host}:{broker.port('kafka')}"
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    producer.produce(topic, b"warm-up")  # creates the topic before the alarm
    assert producer.flush(10) == 0
    set_alarm(api, True)
    delivered: list[bytes] = []
    errors: list[str] = []

    def report(err, msg):
        (errors.append(str(err)) if err else delivered.append(msg.value()))

    for i in range(5):
        producer.produce(topic, b"kafka-%d" % i, on_delivery=report)
    left = producer.flush(HELD_S)
    assert left > 0 and len(delivered) <= 1, (left, delivered)
    set_alarm(api, False)
    assert producer.flush(15) == 0
    assert not errors and sorted(delivered) == [b"kafka-%d" % i for i in range(5)]
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.time() + 20
    while len(seen) < 6 and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            seen.append(m.value())
    consumer.close()
    assert seen == [b"warm-up"] + [b"kafka-%d" % i for i in range(5)]


@pytest.mark.skipif(jmsrun.missing() is not None, reason=str(jmsrun.missing()))
def test_jms_sync_sends_wait_then_released(alarmed):
    broker, api = alarmed
    q = f"alarm-jms-{uuid.uuid4().hex[:6]}"
    declare_queue(broker, q)
    classes = jmsrun.classes_once(["JmsProducer.java"])
    set_alarm(api, True)
    url = f"tcp://{broker.host}:{broker.port('openwire')}"
    proc = subprocess.Popen(
        jmsrun.java_cmd(classes, "JmsProducer", url, q, "5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "CONNECTED\n" in lines, timeout=60, what="JMS client connected")
        time.sleep(HELD_S)
        sent = [x for x in lines if x.startswith("SENT")]
        assert len(sent) <= 1, f"sends returned during the alarm: {sent}"
        assert queue_depth(api, q) <= 1
        set_alarm(api, False)
        assert proc.wait(60) == 0, proc.stderr.read()[-2000:]
        reader.join(5)
        assert [x.strip() for x in lines if x.startswith("SENT")] == [
            f"SENT {i}" for i in range(1, 6)
        ]
        wait_for(lambda: queue_depth(api, q) == 5, what="all five JMS messages stored")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctl_sets_and_reports_the_limits(alarmed):
    broker, api = alarmed
    url = api.base
    run = [sys.executable, "-m", "polymq.core", "ctl", "--url", url, "--json"]
    out = subprocess.run(
        [*run, "set-disk-free-limit", "12345"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert '"disk_free_limit": 12345' in out.stdout
    out = subprocess.run([*run, "limits"], capture_output=True, text=True, timeout=30)
    assert '"disk_free_limit": 12345' in out.stdout and '"disk_free_alarm": false' in out.stdout
    status, body, _ = api.call("PUT", "/api/limits", {"memory_high_watermark": "high"})
    assert status == 400 and "non-negative number" in body["reason"]
    status, body, _ = api.call("PUT", "/api/limits", {"nope": 1})
    assert status == 400 and "nope" in body["reason"]
