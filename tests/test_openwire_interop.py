"""JMS (ActiveMQ 5.17 client) <-> AMQP 0-9-1 (pika) and MQTT (paho) through one broker:
the OpenWire column of the field mapping (docs/openwire.md) with real clients on both sides."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))

import jmsrun  # noqa: E402
from conftest import module_broker  # noqa: E402

pika = pytest.importorskip("pika")
mqtt = pytest.importorskip("paho.mqtt.client")

pytestmark = pytest.mark.skipif(jmsrun.missing() is not None, reason=str(jmsrun.missing()))


@pytest.fixture(scope="module")
def classes():
    return jmsrun.classes_once()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    adapters = ["openwire", "amqp", "mqtt"]
    with module_broker(
        tmp_path_factory, "ow-interop", adapters, store="sqlite", log_level="info"
    ) as b:
        yield b


def amqp_channel(b):
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=b.host, port=b.port("amqp")))
    return conn, conn.channel()


def test_jms_to_amqp(classes, broker):
    url = f"tcp://{broker.host}:{broker.port('openwire')}"
    jmsrun.run_java(classes, "JmsTest", url, "interop_send").check("interop.sent")
    conn, ch = amqp_channel(broker)
    try:
        method, props, body = ch.basic_get("interop.q", auto_ack=True)
        assert body == "from jms \u00e9".encode()
        assert props.content_type == "text/plain; charset=utf-8"
        assert props.correlation_id == "corr-j"
        assert props.type == "jtype"
        assert props.priority == 6
        assert props.delivery_mode == 2
        assert props.message_id.startswith("ID:")
        assert props.headers["count"] == 3
        assert props.headers["who"] == "jms"
        assert props.headers["flag"] is True
        # a double property travels as AMQP field type 'd'; pika's decoder misreads that
        # type (pika.data.decode_value(b"d" + pack(">d", 0.5)) gives 0L), so only its presence
        # is checked here
        assert "ratio" in props.headers
        method, props, body = ch.basic_get("interop.q", auto_ack=True)
        assert props.content_type == "application/json"
        assert json.loads(body) == {"a": 1, "b": "two"}
        method, props, body = ch.basic_get("interop.q", auto_ack=True)
        assert body == b"\x00\x01\x02\xff"
    finally:
        conn.close()


def test_amqp_and_mqtt_to_jms(classes, broker):
    url = f"tcp://{broker.host}:{broker.port('openwire')}"
    p = subprocess.Popen(
        jmsrun.java_cmd(classes, "JmsTest", url, "interop_recv"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = p.stdout.readline()
        assert first.strip() == "READY", first + p.stderr.read()
        time.sleep(0.3)
        conn, ch = amqp_channel(broker)
        ch.basic_publish(
            "amq.topic",
            "interop.a",
            "hello \u00e9".encode(),
            pika.BasicProperties(
                content_type="text/plain",
                correlation_id="c-1",
                headers={"k": "v", "n": 7},
                priority=5,
            ),
        )
        ch.basic_publish(
            "amq.topic",
            "interop.b",
            b"\x00\xff\n",
            pika.BasicProperties(content_type="application/octet-stream"),
        )
        conn.close()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ow-interop")
        client.connect(broker.host, broker.port("mqtt"))
        client.loop_start()
        client.publish("interop/m/x", b"from mqtt", qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        out, err = p.communicate(timeout=60)
        r = jmsrun.JavaResult(first + out, err, p.returncode)
        r.check(
            "interop.text.type",
            "interop.text.body",
            "interop.text.corr",
            "interop.text.prop",
            "interop.text.intprop",
            "interop.text.priority",
            "interop.text.destination",
            "interop.bytes.type",
            "interop.bytes.body",
            "interop.mqtt.type",
            "interop.mqtt.destination",
        )
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
