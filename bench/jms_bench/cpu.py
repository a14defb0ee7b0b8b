"""CPU cost per message of one JMS benchmark scenario against polymq (and optionally ActiveMQ).

    .venv/bin/python bench/jms_bench/cpu.py [--scenario queue|topic] [--messages 40000]
        [--py-spy out.txt] [--activemq-port 26616]

Starts polymq (OpenWire only, sqlite store) as a subprocess, runs JmsBench (non-persistent with
1 producer and 1 consumer (queue) or 2 consumers (topic) unless ``--persistent``,
``--producers``, ``--consumers`` say otherwise), and prints the broker's CPU time per
message during the timed run (from /proc/<pid>/stat), the client JVM's CPU time per message
and the rates. Every run moves ``--warmup`` messages first, untimed, through the same client
JVM (see run.py); a first run per target also warms the brokers. With
``--py-spy FILE`` the broker is sampled by py-spy (``pip install py-spy``) during the run and a
flat "top functions" table is written to FILE (raw collapsed stacks to FILE.collapsed).
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

from brokerproc import BrokerProcess  # noqa: E402
from common import compile_bench, run_bench  # noqa: E402

PERF_CALLS = (
    "sendto",
    "recvfrom",
    "epoll_wait",
    "epoll_ctl",
    "write",
    "pwrite64",
    "fdatasync",
    "fsync",
    "futex",
    "read",
)


def run(
    classes: Path,
    url: str,
    kind: str,
    consumers: int,
    n: int,
    size: int,
    broker_pid: int | None,
    persistent: bool = False,
    producers: int = 1,
    warmup: int = 0,
) -> dict:
    return run_bench(
        classes,
        url,
        kind,
        persistent,
        producers,
        consumers,
        n // producers,
        size,
        warmup // producers,
        broker_pid,
    )


def summarize(collapsed: Path, out: Path) -> None:
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        k = int(count)
        samples += k
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
    lines = [f"{samples} samples", "", "self%  function"]
    lines += [f"{100 * v / samples:5.1f}  {f}" for f, v in own.most_common(40)]
    lines += ["", "total%  function"]
    lines += [f"{100 * v / samples:5.1f}  {f}" for f, v in total.most_common(60)]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", choices=("queue", "topic"), default="queue")
    ap.add_argument("--messages", type=int, default=40000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--persistent", action="store_true", help="persistent (synchronous) sends")
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--consumers", type=int, help="default: 1 for a queue, 2 for a topic")
    ap.add_argument("--py-spy", type=Path)
    ap.add_argument(
        "--gil",
        action="store_true",
        help="with --py-spy: sample only the thread holding the GIL (where the "
        "Python CPU goes, not where threads wait)",
    )
    ap.add_argument("--activemq-port", type=int)
    ap.add_argument(
        "--activemq-pid",
        type=int,
        help="the ActiveMQ JVM, to measure its CPU too (ss -ltnp shows it)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=20000,
        help="untimed messages before each timed run (same client JVM)",
    )
    ap.add_argument("--store", default="sqlite", help="store of the broker (sqlite, memory)")
    ap.add_argument(
        "--strace",
        action="store_true",
        help="count the broker's system calls during the run (strace -c)",
    )
    ap.add_argument(
        "--perf",
        action="store_true",
        help="count the broker's socket system calls per message with perf stat "
        "(kernel counters: no slow-down, unlike strace)",
    )
    ap.add_argument(
        "--baseline", help="PYTHONPATH of a second polymq ('polymq before'; see run.py)"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per target, interleaved; the table shows medians",
    )
    args = ap.parse_args()
    consumers = args.consumers or (1 if args.scenario == "queue" else 2)
    shape = {"persistent": args.persistent, "producers": args.producers, "warmup": args.warmup}
    tmp = Path(tempfile.mkdtemp(prefix="jms-prof-"))
    classes = compile_bench(tmp)
    brokers = [
        BrokerProcess(tmp / "polymq", adapters=["openwire"], store=args.store, log_level="warn")
    ]
    if args.baseline:
        brokers.append(
            BrokerProcess(
                tmp / "polymq-before",
                adapters=["openwire"],
                store=args.store,
                log_level="warn",
                env={"PYTHONPATH": args.baseline},
            )
        )
    try:
        targets = []  # (name, url, pid)
        for b in brokers:
            b.start()
            targets.append(
                (
                    "polymq" if b is brokers[0] else "polymq before",
                    f"tcp://127.0.0.1:{b.port('openwire')}",
                    b.pid,
                )
            )
        if args.activemq_port:
            targets.append(("ActiveMQ", f"tcp://127.0.0.1:{args.activemq_port}", args.activemq_pid))
        for _, url, pid in targets:
            run(classes, url, args.scenario, consumers, args.warmup, args.size, pid, **shape)
        broker = brokers[0]
        url = targets[0][1]
        spy = None
        if args.py_spy:
            collapsed = args.py_spy.with_suffix(".collapsed")
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-p",
                    str(broker.pid),
                    "-f",
                    "raw",
                    "-o",
                    str(collapsed),
                    "-r",
                    "500",
                ]
                + (["--gil"] if args.gil else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        st = None
        if args.strace:
            st = subprocess.Popen(
                ["strace", "-c", "-f", "-p", str(broker.pid), "-o", str(tmp / "strace.txt")],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        pf = None
        if args.perf:
            events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in PERF_CALLS]
            pf = subprocess.Popen(
                [
                    "perf",
                    "stat",
                    "-x",
                    ",",
                    "-e",
                    ",".join(events),
                    "-p",
                    str(broker.pid),
                    "-o",
                    str(tmp / "perf.txt"),
                ],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
        results: dict[str, list[dict]] = {name: [] for name, _, _ in targets}
        profiled = pf or st or spy
        for rep in range(1 if profiled else args.repeat):
            # interleaved, each round in another order, so that drift in the machine's load
            # falls on every target alike
            k = rep % len(targets)
            for name, turl, pid in targets[k:] + targets[:k]:
                if profiled and name != "polymq":
                    continue
                results[name].append(
                    run(
                        classes,
                        turl,
                        args.scenario,
                        consumers,
                        args.messages,
                        args.size,
                        pid,
                        **shape,
                    )
                )
        if pf is not None:
            pf.send_signal(2)
            pf.wait(30)
            print("| system call | per message |\n|---|---|")
            for line in (tmp / "perf.txt").read_text().splitlines():
                f = line.split(",")
                if len(f) > 2 and f[0].strip().isdigit():
                    name = f[2].split(":")[-1].replace("sys_enter_", "")
                    print(f"| {name} | {int(f[0]) / args.messages:.2f} |")
        if st is not None:
            st.send_signal(2)
            st.wait(30)
            print((tmp / "strace.txt").read_text())
            print(f"({args.messages} messages)")
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
            summarize(collapsed, args.py_spy)
    finally:
        for b in brokers:
            b.stop()
    n = max(len(rs) for rs in results.values())
    print(f"medians of {n} interleaved run(s), each column on its own")
    print(
        "| broker | send msg/s | recv msg/s | broker CPU µs/msg (of which system) "
        "| client CPU µs/msg |"
    )
    print("|---|---|---|---|---|")
    for name, _, pid in targets:
        rs = results[name]
        if not rs:
            continue

        def med(key: str, rs: list[dict] = rs) -> float:
            return statistics.median(float(r[key]) for r in rs)

        bus = f"{med('broker_us'):.1f} ({med('broker_sys_us'):.1f})" if pid else "-"
        print(
            f"| {name} | {med('send_rate'):,.0f} | {med('recv_rate'):,.0f} | {bus} "
            f"| {med('client_us'):.1f} |"
        )


if __name__ == "__main__":
    main()
