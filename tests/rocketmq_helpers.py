"""Helpers of the RocketMQ tests: the ali-ons client (npm) driven through tests/rocketmq/rmq.js,
a raw remoting connection built on the adapter's codec, and the installed plugin's check."""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "rocketmq"
ADAPTER = "rocketmq"


def ensure_ali_ons() -> Path:
    """tests/rocketmq/node_modules with ali-ons, installed by npm from the lock file if missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js and npm are needed (make test installs them)")
    if not (NODE_DIR / "node_modules" / "ali-ons" / "package.json").exists():
        out = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr
    return NODE_DIR


class Node:
    """One rmq.js process; its output lines (JSON objects) are collected as they come."""

    def __init__(self, *args: object) -> None:
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "rmq.js"), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=NODE_DIR,
        )
        self.lines: list[dict] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"raw": line.rstrip()}
            self._q.put(obj)
        self._q.put(None)

    def _drain(self, timeout: float) -> bool:
        try:
            obj = self._q.get(timeout=timeout)
        except queue.Empty:
            return True
        if obj is None:
            self._q.put(None)
            return False
        self.lines.append(obj)
        return True

    def wait_for(self, pred, timeout: float = 30.0) -> dict:
        """The first output line ``pred`` accepts, waiting up to ``timeout`` seconds."""
        deadline = time.time() + timeout
        seen = 0
        while True:
            while seen < len(self.lines):
                if pred(self.lines[seen]):
                    return self.lines[seen]
                seen += 1
            left = deadline - time.time()
            if left <= 0 or not self._drain(min(left, 0.5)):
                raise AssertionError(
                    f"rmq.js: not seen in {timeout}s; output {self.lines[-10:]}; "
                    f"stderr {self.stderr()}"
                )

    def ready(self, timeout: float = 30.0) -> None:
        self.wait_for(lambda o: o.get("ready"), timeout)

    def finish(self, timeout: float = 60.0) -> list[dict]:
        """Wait for the process to end; its messages (lines with a body)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
        while self._drain(0.5):
            pass
        return self.messages

    @property
    def messages(self) -> list[dict]:
        return [o for o in self.lines if "body" in o]

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def produce(
    name_srv: str, topic: str, count: int, tag: str = "", prefix: str = "m", size=0, delay_level=0
):
    """Send ``count`` messages with ali-ons (``delay_level``: RocketMQ's DELAY level); returns
    its send results (``at``: when each send was answered, epoch ms)."""
    p = Node("produce", name_srv, topic, count, tag, prefix, size, delay_level)
    p.finish(120)
    sent = [o for o in p.lines if "sent" in o]
    assert len(sent) == count, (p.lines, p.stderr())
    assert all(o["status"] == "SEND_OK" for o in sent)
    return sent


def consumer(name_srv: str, group: str, topic: str, expr: str = "*", count: int = 1, **kw):
    """Start an ali-ons push consumer (``model``, ``fail``, ``max_reconsume``, ``timeout``;
    ``from_ms``: a new group starts at that time, epoch ms on a whole second)."""
    return Node(
        "consume",
        name_srv,
        group,
        topic,
        expr,
        count,
        kw.get("model", "cluster"),
        kw.get("fail", ""),
        kw.get("max_reconsume", 16),
        kw.get("timeout", 60),
        kw.get("from_ms", 0),
    )


class Raw:
    """A remoting connection speaking through the adapter's own codec (for what no npm client
    sends: batches, one-way sends, malformed frames)."""

    def __init__(self, host: str, port: int) -> None:
        from polymq_rocketmq import codec

        self.C = codec
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        self.opaque = 0

    def send(self, code: int, ext: dict, body: bytes = b"", flag: int = 0) -> int:
        self.opaque += 1
        cmd = self.C.Command(code, self.opaque, flag, None, {k: str(v) for k, v in ext.items()})
        cmd.body = body
        self.sock.sendall(self.C.encode_command(cmd))
        return self.opaque

    def recv(self, timeout: float = 10.0):
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) >= 4 + n:
                    frame, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    return self.C.decode_command(frame)
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def call(self, code: int, ext: dict, body: bytes = b""):
        opaque = self.send(code, ext, body)
        while True:
            r = self.recv()
            assert r is not None, "connection closed"
            if r.opaque == opaque and r.is_response:
                return r

    def close(self) -> None:
        self.sock.close()


def decode_pulled(body: bytes) -> list:
    """The records of a PULL_MESSAGE response, parsed by the construct declaration."""
    from polymq_rocketmq import codec

    out = []
    pos = 0
    while pos < len(body):
        size = int.from_bytes(body[pos : pos + 4], "big")
        out.append(codec.MessageExt.parse(body[pos : pos + size]))
        pos += size
    return out
