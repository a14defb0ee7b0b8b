"""Kafka adapter benchmark with confluent-kafka (librdkafka): produce and consume throughput.

    .venv/bin/python bench/kafka_bench.py [--records 200000] [--size 1024] [--store sqlite]
    .venv/bin/python bench/kafka_bench.py --bootstrap 127.0.0.1:9092   # an already running broker
    .venv/bin/python bench/kafka_bench.py --baseline /tmp/old   # the broker of another tree

``--baseline DIR`` starts the broker with ``PYTHONPATH=DIR``, where DIR holds a ``polymq``
directory (``core``, ``adapters``, ``plugins`` of an older commit), to measure before/after.

Starts a broker subprocess (Kafka adapter only) unless --bootstrap is given, measures the
loopback bandwidth (iperf3 if installed, else a Python socket blast) in the same run, then
produces 1 KB records with batching (acks=1 and acks=all) and consumes them back, and prints
MB/s and records/s for each phase, and the broker's CPU time per record (user + system, from
/proc; steadier than rates on a shared machine). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def loopback_python(seconds: float = 2.0) -> float:
    """MB/s of one TCP stream over loopback, Python sender and receiver (sendall/recv_into)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    total = [0]

    def sink():
        conn, _ = srv.accept()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while True:
            n = conn.recv_into(view)
            if not n:
                break
            total[0] += n
        conn.close()

    th = threading.Thread(target=sink)
    th.start()
    c = socket.create_connection(("127.0.0.1", port))
    chunk = b"x" * (1 << 20)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        c.sendall(chunk)
    c.close()
    th.join()
    elapsed = time.perf_counter() - start
    srv.close()
    return total[0] / elapsed / 1e6


def loopback_iperf3(seconds: int = 3) -> float | None:
    if not shutil.which("iperf3"):
        return None
    server = subprocess.Popen(
        ["iperf3", "-s", "-1", "-p", "5299"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        out = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", "5299", "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            timeout=seconds + 10,
        )
        data = json.loads(out.stdout)
        return data["end"]["sum_received"]["bits_per_second"] / 8 / 1e6
    except Exception:
        return None
    finally:
        server.kill()
        server.wait()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` so far (0 when unknown: --bootstrap)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[
        topic
    ].result(30)


def bench_produce(bootstrap: str, topic: str, n: int, size: int, acks: str) -> tuple[float, float]:
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": acks,
            "linger.ms": 5,
            "batch.size": 1000000,
            "batch.num.messages": 100000,
            "queue.buffering.max.kbytes": 1048576,
            "queue.buffering.max.messages": 1000000,
            "compression.type": "none",
        }
    )
    value = os.urandom(size)
    failures = [0]

    def cb(err, msg):
        if err is not None:
            failures[0] += 1

    start = time.perf_counter()
    for _ in range(n):
        while True:
            try:
                p.produce(topic, value, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.001)
    p.flush(120)
    elapsed = time.perf_counter() - start
    if failures[0]:
        print(f"  {failures[0]} delivery failures", file=sys.stderr)
    return n * size / elapsed / 1e6, n / elapsed


def bench_consume(
    bootstrap: str, topic: str, n: int, size: int, partitions: int
) -> tuple[float, float]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-" + topic,
            "enable.auto.commit": False,
            "fetch.max.bytes": 52428800,
            "max.partition.fetch.bytes": 10485760,
            "fetch.wait.max.ms": 100,
            "queued.max.messages.kbytes": 1048576,
        }
    )
    c.assign([TopicPartition(topic, i, 0) for i in range(partitions)])
    got = 0
    start = None
    deadline = time.time() + 120
    while got < n and time.time() < deadline:
        msgs = c.consume(10000, 1.0)
        if msgs and start is None:
            start = time.perf_counter()
        for m in msgs:
            if not m.error():
                got += 1
    elapsed = time.perf_counter() - (start or time.perf_counter())
    c.close()
    return got * size / elapsed / 1e6, got / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--store", default="sqlite", choices=["sqlite", "memory"])
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--baseline", default=None, help="PYTHONPATH of the polymq to measure")
    args = ap.parse_args()

    broker = None
    tmp = None
    if args.bootstrap is None:
        from brokerproc import BrokerProcess

        tmp = tempfile.mkdtemp(prefix="kafka-bench-")
        env = {"PYTHONPATH": args.baseline} if args.baseline else None
        broker = BrokerProcess(tmp, adapters=["kafka"], store=args.store, log_level="warn", env=env)
        broker.start()
        bootstrap = f"{broker.host}:{broker.port('kafka')}"
    else:
        bootstrap = args.bootstrap
    try:
        ipf = loopback_iperf3()
        py = loopback_python()
        rows = []
        for acks in ("1", "all"):
            topic = f"bench-{acks}-{uuid.uuid4().hex[:6]}"
            create_topic(bootstrap, topic, args.partitions)
            pid = broker.pid if broker is not None else None
            cpu0 = cpu_seconds(pid)
            pmb, prs = bench_produce(bootstrap, topic, args.records, args.size, acks)
            cpu1 = cpu_seconds(pid)
            cmb, crs = bench_consume(bootstrap, topic, args.records, args.size, args.partitions)
            cpu2 = cpu_seconds(pid)
            us = 1e6 / args.records
            rows.append((acks, pmb, prs, cmb, crs, (cpu1 - cpu0) * us, (cpu2 - cpu1) * us))
        print(
            f"records={args.records} size={args.size}B store={args.store} "
            f"partitions={args.partitions}"
        )
        if ipf is not None:
            print(f"loopback (iperf3, 1 stream): {ipf:8.0f} MB/s")
        print(f"loopback (Python socket blast, 1 stream): {py:8.0f} MB/s")
        print(
            "| acks | produce MB/s | produce rec/s | consume MB/s | consume rec/s "
            "| broker CPU µs/record produce | consume |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for acks, pmb, prs, cmb, crs, pcpu, ccpu in rows:
            print(
                f"| {acks} | {pmb:.0f} | {prs:.0f} | {cmb:.0f} | {crs:.0f} "
                f"| {pcpu:.2f} | {ccpu:.2f} |"
            )
    finally:
        if broker is not None:
            broker.stop()
            broker.kill9()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
