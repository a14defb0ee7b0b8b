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

from ..common import Tally
from ..side import DriverError, SideContext, producers_finished, wire_result
from .loadchild import LoadChild

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


def node_load(ctx: SideContext, role: str, n: int, latfile: str) -> LoadChild:
    """One RocketMQLoad.js process for ``n`` producers or consumers."""
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
    return LoadChild(ctx, "rocketmq", cmd, env)


def run_consumers(ctx: SideContext) -> dict:
    from ..common import merge_tallies

    wl = ctx.wl
    latfile = f"/tmp/polymq-compare-{ctx.run}.rmq"
    node = node_load(ctx, "consumer", wl.consumers, latfile)
    node.wait_ready("consumers")
    ctx.shared.ready.set()
    node.drain_consumers()
    wire = ctx.wire_bytes(node.proc.pid)
    cpu = node.busy()
    result = node.close()
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
    res["total"] = max(res["total"], result.get("total", 0))
    ctx.shared.received.value = res["unique"]
    res.update(wire_result(wire))
    res["cpu_s"] = cpu
    res["errors"] = list(ctx.errors)
    return res


def run_producers(ctx: SideContext) -> dict:
    wl = ctx.wl
    node = node_load(ctx, "producer", wl.producers, "-")
    node.wait_ready("producers")
    first = time.monotonic_ns()
    sent = node.await_producers()
    last = time.monotonic_ns()
    producers_finished(ctx, sent)
    wire = ctx.wire_bytes(node.proc.pid)
    busy = node.busy()
    res = dict(node.close("producers"))
    res.pop("errors", None)
    if res.get("sent") != sent:
        ctx.error(f"rocketmq: producer progress {sent} != final count {res.get('sent')}")
    res.update(first_ns=first, last_ns=last, cpu_s=busy, errors=list(ctx.errors))
    res.update(wire_result(wire))
    return res
