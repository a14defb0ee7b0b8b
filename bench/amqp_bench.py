"""AMQP 0-9-1 load generator: a raw, pre-encoded-frame client (so the client is not the
bottleneck), publishers and consumers in separate processes.

    python bench/amqp_bench.py --target polymq=127.0.0.1:5672 --target rabbitmq=127.0.0.1:25673 \
        --scenario all --seconds 8 --repeat 3

Scenarios (each: P publisher connections, C consumer connections, one queue):
  transient      non-persistent, no confirms, consumers auto-ack
  manual-ack     non-persistent, manual acks (a multiple ack per read; --ack-every), prefetch N
  confirms       non-persistent, publisher confirms (window W)
  persistent     persistent on a durable queue, confirms, manual acks with prefetch
Reports published msgs/s, confirmed msgs/s and consumed msgs/s per target (the run with the
median consumed rate when --repeat > 1) and, for brokers this script started, the median of the
broker's CPU time per published message. Body 100 bytes, prefetch 200 by default.

``--spawn`` starts this checkout's polymq (AMQP only, sqlite store in a temporary directory) as
the target ``polymq``; ``--baseline DIR`` also starts a second one whose ``PYTHONPATH`` is DIR
(a ``polymq`` package tree of an older commit) as the target ``before``, so that a before/after
comparison comes from the same run, each round alternating between them:

    python bench/amqp_bench.py --spawn --baseline /tmp/base/pkg --seconds 5 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import struct
import sys
import time
import uuid

FRAME_END = b"\xce"


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + FRAME_END


def shortstr(s: str) -> bytes:
    b = s.encode()
    return bytes((len(b),)) + b


def longstr(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def method(channel: int, cid: int, mid: int, args: bytes = b"") -> bytes:
    return frame(1, channel, struct.pack(">HH", cid, mid) + args)


class Client:
    """A minimal asyncio AMQP client: handshake, then raw frames."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.buf = b""

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"AMQP\x00\x00\x09\x01")
        await self.expect(10, 10)
        props = struct.pack(">I", 0)
        self.writer.write(
            method(
                0,
                10,
                11,
                props + shortstr("PLAIN") + longstr(b"\x00guest\x00guest") + shortstr("en_US"),
            )
        )
        args = await self.expect(10, 30)
        channel_max, frame_max, _hb = struct.unpack(">HIH", args[:8])
        self.frame_max = frame_max
        self.writer.write(method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
        self.writer.write(method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
        await self.expect(10, 41)
        self.writer.write(method(1, 20, 10, shortstr("")))
        await self.expect(20, 11)

    async def read_frame(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buf) >= 7:
                ftype, ch, size = struct.unpack_from(">BHI", self.buf)
                if len(self.buf) >= size + 8:
                    payload = self.buf[7 : 7 + size]
                    self.buf = self.buf[size + 8 :]
                    return ftype, ch, payload
            data = await self.reader.read(1 << 20)
            if not data:
                raise EOFError("connection closed")
            self.buf += data

    async def expect(self, cid: int, mid: int) -> bytes:
        while True:
            ftype, _, payload = await self.read_frame()
            if ftype != 1:
                continue
            c, m = struct.unpack_from(">HH", payload)
            if (c, m) == (cid, mid):
                return payload[4:]
            if (c, m) in ((10, 50), (20, 40)):
                code = struct.unpack_from(">H", payload, 4)[0]
                raise RuntimeError(f"closed by broker: {code} {payload[7 : 7 + payload[6]]!r}")

    async def declare(self, queue: str, durable: bool) -> None:
        bits = 0x02 if durable else 0
        self.writer.write(
            method(1, 50, 10, b"\x00\x00" + shortstr(queue) + bytes((bits,)) + struct.pack(">I", 0))
        )
        await self.expect(50, 11)

    async def delete(self, queue: str) -> None:
        self.writer.write(method(1, 50, 40, b"\x00\x00" + shortstr(queue) + b"\x00"))
        await self.expect(50, 41)

    async def close(self) -> None:
        self.writer.write(
            method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))
        )
        try:
            await asyncio.wait_for(self.expect(10, 51), 2)
        except Exception:
            pass
        self.writer.close()


def publish_frames(queue: str, body: bytes, persistent: bool, frame_max: int) -> bytes:
    m = method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr(queue) + b"\x00")
    if persistent:
        props = struct.pack(">H", 0x1000) + b"\x02"
    else:
        props = struct.pack(">H", 0)
    h = frame(2, 1, struct.pack(">HHQ", 60, 0, len(body)) + props)
    parts = [m, h]
    room = frame_max - 8
    for i in range(0, len(body), room):
        parts.append(frame(3, 1, body[i : i + room]))
    return b"".join(parts)


async def publisher(host, port, queue, body, persistent, confirms, window, seconds, out):
    c = Client(host, port)
    await c.connect()
    one = publish_frames(queue, body, persistent, c.frame_max)
    batch = one * 50
    sent = 0
    acked = 0
    deadline = time.monotonic() + seconds
    if not confirms:
        while time.monotonic() < deadline:
            c.writer.write(batch)
            sent += 50
            await c.writer.drain()
        out["published"] = sent
        out["confirmed"] = 0
        await c.close()
        return
    c.writer.write(method(1, 85, 10, b"\x00"))
    await c.expect(85, 11)

    async def read_acks():
        nonlocal acked
        while True:
            ftype, _, payload = await c.read_frame()
            if ftype == 1:
                cid, mid = struct.unpack_from(">HH", payload)
                if cid == 60 and mid in (80, 120):
                    tag, bits = struct.unpack_from(">QB", payload, 4)
                    acked = tag if bits & 1 else max(acked, tag)
                    if acked >= sent and done.is_set():
                        return
                elif (cid, mid) in ((10, 50), (20, 40)):
                    raise RuntimeError(f"closed by broker {payload!r}")

    done = asyncio.Event()
    reader = asyncio.create_task(read_acks())
    t_end = None
    while time.monotonic() < deadline:
        if sent - acked < window:
            n = min(50, window - (sent - acked))
            c.writer.write(one * n)
            sent += n
            await c.writer.drain()
        else:
            await asyncio.sleep(0)
            if reader.done():
                reader.result()
    confirmed_in_time = acked
    t_end = time.monotonic()
    done.set()
    try:
        await asyncio.wait_for(reader, 10)
    except TimeoutError:
        reader.cancel()
    out["published"] = sent
    out["confirmed"] = confirmed_in_time
    out["confirm_wait"] = time.monotonic() - t_end
    await c.close()


async def consumer(host, port, queue, no_ack, prefetch, seconds, out, ack_every):
    c = Client(host, port)
    await c.connect()
    if prefetch:
        c.writer.write(method(1, 60, 10, struct.pack(">IHB", 0, prefetch, 0)))
        await c.expect(60, 11)
    c.writer.write(
        method(
            1,
            60,
            20,
            b"\x00\x00"
            + shortstr(queue)
            + shortstr("")
            + bytes((0x02 if no_ack else 0,))
            + struct.pack(">I", 0),
        )
    )
    await c.expect(60, 21)
    got = 0
    last_tag = 0
    pending = 0
    deadline = time.monotonic() + seconds
    buf = c.buf
    reader = c.reader
    writer = c.writer
    unpack = struct.unpack_from
    data = b""
    while True:
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 7:
            ftype, _ch, size = unpack(">BHI", buf, pos)
            end = pos + 8 + size
            if end > n:
                break
            if ftype == 1 and buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
                got += 1
                if not no_ack:
                    tlen = buf[pos + 11]
                    last_tag = unpack(">Q", buf, pos + 12 + tlen)[0]
                    pending += 1
            pos = end
        buf = buf[pos:]
        if pending >= ack_every:
            writer.write(method(1, 60, 80, struct.pack(">QB", last_tag, 1)))
            pending = 0
        now = time.monotonic()
        if now >= deadline:
            break
        try:
            data = await asyncio.wait_for(reader.read(1 << 20), deadline - now)
        except TimeoutError:
            break
        if not data:
            break
    out["consumed"] = got
    await c.close()


def _run(role, kwargs, q):
    out = {}
    try:
        asyncio.run(role(out=out, **kwargs))
    except Exception as e:  # report, do not hang the parent
        out["error"] = repr(e)
    q.put(out)


async def setup(host, port, queue, durable, delete=False):
    c = Client(host, port)
    await c.connect()
    if delete:
        await c.delete(queue)
    else:
        await c.declare(queue, durable)
    await c.close()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of process ``pid`` so far (Linux /proc), 0 without a pid."""
    if not pid:
        return 0.0
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_scenario(name, host, port, args, pid=None):
    persistent = name == "persistent"
    confirms = name in ("confirms", "persistent")
    no_ack = name == "transient"
    queue = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    asyncio.run(setup(host, port, queue, durable=persistent))
    body = b"x" * args.size
    q = mp.Queue()
    procs = []
    for _ in range(args.consumers):
        kw = dict(
            host=host,
            port=port,
            queue=queue,
            no_ack=no_ack,
            prefetch=args.prefetch,
            seconds=args.seconds + 1.0,
            ack_every=args.ack_every,
        )
        procs.append(mp.Process(target=_run, args=(consumer, kw, q)))
    for _ in range(args.publishers):
        kw = dict(
            host=host,
            port=port,
            queue=queue,
            body=body,
            persistent=persistent,
            confirms=confirms,
            window=args.window,
            seconds=args.seconds,
        )
        procs.append(mp.Process(target=_run, args=(publisher, kw, q)))
    cpu0 = cpu_seconds(pid)
    for p in procs:
        p.start()
    results = [q.get(timeout=args.seconds + 60) for _ in procs]
    cpu = cpu_seconds(pid) - cpu0
    for p in procs:
        p.join(10)
    asyncio.run(setup(host, port, queue, durable=persistent, delete=True))
    errors = [r["error"] for r in results if "error" in r]
    pub = sum(r.get("published", 0) for r in results)
    conf = sum(r.get("confirmed", 0) for r in results)
    cons = sum(r.get("consumed", 0) for r in results)
    s = args.seconds
    return {
        "published/s": pub / s,
        "confirmed/s": conf / s if confirms else None,
        "consumed/s": cons / s,
        "errors": errors,
        # the broker's CPU per published message (each is consumed once): steadier than a
        # rate on a loaded machine
        "cpu_us": cpu / max(pub, 1) * 1e6 if pid else None,
    }


SCENARIOS = ("transient", "manual-ack", "confirms", "persistent")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--target", action="append", default=[], help="name=host:port (repeatable)")
    ap.add_argument(
        "--spawn", action="store_true", help="start this checkout's polymq as the target 'polymq'"
    )
    ap.add_argument("--baseline", help="PYTHONPATH of a second polymq, started as 'before'")
    ap.add_argument("--scenario", default="all", choices=("all",) + SCENARIOS)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--publishers", type=int, default=1)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--size", type=int, default=100, help="body bytes")
    ap.add_argument("--prefetch", type=int, default=200)
    ap.add_argument(
        "--ack-every",
        type=int,
        default=1,
        help="consumer acks (multiple) after this many deliveries (1: each)",
    )
    ap.add_argument("--window", type=int, default=1000, help="unconfirmed publishes allowed")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per scenario and broker (interleaved); the median is reported",
    )
    args = ap.parse_args(argv)
    targets = []
    for t in args.target:
        name, _, addr = t.partition("=")
        host, _, port = addr.rpartition(":")
        targets.append((name, host, int(port)))
    brokers = []
    try:
        if args.baseline:
            brokers.append(spawn("before", {"PYTHONPATH": args.baseline}))
        if args.spawn:
            brokers.append(spawn("polymq", {}))
        targets = [(name, b.host, b.port("amqp"), b.pid) for name, b in brokers] + [
            (name, host, port, None) for name, host, port in targets
        ]
        if not targets:
            ap.error("no target: give --target, --spawn or --baseline")
        compare(args, targets)
    finally:
        for _, b in brokers:
            b.stop()


def spawn(name: str, env: dict) -> tuple[str, object]:
    """A polymq broker subprocess (tests/brokerproc.py) listening for AMQP only."""
    import pathlib
    import tempfile

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
    from brokerproc import BrokerProcess

    b = BrokerProcess(
        tempfile.mkdtemp(prefix=f"amqp-bench-{name}-"),
        adapters=["amqp"],
        store="sqlite",
        log_level="warn",
        env=env,
    )
    b.start()
    return name, b


def compare(args, targets) -> None:
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    rows = []
    for sc in scenarios:
        runs: dict[str, list] = {name: [] for name, _, _, _ in targets}
        for _ in range(args.repeat):
            for name, host, port, pid in targets:
                r = run_scenario(sc, host, port, args, pid)
                runs[name].append(r)
                print(
                    f"{sc:11s} {name:10s} pub {r['published/s']:9.0f}/s  "
                    f"conf {r['confirmed/s'] or 0:9.0f}/s  cons {r['consumed/s']:9.0f}/s"
                    f"  cpu {r['cpu_us'] or 0:5.1f} µs/msg"
                    + (f"  errors {r['errors']}" if r["errors"] else ""),
                    file=sys.stderr,
                )
        for name, _, _, _ in targets:
            cpus = [r["cpu_us"] for r in runs[name] if r["cpu_us"] is not None]
            rs = sorted(runs[name], key=lambda r: r["consumed/s"])
            rows.append((sc, name, rs[len(rs) // 2], statistics.median(cpus) if cpus else None))
    print()
    print(
        "| scenario | broker | published msg/s | confirmed msg/s | consumed msg/s "
        "| broker CPU µs/msg |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for sc, name, r, cpu_us in rows:
        conf = f"{r['confirmed/s']:.0f}" if r["confirmed/s"] is not None else "-"
        cpu = f"{cpu_us:.1f}" if cpu_us is not None else "-"
        print(
            f"| {sc} | {name} | {r['published/s']:.0f} | {conf} | {r['consumed/s']:.0f} | {cpu} |"
        )


if __name__ == "__main__":
    main()
