"""OpenWire load client: the ActiveMQ 5 JMS client itself (Debian ``libactivemq-java``), in a
small Java program (OpenWireLoad.java, compiled with javac at first use into a cache directory)
driven over stdin/stdout. One JVM per side, one JMS connection per producer/consumer thread.
At-most-once: non-persistent, async sends; at-least-once: non-persistent, synchronous sends
(the broker's receipt before the next send); persistent: persistent messages (synchronous).
Consumers use AUTO_ACKNOWLEDGE. Fan-out = ``topic://``, queue = ``queue://``."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from array import array
from pathlib import Path

from ..side import DriverError, SideContext, producers_finished, wire_result
from .loadchild import LoadChild

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "OpenWireLoad.java"
JAR_DIR = Path(os.environ.get("POLYMQ_COMPARE_JARS", "/usr/share/java"))
JARS = [
    "activemq-client.jar",
    "geronimo-jms_1.1_spec.jar",
    "hawtbuf.jar",
    "slf4j-api.jar",
    "slf4j-nop.jar",
    "geronimo-j2ee-management-1.1-spec.jar",
]
_compile_lock = threading.Lock()


def classpath() -> str:
    return os.pathsep.join(str(JAR_DIR / j) for j in JARS)


def compiled() -> Path:
    """Directory holding OpenWireLoad.class (compiled once per source version)."""
    for tool in ("javac", "java"):
        if shutil.which(tool) is None:
            raise DriverError(
                f"openwire: {tool} not found (the OpenWire driver runs the ActiveMQ "
                "JMS client; install a JDK)"
            )
    for j in JARS:
        if not (JAR_DIR / j).exists():
            raise DriverError(f"openwire: {JAR_DIR / j} missing (Debian package libactivemq-java)")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = base / "polymq" / "compare" / digest
    with _compile_lock:
        if not (out / "OpenWireLoad.class").exists():
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            res = subprocess.run(
                ["javac", "-nowarn", "-cp", classpath(), "-d", str(tmp), str(SOURCE)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if res.returncode != 0:
                raise DriverError(f"openwire: javac failed: {res.stderr.strip()[-500:]}")
            try:
                tmp.rename(out)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def _dest(ctx: SideContext) -> str:
    return f"topic://{ctx.topic}" if ctx.wl.pattern == "fanout" else f"queue://{ctx.topic}"


def jvm(ctx: SideContext, role: str, n: int, latfile: str) -> LoadChild:
    """One OpenWireLoad JVM for ``n`` producers or consumers."""
    wl = ctx.wl
    t = ctx.target
    cmd = [
        "java",
        "-Xms256m",
        "-Xmx512m",
        "-XX:+UseParallelGC",
        "-cp",
        str(compiled()) + os.pathsep + classpath(),
        "OpenWireLoad",
        role,
        f"tcp://{t.host}:{t.port}",
        _dest(ctx),
        str(n),
        str(wl.count or 0),
        str(wl.duration or 0),
        str(wl.rate or 0),
        str(wl.size),
        wl.guarantee,
        latfile,
    ]
    return Jvm(ctx, "openwire", cmd)


class Jvm(LoadChild):
    def failure(self) -> str:
        for line in self.stderr:
            if "Exception" in line or "Error" in line:
                return line.strip()[:300]
        return (self.stderr[-1] if self.stderr else f"JVM exited {self.proc.returncode}")[:300]


def run_consumers(ctx: SideContext) -> dict:
    from hdrh.histogram import HdrHistogram

    from ..common import LATENCY_MAX_US, record_latencies

    wl = ctx.wl
    latfile = f"/tmp/polymq-compare-{ctx.run}.lat"
    child = jvm(ctx, "consumer", wl.consumers, latfile)
    child.wait_ready("consumers")
    ctx.shared.ready.set()
    child.drain_consumers()
    wire = ctx.wire_bytes(child.proc.pid)
    cpu = child.busy()
    res = child.close()
    ctx.shared.received.value = res.get("unique", 0)
    hist = HdrHistogram(1, LATENCY_MAX_US, 3)
    lat = array("q")
    try:
        with open(latfile, "rb") as f:
            lat.frombytes(f.read())
        os.unlink(latfile)
    except OSError:
        pass
    if lat.itemsize == 8:
        lat.byteswap()  # Java writes big-endian
    record_latencies(hist, lat)
    res["histogram"] = hist.encode()
    res.update(wire_result(wire))
    res["cpu_s"] = cpu
    res["errors"] = list(ctx.errors)
    return res


def run_producers(ctx: SideContext) -> dict:
    wl = ctx.wl
    child = jvm(ctx, "producer", wl.producers, "-")
    child.wait_ready("producers")
    # IO printed: every producer thread is done and the last progress line carried the final
    # count; the JVM now waits for CLOSE, so its sockets can be counted while still open
    sent = child.await_producers()
    producers_finished(ctx, sent)
    res_wire = ctx.wire_bytes(child.proc.pid)
    busy = child.busy()
    res = dict(child.close("producers"))
    if res["sent"] != sent:
        ctx.error(f"openwire: producer progress {sent} != final count {res['sent']}")
    res.update(wire_result(res_wire))
    res["cpu_s"] = busy
    res["errors"] = list(ctx.errors)
    return res
