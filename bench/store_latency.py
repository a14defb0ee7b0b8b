"""Latency and group-commit throughput of the sqlite store (put_message + after_durable).

    .venv/bin/python bench/store_latency.py [--n 2000] [--producers 1,16,64] [--size 200]
        [--dir /path/on/the/disk] [--switch-interval 0.005] [--gil-probe]

Prints, all in one run and on the same disk:

* ``floor``: a plain Python loop of ``os.write`` + ``os.fsync`` (and ``os.fdatasync``) of
  ``--size`` bytes appended to a file: what one durable write costs at least;
* ``sqlite direct``: one thread, ``INSERT`` + ``COMMIT`` in WAL mode with ``synchronous=FULL``
  (no reactor, no writer thread): what sqlite itself adds;
* ``store, 1 producer``: a Twisted reactor, a :class:`SqliteStore`, one writer doing
  ``put_message`` + ``after_durable`` and waiting for the callback before its next message
  (a synchronous JMS producer): median / p99 latency and ops/s;
* ``store, N producers``: N such producers at once (group commit): ops/s, commits, ops/commit;
* ``... + acks (T us)``: the same, but a consumer acknowledges (``delete_message``) each message
  T microseconds after it was put, as in a JMS producer/consumer pair on a persistent queue.

``--stream-mb M`` (instead of the above): stream appends, as the Kafka adapter does them:
``--producers`` partitions, each appending ``--batch-kb`` KB entries (a Kafka record batch) and
waiting for ``after_durable`` before the next one, until M MB are written; prints MB/s,
commits, segment fsyncs, and the CPU time of the writer thread and of the process per MB.

``--gil-probe`` adds, in the N-producer runs, a busy reactor: every turn copies 1 MB, and the
time between turns is reported (about 25-50 us of copying; more is waiting for the GIL that the
writer thread holds).
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT.parent))  # so that ``polymq`` imports from a checkout named polymq


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def _row(name: str, lat: list[float], elapsed: float, extra: str = "") -> None:
    print(
        f"{name:<36} median {statistics.median(lat) * 1e3:7.3f} ms"
        f"  p99 {_pct(lat, 0.99) * 1e3:7.3f} ms  p99.9 {_pct(lat, 0.999) * 1e3:7.3f} ms"
        f"  {len(lat) / elapsed:8.0f} ops/s {extra}",
        flush=True,
    )


def bench_floor(d: str, n: int, size: int, sync: str) -> None:
    path = os.path.join(d, f"floor-{sync}.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fn = getattr(os, sync)
    data = os.urandom(size)
    lat = []
    start = time.perf_counter()
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, data)
            fn(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    _row(f"floor: os.write + os.{sync} (append)", lat, time.perf_counter() - start)
    # overwrite in place: a preallocated file, as a reused WAL is
    fd = os.open(path, os.O_WRONLY)
    lat = []
    start = time.perf_counter()
    try:
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, data, i * size)
            fn(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    _row(f"floor: os.pwrite + os.{sync} (reuse)", lat, time.perf_counter() - start)


def bench_sqlite_direct(d: str, n: int, size: int) -> None:
    path = os.path.join(d, "direct.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE m (q TEXT, seq INTEGER, data BLOB, PRIMARY KEY (q, seq))")
    data = os.urandom(size)
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO m VALUES ('q', ?, ?)", (i, data))
        conn.execute("COMMIT")
        lat.append(time.perf_counter() - t)
    _row("sqlite direct: INSERT + COMMIT", lat, time.perf_counter() - start)
    conn.close()


def bench_store(d: str, n: int, size: int, producers: int, gil_probe: bool, ack_us: float) -> None:
    """Run one store benchmark in this process (call in a fresh subprocess: one reactor each)."""
    from twisted.internet import reactor

    from polymq.core.store.sqlite import SqliteStore

    store = SqliteStore(os.path.join(d, f"store-{producers}"))
    data = os.urandom(size)
    lat: list[float] = []
    probe: list[float] = []
    state = {"seq": 0, "done": 0, "start": 0.0}
    total = n * producers if producers > 1 else n

    def send(_p: int) -> None:
        state["seq"] += 1
        seq = state["seq"]
        t = time.perf_counter()
        store.put_message("/", "q", seq, data, 0)
        store.after_durable(lambda: acked(_p, t))
        if ack_us >= 0:  # a consumer receives the message and acknowledges it ack_us later
            ack_later(t + ack_us / 1e6, seq)

    def ack_later(when: float, seq: int) -> None:
        # spin reactor turns (callLater(0) polls without sleeping) until ``when``: a timer
        # would round up to the next millisecond
        if time.perf_counter() >= when:
            store.delete_message("/", "q", seq)
        else:
            reactor.callLater(0, ack_later, when, seq)

    def acked(p: int, t: float) -> None:
        lat.append(time.perf_counter() - t)
        state["done"] += 1
        if state["done"] >= total:
            finish()
        elif state["seq"] < total:
            send(p)

    big = b"x" * (1 << 20)

    def gil(last: float = 0.0) -> None:
        # a busy reactor: every turn copies 1 MB; report the time between two turns (the copy
        # plus any wait for the GIL held by the writer thread)
        if state["done"] >= total:
            return
        now = time.perf_counter()
        if last:
            probe.append(now - last)
        bytearray(big)
        reactor.callLater(0, gil, now)

    def finish() -> None:
        elapsed = time.perf_counter() - state["start"]
        commits = store.commits
        extra = (
            f" commits {commits}  msgs/commit {len(lat) / max(commits, 1):.1f}"
            f"  flushes {store.flushes}"
        )
        name = f"store, {producers} producer{'s' if producers > 1 else ''}"
        if ack_us >= 0:
            name += f" + acks ({ack_us:g} us)"
        _row(name, lat, elapsed, extra)
        if probe:
            print(
                f"{'  busy reactor turn (1 MB copy)':<36}"
                f" median {statistics.median(probe) * 1e3:7.3f} ms"
                f"  p99 {_pct(probe, 0.99) * 1e3:7.3f} ms  max {max(probe) * 1e3:7.3f} ms",
                flush=True,
            )
        store.close().addBoth(lambda _: reactor.stop())

    def started(_: object) -> None:
        # warm up: the first commit creates the WAL and fsyncs the directory
        store.put_message("/", "q", 0, data, 0)

        def go() -> None:
            state["start"] = time.perf_counter()
            for p in range(producers):
                send(p)
            if gil_probe and producers > 1:
                reactor.callLater(0, gil)

        store.after_durable(lambda: reactor.callLater(0, go))

    store.open().addCallback(started)
    reactor.run()


def _thread_cpu(native_id: int | None) -> float:
    """CPU seconds (user + system) of one thread of this process, from /proc."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def bench_stream(d: str, mb: float, batch_kb: int, partitions: int) -> None:
    """Stream appends (Kafka-like batches), one waiting producer per partition."""
    from twisted.internet import reactor

    from polymq.core.store.sqlite import SqliteStore

    store = SqliteStore(os.path.join(d, f"stream-{partitions}"))
    data = os.urandom(batch_kb * 1024)
    total = int(mb * (1 << 20) // len(data))
    state = {"sent": 0, "done": 0, "start": 0.0, "cpu": 0.0, "wcpu": 0.0}
    nxt = [0] * partitions
    lat: list[float] = []

    def send(p: int) -> None:
        state["sent"] += 1
        t = time.perf_counter()
        store.append_stream("/", "bench", p, nxt[p], 16, int(t * 1000), "kafka.v2", data)
        nxt[p] += 16
        store.after_durable(lambda: acked(p, t))

    def acked(p: int, t: float) -> None:
        lat.append(time.perf_counter() - t)
        state["done"] += 1
        if state["done"] >= total:
            finish()
        elif state["sent"] < total:
            send(p)

    def finish() -> None:
        elapsed = time.perf_counter() - state["start"]
        wcpu = _thread_cpu(store._thread.native_id) - state["wcpu"]
        cpu = time.process_time() - state["cpu"]
        written = total * len(data) / (1 << 20)
        _row(
            f"stream, {partitions} partition{'s' if partitions > 1 else ''}, {batch_kb} KB",
            lat,
            elapsed,
            f" {written / elapsed:6.0f} MB/s  commits {store.commits}"
            f"  segment fsyncs {getattr(store, 'segment_fsyncs', '-')}"
            f"  writer CPU {wcpu * 1e3 / written:5.2f} ms/MB  process CPU"
            f" {cpu * 1e3 / written:5.2f} ms/MB",
        )
        store.close().addBoth(lambda _: reactor.stop())

    def started(_: object) -> None:
        store.put_message("/", "q", 0, b"warm-up", 0)

        def go() -> None:
            state["start"] = time.perf_counter()
            state["cpu"] = time.process_time()
            state["wcpu"] = _thread_cpu(store._thread.native_id)
            for p in range(partitions):
                send(p)

        store.after_durable(lambda: reactor.callLater(0, go))

    store.open().addCallback(started)
    reactor.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="messages per producer (default 2000)")
    ap.add_argument("--producers", default="1,16,64", help="comma-separated producer counts")
    ap.add_argument("--size", type=int, default=200, help="message size in bytes")
    ap.add_argument("--dir", default=None, help="directory on the disk to measure (default: tmp)")
    ap.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval for the store runs",
    )
    ap.add_argument("--gil-probe", action="store_true")
    ap.add_argument(
        "--ack-us",
        default="-1,150",
        help="comma-separated: -1 = no consumer; t >= 0 = each message is"
        " acknowledged (deleted) t microseconds after it is put (default -1,150)",
    )
    ap.add_argument("--stream-mb", type=float, default=0, help="stream appends mode: MB to write")
    ap.add_argument("--batch-kb", type=int, default=64, help="stream entry size (KB)")
    ap.add_argument("--only-store", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stream-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stream_child:
        d = tempfile.mkdtemp(prefix="store-stream-", dir=args.dir)
        try:
            bench_stream(d, args.stream_mb, args.batch_kb, args.only_store)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    d = tempfile.mkdtemp(prefix="store-latency-", dir=args.dir)
    import subprocess

    try:
        if args.stream_mb:
            print(f"stream appends: {args.stream_mb:g} MB, {args.batch_kb} KB entries, dir={d}")
            for p in [int(x) for x in args.producers.split(",") if x]:
                cmd = [sys.executable, __file__, "--only-store", str(p), "--dir", d]
                cmd += ["--stream-mb", str(args.stream_mb), "--batch-kb", str(args.batch_kb)]
                cmd += ["--switch-interval", str(sys.getswitchinterval()), "--stream-child"]
                subprocess.run(cmd, check=True)
            return
        if args.only_store is not None:
            bench_store(d, args.n, args.size, args.only_store, args.gil_probe, float(args.ack_us))
            return
        import subprocess

        print(f"n={args.n} size={args.size}B dir={d} switchinterval={sys.getswitchinterval()}")
        bench_floor(d, args.n, args.size, "fsync")
        bench_floor(d, args.n, args.size, "fdatasync")
        bench_sqlite_direct(d, args.n, args.size)
        for ack in [x for x in args.ack_us.split(",") if x]:
            for p in [int(x) for x in args.producers.split(",") if x]:
                cmd = [
                    sys.executable,
                    __file__,
                    "--only-store",
                    str(p),
                    "--n",
                    str(args.n),
                    "--size",
                    str(args.size),
                    "--dir",
                    d,
                    "--ack-us",
                    ack,
                    "--switch-interval",
                    str(sys.getswitchinterval()),
                ]
                if args.gil_probe:
                    cmd.append("--gil-probe")
                subprocess.run(cmd, check=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
