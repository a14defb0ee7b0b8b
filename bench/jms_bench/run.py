"""Run the JMS benchmark against polymq (OpenWire adapter) and ActiveMQ in one run.

    .venv/bin/python bench/jms_bench/run.py [--activemq-port 26616] [--activemq-pid PID]
        [--quick | --scale X] [--baseline PYTHONPATH] [--repeat N] [--best] [--only TEXT]
        [--store sqlite|memory] [--warmup-factor 1.0]

Starts polymq as a subprocess (sqlite store, OpenWire only), compiles JmsBench.java against
the Debian ActiveMQ 5.17 jars, runs each scenario against both brokers (ActiveMQ must already
listen, on 26616 unless ``--activemq-port`` says otherwise: docs/benchmarks.md, "Reference
brokers", shows how to run it; ``ss -ltnp`` shows its pid) and prints
Markdown tables: send / receive rates, CPU per message of broker and client, and each
target's receive rate over the last target's (ActiveMQ's) in the same round.

Each run is a fresh client JVM with the JVM's default compilers: it first moves
``--warmup-factor`` times the scenario's messages through the same connections, untimed (the
client's JIT compiles its hot paths meanwhile), then the timed run. The broker's CPU during the
timed run is read from /proc (ActiveMQ's only with ``--activemq-pid``); the client's is its own
process CPU time.

``--baseline DIR`` adds a second polymq whose ``PYTHONPATH`` is DIR (e.g. a ``polymq``
package tree of an older commit) as a "before" column of the same run; ``--repeat N`` runs every
scenario N times per broker, interleaved (each round in another order), and reports for each
target the run with the median receive rate (``--best``: the best run), the median CPU and
the median of the per-round rate ratios (steadier than a ratio of medians on a shared machine,
whose load changes between rounds more than within one).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

from brokerproc import BrokerProcess  # noqa: E402
from common import compile_bench, run_bench  # noqa: E402

# (label, queue|topic, persistent, producers, consumers, messages per producer, body size)
SCENARIOS = [
    ("queue non-persistent 1p/1c", "queue", False, 1, 1, 20000, 256),
    ("queue non-persistent 4p/4c", "queue", False, 4, 4, 5000, 256),
    ("topic non-persistent 1p/2c", "topic", False, 1, 2, 10000, 256),
    ("queue persistent 1p/1c", "queue", True, 1, 1, 1000, 256),
    ("queue persistent 16p/2c", "queue", True, 16, 2, 250, 256),
]


def reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="sqlite", help="store backend of polymq (sqlite, memory)")
    ap.add_argument("--activemq-port", type=int, default=26616)
    ap.add_argument("--activemq-pid", type=int, help="the ActiveMQ JVM, for its CPU per message")
    ap.add_argument("--quick", action="store_true", help="a tenth of the messages")
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every scenario's message count (longer, steadier runs)",
    )
    ap.add_argument("--baseline", help="PYTHONPATH of a second polymq (a 'before' column)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--best",
        action="store_true",
        help="report each target's best run (default: the median run)",
    )
    ap.add_argument("--only", help="run only the scenarios whose label contains this")
    ap.add_argument(
        "--warmup-factor",
        type=float,
        default=1.0,
        help="untimed warm-up messages, as a multiple of the timed ones",
    )
    args = ap.parse_args()
    scenarios = SCENARIOS
    if args.only:
        scenarios = [sc for sc in scenarios if args.only in sc[0]]
    if args.quick:
        args.scale /= 10
    if args.scale != 1.0:
        scenarios = [
            (a, b, c, d, e, max(50, int(f * args.scale)), g) for a, b, c, d, e, f, g in scenarios
        ]
    tmp = Path(tempfile.mkdtemp(prefix="jms-bench-"))
    classes = compile_bench(tmp)
    broker = BrokerProcess(
        tmp / "polymq", adapters=["openwire"], store=args.store, log_level="warn"
    )
    broker.start()
    brokers = [broker]
    targets = [("polymq", f"tcp://127.0.0.1:{broker.port('openwire')}", broker.pid)]
    if args.baseline:
        before = BrokerProcess(
            tmp / "polymq-before",
            adapters=["openwire"],
            store=args.store,
            log_level="warn",
            env={"PYTHONPATH": args.baseline},
        )
        before.start()
        brokers.append(before)
        targets.insert(
            0, ("polymq before", f"tcp://127.0.0.1:{before.port('openwire')}", before.pid)
        )
    if reachable(args.activemq_port):
        targets.append(
            ("ActiveMQ 5.17", f"tcp://127.0.0.1:{args.activemq_port}", args.activemq_pid)
        )
    else:
        print(f"(ActiveMQ not listening on {args.activemq_port}: polymq only)")
    rates, cpus, ratios = [], [], []
    try:
        for sc in scenarios:
            _, kind, persistent, p, c, n, size = sc
            warm = int(n * args.warmup_factor)
            runs: list[list[dict]] = [[] for _ in targets]
            errors: list = [None] * len(targets)
            # receive rate of each target over the last one's, per round (the load of a
            # shared machine changes between rounds far more than within one)
            round_ratios: list[list[float]] = [[] for _ in targets]
            for rep in range(args.repeat):
                order = list(range(len(targets)))
                k = rep % len(order)
                this_round: dict[int, dict] = {}
                for i in order[k:] + order[:k]:
                    _, url, pid = targets[i]
                    try:
                        this_round[i] = run_bench(
                            classes, url, kind, persistent, p, c, n, size, warm, pid
                        )
                        runs[i].append(this_round[i])
                    except RuntimeError as e:
                        errors[i] = errors[i] or f"error: {str(e)[-300:]}"
                last = this_round.get(len(targets) - 1)
                for i, r in this_round.items():
                    if last is not None and last["recv_rate"]:
                        round_ratios[i].append(r["recv_rate"] / last["recv_rate"])
            rate_row = [sc[0], str(p * n)]
            cpu_row = [sc[0]]
            for (_, _, pid), rs, err in zip(targets, runs, errors, strict=True):
                if not rs:
                    rate_row.append(str(err))
                    cpu_row.append("-")
                    continue
                rs.sort(key=lambda r: r["recv_rate"])
                b = rs[-1] if args.best else rs[(len(rs) - 1) // 2]
                rate_row.append(
                    f"{b['send_rate']:,.0f} / {b['recv_rate']:,.0f}"
                    + ("" if all(r["complete"] for r in rs) else " (incomplete)")
                )
                client = statistics.median(r["client_us"] for r in rs)
                broker_us = f"{statistics.median(r['broker_us'] for r in rs):.1f}" if pid else "-"
                cpu_row.append(f"{broker_us} / {client:.1f}")
            rates.append(rate_row)
            cpus.append(cpu_row)
            ratios.append(
                [sc[0]]
                + [
                    f"{statistics.median(rs):.2f} ({min(rs):.2f}–{max(rs):.2f})" if rs else "-"
                    for rs in round_ratios[:-1]
                ]
            )
            print(" | ".join(rate_row) + " || " + " | ".join(cpu_row[1:]), flush=True)
    finally:
        for b in brokers:
            b.stop()
    names = [n for n, _, _ in targets]
    how = "best" if args.best else "median"
    print(
        f"\nsend / receive msg/s ({how} of {args.repeat} run(s) by receive rate; "
        f"warm-up {args.warmup_factor:g}x untimed)"
    )
    header = ["scenario", "messages"] + names
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rates:
        print("| " + " | ".join(row) + " |")
    print(f"\nCPU µs per message, broker / client (median of {args.repeat})")
    header = ["scenario"] + names
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in cpus:
        print("| " + " | ".join(row) + " |")
    if len(names) > 1:
        print(f"\nreceive rate / {names[-1]}'s in the same round (median of {args.repeat}, range)")
        header = ["scenario"] + names[:-1]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in ratios:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
