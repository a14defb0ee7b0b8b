"""Run the JMS benchmark against polymq (OpenWire adapter) and ActiveMQ in one run.

    .venv/bin/python bench/jms_bench/run.py [--activemq-port 26616] [--quick]
        [--baseline PYTHONPATH] [--repeat N] [--best] [--only TEXT] [--store sqlite|memory]

Starts polymq as a subprocess (sqlite store, OpenWire only), compiles JmsBench.java against
the Debian ActiveMQ 5.17 jars, runs each scenario against both brokers (ActiveMQ must already
listen: ``/work/shared/peers/peers start activemq``) and prints a Markdown table.

``--baseline DIR`` adds a second polymq whose ``PYTHONPATH`` is DIR (e.g. a ``polymq``
package tree whose ``adapters/openwire`` is an older checkout) as a "before" column of the same
run; ``--repeat N`` runs every scenario N times per broker, interleaved, and reports the run
with the median receive rate (``--best``: the best run).
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "java"))

import jmsrun  # noqa: E402
from brokerproc import BrokerProcess  # noqa: E402

# (label, queue|topic, persistent, producers, consumers, messages per producer, body size)
SCENARIOS = [
    ("queue non-persistent 1p/1c", "queue", False, 1, 1, 20000, 256),
    ("queue non-persistent 4p/4c", "queue", False, 4, 4, 5000, 256),
    ("topic non-persistent 1p/2c", "topic", False, 1, 2, 10000, 256),
    ("queue persistent 1p/1c", "queue", True, 1, 1, 1000, 256),
    ("queue persistent 16p/2c", "queue", True, 16, 2, 250, 256),
]


def run_one(classes, url, sc):
    _, kind, persistent, p, c, n, size = sc
    out = subprocess.run(
        jmsrun.java_cmd(classes, "JmsBench", url, kind, str(persistent).lower(), str(p), str(c),
                        str(n), str(size)),
        capture_output=True, text=True, timeout=600,
    )
    m = re.search(r"RESULT .*", out.stdout)
    if not m:
        return None, out.stderr[-500:]
    fields = dict(kv.split("=") for kv in m.group().split()[1:])
    return fields, None


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
    ap.add_argument("--quick", action="store_true", help="a tenth of the messages")
    ap.add_argument("--baseline", help="PYTHONPATH of a second polymq (a 'before' column)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--best", action="store_true",
                    help="report each target's best run (default: the median run)")
    ap.add_argument("--only", help="run only the scenarios whose label contains this")
    args = ap.parse_args()
    scenarios = SCENARIOS
    if args.only:
        scenarios = [sc for sc in scenarios if args.only in sc[0]]
    if args.quick:
        scenarios = [(a, b, c, d, e, max(50, f // 10), g) for a, b, c, d, e, f, g in SCENARIOS]
    tmp = Path(tempfile.mkdtemp(prefix="jms-bench-"))
    classes = tmp / "classes"
    classes.mkdir()
    subprocess.run(["javac", "-nowarn", "-cp", jmsrun.classpath(), "-d", str(classes),
                    str(Path(__file__).parent / "JmsBench.java")], check=True)
    broker = BrokerProcess(tmp / "polymq", adapters=["openwire"], store=args.store,
                           log_level="warn")
    broker.start()
    brokers = [broker]
    targets = [("polymq", f"tcp://127.0.0.1:{broker.port('openwire')}")]
    if args.baseline:
        before = BrokerProcess(tmp / "polymq-before", adapters=["openwire"], store=args.store,
                               log_level="warn", env={"PYTHONPATH": args.baseline})
        before.start()
        brokers.append(before)
        targets.insert(0, ("polymq before", f"tcp://127.0.0.1:{before.port('openwire')}"))
    if reachable(args.activemq_port):
        targets.append(("ActiveMQ 5.17", f"tcp://127.0.0.1:{args.activemq_port}"))
    else:
        print(f"(ActiveMQ not listening on {args.activemq_port}: polymq only)")
    rows = []
    try:
        for sc in scenarios:
            row = [sc[0], str(sc[3] * sc[5])]
            runs: list[list] = [[] for _ in targets]
            errors: list = [None] * len(targets)
            for _ in range(args.repeat):
                for i, (_name, url) in enumerate(targets):
                    res, err = run_one(classes, url, sc)
                    if res is None:
                        errors[i] = errors[i] or f"error: {err}"
                        continue
                    runs[i].append((float(res["send_rate"]), float(res["recv_rate"]),
                                    res["complete"] == "true"))
            for rs, err in zip(runs, errors, strict=True):
                if rs:
                    # the run with the median receive rate (or the best, --best)
                    rs.sort(key=lambda r: r[1])
                    b = rs[-1] if args.best else rs[(len(rs) - 1) // 2]
                    row.append(f"{b[0]:,.0f} / {b[1]:,.0f}" + ("" if b[2] else " (incomplete)"))
                else:
                    row.append(str(err))
            rows.append(row)
            print(" | ".join(row), flush=True)
    finally:
        for b in brokers:
            b.stop()
    header = ["scenario", "messages"] + [f"{n} send/recv msg/s" for n, _ in targets]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
