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
import time
from array import array
from pathlib import Path

from ..brokercpu import cpu_of
from ..side import DriverError, SideContext, producers_finished, wire_result

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


class Jvm:
    def __init__(self, ctx: SideContext, role: str, n: int, latfile: str) -> None:
        wl = ctx.wl
        t = ctx.target
        url = f"tcp://{t.host}:{t.port}"
        cmd = [
            "java",
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseParallelGC",
            "-cp",
            str(compiled()) + os.pathsep + classpath(),
            "OpenWireLoad",
            role,
            url,
            _dest(ctx),
            str(n),
            str(wl.count or 0),
            str(wl.duration or 0),
            str(wl.rate or 0),
            str(wl.size),
            wl.guarantee,
            latfile,
        ]
        self.ctx = ctx
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.io = threading.Event()
        self.result: dict | None = None
        self.cpu_ready = 0.0
        self.cpu_s: float | None = None
        self.progress = 0
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
                self.ctx.error(f"openwire {line[6:]}")
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
                raise DriverError(f"openwire: {what} not ready")
        if self.proc.poll() is not None and not self.io.is_set():
            raise DriverError(f"openwire {what}: {self.failure()}")
        self.cpu_ready = cpu_of(self.proc.pid) or 0.0

    def busy(self) -> float | None:
        """JVM CPU seconds since READY (start-up and class loading left out)."""
        now = cpu_of(self.proc.pid)
        return None if now is None else now - self.cpu_ready

    def failure(self) -> str:
        for line in self.stderr:
            if "Exception" in line or "Error" in line:
                return line.strip()[:300]
        return (self.stderr[-1] if self.stderr else f"JVM exited {self.proc.returncode}")[:300]

    def finish(self) -> tuple[dict, tuple[int, int] | None, float]:
        """Wait for IO, count socket bytes, let it close, return (result, wire, cpu)."""
        while not self.io.wait(0.1):
            if self.ctx.aborted():
                self.send("STOP")
        wire = self.ctx.wire_bytes(self.proc.pid)
        self.cpu_s = self.busy()
        self.send("CLOSE")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)  # the RESULT line
        if self.result is None:
            raise DriverError(f"openwire: load client failed: {self.failure()}")
        return self.result, wire, 0.0


def run_consumers(ctx: SideContext) -> dict:
    from hdrh.histogram import HdrHistogram

    from ..common import LATENCY_MAX_US, record_latencies

    wl = ctx.wl
    latfile = f"/tmp/polymq-compare-{ctx.run}.lat"
    jvm = Jvm(ctx, "consumer", wl.consumers, latfile)
    jvm.wait_ready("consumers")
    ctx.shared.ready.set()
    sent_expect = False
    while not jvm.io.wait(0.02):
        ctx.shared.received.value = jvm.progress
        if ctx.aborted():
            jvm.send("STOP")
        elif ctx.shared.producers_done.is_set() and not sent_expect:
            jvm.send(f"EXPECT {wl.expected(ctx.shared.sent.value)} {wl.drain_timeout}")
            sent_expect = True
    res, wire, _ = jvm.finish()
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
    res["cpu_s"] = jvm.cpu_s
    res["errors"] = list(ctx.errors)
    return res


def run_producers(ctx: SideContext) -> dict:
    wl = ctx.wl
    jvm = Jvm(ctx, "producer", wl.producers, "-")
    jvm.wait_ready("producers")
    while not jvm.io.wait(0.05):
        ctx.shared.sent.value = jvm.progress
        if ctx.aborted():
            break
    if jvm.result is None and jvm.proc.poll() is not None and not jvm.io.is_set():
        raise DriverError(f"openwire producers: {jvm.failure()}")
    # IO printed: every producer thread is done and the last progress line carried the final
    # count; the JVM now waits for CLOSE, so its sockets can be counted while still open
    sent = jvm.progress
    producers_finished(ctx, sent)
    res_wire = ctx.wire_bytes(jvm.proc.pid)
    busy = jvm.busy()
    jvm.send("CLOSE")
    try:
        jvm.proc.wait(30)
    except subprocess.TimeoutExpired:
        jvm.proc.kill()
        jvm.proc.wait()
    jvm.reader.join(5)  # the RESULT line
    if jvm.result is None:
        raise DriverError(f"openwire producers: {jvm.failure()}")
    res = dict(jvm.result)
    if res["sent"] != sent:
        ctx.error(f"openwire: producer progress {sent} != final count {res['sent']}")
    res.update(wire_result(res_wire))
    res["cpu_s"] = busy
    res["errors"] = list(ctx.errors)
    return res
