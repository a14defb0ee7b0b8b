#!/usr/bin/env python3
"""MQTT load generator: publishers and subscribers against any broker, msgs/s and latency.

Raw-socket asyncio clients with pre-built frames (a Python client library would be the
bottleneck, not the broker). Every publisher publishes ``--count`` messages to
``bench/<run>/p<i>``; every subscriber subscribes to ``bench/<run>/#``, so each message is
delivered once per subscriber (fan-in with many publishers, fan-out with many subscribers).
The payload starts with the send time (ns), so latency is publish-to-delivery.

Example, polymq and Mosquitto in one run::

    .venv/bin/python bench/mqtt_bench.py --target polymq=127.0.0.1:1883 \\
        --target mosquitto=127.0.0.1:21883 --shape 1x1,4x1,1x4 --qos 0,1 --size 64 --count 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a local process (Linux /proc), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def connect_frame(cid: str, version: int) -> bytes:
    body = s16("MQTT") + bytes((version, 2)) + struct.pack(">H", 60)
    if version == 5:
        body += b"\x00"
    body += s16(cid)
    return b"\x10" + varint(len(body)) + body


def subscribe_frame(flt: str, qos: int, version: int) -> bytes:
    body = b"\x00\x01" + (b"\x00" if version == 5 else b"") + s16(flt) + bytes((qos,))
    return b"\x82" + varint(len(body)) + body


class Frames:
    """Incremental MQTT frame splitter."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        out = []
        while n - pos >= 2:
            i = pos + 1
            length = 0
            mult = 1
            while True:
                if i >= n:
                    self.buf = buf[pos:]
                    return out
                b = buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if b < 0x80:
                    break
            end = i + length
            if end > n:
                break
            out.append((buf[pos], buf[i:end]))
            pos = end
        self.buf = buf[pos:]
        return out


async def handshake(reader, writer, frames: Frames, first: bytes, expect: int) -> list:
    writer.write(first)
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("broker closed the connection during the handshake")
        got = frames.feed(data)
        for i, (f, _) in enumerate(got):
            if f >> 4 == expect:
                return got[i + 1 :]


class Run:
    def __init__(self, args, host: str, port: int, pubs: int, subs: int, qos: int) -> None:
        self.args = args
        self.host = host
        self.port = port
        self.pubs = pubs
        self.subs = subs
        self.qos = qos
        self.run_id = f"{os.getpid()}x{int(time.time() * 1000) % 10_000_000}"
        self.latencies: list[int] = []
        self.received = 0
        self.expected = pubs * args.count * subs
        self.sent = 0
        self.first_send = 0.0
        self.last_recv = 0.0
        self.done = asyncio.Event()
        self.last_progress = time.monotonic()

    async def subscriber(self, idx: int, ready: asyncio.Event) -> None:
        a = self.args
        reader, writer = await asyncio.open_connection(self.host, self.port)
        frames = Frames()
        await handshake(
            reader, writer, frames, connect_frame(f"bs{idx}-{self.run_id}", a.version), 2
        )
        rest = await handshake(
            reader,
            writer,
            frames,
            subscribe_frame(f"bench/{self.run_id}/#", self.qos, a.version),
            9,
        )
        ready.set()
        v5 = a.version == 5
        lat = self.latencies
        sample = a.sample
        n = 0

        def handle(pkts):
            nonlocal n
            acks = []
            now = time.time_ns()
            for first, body in pkts:
                if first >> 4 != 3:
                    continue
                tl = (body[0] << 8) | body[1]
                pos = 2 + tl
                if first & 6:
                    acks.append(b"\x40\x02" + body[pos : pos + 2])
                    pos += 2
                if v5:
                    pl = body[pos]
                    pos += 1 + pl  # short property blocks only (< 128 bytes)
                n += 1
                if n % sample == 0:
                    ts = struct.unpack_from(">q", body, pos)[0]
                    lat.append(now - ts)
            if acks:
                writer.write(b"".join(acks))
            return len(pkts)

        self.received += handle(rest)
        while not self.done.is_set():
            data = await reader.read(262144)
            if not data:
                break
            k = handle(frames.feed(data))
            if k:
                self.received += k
                self.last_recv = time.monotonic()
                self.last_progress = self.last_recv
                if self.received >= self.expected:
                    self.done.set()
        writer.close()

    async def publisher(self, idx: int, start: asyncio.Event) -> None:
        a = self.args
        reader, writer = await asyncio.open_connection(self.host, self.port)
        frames = Frames()
        await handshake(
            reader, writer, frames, connect_frame(f"bp{idx}-{self.run_id}", a.version), 2
        )
        await start.wait()
        topic = f"bench/{self.run_id}/p{idx}".encode()
        head_t = struct.pack(">H", len(topic)) + topic
        props = b"\x00" if a.version == 5 else b""
        pad = b"x" * max(0, a.size - 8)
        qos = self.qos
        window = a.window
        inflight = 0
        can_send = asyncio.Event()
        can_send.set()

        async def read_acks():
            nonlocal inflight
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                k = sum(1 for f, _ in frames.feed(data) if f >> 4 == 4)
                inflight -= k
                if inflight < window:
                    can_send.set()

        acker = asyncio.ensure_future(read_acks()) if qos else None
        batch = a.batch
        pid = 0
        count = a.count
        interval = (batch / a.rate) if a.rate else 0.0
        next_at = time.monotonic()
        i = 0
        while i < count:
            n = min(batch, count - i)
            if qos:
                n = min(n, window - inflight)
                if n <= 0:
                    can_send.clear()
                    await can_send.wait()
                    continue
            out = []
            ts = time.time_ns()
            for _ in range(n):
                payload = struct.pack(">q", ts) + pad
                if qos:
                    pid = pid % 65535 + 1
                    body = head_t + struct.pack(">H", pid) + props + payload
                    out.append(b"\x32" + varint(len(body)) + body)
                else:
                    body = head_t + props + payload
                    out.append(b"\x30" + varint(len(body)) + body)
            if qos:
                inflight += n
            writer.write(b"".join(out))
            i += n
            self.sent += n
            await writer.drain()
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        if acker is not None:
            while inflight > 0 and not self.done.is_set():
                await asyncio.sleep(0.01)
            acker.cancel()
        await self.done.wait()
        writer.close()

    async def go(self) -> dict:
        readies = [asyncio.Event() for _ in range(self.subs)]
        start = asyncio.Event()
        subs = [asyncio.ensure_future(self.subscriber(i, readies[i])) for i in range(self.subs)]
        for r in readies:
            await asyncio.wait_for(r.wait(), 10)
        pubs = [asyncio.ensure_future(self.publisher(i, start)) for i in range(self.pubs)]
        await asyncio.sleep(0.3)  # let publishers connect
        t0 = time.monotonic()
        self.last_progress = t0
        start.set()
        while not self.done.is_set():
            await asyncio.sleep(0.05)
            if time.monotonic() - self.last_progress > self.args.idle_timeout:
                break
        self.done.set()
        end = self.last_recv or time.monotonic()
        for t in subs + pubs:
            t.cancel()
        await asyncio.gather(*subs, *pubs, return_exceptions=True)
        dur = max(end - t0, 1e-9)
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            if not lat:
                return float("nan")
            return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] / 1e6

        return {
            "sent": self.sent,
            "received": self.received,
            "expected": self.expected,
            "seconds": dur,
            "rate": self.received / dur,
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": pct(100),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--target",
        action="append",
        default=[],
        help="name=host:port (repeatable); default polymq=127.0.0.1:1883",
    )
    p.add_argument(
        "--shape", default="1x1", help="comma list of PUBSxSUBS, e.g. 1x1,4x1,1x4 (default 1x1)"
    )
    p.add_argument("--qos", default="0", help="comma list of QoS levels (0,1)")
    p.add_argument("--size", type=int, default=64, help="payload bytes (>= 8)")
    p.add_argument("--count", type=int, default=20000, help="messages per publisher")
    p.add_argument("--version", type=int, default=4, choices=(4, 5), help="MQTT level")
    p.add_argument("--window", type=int, default=100, help="QoS 1 in-flight per publisher")
    p.add_argument("--batch", type=int, default=50, help="frames per publisher write")
    p.add_argument(
        "--rate", type=float, default=0.0, help="messages/s per publisher (0 = as fast as possible)"
    )
    p.add_argument("--sample", type=int, default=1, help="keep every Nth latency")
    p.add_argument(
        "--idle-timeout", type=float, default=5.0, help="stop when nothing arrives for this long"
    )
    p.add_argument(
        "--pid",
        action="append",
        default=[],
        help="name=PID of a local broker process: adds its CPU time per delivered "
        "message (a figure that machine load does not distort much)",
    )
    args = p.parse_args(argv)
    targets = []
    for t in args.target or ["polymq=127.0.0.1:1883"]:
        name, _, addr = t.partition("=")
        host, _, port = addr.rpartition(":")
        targets.append((name, host or "127.0.0.1", int(port)))
    pids = {}
    for item in args.pid:
        name, _, pid = item.partition("=")
        pids[name] = int(pid)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shape.split(",")]
    qoss = [int(q) for q in args.qos.split(",")]
    print(
        f"# mqtt_bench: size={args.size} B, count={args.count}/publisher, "
        f"MQTT level {args.version}, window={args.window}, rate={args.rate or 'max'}"
    )
    print(
        "| broker | pubs x subs | QoS | delivered/expected | msgs/s | p50 ms | p90 ms "
        "| p99 ms | max ms | broker CPU µs/msg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pubs, subs in shapes:
        for qos in qoss:
            for name, host, port in targets:
                run = Run(args, host, port, pubs, subs, qos)
                cpu0 = cpu_seconds(pids.get(name))
                try:
                    r = asyncio.run(run.go())
                except (TimeoutError, OSError) as e:
                    print(f"| {name} | {pubs}x{subs} | {qos} | error: {e} | | | | | | |")
                    continue
                cpu1 = cpu_seconds(pids.get(name))
                cpu = ""
                if cpu0 is not None and cpu1 is not None and r["received"]:
                    cpu = f"{(cpu1 - cpu0) / r['received'] * 1e6:.1f}"
                print(
                    f"| {name} | {pubs}x{subs} | {qos} | {r['received']}/{r['expected']} | "
                    f"{r['rate']:,.0f} | {r['p50']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} | "
                    f"{r['max']:.1f} | {cpu} |"
                )
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
