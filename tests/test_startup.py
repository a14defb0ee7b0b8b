"""What the broker tells its operator: the start banner, shutdown, port clashes, and log lines
that name peers as host:port and Kafka requests by API name."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

import pika
from brokerproc import BrokerProcess

from polymq.core import __version__

ADAPTERS = ["amqp", "mqtt", "kafka", "openwire"]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_banner_and_shutdown_without_twisted_noise(tmp_path):
    broker = BrokerProcess(tmp_path, adapters=ADAPTERS, log_level="info").start()
    try:
        # a connection makes sure the per-connection factories have been used too
        pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp"))).close()
    finally:
        assert broker.stop() == 0
    log = broker.log_text()
    assert f"polymq {__version__} starting; config: built-in defaults, " in log
    assert f"store: sqlite, data in {broker.data_dir}" in log
    assert "auth: users of " in log and "loopback only: guest" in log
    for name in ADAPTERS:
        assert f"{name} listening on 127.0.0.1:{broker.port(name)}: plain TCP (TLS off)" in log
    assert "kafka listening" in log and "adapters.kafka.sasl = false" in log
    ready = [line for line in log.splitlines() if "polymq ready: " in line]
    assert len(ready) == 1 and f"amqp 127.0.0.1:{broker.port('amqp')}" in ready[0]
    assert "polymq stopping: closing " in log
    for noise in ("Starting factory", "Stopping factory", "starting on", "Port ", " at 0x"):
        assert noise not in log, noise


def test_every_port_clash_at_once_with_the_fix(tmp_path):
    holders = []
    ports = []
    for _ in range(2):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        holders.append(holder)
        ports.append(holder.getsockname()[1])
    try:
        out = subprocess.run(
            [
                sys.executable, "-m", "polymq.core", "serve",
                "--set", f"store.data_dir={tmp_path}/data",
                "--set", "adapters.amqp.host=127.0.0.1",
                "--set", f"adapters.amqp.port={ports[0]}",
                "--set", "adapters.mqtt.host=127.0.0.1",
                "--set", f"adapters.mqtt.port={ports[1]}",
                "--set", "adapters.kafka.port=0",
                "--set", "adapters.openwire.port=0",
            ],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    finally:
        for holder in holders:
            holder.close()
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("polymq: ")]
    assert len(errors) == 2, out.stderr
    assert (
        f"adapter amqp: cannot listen on 127.0.0.1:{ports[0]}: Address already in use"
        in (errors[0])
    )
    assert "--set adapters.amqp.port=N (or POLYMQ_ADAPTERS__AMQP__PORT=N)" in errors[0]
    assert "--set adapters.mqtt.enabled=false" in errors[1]
    # reported before the store was opened: nothing was created or logged about it
    assert not (tmp_path / "data").exists()
    assert "sqlite store" not in out.stderr


def test_log_lines_name_kafka_apis_and_peers_as_host_port(tmp_path):
    broker = BrokerProcess(tmp_path, adapters=["amqp", "kafka"], store="memory").start()
    try:
        with socket.create_connection((broker.host, broker.port("kafka"))) as sock:
            client_id = b"log-test"
            # Metadata (API key 3) in version 99, which no broker supports
            payload = struct.pack(">hhih", 3, 99, 1, len(client_id)) + client_id
            sock.sendall(struct.pack(">i", len(payload)) + payload)
            kafka_peer = f"127.0.0.1:{sock.getsockname()[1]}"
            assert sock.recv(100) == b""  # the broker closes the connection
        with socket.create_connection((broker.host, broker.port("amqp"))) as sock:
            sock.sendall(b"AMQP\x01\x01\x00\x09")  # an AMQP 1.0-style header
            amqp_peer = f"127.0.0.1:{sock.getsockname()[1]}"
            sock.recv(100)
        assert wait_for(lambda: amqp_peer in broker.log_text())
    finally:
        broker.stop()
    log = broker.log_text()
    # every adapter's refusals go through the connection contract's one log line
    assert f"kafka: closing {kafka_peer} (log-test): Metadata version 99 is not supported" in log
    header = "b'AMQP\\x01\\x01\\x00\\t'"
    assert f"amqp: closing {amqp_peer}: unsupported protocol header {header}" in log
    assert "IPv4Address" not in log
    assert "api 3" not in log


def test_memory_store_banner(tmp_path):
    broker = BrokerProcess(tmp_path, adapters=["mqtt"], store="memory", log_level="info").start()
    try:
        assert broker.port("mqtt") > 0
        assert "store: memory (nothing is kept across restarts)" in broker.log_text()
    finally:
        broker.stop()
