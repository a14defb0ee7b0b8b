"""STOMP to and from every other protocol, with real clients on both sides: stomp.py against
pika (AMQP 0-9-1), paho-mqtt (3.1.1 and 5), confluent-kafka and the ActiveMQ 5.17 JMS client
(OpenWire). Each direction sends a binary body with every byte value and a non-ASCII text body
with every field STOMP carries, and checks what docs/mapping.md's STOMP column says arrives."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))

from clients import AmqpClient, JmsClient, KafkaClient, MqttClient, Out  # noqa: E402
from conftest import module_broker  # noqa: E402
from stompclient import StompInterop  # noqa: E402

OTHERS = ["amqp", "mqtt5", "mqtt311", "kafka", "openwire"]
BINARY = bytes(range(256))
TEXT = "Grüße, 世界 — naïve café ✓ 🚀"
TTL = 60_000


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    adapters = ["stomp", "amqp", "mqtt", "kafka", "openwire"]
    with module_broker(tmp_path_factory, "stompinterop", adapters) as b:
        made = {
            "stomp": StompInterop(b.port("stomp")),
            "amqp": AmqpClient(b.host, b.port("amqp")),
            "mqtt5": MqttClient(b.host, b.port("mqtt"), v5=True),
            "mqtt311": MqttClient(b.host, b.port("mqtt"), v5=False),
            "kafka": KafkaClient(b.host, b.port("kafka")),
            "openwire": JmsClient(f"tcp://{b.host}:{b.port('openwire')}"),
        }
        yield made
        for c in made.values():
            try:
                c.close()
            except Exception:
                pass


def key_for(p: str) -> str:
    return f"st.{p}.{uuid.uuid4().hex[:8]}"


def outs(stamp: int) -> list[Out]:
    common = dict(
        correlation_id="corr-1",
        message_id="mid-1",
        type="order.created",
        priority=7,
        timestamp_ms=stamp,
        ttl_ms=TTL,
        durable=True,
        headers={"h-str": "välue ✓", "h-num": "42"},
        key=b"k-1",
    )
    return [
        Out(BINARY, content_type="application/octet-stream", reply_to="/queue/reply.q", **common),
        Out(TEXT.encode(), text=True, content_type="text/plain; charset=utf-8", **common),
    ]


@pytest.mark.parametrize("other", OTHERS)
def test_stomp_to(clients, other):
    stomp, client = clients["stomp"], clients[other]
    key = key_for(other)
    handle = client.subscribe(key)
    stamp = int(time.time()) * 1000 - 5000
    sent = outs(stamp)
    for out in sent:
        stomp.publish(key, out)
    got = client.receive(handle, 2)
    assert [g.body for g in got] == [BINARY, TEXT.encode()]
    g = got[1]
    if other == "amqp":
        assert [x.content_type for x in got] == ["application/octet-stream", sent[1].content_type]
        assert got[0].reply_to == "reply.q"
        assert (g.message_id, g.correlation_id, g.type) == ("mid-1", "corr-1", "order.created")
        assert (g.priority, g.durable, g.timestamp_ms) == (7, True, stamp)
        assert 0 < g.ttl_left_ms <= TTL
        assert g.headers["h-str"] == "välue ✓" and g.key == b"k-1"
    elif other == "mqtt5":
        assert g.content_type == sent[1].content_type
        assert got[0].reply_to == "reply/q"
        assert g.correlation_id == "corr-1"
        assert g.headers["h-str"] == "välue ✓" and g.key == b"k-1"
        assert 0 < g.ttl_left_ms <= TTL
        assert g.qos == 1
    elif other == "kafka":
        assert g.headers["h-str"] == "välue ✓".encode() and g.key == b"k-1"
        assert g.timestamp_ms == stamp
    elif other == "openwire":
        assert [x.jms_class for x in got] == ["Bytes", "Text"]
        assert got[0].reply_to == "queue://reply.q"
        assert (g.correlation_id, g.type, g.priority, g.durable) == (
            "corr-1",
            "order.created",
            7,
            True,
        )
        assert g.timestamp_ms == stamp
        assert g.headers["h-str"] == "välue ✓" and g.key == b"k-1"
        assert 0 < g.ttl_left_ms <= TTL
    client.done(handle)


@pytest.mark.parametrize("other", OTHERS)
def test_to_stomp(clients, other):
    stomp, client = clients["stomp"], clients[other]
    key = key_for(other)
    if other == "kafka":
        client.create(key)
    handle = stomp.subscribe(key)
    stamp = int(time.time()) * 1000 - 5000
    reply = {"amqp": "reply.amqp", "mqtt5": "reply/mqtt", "openwire": "reply.jms"}.get(other)
    for body, text in ((BINARY, False), (TEXT.encode(), True)):
        out = Out(body, text=text, durable=True, headers={"h-str": "välue ✓"}, key=b"k-2")
        if other in ("amqp", "mqtt5"):
            out.content_type = "text/plain; charset=utf-8" if text else "application/x-bin"
        if other in ("amqp", "openwire"):
            out.priority, out.type, out.timestamp_ms = 3, "t.x", stamp
        if other == "amqp":
            out.message_id, out.content_encoding, out.user_id = "mid-2", "identity", "guest"
        if other in ("amqp", "mqtt5", "openwire"):
            out.correlation_id, out.reply_to, out.ttl_ms = "corr-2", reply, TTL
        if other == "kafka":
            out.timestamp_ms = stamp
        if other == "mqtt311":
            out.headers, out.key = {}, None
        client.publish(key, out)
    got = stomp.receive(handle, 2)
    assert [g.body for g in got] == [BINARY, TEXT.encode()]
    g = got[1]
    assert g.topic == f"/topic/{key}"
    if other == "mqtt311":
        assert g.headers == {} and g.durable is True
        return
    assert g.headers["h-str"] == "välue ✓"
    assert g.key == b"k-2"
    if other in ("amqp", "mqtt5"):
        assert [x.content_type for x in got] == ["application/x-bin", "text/plain; charset=utf-8"]
    if other in ("amqp", "mqtt5", "openwire"):
        assert g.correlation_id == "corr-2"
        assert 0 < g.ttl_left_ms <= TTL
        assert g.durable is True
    if other == "amqp":
        assert g.reply_to == "/queue/reply.amqp"
        assert (g.message_id, g.content_encoding, g.user_id) == ("mid-2", "identity", "guest")
    if other == "mqtt5":
        assert g.reply_to == "/topic/reply.mqtt"
    if other == "openwire":
        assert g.reply_to == "/queue/reply.jms"
        assert g.message_id.startswith("ID:")
    if other in ("amqp", "openwire"):
        assert (g.priority, g.type) == (3, "t.x")
    if other == "amqp":
        assert g.timestamp_ms == stamp
    if other == "openwire":  # the JMS producer stamps the send time itself
        assert abs(g.timestamp_ms - time.time() * 1000) < 60_000
    if other == "kafka":
        assert g.timestamp_ms == stamp


def test_queue_shared_with_amqp_and_jms(clients):
    """A /queue/ destination is the queue of that name for every protocol."""
    stomp, amqp, jms = clients["stomp"], clients["amqp"], clients["openwire"]
    q = f"shared{uuid.uuid4().hex[:8]}"
    stomp.publish("", Out(b"from stomp", durable=True), destination=f"/queue/{q}")
    got = amqp.receive(q, 1)
    assert got[0].body == b"from stomp"
    handle = stomp.subscribe("", destination=f"/queue/{q}")
    jms.publish(q, Out(b"from jms", text=True), kind="queue")
    amqp.publish(q, Out(b"from amqp"), exchange="")
    got = stomp.receive(handle, 2)
    assert sorted(g.body for g in got) == [b"from amqp", b"from jms"]
    stomp.done(handle)
