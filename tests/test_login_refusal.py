"""A refused login reads the same whether the user exists or not, with real clients."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pika
import pytest
from conftest import module_broker
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory, "login", ["amqp", "mqtt"], store="memory") as b:
        yield b


def amqp_refusal(broker, user: str, password: str) -> str:
    params = pika.ConnectionParameters(
        broker.host,
        broker.port("amqp"),
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=1,
    )
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        pika.BlockingConnection(params)
    return str(info.value)


def mqtt5_refusal(broker, user: str, password: str) -> tuple[int, str]:
    done = threading.Event()
    seen: dict = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        seen["code"] = reason_code.value
        seen["text"] = getattr(properties, "ReasonString", "")
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_connect = on_connect
    props = Properties(mqtt.PacketTypes.CONNECT)
    props.RequestProblemInformation = 1
    client.connect(broker.host, broker.port("mqtt"), properties=props)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
    finally:
        client.loop_stop()
        client.disconnect()
    return seen["code"], seen["text"]


def test_amqp_refusal_does_not_tell_whether_the_user_exists(broker):
    unknown = amqp_refusal(broker, "nobody", "x")
    wrong_password = amqp_refusal(broker, "guest", "x")
    assert "bad user name or password" in unknown
    assert unknown == wrong_password
    assert "nobody" not in unknown


def test_mqtt_refusal_does_not_tell_whether_the_user_exists(broker):
    unknown = mqtt5_refusal(broker, "nobody", "x")
    wrong_password = mqtt5_refusal(broker, "guest", "x")
    assert unknown[0] == 0x86  # Bad User Name or Password
    assert unknown == wrong_password
    assert "nobody" not in unknown[1]


def test_amqp_information_property_is_a_real_description(broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    try:
        props = conn._impl.server_properties
    finally:
        conn.close()
    info = props["information"]
    info = info.decode() if isinstance(info, bytes) else info
    from polymq.core import __version__

    assert info.startswith(f"polymq {__version__}: ")
    assert "example" not in info and "http" not in info
