"""One port for every protocol (``[adapters.any]``), and clients on the wrong port told so.

Real clients only: paho (3.1.1 and 5), pika, confluent-kafka and the ActiveMQ JMS client all
connect to the one port and exchange messages; an AMQP and a Kafka client on the MQTT port get
a log line that names the protocol they speak and where it listens.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pika
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))

from brokerproc import BrokerProcess  # noqa: E402
from clients import AmqpClient, JmsClient, KafkaClient, MqttClient, Out  # noqa: E402

PROTOCOLS = ["mqtt311", "mqtt5", "amqp", "kafka", "openwire"]


def clients_on(host: str, port: int) -> dict:
    return {
        "mqtt311": MqttClient(host, port, v5=False),
        "mqtt5": MqttClient(host, port, v5=True),
        "amqp": AmqpClient(host, port),
        "kafka": KafkaClient(host, port),
        "openwire": JmsClient(f"tcp://{host}:{port}"),
    }


@pytest.mark.parametrize(
    "adapters",
    [["mqtt", "amqp", "kafka", "openwire", "any"], ["any"]],
    ids=["beside-their-own-ports", "only-the-one-port"],
)
def test_every_protocol_on_one_port(tmp_path, adapters):
    """Each client publishes once; every client receives what all five published."""
    broker = BrokerProcess(tmp_path, adapters=adapters, log_level="info").start()
    clients = {}
    try:
        port = broker.port("any")
        clients = clients_on(broker.host, port)
        s = "any" + uuid.uuid4().hex[:6]
        topic = f"{s}.x.t"
        subs = {p: clients[p].subscribe(topic) for p in PROTOCOLS}
        for p in PROTOCOLS:
            clients[p].publish(topic, Out(f"from {p}".encode(), text=True))
        for c, h in subs.items():
            got = clients[c].receive(h, len(PROTOCOLS), timeout=15)
            assert sorted(g.body.decode() for g in got) == sorted(f"from {p}" for p in PROTOCOLS), c
        log = broker.log_text()
        for proto in ("mqtt", "amqp", "kafka", "openwire"):
            assert f"{proto}: 127.0.0.1:" in log and "connected" in log, proto
    finally:
        for cl in clients.values():
            try:
                cl.close()
            except Exception:
                pass
        broker.stop()


def test_a_client_on_the_wrong_port_is_told_which_protocol_it_speaks(tmp_path):
    from confluent_kafka.admin import AdminClient

    broker = BrokerProcess(tmp_path, adapters=["mqtt", "amqp", "kafka"], log_level="info").start()
    try:
        mqtt_port = broker.port("mqtt")
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(
                pika.ConnectionParameters(
                    broker.host,
                    mqtt_port,
                    connection_attempts=1,
                    socket_timeout=3,
                    blocked_connection_timeout=3,
                )
            )
        admin = AdminClient(
            {"bootstrap.servers": f"{broker.host}:{mqtt_port}", "socket.timeout.ms": 2000}
        )
        try:
            admin.list_topics(timeout=3)
        except Exception:
            pass
        log = broker.log_text()
        assert f"it looks like amqp, which listens on {broker.port('amqp')}" in log
        assert f"it looks like kafka, which listens on {broker.port('kafka')}" in log
    finally:
        broker.stop()
