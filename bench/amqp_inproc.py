"""The AMQP adapter's CPU per message without sockets: a publisher and a consumer connection
built by the real listener (``AMQPFactory``: framer, session, core with the memory store) on
string transports, fed pre-encoded frames in batches as bench/amqp_bench.py's clients write
them. CPU time (``time.process_time``) is less disturbed by other load on the machine than
the throughput of bench/amqp_bench.py.

    .venv/bin/python bench/amqp_inproc.py [--count 20000] [--size 100] [--runs 5]
        [--batch 50] [--scenario transient,manual-ack,confirms,large] [--baseline DIR]

Scenarios: ``transient`` (auto-ack consumer), ``manual-ack`` (prefetch 200, a multiple ack per
batch), ``confirms`` (publisher confirms, auto-ack consumer), ``large`` (1 MiB bodies arriving
in 64 KiB reads: the cost of frames spread over many reads); ``--batch`` publishes arrive per
read (fewer show the cost per read). Prints µs of CPU per message, the
median of ``--runs``. ``--baseline DIR`` runs the same scenarios, alternating run by run, in a
subprocess whose ``PYTHONPATH`` is DIR (a ``polymq`` package tree of an older commit) and prints
both columns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time

SCENARIOS = ("transient", "manual-ack", "confirms", "large")


def measure(scenario: str, count: int, size: int, batch: int = 50) -> float:
    """µs of CPU per message for one run of ``scenario``."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from polymq.adapters.amqp import codec as C
    from polymq.adapters.amqp.transport import AMQPFactory
    from polymq.core import output
    from polymq.core.broker import Broker

    clock = Clock()
    factory = AMQPFactory(Broker(clock=clock), {"memory_high_watermark": 0})
    handshake = (
        C.PROTOCOL_HEADER
        + C.method_frame(
            0,
            "connection.start-ok",
            client_properties={},
            mechanism="PLAIN",
            response=b"\x00guest\x00guest",
            locale="en_US",
        )
        + C.method_frame(0, "connection.tune-ok", channel_max=0, frame_max=131072, heartbeat=0)
        + C.method_frame(0, "connection.open", virtual_host="/")
        + C.method_frame(1, "channel.open")
    )

    def connect(port: int):
        t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        p = factory.buildProtocol(t.getPeer())
        p.makeConnection(t)
        p.dataReceived(handshake)
        return p, t

    pub, pt = connect(1)
    sub, st = connect(2)
    manual = scenario == "manual-ack"
    pub.dataReceived(C.method_frame(1, "queue.declare", queue="q"))
    if manual:
        sub.dataReceived(C.method_frame(1, "basic.qos", prefetch_size=0, prefetch_count=200))
    sub.dataReceived(C.method_frame(1, "basic.consume", queue="q", no_ack=not manual))
    if scenario == "confirms":
        pub.dataReceived(C.method_frame(1, "confirm.select"))
    body = b"x" * (1 << 20 if scenario == "large" else size)
    one = C.method_frame(1, "basic.publish", exchange="", routing_key="q") + C.content_frames(
        1, C.encode_properties({}), body, 131072
    )
    if scenario == "large":
        count = max(1, count // 200)
        reads = [one[i : i + 65536] for i in range(0, len(one), 65536)]
    else:
        reads = [one * batch]
        count -= count % batch
    per_read = 1 if scenario == "large" else batch
    ack_head = struct.pack(">BHI", 1, 1, 13) + b"\x00\x3c\x00\x50"
    output.flush_pending()
    pt.clear()
    st.clear()
    tag = 0
    t0 = time.process_time()
    for _ in range(count // per_read):
        for data in reads:
            pub.dataReceived(data)
        clock.advance(0)
        if manual:
            tag += per_read
            sub.dataReceived(ack_head + struct.pack(">QB", tag, 1) + b"\xce")
        pt.clear()
        st.clear()
    elapsed = time.process_time() - t0
    pub.connectionLost(None)
    sub.connectionLost(None)
    return elapsed / count * 1e6


def child(args) -> None:
    """Run each scenario once and print {scenario: µs} (the subprocess of --baseline)."""
    out = {sc: measure(sc, args.count, args.size, args.batch) for sc in args.scenario.split(",")}
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50, help="publishes per read")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scenario", default=",".join(SCENARIOS))
    ap.add_argument("--baseline", help="PYTHONPATH of an older polymq: a 'before' column")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    targets = [("after", None)]
    if args.baseline:
        targets.insert(0, ("before", args.baseline))
    results: dict[str, dict[str, list[float]]] = {name: {} for name, _ in targets}
    argv = [
        sys.executable,
        __file__,
        "--child",
        "--count",
        str(args.count),
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--scenario",
        args.scenario,
    ]
    for i in range(args.runs):
        order = targets if i % 2 == 0 else targets[::-1]
        for name, path in order:
            env = dict(os.environ)
            if path:
                env["PYTHONPATH"] = path
            run = json.loads(subprocess.check_output(argv, env=env))
            for sc, us in run.items():
                results[name].setdefault(sc, []).append(us)
            print(
                f"run {i + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in run.items()),
                file=sys.stderr,
            )
    names = [name for name, _ in targets]
    print("| scenario | " + " | ".join(f"{n} µs/msg" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for sc in args.scenario.split(","):
        cells = []
        for n in names:
            xs = results[n][sc]
            cells.append(f"{statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})")
        print(f"| {sc} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
