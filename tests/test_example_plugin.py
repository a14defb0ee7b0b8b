"""The example third-party adapter: pip-installed, found through its entry point, used over TCP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "plugins" / "examples" / "polymq-lineproto"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install the example with the test venv's pip into a directory put on PYTHONPATH.

    A ``--target`` install keeps the shared venv unchanged for other tests, while the broker
    subprocess still discovers the plugin the normal way: through its ``polymq`` entry point.
    """
    base = tmp_path_factory.mktemp("lineproto")
    source, target = base / "src", base / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--target", str(target), str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert list(target.glob("polymq_lineproto-*.dist-info"))
    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


class LineClient:
    """A client of the line protocol. Every command gets one reply line; ``DELIVER`` lines of
    subscriptions may come between replies and are kept apart in ``deliveries``."""

    def __init__(self, host, port, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # set before connecting, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        self.buf = b""
        self.deliveries: list[tuple[int, str, int, str]] = []

    def raw_line(self) -> bytes:
        """The next line with its end, or b"" once the server closed the connection."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def readline(self) -> str:
        return self.raw_line().decode().rstrip("\r\n")

    def reply(self) -> str:
        """The next line that is not a delivery."""
        while True:
            line = self.readline()
            if not line.startswith("DELIVER "):
                return line
            self._delivery(line)

    def _delivery(self, line: str) -> None:
        _, tag, queue, count, body = line.split(" ", 4)
        self.deliveries.append((int(tag), queue, int(count), body))

    def delivery(self) -> tuple[int, str, int, str]:
        """The next delivery (read from the socket if none is kept yet)."""
        while not self.deliveries:
            line = self.readline()
            assert line.startswith("DELIVER "), line
            self._delivery(line)
        return self.deliveries.pop(0)

    def nothing_more(self, wait: float = 0.5) -> bool:
        """True when no byte arrives within ``wait`` seconds."""
        if self.buf:
            return False
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(10)
        self.buf += chunk
        return False

    def call(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self):
        self.sock.close()


def test_plugin_is_listed_with_its_distribution(installed_example):
    env = {**os.environ, **installed_example}
    out = subprocess.run(
        [sys.executable, "-m", "polymq.core", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)["adapters"]["lineproto"]
    assert info["origin"] == "polymq-lineproto 0.1.0"
    assert info["default_port"] == 7878
    show = subprocess.run(
        [sys.executable, "-m", "polymq.core", "config", "show"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "[adapters.lineproto]" in show.stdout
    section = show.stdout.split("[adapters.lineproto]")[1].split("\n\n")[0]
    assert 'greeting = "polymq lineproto ready"' in section
    assert "enabled = false" in section  # an installed plugin listens only when enabled


def test_line_protocol_over_tcp(installed_example, broker_factory):
    broker = broker_factory(
        adapters=["lineproto"],
        store="sqlite",
        settings={
            "adapters.lineproto.greeting": "hello from test",
            "adapters.lineproto.durable": True,
        },
        env=installed_example,
    )
    client = LineClient(broker.host, broker.port("lineproto"))
    try:
        assert client.readline() == "hello from test"
        assert client.call("PING") == "PONG"
        assert client.call("GET jobs") == "EMPTY"
        assert client.call("PUB jobs first message") == "OK 1"
        assert client.call("PUB jobs second") == "OK 1"
        assert client.call("GET jobs") == "MSG first message"
        assert client.call("PUB other x") == "OK 1"
        assert client.call("FROB") == "ERR unknown command 'FROB'"
        assert client.call("PUB onlyqueue").startswith("ERR usage")
        assert client.call("PUB amq.reserved x").startswith("ERR 403")
    except BaseException:
        client.close()
        raise
    # Durable queue, persistent message: it survives a restart of the broker. The client stays
    # connected: a clean shutdown closes its connection and still exits 0.
    assert broker.stop() == 0
    assert client.raw_line() == b""
    client.close()
    broker.start()
    client = LineClient(broker.host, broker.port("lineproto"))
    try:
        client.readline()
        assert client.call("GET jobs") == "MSG second"
        assert client.call("GET jobs") == "EMPTY"
        assert client.call("QUIT") == "BYE"
        assert client.raw_line() == b""  # server closed the connection
    finally:
        client.close()


@pytest.fixture
def line_broker(installed_example, broker_factory):
    """A broker with the example enabled, durable queues and persistent messages (sqlite)."""
    return broker_factory(
        adapters=["lineproto"],
        store="sqlite",
        settings={"adapters.lineproto.durable": True},
        env=installed_example,
    )


def connect(broker, **kwargs) -> LineClient:
    client = LineClient(broker.host, broker.port("lineproto"), **kwargs)
    assert client.readline() == "polymq lineproto ready"
    return client


def test_durable_pub_reply_is_not_overtaken(line_broker):
    """A PUB is answered once its message is on disk, a PING at once: pipelined, the answers
    still come in request order."""
    client = connect(line_broker)
    rounds = 50
    client.sock.sendall(b"".join(b"PUB ordered m%d\r\nPING\r\n" % i for i in range(rounds)))
    answers = [client.reply() for _ in range(2 * rounds)]
    assert answers == ["OK 1", "PONG"] * rounds
    assert client.call("STATS ordered") == f"STATS {rounds} 0 0"
    client.close()


def test_subscribe_ack_and_cleanup_on_disconnect(line_broker):
    publisher = connect(line_broker)
    for i in range(5):
        assert publisher.call(f"PUB work job{i}") == "OK 1"
    worker = connect(line_broker)
    assert worker.call("SUB work 2") == "OK"
    first, second = worker.delivery(), worker.delivery()
    assert [(q, n, body) for _, q, n, body in (first, second)] == [
        ("work", 0, "job0"),
        ("work", 0, "job1"),
    ]
    assert worker.nothing_more()  # the prefetch window (2) is full
    assert worker.call(f"ACK {first[0]}") == "OK"
    third = worker.delivery()
    assert third[3] == "job2"
    assert worker.call(f"ACK {first[0]}").startswith("ERR unknown delivery tag")
    assert worker.call("ACK x").startswith("ERR usage")
    assert publisher.call("STATS work") == "STATS 2 2 1"  # job3, job4 ready; two unacked
    # the worker goes away without settling job1 and job2: they go back, in order, and count
    # as delivered once
    worker.close()
    deadline = time.time() + 5
    while publisher.call("STATS work") != "STATS 4 0 0" and time.time() < deadline:
        time.sleep(0.05)
    assert publisher.call("STATS work") == "STATS 4 0 0"
    other = connect(line_broker)
    assert other.call("SUB work 10") == "OK"
    got = [other.delivery() for _ in range(4)]
    assert [(body, n) for _, _, n, body in got] == [
        ("job1", 1),
        ("job2", 1),
        ("job3", 0),
        ("job4", 0),
    ]
    # NACK puts a message back; it comes again, counted
    assert other.call(f"NACK {got[0][0]}") == "OK"
    again = other.delivery()
    assert (again[3], again[2]) == ("job1", 2)
    for tag in [again[0]] + [g[0] for g in got[1:]]:
        assert other.call(f"ACK {tag}") == "OK"
    assert other.call("UNSUB work") == "OK"
    assert publisher.call("STATS work") == "STATS 0 0 0"
    for c in (publisher, other):
        c.close()


def test_back_pressure_keeps_messages_in_the_queue(installed_example, broker_factory):
    """A subscriber with an unlimited window that does not read: the broker stops pushing once
    its socket is full, and the rest stays in the queue, instead of piling up in memory."""
    broker = broker_factory(adapters=["lineproto"], store="memory", env=installed_example)
    publisher = connect(broker)
    count, size = 3000, 8000
    body = "x" * size
    publisher.sock.sendall(
        b"".join(b"PUB flood %d %s\r\n" % (i, body.encode()) for i in range(count))
    )
    assert [publisher.reply() for _ in range(count)] == ["OK 1"] * count
    slow = connect(broker, rcvbuf=32768)
    assert slow.call("SUB flood 0") == "OK"  # 0: no window, push as fast as the socket takes
    time.sleep(1.0)
    ready, unacked, consumers = map(int, publisher.call("STATS flood").split()[1:])
    assert consumers == 1 and ready + unacked == count
    # what the kernel buffers (a few MB on loopback) was pushed; the rest of 24 MB waits
    assert ready > count // 2, (ready, unacked)
    # once the subscriber reads, everything arrives, in order
    got = [slow.delivery() for _ in range(count)]
    assert [int(b.split(" ", 1)[0]) for _, _, _, b in got] == list(range(count))
    assert publisher.call("STATS flood") == f"STATS 0 {count} 1"
    for c in (publisher, slow):
        c.close()


def test_line_too_long_is_refused_before_it_is_kept(installed_example, broker_factory):
    broker = broker_factory(
        adapters=["lineproto"],
        store="memory",
        settings={"limits.max_message_size": 1024},
        env=installed_example,
    )
    client = connect(broker)
    client.sock.sendall(b"PUB q " + b"y" * 4096)  # no end of line yet: refused already
    assert client.readline() == "ERR line too long"
    assert client.raw_line() == b""
    client.close()
    ok = connect(broker)  # the broker goes on serving others
    assert ok.call("PING") == "PONG"
    ok.close()
