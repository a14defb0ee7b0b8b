"""Per-connection limits, refused in each protocol's own words while the broker serves on.

AMQP: ``channel_max`` is offered in connection.tune, pika keeps to it, and a channel number
above it closes the connection with 504 CHANNEL_ERROR. MQTT: ``max_subscriptions`` per client,
a SUBSCRIBE beyond it gets 0x97 Quota exceeded (5.0) or 0x80 (3.1.1) for that filter. OpenWire:
``max_consumers_per_connection``, refused as ActiveMQ does ("at maximum limit").
"""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pika
import pytest
from conftest import module_broker
from test_amqp_raw import Raw

from polymq.adapters.amqp import codec as C


def wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    with module_broker(tmp_path_factory, "limits", ["amqp", "mqtt"],
                       store="memory", log_level="info", settings={
                           "adapters.amqp.channel_max": 3,
                           "adapters.mqtt.max_subscriptions": 2,
                       }) as b:  # fmt: skip
        yield b


def test_amqp_channel_max_is_negotiated_and_enforced(limited):
    conn = pika.BlockingConnection(pika.ConnectionParameters(limited.host, limited.port("amqp")))
    try:
        assert conn._impl.params.channel_max == 3  # what tune offered
        channels = [conn.channel() for _ in range(3)]
        with pytest.raises(pika.exceptions.NoFreeChannels):
            conn.channel()
        raw = Raw(limited)
        assert raw.handshake()["channel_max"] == 3
        raw.send(C.method_frame(4, "channel.open"))
        args = raw.expect_close(C.CHANNEL_ERROR)
        assert "channel 4 above channel_max" in args["reply_text"]
        assert raw.closed()
        raw.close()
        # the other connection is served on
        q = channels[0].queue_declare("", exclusive=True).method.queue
        channels[1].basic_publish("", q, b"ok")
        got = [channels[0].basic_get(q, auto_ack=True) for _ in range(3)]
        assert b"ok" in [g[2] for g in got], got
    finally:
        conn.close()


@pytest.mark.parametrize("protocol, over", [(mqtt.MQTTv5, 0x97), (mqtt.MQTTv311, 0x80)])
def test_mqtt_subscriptions_per_client(limited, protocol, over):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lim-{protocol}",
                    protocol=protocol)  # fmt: skip
    granted: dict[int, list[int]] = {}
    unsubscribed: list[int] = []
    got: list[bytes] = []
    c.on_subscribe = lambda cl, ud, mid, rcs, pr: granted.__setitem__(mid, [r.value for r in rcs])
    c.on_unsubscribe = lambda cl, ud, mid, rcs, pr: unsubscribed.append(mid)
    c.on_message = lambda cl, ud, m: got.append(m.payload)
    c.connect(limited.host, limited.port("mqtt"))
    c.loop_start()

    def subscribe(flt: str) -> list[int]:
        _, mid = c.subscribe(flt, qos=1)
        assert wait(lambda: mid in granted)
        return granted[mid]

    try:
        assert subscribe("lim/a") == [1]
        assert subscribe("lim/b") == [1]
        assert subscribe("lim/c") == [over]  # a third one: over the limit
        assert subscribe("lim/a") == [1]  # replacing one of the two is fine
        _, mid = c.unsubscribe("lim/a")
        assert wait(lambda: mid in unsubscribed)
        assert subscribe("lim/c") == [1]  # room again
        c.publish("lim/c", b"served", qos=1)
        assert wait(lambda: got == [b"served"])
    finally:
        c.loop_stop()
        c.disconnect()


def test_openwire_consumers_per_connection(broker_factory):
    from java import jmsrun

    b = broker_factory(adapters=["openwire"], store="memory", log_level="info",
                       settings={"adapters.openwire.max_consumers_per_connection": 2})  # fmt: skip
    classes = jmsrun.classes_once(["JmsLimits.java"])
    r = jmsrun.run_java(classes, "JmsLimits", f"tcp://{b.host}:{b.port('openwire')}", "2")
    r.check("up.to.limit", "over.limit.refused", "released.slot.reused", "still.serving")
