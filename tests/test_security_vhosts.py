"""Vhosts with RabbitMQ's semantics, and the checks made when a client connects.

pika: an empty vhost lands in ``broker.default_vhost``; ``connection.open`` to a vhost the user
has no permissions on, or that does not exist, is refused with 530 NOT_ALLOWED; vhosts are
created and deleted through the management API and ``polymq ctl`` (deleting one closes its
connections with 320 CONNECTION_FORCED and removes its queues and exchanges).
paho: a will to a topic the user may not publish to is refused at CONNECT (5.0 reason 0x87,
3.1.1 return code 5), as RabbitMQ does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pika
import pytest
from conftest import running_broker
from test_management_support import Api, wait_for

from polymq.core.cli import main


@pytest.fixture(scope="module")
def vbroker(tmp_path_factory):
    d = tmp_path_factory.mktemp("vhosts")
    users = d / "users.toml"
    where = ["--set", f"security.users_file={json.dumps(str(users))}"]
    assert main(["users", "add", "alice", "--password", "pw", *where, "--vhost", "prod",
                 "--configure", ".*", "--write", ".*", "--read", ".*"]) == 0  # fmt: skip
    assert main(["users", "add", "dev", "--password", "pw", *where, "--vhost", "prod",
                 "--configure", "",
                 "--write", "^devices/%c/", "--read", "^devices/%c/"]) == 0  # fmt: skip
    port_file = d / "mgmt-port.json"
    with running_broker(d, ["amqp", "mqtt"], store="sqlite", log_level="info", settings={
        "security.users_file": str(users),
        "broker.default_vhost": "prod",
        "broker.vhosts": ["/", "other"],
        "management.port": 0,
        "management.port_file": str(port_file),
        "management.sys_interval": 0.0,
    }) as b:  # fmt: skip
        wait_for(port_file.exists, what="management port file")
        url = f"http://127.0.0.1:{json.loads(port_file.read_text())['management']}"
        yield b, url


def amqp(broker, vhost: str, user: str = "guest", password: str = "guest"):
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            broker.host,
            broker.port("amqp"),
            virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password),
            connection_attempts=1,
        )
    )


def refused_code(broker, vhost: str, user: str = "guest", password: str = "guest") -> str:
    with pytest.raises(pika.exceptions.AMQPConnectionError) as e:
        amqp(broker, vhost, user, password)
    return " ".join(str(a) for a in e.value.args) or repr(e.value)


def ctl(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polymq.core", "ctl", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(Path(__file__).resolve().parent),
    )


def test_an_empty_vhost_is_the_default_vhost(vbroker):
    broker, url = vbroker
    conn = amqp(broker, "", "alice", "pw")
    q = "dq-" + uuid.uuid4().hex[:6]
    conn.channel().queue_declare(q)
    api = Api(url)
    assert api.get(f"/api/queues/prod/{q}")["vhost"] == "prod"
    assert {c["vhost"] for c in api.get("/api/connections")} >= {"prod"}
    conn.close()


def test_connection_open_refused_with_530(vbroker):
    broker, _ = vbroker
    # alice has permissions on "prod" only: "other" exists, "nope" does not
    text = refused_code(broker, "other", "alice", "pw")
    assert "530" in text and "access to vhost 'other' refused for user 'alice'" in text, text
    text = refused_code(broker, "nope", "alice", "pw")
    assert "530" in text and "vhost 'nope' not found" in text, text
    # guest's permissions cover every vhost
    amqp(broker, "other").close()
    amqp(broker, "prod", "alice", "pw").close()


def test_vhosts_created_and_deleted_with_rabbitmq_semantics(vbroker):
    broker, url = vbroker
    api = Api(url)
    name = "tmp-" + uuid.uuid4().hex[:6]
    assert refused_code(broker, name).count("530")
    r = ctl(url, "add_vhost", name)
    assert r.returncode == 0, r.stderr
    assert {"name": name} in api.get("/api/vhosts")
    conn = amqp(broker, name)
    ch = conn.channel()
    ch.exchange_declare("ex-" + name, "topic", durable=True)
    ch.queue_declare("q-" + name, durable=True)
    ch.queue_bind("q-" + name, "ex-" + name, "#")
    ch.basic_publish("ex-" + name, "k", b"kept until the vhost goes")
    assert api.get(f"/api/queues/{name}/q-{name}")["name"] == "q-" + name
    closed: list = []
    r = ctl(url, "delete_vhost", name)
    assert r.returncode == 0, r.stderr
    # the connection in it is closed by the broker: 320 CONNECTION_FORCED
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            conn.process_data_events(0.2)
    closed.append(e.value.reply_code)
    assert closed == [320]
    assert api.call("GET", f"/api/vhosts/{name}")[0] == 404
    assert not [q for q in api.get("/api/queues") if q["vhost"] == name]
    assert not [x for x in api.get("/api/exchanges") if x["vhost"] == name]
    assert "530" in refused_code(broker, name)
    # created again, it starts empty (nothing of the old one came back from the store)
    api.ok("PUT", f"/api/vhosts/{name}")
    assert api.call("GET", f"/api/queues/{name}/q-{name}")[0] == 404
    api.ok("DELETE", f"/api/vhosts/{name}")
    # the default vhost stays
    assert api.call("DELETE", "/api/vhosts/prod")[0] == 403


def test_vhosts_from_config_and_the_api_survive_a_restart(vbroker):
    broker, url = vbroker
    api = Api(url)
    api.ok("PUT", "/api/vhosts/kept")
    broker.stop()
    broker.start()
    port_file = broker.workdir / "mgmt-port.json"
    wait_for(port_file.exists, what="management port file")
    url = f"http://127.0.0.1:{json.loads(port_file.read_text())['management']}"
    names = {v["name"] for v in Api(url).get("/api/vhosts")}
    assert {"prod", "/", "other", "kept"} <= names
    amqp(broker, "kept").close()


def mqtt_connect(broker, cid: str, will_topic: str, protocol) -> int:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol)
    c.username_pw_set("dev", "pw")
    c.will_set(will_topic, b"gone", qos=1)
    codes: list[int] = []
    c.on_connect = lambda cl, ud, fl, rc, pr=None: codes.append(rc.value)
    c.connect(broker.host, broker.port("mqtt"))
    c.loop_start()
    try:
        wait_for(lambda: codes, what="CONNACK")
        return codes[0]
    finally:
        c.loop_stop()
        c.disconnect()


def test_a_will_the_user_may_not_publish_is_refused_at_connect(vbroker):
    broker, _ = vbroker
    assert mqtt_connect(broker, "d1", "devices/d1/status", mqtt.MQTTv5) == 0
    assert mqtt_connect(broker, "d1", "devices/d2/status", mqtt.MQTTv5) == 0x87
    assert mqtt_connect(broker, "d1", "devices/d1/status", mqtt.MQTTv311) == 0
    # paho gives a 3.1.1 return code as the 5.0 reason of the same meaning: 5 -> 0x87
    assert mqtt_connect(broker, "d1", "elsewhere", mqtt.MQTTv311) == 0x87
