"""Permissions refused and allowed, as each protocol's real client sees them.

MQTT (paho 5 and 3.1.1): PUBLISH needs ``write`` and SUBSCRIBE ``read`` on the topic (kind
``topic``, the MQTT name); ``%c``/``%u`` in a pattern are the client id and user name.
AMQP (pika): RabbitMQ's table (configure to declare, write on the exchange to publish, read on the
queue to consume), refused with channel.close 403 ACCESS_REFUSED.
"""

from __future__ import annotations

import json
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from conftest import running_broker

from polymq.core.cli import main


def wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("perm-broker")
    users = d / "users.toml"
    where = f"security.users_file={json.dumps(str(users))}"
    assert main(["users", "add", "dev", "--password", "pw", "--set", where,
                 "--configure", "", "--write", "^devices/%c/", "--read", "^(devices/%u/|public/)"]
                ) == 0  # fmt: skip
    assert main(["users", "add", "app", "--password", "pw", "--set", where,
                 "--configure", "^app\\.", "--write", "^(app\\.|amq\\.default$)",
                 "--read", "^app\\."]) == 0  # fmt: skip
    with running_broker(d, ["mqtt", "amqp"], store="memory", log_level="info",
                        settings={"security.users_file": str(users)}) as b:  # fmt: skip
        yield b


class Client:
    def __init__(self, broker, user, password, client_id, protocol=mqtt.MQTTv5):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol)  # fmt: skip
        if user:
            self.c.username_pw_set(user, password)
        self.connected: list = []
        self.acks: dict[int, int] = {}
        self.granted: dict[int, list[int]] = {}
        self.got: list[tuple[str, bytes]] = []
        self.c.on_connect = lambda cl, ud, fl, rc, pr=None: self.connected.append(rc.value)
        self.c.on_publish = lambda cl, ud, mid, rc, pr: self.acks.__setitem__(mid, rc.value)
        self.c.on_subscribe = lambda cl, ud, mid, rcs, pr: self.granted.__setitem__(
            mid, [r.value for r in rcs]
        )
        self.c.on_message = lambda cl, ud, m: self.got.append((m.topic, m.payload))
        self.c.connect(broker.host, broker.port("mqtt"))
        self.c.loop_start()
        assert wait(lambda: self.connected) and self.connected[0] == 0

    def subscribe(self, flt: str) -> list[int]:
        _, mid = self.c.subscribe(flt, qos=1)
        assert wait(lambda: mid in self.granted)
        return self.granted[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        info = self.c.publish(topic, payload, qos=qos)
        assert wait(lambda: info.mid in self.acks)
        return self.acks[info.mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_mqtt5_publish_and_subscribe_refused_with_0x87(broker):
    watcher = Client(broker, None, None, f"w-{uuid.uuid4().hex[:6]}")  # guest: everything
    assert watcher.subscribe("devices/#") == [1]
    dev = Client(broker, "dev", "pw", "sensor-1")
    # write: only devices/<own client id>/...
    assert dev.publish("devices/sensor-1/temp", b"ok") in (0x00, 0x10)
    assert dev.publish("devices/sensor-2/temp", b"forged") == 0x87
    assert dev.publish("elsewhere", b"forged") == 0x87
    # read: devices/<own user name>/... and public/...
    assert dev.subscribe("devices/dev/#") == [1]
    assert dev.subscribe("public/news") == [1]
    assert dev.subscribe("devices/#") == [0x87]
    assert dev.subscribe("#") == [0x87]
    assert wait(lambda: len(watcher.got) >= 1)
    time.sleep(0.3)
    assert watcher.got == [("devices/sensor-1/temp", b"ok")]  # the refused ones went nowhere
    # the connection lives on after refusals
    watcher.c.publish("devices/dev/cmd", b"to dev", qos=1)
    assert wait(lambda: dev.got) and dev.got == [("devices/dev/cmd", b"to dev")]
    dev.close()
    watcher.close()


def test_mqtt311_suback_0x80_and_refused_publish_dropped(broker):
    watcher = Client(broker, None, None, f"w-{uuid.uuid4().hex[:6]}", mqtt.MQTTv311)
    assert watcher.subscribe("devices/#") == [1]
    dev = Client(broker, "dev", "pw", "sensor-9", mqtt.MQTTv311)
    assert dev.subscribe("devices/#") == [0x80]
    assert dev.subscribe("public/#") == [1]
    # 3.1.1 has no refusal in PUBACK: the client is acknowledged, the message is dropped
    assert dev.publish("devices/sensor-1/temp", b"forged") == 0
    assert dev.publish("devices/sensor-9/temp", b"ok") == 0
    info = dev.c.publish("devices/other/q2", b"forged", qos=2)
    assert wait(lambda: info.mid in dev.acks)  # the QoS 2 flow completes
    assert wait(lambda: watcher.got)
    time.sleep(0.3)
    assert watcher.got == [("devices/sensor-9/temp", b"ok")]
    dev.close()
    watcher.close()


def test_mqtt_client_id_in_a_pattern_is_taken_literally(broker):
    dev = Client(broker, "dev", "pw", "x")
    # a client id containing regex characters does not widen ^devices/%c/
    assert dev.publish("devices/x/t", b"1") in (0x00, 0x10)
    dev.close()
    dot = Client(broker, "dev", "pw", "a.b")
    assert dot.publish("devices/aXb/t", b"1") == 0x87
    assert dot.publish("devices/a.b/t", b"1") in (0x00, 0x10)
    dot.close()


def amqp(broker, user: str, password: str):
    import pika

    creds = pika.PlainCredentials(user, password)
    params = pika.ConnectionParameters(broker.host, broker.port("amqp"), credentials=creds)
    return pika.BlockingConnection(params)


def test_amqp_refusals_are_403_channel_errors(broker):
    import pika

    guest = amqp(broker, "guest", "guest")
    guest.channel().queue_declare("guests.q")
    conn = amqp(broker, "app", "pw")
    ch = conn.channel()
    ch.queue_declare("app.q")
    ch.basic_publish("", "app.q", b"mine")  # the default exchange is checked as amq.default
    got: list = []
    assert wait(
        lambda: got or got.extend(b for b in [ch.basic_get("app.q", auto_ack=True)[2]] if b)
    )
    assert got == [b"mine"]
    refusals = [
        lambda c: c.queue_declare("other.q"),  # configure
        lambda c: c.basic_consume("guests.q", lambda *a: None),  # read
        lambda c: c.basic_get("guests.q"),  # read
        lambda c: c.queue_bind("app.q", "amq.fanout"),  # read on the exchange
        lambda c: c.queue_delete("guests.q"),  # configure
    ]
    for attempt in refusals:
        c = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            attempt(c)
        assert refused.value.reply_code == 403
        assert "refused for user 'app'" in refused.value.reply_text
    # publishing to an exchange without write permission closes the channel asynchronously
    c = conn.channel()
    c.basic_publish("amq.fanout", "", b"forged")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        c.queue_declare("app.q", passive=True)
    assert refused.value.reply_code == 403
    # the connection survives every refusal
    assert conn.is_open
    assert conn.channel().queue_declare("app.q", passive=True).method.queue == "app.q"
    conn.close()
    guest.close()


def test_connections_per_user_are_limited_across_protocols(broker_factory, tmp_path):
    import pika

    users = tmp_path / "users.toml"
    where = ["--set", f"security.users_file={json.dumps(str(users))}"]
    assert main(["users", "add", "ann", "--password", "pw", *where, "--read", ".*"]) == 0
    assert main(["users", "add", "solo", "--password", "pw", *where]) == 0
    assert main(["users", "set-max-connections", "solo", "1", *where]) == 0
    b = broker_factory(
        adapters=["mqtt", "amqp"],
        store="memory",
        log_level="info",
        settings={"security.users_file": str(users), "security.max_connections_per_user": 2},
    )

    def refused(user: str, password: str = "pw") -> bool:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:8])
        c.username_pw_set(user, password)
        codes: list = []
        c.on_connect = lambda cl, ud, fl, rc, pr=None: codes.append(rc.value)
        c.connect(b.host, b.port("mqtt"))
        c.loop_start()
        assert wait(lambda: codes)
        c.disconnect()
        c.loop_stop()
        return codes[0] != 0

    creds = pika.PlainCredentials("ann", "pw")
    first = pika.BlockingConnection(
        pika.ConnectionParameters(b.host, b.port("amqp"), credentials=creds)
    )
    second = Client(b, "ann", "pw", "ann-2", mqtt.MQTTv311)
    assert refused("ann")  # the third, whatever the protocol
    assert not refused("guest", "guest")  # other users are not affected
    second.close()
    assert wait(lambda: not refused("ann"))  # a closed connection frees its place
    first.close()
    solo = Client(b, "solo", "pw", "solo-1", mqtt.MQTTv311)
    assert refused("solo")  # its own limit, 1, over the default 2
    solo.close()
    assert "already holds" in b.log_text()


def test_openwire_refusals_are_jms_security_exceptions(broker_factory, tmp_path):
    from java import jmsrun

    users = tmp_path / "users.toml"
    where = ["--set", f"security.users_file={json.dumps(str(users))}"]
    # the JMS client also reads advisory topics, and sends persistent messages synchronously
    read = "^(jms\\.|ActiveMQ\\.Advisory\\.)"
    assert main(["users", "add", "jms", "--password", "pw", *where, "--configure", "^jms\\.",
                 "--write", "^jms\\.", "--read", read]) == 0  # fmt: skip
    b = broker_factory(adapters=["openwire"], store="memory", log_level="info",
                       settings={"security.users_file": str(users)})  # fmt: skip
    classes = jmsrun.classes_once(["JmsSecurity.java"])
    url = f"tcp://{b.host}:{b.port('openwire')}"
    r = jmsrun.run_java(classes, "JmsSecurity", url, "jms", "pw")
    r.check("send.allowed", "send.refused", "consume.refused", "topic.send.refused",
            "consume.allowed", "close")  # fmt: skip


def test_deleting_a_user_closes_its_connections(broker_factory, tmp_path):
    users = tmp_path / "users.toml"
    where = ["--set", f"security.users_file={json.dumps(str(users))}"]
    assert main(["users", "add", "gone", "--password", "pw", *where, "--read", ".*"]) == 0
    assert main(["users", "add", "stays", "--password", "pw", *where, "--read", ".*"]) == 0
    b = broker_factory(adapters=["mqtt"], store="memory", log_level="info",
                       settings={"security.users_file": str(users),
                                 "security.reload_interval": 0.2})  # fmt: skip
    gone = Client(b, "gone", "pw", "gone-1")
    stays = Client(b, "stays", "pw", "stays-1")
    lost: list = []
    gone.c.reconnect_delay_set(60, 60)
    gone.c.on_disconnect = lambda *a: lost.append(1)
    assert main(["users", "delete", "gone", *where]) == 0
    assert wait(lambda: lost)
    assert stays.c.is_connected() and stays.subscribe("x/y") == [1]
    assert "user 'gone' was deleted or its password changed" in b.log_text()
    gone.c.loop_stop()
    stays.close()
