"""The example third-party adapter: pip-installed, found through its entry point, used over TCP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
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
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")

    def readline(self) -> str:
        return self.file.readline().decode().rstrip("\r\n")

    def call(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.readline()

    def close(self):
        self.file.close()
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
    assert client.file.readline() == b""
    client.close()
    broker.start()
    client = LineClient(broker.host, broker.port("lineproto"))
    try:
        client.readline()
        assert client.call("GET jobs") == "MSG second"
        assert client.call("GET jobs") == "EMPTY"
        assert client.call("QUIT") == "BYE"
        assert client.file.readline() == b""  # server closed the connection
    finally:
        client.close()
