"""Helpers for the management tests (no tests here): a broker with the management port open,
and a small HTTP client for its API."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from brokerproc import BrokerProcess

ALL_ADAPTERS = ["amqp", "mqtt", "kafka", "openwire"]


def start_broker(
    workdir: Path,
    adapters=ALL_ADAPTERS,
    store: str = "memory",
    env: dict | None = None,
    **management: Any,
) -> tuple[BrokerProcess, str]:
    """A broker subprocess with management on a free port; returns (broker, base URL)."""
    port_file = Path(workdir) / "mgmt-port.json"
    settings: dict[str, Any] = {
        "management.port": 0,
        "management.port_file": str(port_file),
        "management.stats_interval": 1.0,
        "management.sys_interval": 0.0,
    }
    settings.update({f"management.{k}": v for k, v in management.items()})
    broker = BrokerProcess(
        workdir, adapters=adapters, store=store, settings=settings, log_level="info", env=env
    )
    broker.start()
    deadline = time.monotonic() + 15
    while not port_file.exists():
        if time.monotonic() > deadline:
            broker.stop()
            raise RuntimeError(f"management did not start; log:\n{broker.log_tail()}")
        time.sleep(0.05)
    port = json.loads(port_file.read_text())["management"]
    return broker, f"http://127.0.0.1:{port}"


class Api:
    def __init__(self, base: str, user: str = "guest", password: str = "guest") -> None:
        self.base = base
        self.auth = base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict | None = None,
        auth: bool = True,
    ) -> tuple[int, Any, dict]:
        data = json.dumps(body).encode() if body is not None else None
        h = dict(headers or {})
        if auth:
            h["Authorization"] = f"Basic {self.auth}"
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                raw, status, hdrs = res.read(), res.status, dict(res.headers)
        except urllib.error.HTTPError as e:
            raw, status, hdrs = e.read(), e.code, dict(e.headers)
        ctype = hdrs.get("Content-Type", "")
        value = json.loads(raw) if raw and ctype.startswith("application/json") else raw
        return status, value, hdrs

    def get(self, path: str) -> Any:
        status, value, _ = self.call("GET", path)
        assert status == 200, (path, status, value)
        return value

    def ok(self, method: str, path: str, body: Any = None, **kw) -> Any:
        status, value, _ = self.call(method, path, body, **kw)
        assert 200 <= status < 300, (method, path, status, value)
        return value


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


# A minimal third-party adapter on the connection contract: length-prefixed frames, each
# answered with itself; "HELLO <id>" finishes the handshake. Management tests install it as a
# real plugin (a distribution with a ``polymq`` entry point on PYTHONPATH).
ECHO_PLUGIN = '''
"""echo: length-prefixed frames, each answered with itself (a test adapter)."""
from polymq.core.connection import ConnectionFactory, SessionBase
from polymq.core.framing import LengthPrefixedFramer
from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec


class EchoSession(SessionBase):
    def frames_received(self, frames):
        conn = self.conn
        for frame in frames:
            frame = bytes(frame)
            if frame.startswith(b"HELLO "):
                conn.handshake_done(user="echo-user", client_id=frame[6:].decode())
                continue
            conn.info.messages_in += 1
            conn.write(len(frame).to_bytes(4, "big") + frame)
            conn.info.messages_out += 1

    def protocol_error(self, error):
        msg = str(error).encode()
        self.conn.write(len(msg).to_bytes(4, "big") + msg)


class EchoFactory(ConnectionFactory):
    protocol_name = "echo"

    def build_framer(self, conn):
        return LengthPrefixedFramer(1 << 20)

    def build_session(self, conn):
        return EchoSession(conn)


@hookimpl
def polymq_adapters():
    return [AdapterSpec(name="echo", default_port=7009,
                        build_factory=lambda broker, section: EchoFactory(broker, section),
                        default_config={"enabled": False})]
'''


def install_echo_plugin(root: Path) -> dict[str, str]:
    """Write the echo plugin and its dist-info under ``root``; returns the broker's env."""
    (root / "polymq_echo_test.py").write_text(ECHO_PLUGIN)
    dist = root / "polymq_echo_test-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: polymq-echo-test\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[polymq]\necho = polymq_echo_test\n")
    return {"PYTHONPATH": str(root)}


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def read_frame(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        head += sock.recv(4 - len(head))
    n = struct.unpack(">I", head)[0]
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    return body


def echo_client(broker, client_id: str, messages: int) -> socket.socket:
    s = socket.create_connection((broker.host, broker.port("echo")), timeout=10)
    s.sendall(frame(b"HELLO " + client_id.encode()))
    for i in range(messages):
        s.sendall(frame(b"m%d" % i))
        assert read_frame(s) == b"m%d" % i
    return s
