"""Backlogs larger than memory: fill, restart, drain, with the broker's peak RSS.

    .venv/bin/python bench/backlog_bench.py amqp  [--messages 2000000] [--size 1024]
        [--rabbitmq 127.0.0.1:25673]
    .venv/bin/python bench/backlog_bench.py kafka [--gigabytes 4] [--size 1024]
    .venv/bin/python bench/backlog_bench.py mqtt  [--seconds 60] [--size 1024]

``amqp``: starts polymq (AMQP only, sqlite store) and fills one durable queue with persistent
messages from one publisher with confirms (a raw pre-encoded client, window 2000), restarts the
broker (seconds from exec to every port open, and to the first basic.get answered), then drains
the queue (prefetch 2000, multiple acks). With ``--rabbitmq`` the same fill and drain run
against that RabbitMQ in the same run (its memory is sampled from its beam.smp process).
``kafka``: produces ``--gigabytes`` into one topic with confluent-kafka (acks=1), restarts,
consumes from offset 0. Peak RSS is the broker's VmHWM (the kernel's high-water mark of its
resident set). ``mqtt``: a QoS 1 publisher (paho, 1000 in flight) for ``--seconds`` while the
only subscriber, a persistent session, is disconnected; then the subscriber comes back and
drains. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from amqp_bench import Client, method, publish_frames, shortstr  # noqa: E402


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Peak RSS of a process we did not start (RabbitMQ), sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, status_kb(self.pid, "VmRSS"))
            except OSError:
                return
            time.sleep(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def beam_pid() -> int | None:
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return max(pids, key=lambda p: status_kb(p, "VmRSS")) if pids else None


# -- AMQP ------------------------------------------------------------------------------------


async def amqp_fill(host: str, port: int, queue: str, n: int, size: int, window: int) -> float:
    c = Client(host, port)
    await c.connect()
    c.writer.write(
        method(1, 50, 10, b"\x00\x00" + shortstr(queue) + bytes((0x02,)) + struct.pack(">I", 0))
    )
    await c.expect(50, 11)
    c.writer.write(method(1, 85, 10, b"\x00"))
    await c.expect(85, 11)
    one = publish_frames(queue, os.urandom(size), True, c.frame_max)
    sent = acked = 0
    start = time.perf_counter()

    async def read_acks():
        nonlocal acked
        while acked < n:
            ftype, _, payload = await c.read_frame()
            if ftype == 1:
                cid, mid = struct.unpack_from(">HH", payload)
                if cid == 60 and mid == 80:
                    tag, bits = struct.unpack_from(">QB", payload, 4)
                    acked = tag if bits & 1 else max(acked, tag)
                elif cid == 60 and mid == 120:
                    raise RuntimeError("publish nacked")

    reader = asyncio.create_task(read_acks())
    while sent < n:
        room = min(window - (sent - acked), n - sent, 100)
        if room > 0:
            c.writer.write(one * room)
            sent += room
            await c.writer.drain()
        else:
            await asyncio.sleep(0.0005)
            if reader.done():
                reader.result()
    await reader
    elapsed = time.perf_counter() - start
    await c.close()
    return elapsed


async def amqp_first_get(host: str, port: int, queue: str) -> None:
    c = Client(host, port)
    await c.connect()
    while True:
        c.writer.write(method(1, 60, 70, b"\x00\x00" + shortstr(queue) + b"\x00"))
        while True:
            ftype, _, payload = await c.read_frame()
            if ftype == 1:
                cid, mid = struct.unpack_from(">HH", payload)
                if (cid, mid) in ((60, 71), (60, 72)):
                    break
        if (cid, mid) == (60, 71):
            # give it back: the drain counts every message
            tag = struct.unpack_from(">Q", payload, 4)[0]
            c.writer.write(method(1, 60, 120, struct.pack(">QB", tag, 0x02)))
            break
        await asyncio.sleep(0.01)
    await c.close()


async def amqp_drain(host: str, port: int, queue: str, n: int, prefetch: int) -> float:
    c = Client(host, port)
    await c.connect()
    c.writer.write(method(1, 60, 10, struct.pack(">IHB", 0, prefetch, 0)))
    await c.expect(60, 11)
    c.writer.write(
        method(
            1, 60, 20, b"\x00\x00" + shortstr(queue) + shortstr("") + b"\x00" + struct.pack(">I", 0)
        )
    )
    await c.expect(60, 21)
    got = pending = last_tag = 0
    buf = c.buf  # deliveries that came with consume-ok
    c.buf = b""
    unpack = struct.unpack_from
    start = time.perf_counter()
    data = b""
    while got < n:
        buf += data
        pos, size = 0, len(buf)
        while size - pos >= 7:
            ftype, _ch, flen = unpack(">BHI", buf, pos)
            end = pos + 8 + flen
            if end > size:
                break
            if ftype == 1 and buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
                got += 1
                tlen = buf[pos + 11]
                last_tag = unpack(">Q", buf, pos + 12 + tlen)[0]
                pending += 1
            pos = end
        buf = buf[pos:]
        if pending >= prefetch // 4 or (got >= n and pending):
            c.writer.write(method(1, 60, 80, struct.pack(">QB", last_tag, 1)))
            pending = 0
        if got >= n:
            break
        try:
            data = await asyncio.wait_for(c.reader.read(1 << 20), 60)
        except TimeoutError:
            raise RuntimeError(f"drain stalled after {got} of {n} messages") from None
        if not data:
            raise EOFError("closed")
    elapsed = time.perf_counter() - start
    await c.close()
    return elapsed


def run_amqp(args) -> None:
    from brokerproc import BrokerProcess

    n, size = args.messages, args.size
    rows = []
    tmp = tempfile.mkdtemp(prefix="backlog-bench-", dir=args.tmp)
    # (the AMQP adapter's own watermark counts every ready byte, paged out or not: off here;
    # the broker-wide alarm watches real memory)
    broker = BrokerProcess(
        tmp,
        adapters=["amqp"],
        log_level="warn",
        settings={"adapters.amqp.memory_high_watermark": 0},
    )
    try:
        broker.start()
        host, port = broker.host, broker.port("amqp")
        fill = asyncio.run(amqp_fill(host, port, "backlog", n, size, args.window))
        hwm_fill = status_kb(broker.pid, "VmHWM")
        t0 = time.perf_counter()
        broker.stop()
        stop_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        broker.start()
        ports_s = time.perf_counter() - t0
        asyncio.run(amqp_first_get(broker.host, broker.port("amqp"), "backlog"))
        get_s = time.perf_counter() - t0
        drain = asyncio.run(
            amqp_drain(broker.host, broker.port("amqp"), "backlog", n, args.prefetch)
        )
        hwm = max(hwm_fill, status_kb(broker.pid, "VmHWM"))
        disk = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        rows.append(("polymq", n / fill, n / drain, hwm, f"{ports_s:.2f} / {get_s:.2f}"))
        print(
            f"polymq: fill {fill:.1f} s, stop {stop_s:.1f} s, restart {ports_s:.2f} s to "
            f"ports, {get_s:.2f} s to the first get, drain {drain:.1f} s, peak RSS "
            f"{hwm // 1024} MB (after fill {hwm_fill // 1024} MB), data dir after drain "
            f"{disk / 1e6:.0f} MB",
            file=sys.stderr,
        )
    finally:
        broker.stop()
        broker.kill9()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.rabbitmq:
        host, _, port_s = args.rabbitmq.rpartition(":")
        pid = beam_pid()
        sampler = RssSampler(pid) if pid else None
        fill = asyncio.run(amqp_fill(host, int(port_s), "backlog-bench", n, size, args.window))
        drain = asyncio.run(amqp_drain(host, int(port_s), "backlog-bench", n, args.prefetch))
        peak = sampler.stop() if sampler else 0
        rows.append(("rabbitmq", n / fill, n / drain, peak, "-"))
    print(
        f"\n{n} persistent messages of {size} B, one durable queue, confirms (window "
        f"{args.window}), prefetch {args.prefetch}"
    )
    print("| broker | fill msg/s | drain msg/s | peak RSS MB | restart s (ports / first get) |")
    print("|---|---:|---:|---:|---|")
    for name, f, d, rss, rs in rows:
        print(f"| {name} | {f:.0f} | {d:.0f} | {rss // 1024} | {rs} |")


# -- Kafka -----------------------------------------------------------------------------------


def run_kafka(args) -> None:
    from brokerproc import BrokerProcess
    from confluent_kafka import Consumer, Producer, TopicPartition

    size = args.size
    n = int(args.gigabytes * 1e9 / size)
    tmp = tempfile.mkdtemp(prefix="backlog-bench-", dir=args.tmp)
    broker = BrokerProcess(tmp, adapters=["kafka"], log_level="warn")
    try:
        broker.start()
        bootstrap = f"{broker.host}:{broker.port('kafka')}"
        p = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "1",
                "linger.ms": 5,
                "batch.size": 1000000,
                "batch.num.messages": 100000,
                "queue.buffering.max.kbytes": 1048576,
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
                    p.produce("backlog", value, partition=0, on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.001)
        p.flush(600)
        produce_s = time.perf_counter() - start
        del p  # (or it keeps reconnecting while the broker restarts)
        hwm_fill = status_kb(broker.pid, "VmHWM")
        broker.stop()
        t0 = time.perf_counter()
        broker.start()
        ports_s = time.perf_counter() - t0
        bootstrap = f"{broker.host}:{broker.port('kafka')}"
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "backlog-bench",
                "enable.auto.commit": False,
                "fetch.max.bytes": 52428800,
                "max.partition.fetch.bytes": 10485760,
                "fetch.wait.max.ms": 100,
                "queued.max.messages.kbytes": 262144,
            }
        )
        c.assign([TopicPartition("backlog", 0, 0)])
        got = 0
        start = time.perf_counter()
        deadline = time.time() + 1800
        while got < n and time.time() < deadline:
            for m in c.consume(10000, 1.0):
                if not m.error():
                    got += 1
        consume_s = time.perf_counter() - start
        c.close()
        hwm = max(hwm_fill, status_kb(broker.pid, "VmHWM"))
        print(
            f"polymq kafka: {n} records of {size} B ({n * size / 1e9:.2f} GB), "
            f"{failures[0]} delivery failures, consumed {got}",
            file=sys.stderr,
        )
        print(
            "| produce MB/s | consume MB/s (offset 0) | peak RSS MB (fill / overall) |"
            " restart s to ports |"
        )
        print("|---:|---:|---:|---:|")
        print(
            f"| {n * size / produce_s / 1e6:.0f} | {got * size / consume_s / 1e6:.0f} | "
            f"{hwm_fill // 1024} / {hwm // 1024} | {ports_s:.2f} |"
        )
    finally:
        broker.stop()
        broker.kill9()
        shutil.rmtree(tmp, ignore_errors=True)


# -- MQTT ------------------------------------------------------------------------------------


def run_mqtt(args) -> None:
    import paho.mqtt.client as mqtt
    from brokerproc import BrokerProcess

    tmp = tempfile.mkdtemp(prefix="backlog-bench-", dir=args.tmp)
    broker = BrokerProcess(tmp, adapters=["mqtt"], log_level="warn")
    try:
        broker.start()
        host, port = broker.host, broker.port("mqtt")
        v2 = mqtt.CallbackAPIVersion.VERSION2
        sub = mqtt.Client(v2, client_id="bench-sub", clean_session=False)
        sub.connect(host, port)
        sub.loop_start()
        sub.subscribe("bench/#", qos=1)[1]
        time.sleep(0.5)
        sub.disconnect()
        sub.loop_stop()
        acked = [0]
        pub = mqtt.Client(v2, client_id="bench-pub")
        pub.max_inflight_messages_set(1000)
        pub.max_queued_messages_set(2000)
        pub.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
        pub.connect(host, port)
        pub.loop_start()
        body = os.urandom(args.size)
        sent = 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            info = pub.publish("bench/t", body, qos=1)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.001)
                continue
            sent += 1
        elapsed = time.perf_counter() - start
        while acked[0] < sent and time.perf_counter() - start < args.seconds + 30:
            time.sleep(0.05)
        pub.disconnect()
        pub.loop_stop()
        hwm = status_kb(broker.pid, "VmHWM")
        got = [0]
        sub = mqtt.Client(v2, client_id="bench-sub", clean_session=False)
        sub.on_message = lambda *a: got.__setitem__(0, got[0] + 1)
        t0 = time.perf_counter()
        sub.connect(host, port)
        sub.loop_start()
        while got[0] < acked[0] and time.perf_counter() - t0 < 600:
            time.sleep(0.1)
        drain = time.perf_counter() - t0
        sub.disconnect()
        sub.loop_stop()
        hwm2 = status_kb(broker.pid, "VmHWM")
        print(
            f"{acked[0]} QoS 1 messages of {args.size} B in {elapsed:.0f} s to a stopped "
            f"persistent session"
        )
        print(
            "| publish msg/s (PUBACKed) | peak RSS MB while publishing | drain msg/s |"
            " peak RSS MB overall |"
        )
        print("|---:|---:|---:|---:|")
        print(
            f"| {acked[0] / elapsed:.0f} | {hwm // 1024} | {got[0] / drain:.0f} | {hwm2 // 1024} |"
        )
    finally:
        broker.stop()
        broker.kill9()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=["amqp", "kafka", "mqtt"])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--messages", type=int, default=2_000_000)
    ap.add_argument("--gigabytes", type=float, default=4.0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--prefetch", type=int, default=2000)
    ap.add_argument("--rabbitmq", default=None, help="host:port of a RabbitMQ to compare")
    ap.add_argument("--tmp", default=None, help="where the data directory goes")
    args = ap.parse_args()
    {"amqp": run_amqp, "kafka": run_kafka, "mqtt": run_mqtt}[args.scenario](args)


if __name__ == "__main__":
    main()
