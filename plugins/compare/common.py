"""Shared pieces of the load drivers: delivery bookkeeping, pacing, socket byte counts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from array import array

from .workload import HEADER, HEADER_SIZE

_unpack_header = HEADER.unpack_from
_pack_header_into = HEADER.pack_into
now_ns = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process on the machine

LATENCY_MAX_US = 3_600_000_000  # 1 h


class DriverError(Exception):
    """A failure a driver reports in one line (refused login, broker closed the channel...)."""


class Tally:
    """What one consumer received: counts, duplicates, order violations, latencies (µs)."""

    __slots__ = (
        "seen",
        "last",
        "unique",
        "total",
        "dups",
        "disorder",
        "lat",
        "first",
        "final",
        "bad",
    )

    def __init__(self) -> None:
        self.seen: dict[int, bytearray] = {}
        self.last: dict[int, int] = {}
        self.unique = 0
        self.total = 0
        self.dups = 0
        self.disorder = 0
        self.bad = 0  # bodies too short to carry the header
        self.lat = array("q")
        self.first = 0
        self.final = 0

    def add(self, body, now: int) -> None:
        self.total += 1
        if len(body) < HEADER_SIZE:
            self.bad += 1
            return
        pid, seq, ts = _unpack_header(body)
        seen = self.seen.get(pid)
        if seen is None:
            seen = self.seen[pid] = bytearray(1024)
            self.last[pid] = -1
        if seq >= len(seen):
            seen.extend(bytes(max(seq + 1 - len(seen), len(seen))))
        if seen[seq]:
            self.dups += 1
            return
        seen[seq] = 1
        self.unique += 1
        if seq < self.last[pid]:
            self.disorder += 1
        else:
            self.last[pid] = seq
        self.lat.append((now - ts) // 1000)
        if not self.first:
            self.first = now
        self.final = now

    def result(self) -> dict:
        return {
            "total": self.total,
            "unique": self.unique,
            "duplicates": self.dups,
            "out_of_order": self.disorder,
            "malformed": self.bad,
            "first_ns": self.first,
            "last_ns": self.final,
        }


def merge_tallies(tallies: list[Tally]) -> dict:
    """One consumer-side result from several tallies (latencies as an encoded HDR histogram)."""
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(1, LATENCY_MAX_US, 3)
    out = {
        "total": 0,
        "unique": 0,
        "duplicates": 0,
        "out_of_order": 0,
        "malformed": 0,
        "first_ns": 0,
        "last_ns": 0,
    }
    for t in tallies:
        r = t.result()
        for k in ("total", "unique", "duplicates", "out_of_order", "malformed"):
            out[k] += r[k]
        if r["first_ns"] and (not out["first_ns"] or r["first_ns"] < out["first_ns"]):
            out["first_ns"] = r["first_ns"]
        out["last_ns"] = max(out["last_ns"], r["last_ns"])
        record_latencies(hist, t.lat)
    out["histogram"] = hist.encode()
    return out


def record_latencies(hist, values) -> None:
    rec = hist.record_value
    top = LATENCY_MAX_US
    for v in values:
        rec(1 if v < 1 else (top if v > top else v))


class Pacer:
    """How many messages are due now for a producer at ``rate`` msg/s (None: unlimited)."""

    def __init__(self, rate: float | None, batch: int) -> None:
        self.rate = rate
        self.batch = batch
        self.start = time.monotonic()

    def due(self, sent: int) -> int:
        if self.rate is None:
            return self.batch
        while True:
            n = int((time.monotonic() - self.start) * self.rate) + 1 - sent
            if n > 0:
                return min(n, self.batch)
            time.sleep(max(0.0, (sent - (time.monotonic() - self.start) * self.rate) / self.rate))


class Budget:
    """Count or duration bound of one producer."""

    def __init__(self, count: int | None, duration: float | None) -> None:
        self.count = count
        self.deadline = None if duration is None else time.monotonic() + duration

    def left(self, sent: int) -> int:
        if self.count is not None:
            return self.count - sent
        return 1 << 30 if time.monotonic() < self.deadline else 0


def stamp(buf: bytearray, offset: int, producer: int, seq: int) -> None:
    _pack_header_into(buf, offset, producer, seq, now_ns())


def read_answers(sock, buf: bytearray, block: bool, who: str) -> bool:
    """Append what the broker has sent to ``buf``: everything waiting, or (``block``) what
    comes within 0.2 s. Returns whether anything arrived; a closed connection is an error."""
    sock.setblocking(block)
    if block:
        sock.settimeout(0.2)
    try:
        data = sock.recv(65536)
    except (BlockingIOError, TimeoutError):
        return False
    finally:
        sock.settimeout(0.2)
    if not data:
        raise DriverError(f"{who}: broker closed the connection")
    buf += data
    return True


_SS_RE = re.compile(r"bytes_(sent|received):(\d+)")


def socket_bytes(pid: int, port: int) -> tuple[int, int] | None:
    """(bytes sent, bytes received) by process ``pid`` over its TCP connections to ``port``,
    as counted by the kernel (``ss -ti``); None if ``ss`` is unavailable."""
    if shutil.which("ss") is None:
        return None
    try:
        out = subprocess.run(
            ["ss", "-tinpH", "state", "established", f"( dport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    sent = received = 0
    current = False
    tag = f"pid={pid},"
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            current = tag in line
            continue
        if current:
            for kind, value in _SS_RE.findall(line):
                if kind == "sent":
                    sent += int(value)
                else:
                    received += int(value)
    return sent, received


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
