"""RocketMQ load client: the npm client ali-ons (RocketMQ 4.x remoting), in a small Node.js
program (RocketMQLoad.js) driven over stdin/stdout, one Node process per side. ali-ons is
installed with npm into a cache directory at first use. Every send waits for the broker's
answer (the client has no one-way send), up to ``window`` sends in flight per producer, so the
guarantee chosen changes nothing on the wire; a RocketMQ broker stores every message. Each
producer sends to one queue (its sharding key), which keeps its messages in order; fan-out =
each consumer in its own group, queue = one group whose members share the topic's queues."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

from ..brokercpu import cpu_of
from ..common import Tally
from ..side import DriverError, SideContext, producers_finished, wire_result

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "RocketMQLoad.js"
ALI_ONS = "ali-ons@3.12.0"
RECORD = struct.Struct(">I16sQ")  # consumer index, body header, receive time (ns)
_install_lock = threading.Lock()


def node_modules() -> Path:
    """A directory whose node_modules holds ali-ons (``POLYMQ_COMPARE_NODE`` or a cache)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise DriverError(f"rocketmq: {tool} not found (the RocketMQ driver runs Node.js)")
    given = os.environ.get("POLYMQ_COMPARE_NODE")
    if given:
        return Path(given)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = base / "polymq" / "compare" / "node-ali-ons-3.12.0"
    with _install_lock:
        if not (out / "node_modules" / "ali-ons" / "package.json").exists():
            out.mkdir(parents=True, exist_ok=True)
            res = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(out), ALI_ONS],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if res.returncode != 0:
                raise DriverError(f"rocketmq: npm install failed: {res.stderr.strip()[-300:]}")
    return out


def topic_of(ctx: SideContext) -> str:
    return ctx.topic.replace(".", "_")  # RocketMQ topic names have no dots


class NodeLoad:
    """One RocketMQLoad.js process: progress lines in, control lines out."""

    def __init__(self, ctx: SideContext, role: str, n: int, latfile: str) -> None:
        wl = ctx.wl
        t = ctx.target
        cmd = [
            "node",
            str(SCRIPT),
            role,
            f"{t.host}:{t.port}",
            topic_of(ctx),
            str(n),
            str(wl.count or 0),
            str(wl.duration or 0),
            str(wl.rate or 0),
            str(wl.size),
            wl.pattern,
            str(min(wl.window, 256)),
            latfile,
        ]
        env = dict(os.environ, NODE_PATH=str(node_modules() / "node_modules"))
        self.ctx = ctx
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.ready = threading.Event()
        self.io = threading.Event()
        self.result: dict | None = None
        self.progress = 0
        self.cpu_ready = 0.0
        self.stderr: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("P "):
                self.progress = int(line[2:])
            elif line == "READY":
                self.ready.set()
            elif line == "IO":
                self.io.set()
            elif line.startswith("ERROR "):
                self.ctx.error(f"rocketmq {line[6:]}")
            elif line.startswith("RESULT "):
                self.result = {k: int(v) for k, v in (kv.split("=", 1) for kv in line[7:].split())}
        self.ready.set()
        self.io.set()

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            if len(self.stderr) < 200:
                self.stderr.append(line.rstrip())

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass

    def wait_ready(self, what: str) -> None:
        deadline = time.monotonic() + 60
        while not self.ready.wait(0.1):
            if time.monotonic() > deadline or self.ctx.aborted():
                self.proc.kill()
                raise DriverError(f"rocketmq: {what} not ready")
        if self.proc.poll() is not None and not self.io.is_set():
            raise DriverError(f"rocketmq {what}: {self.failure()}")
        self.cpu_ready = cpu_of(self.proc.pid) or 0.0

    def busy(self) -> float | None:
        now = cpu_of(self.proc.pid)
        return None if now is None else now - self.cpu_ready

    def failure(self) -> str:
        return (self.stderr[-1] if self.stderr else f"node exited {self.proc.returncode}")[:300]

    def close(self) -> None:
        self.send("CLOSE")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)  # the RESULT line
        if self.result is None:
            raise DriverError(f"rocketmq: load client failed: {self.failure()}")


def run_consumers(ctx: SideContext) -> dict:
    from ..common import merge_tallies

    wl = ctx.wl
    latfile = f"/tmp/polymq-compare-{ctx.run}.rmq"
    node = NodeLoad(ctx, "consumer", wl.consumers, latfile)
    node.wait_ready("consumers")
    ctx.shared.ready.set()
    sent_expect = False
    while not node.io.wait(0.02):
        ctx.shared.received.value = node.progress
        if ctx.aborted():
            node.send("STOP")
        elif ctx.shared.producers_done.is_set() and not sent_expect:
            node.send(f"EXPECT {wl.expected(ctx.shared.sent.value)} {wl.drain_timeout}")
            sent_expect = True
    wire = ctx.wire_bytes(node.proc.pid)
    cpu = node.busy()
    node.close()
    tallies = [Tally() for _ in range(wl.consumers)]
    try:
        with open(latfile, "rb") as f:
            data = f.read()
        os.unlink(latfile)
    except OSError:
        data = b""
    for index, header, received in RECORD.iter_unpack(data[: len(data) // 28 * 28]):
        if index < len(tallies):
            tallies[index].add(header, received)
    res = merge_tallies(tallies)
    res["total"] = max(res["total"], node.result.get("total", 0) if node.result else 0)
    ctx.shared.received.value = res["unique"]
    res.update(wire_result(wire))
    res["cpu_s"] = cpu
    res["errors"] = list(ctx.errors)
    return res


def run_producers(ctx: SideContext) -> dict:
    wl = ctx.wl
    node = NodeLoad(ctx, "producer", wl.producers, "-")
    node.wait_ready("producers")
    first = time.monotonic_ns()
    while not node.io.wait(0.05):
        ctx.shared.sent.value = node.progress
        if ctx.aborted():
            break
    last = time.monotonic_ns()
    if node.proc.poll() is not None and not node.io.is_set():
        raise DriverError(f"rocketmq producers: {node.failure()}")
    sent = node.progress
    producers_finished(ctx, sent)
    wire = ctx.wire_bytes(node.proc.pid)
    busy = node.busy()
    node.close()
    res = dict(node.result or {})
    res.pop("errors", None)
    if res.get("sent") != sent:
        ctx.error(f"rocketmq: producer progress {sent} != final count {res.get('sent')}")
    res.update(first_ns=first, last_ns=last, cpu_s=busy, errors=list(ctx.errors))
    res.update(wire_result(wire))
    return res
