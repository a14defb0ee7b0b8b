"""A load client in another process (a JVM, a Node.js program) driven over stdin/stdout.

The child prints ``READY`` once connected, ``P <n>`` as progress, ``IO`` when its messages are
through, ``ERROR <text>`` for what the run should report and ``RESULT k=v ...`` after ``CLOSE``.
It reads control lines (``STOP``, ``EXPECT <n> <timeout>``, ``CLOSE``) on stdin.
"""

from __future__ import annotations

import subprocess
import threading
import time

from ..brokercpu import cpu_of
from ..side import DriverError, SideContext


class LoadChild:
    """One load-client process: progress lines in, control lines out."""

    def __init__(
        self, ctx: SideContext, protocol: str, cmd: list[str], env: dict | None = None
    ) -> None:
        self.ctx = ctx
        self.protocol = protocol
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
                self.ctx.error(f"{self.protocol} {line[6:]}")
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
                raise DriverError(f"{self.protocol}: {what} not ready")
        if self.proc.poll() is not None and not self.io.is_set():
            raise DriverError(f"{self.protocol} {what}: {self.failure()}")
        self.cpu_ready = cpu_of(self.proc.pid) or 0.0

    def busy(self) -> float | None:
        """The child's CPU seconds since READY (start-up left out)."""
        now = cpu_of(self.proc.pid)
        return None if now is None else now - self.cpu_ready

    def failure(self) -> str:
        """The line of the child's stderr that best says why it failed."""
        return (self.stderr[-1] if self.stderr else f"exited {self.proc.returncode}")[:300]

    def close(self, what: str = "load client") -> dict:
        """Ask the child to close, wait for its RESULT line and return it."""
        self.send("CLOSE")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)  # the RESULT line
        if self.result is None:
            raise DriverError(f"{self.protocol}: {what} failed: {self.failure()}")
        return self.result

    def drain_consumers(self) -> None:
        """Report progress until the consumers are through; tell them what to expect once the
        producers are done, or to stop when the run is aborted."""
        ctx = self.ctx
        sent_expect = False
        while not self.io.wait(0.02):
            ctx.shared.received.value = self.progress
            if ctx.aborted():
                self.send("STOP")
            elif ctx.shared.producers_done.is_set() and not sent_expect:
                wl = ctx.wl
                self.send(f"EXPECT {wl.expected(ctx.shared.sent.value)} {wl.drain_timeout}")
                sent_expect = True

    def await_producers(self) -> int:
        """Report progress until the producers are through; returns the final count."""
        ctx = self.ctx
        while not self.io.wait(0.05):
            ctx.shared.sent.value = self.progress
            if ctx.aborted():
                break
        if self.result is None and self.proc.poll() is not None and not self.io.is_set():
            raise DriverError(f"{self.protocol} producers: {self.failure()}")
        return self.progress
