"""The MQTT adapter's CPU per message without sockets: publisher and subscriber connections
built by the real factory (transport, session, core with the memory store) on fake transports,
fed pre-encoded PUBLISH frames in batches (as bench/mqtt_bench.py's clients write them).

    .venv/bin/python bench/mqtt_inproc.py [--shape 4x1,1x4] [--qos 0,1] [--size 64]
        [--count 20000] [--version 4] [--batch 50] [--runs 3] [--profile]

Shape PxS: P publishers each publish ``--count`` messages to ``bench/p<i>``, S subscribers
subscribe to ``bench/#`` (with the same QoS), so each message goes to every subscriber. QoS 1
subscribers acknowledge every delivery (PUBACKs fed back in one batch per turn). Prints µs of
CPU per published message and per delivery (median of ``--runs``); ``--profile`` prints the
top of a cProfile run of the last run. ``--sub-buffer 65536 --sub-read 12000`` makes each
subscriber read less per round than is published and pause the broker (back-pressure) when
64 KiB wait unread: the path of a saturated subscriber (messages wait in the core).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from polymq.adapters.mqtt import codec as c
from polymq.adapters.mqtt.transport import MqttFactory
from polymq.core.broker import Broker


def connect_frame(cid: str, version: int) -> bytes:
    name = b"\x00\x04MQTT"
    body = name + bytes((version, 2)) + (60).to_bytes(2, "big")
    if version == 5:
        body += b"\x00"
    body += len(cid).to_bytes(2, "big") + cid.encode()
    return c.frame(0x10, body)


def subscribe_frame(flt: str, qos: int, version: int) -> bytes:
    body = b"\x00\x01" + (b"\x00" if version == 5 else b"") + len(flt).to_bytes(2, "big")
    body += flt.encode() + bytes((qos,))
    return c.frame(0x82, body)


def publish_frame(topic: str, payload: bytes, qos: int, pid: int, version: int) -> bytes:
    return c.encode_publish(
        topic.encode(), payload, qos, pid, False, False, b"\x00" if version == 5 else None
    )


class SlowTransport(StringTransport):
    """Pauses its producer once ``limit`` bytes wait unread (as a full socket buffer does)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.limit and not self.paused and self.io.tell() > self.limit:
            self.paused = True
            self.producer.pauseProducing()


class Client:
    def __init__(self, factory: MqttFactory, cid: str, version: int, limit: int = 0) -> None:
        self.p = factory.buildProtocol(None)
        self.t = SlowTransport(limit)
        self.p.makeConnection(self.t)
        self.reader = c.FrameReader(1 << 28)
        self.received = 0
        self.p.dataReceived(connect_frame(cid, version))
        factory.flush_all()
        self.t.clear()

    def drain(self, qos: int, version: int, most: int = 0) -> None:
        """Read (at most ``most`` bytes, 0: all) of what was written to this client, count the
        PUBLISHes, acknowledge QoS 1 ones; resume the broker once the backlog is small."""
        data = self.t.value()
        self.t.clear()
        if most and len(data) > most:
            self.t.io.write(data[most:])
            data = data[:most]
        if self.t.paused and len(self.t.value()) <= self.t.limit // 2:
            self.t.paused = False  # the socket buffer has room again
            self.p.resumeProducing()
        if not data:
            return
        acks = []
        for first, body in self.reader.feed(data):
            if first >> 4 == c.PUBLISH:
                self.received += 1
                if (first >> 1) & 3:
                    tl = (body[0] << 8) | body[1]
                    acks.append(b"\x40\x02" + body[2 + tl : 4 + tl])
        if acks:
            self.p.dataReceived(b"".join(acks))


def run_once(
    shape: str,
    qos: int,
    size: int,
    count: int,
    version: int,
    batch: int,
    profile: bool,
    sub_buffer: int = 0,
    sub_read: int = 0,
) -> tuple[float, float, pstats.Stats | None]:
    npub, nsub = (int(x) for x in shape.split("x"))
    clock = Clock()
    broker = Broker(clock=clock)
    factory = MqttFactory(broker, {})
    subs = [Client(factory, f"sub{i}", version, sub_buffer) for i in range(nsub)]
    for i, s in enumerate(subs):
        s.p.dataReceived(subscribe_frame("bench/#", qos, version))
        factory.flush_all()
        s.t.clear()
        assert s.p.session.session.subs, f"subscriber {i} not subscribed"
    pubs = [Client(factory, f"pub{i}", version) for i in range(npub)]
    payload = b"\x00" * size
    # pre-encoded batches per publisher (packet ids wrap within 1..65535)
    chunks: list[list[bytes]] = []
    for i in range(npub):
        frames = [
            publish_frame(f"bench/p{i}", payload, qos, (k % 65535) + 1, version)
            for k in range(count)
        ]
        chunks.append([b"".join(frames[k : k + batch]) for k in range(0, count, batch)])
    prof = cProfile.Profile() if profile else None
    t0 = time.process_time()
    if prof:
        prof.enable()
    for k in range(len(chunks[0])):
        for i, p in enumerate(pubs):
            p.p.dataReceived(chunks[i][k])
        factory.flush_all()
        for s in subs:
            s.drain(qos, version, sub_read)
        factory.flush_all()
        for p in pubs:
            p.t.clear()
    while sum(s.received for s in subs) < npub * count * nsub:  # what the core still holds
        before = sum(s.received for s in subs)
        for s in subs:
            s.drain(qos, version)
        factory.flush_all()
        if sum(s.received for s in subs) == before:
            break
    if prof:
        prof.disable()
    cpu = time.process_time() - t0
    got = sum(s.received for s in subs)
    want = npub * count * nsub
    assert got == want, f"delivered {got}, expected {want}"
    published = npub * count
    return (cpu / published * 1e6, cpu / got * 1e6, pstats.Stats(prof) if prof else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="4x1,1x4")
    ap.add_argument("--qos", default="0,1")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--version", type=int, default=4, choices=(4, 5))
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--sub-buffer",
        type=int,
        default=0,
        help="bytes a subscriber's transport holds before it pauses its producer "
        "(0: never; Twisted's is 65536)",
    )
    ap.add_argument(
        "--sub-read",
        type=int,
        default=0,
        help="bytes a subscriber reads per round (0: all); below what the "
        "publishers send per round, the subscriber is the bottleneck",
    )
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    for shape in args.shape.split(","):
        for qos in (int(q) for q in args.qos.split(",")):
            per_pub, per_del = [], []
            stats = None
            for r in range(args.runs):
                a, b, st = run_once(
                    shape,
                    qos,
                    args.size,
                    args.count,
                    args.version,
                    args.batch,
                    args.profile and r == args.runs - 1,
                    args.sub_buffer,
                    args.sub_read,
                )
                per_pub.append(a)
                per_del.append(b)
                stats = st or stats
            print(
                f"shape {shape} qos {qos} v{args.version} size {args.size}: "
                f"{statistics.median(per_pub):.2f} µs CPU per published message, "
                f"{statistics.median(per_del):.2f} µs per delivery, min "
                f"{min(per_pub):.2f} "
                f"(runs: {', '.join(f'{x:.2f}' for x in per_pub)})",
                flush=True,
            )
            if stats is not None:
                stats.sort_stats("tottime").print_stats(22)
    return 0


if __name__ == "__main__":
    sys.exit(main())
