"""Shared-store HA: failover time per protocol, acknowledged vs consumed, and the cost of HA.

    .venv/bin/python bench/ha_bench.py [--rounds 20] [--rate 100] [--seconds 5] [--repeat 3]
        [--skip-throughput] [--skip-failover]

Starts a private PostgreSQL (tests/pgserver.py) and two polymq nodes on it with ``ha.enabled``
(default lease 5 s, renewal 1 s), every adapter on.

Failover rounds: one load per protocol runs for the whole benchmark (tests/hanodes.py: pika
with confirms, paho QoS 1 with a persistent session, confluent-kafka acks=all idempotent with
both nodes in its bootstrap list, the ActiveMQ JMS client with persistent sync sends over
``failover:(tcp://a,tcp://b)``), each ``--rate`` messages per second. Every round waits until
the other node is standby, kills the active with SIGKILL, and records per protocol the time
from the kill to the first acknowledgement after it (the client's first successful publish on
the new active); the killed node is started again and becomes the next round's standby. At the
end every queue/topic is drained from the active node and compared with what was acknowledged:
lost (acknowledged, never consumed) and duplicates.

Throughput: the same persistent workloads as bench/pg/pg_bench.py (AMQP confirms, Kafka
acks=all 1 KB, JMS persistent sync 1p/1c) against a single node on the postgres store, an HA
node alone, and an HA node with a standby attached; the median of ``--repeat`` runs, the
set-ups taking turns.

A benchmark, not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
import types
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "jms_bench"))

import hanodes as H  # noqa: E402
from brokerproc import BrokerProcess  # noqa: E402
from pgserver import PgServer, pg_bindir  # noqa: E402

PROTOCOLS = ("amqp", "mqtt", "kafka", "jms")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def standby_count(node: H.HaNode) -> int:
    return node.log_text().count("is standby; ")


def failover_rounds(pg: PgServer, tmp: Path, args) -> dict:
    H.jms_classes()
    _dsn, nodes = H.make_nodes(pg, tmp / "failover")
    a, b = nodes
    a.start()
    b.launch()
    wait_for(lambda: standby_count(b) >= 1, 60, "the first standby")

    def both(adapter: str) -> list[tuple[str, int]]:
        return [a.address(adapter), b.address(adapter)]

    huge = 10**7
    long = args.rounds * 60.0 + 120
    H.mqtt_subscribe(a.address("mqtt"), "bench-sub", "bench/mqtt")
    loads = {
        "amqp": H.Load("amqp", H.amqp_publish, both("amqp"), "bench.amqp", huge, args.rate, long),
        "mqtt": H.Load(
            "mqtt", H.mqtt_publish, both("mqtt"), "bench-pub", "bench/mqtt", huge, args.rate, long
        ),
        "kafka": H.Load(
            "kafka", H.kafka_produce, both("kafka"), "bench.kafka", huge, args.rate, long
        ),
        "jms": H.Load(
            "jms", H.jms_send, both("openwire"), "bench.jms", huge, int(1000 / args.rate), long
        ),
    }
    try:
        return _rounds(args, nodes, loads)
    finally:
        for load in loads.values():
            load.stop.set()
        for node in nodes:
            node.kill9()


def _rounds(args, nodes: list[H.HaNode], loads: dict[str, H.Load]) -> dict:
    for load in loads.values():
        load.start()
    wait_for(lambda: all(len(x.ack_times) >= 50 for x in loads.values()), 60, "load")
    times: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    takeovers: list[float] = []
    active, standby = nodes
    for r in range(args.rounds):
        # each start writes a new log file: a standby line in it means this start is standby
        wait_for(lambda s=standby: standby_count(s) >= 1, 60, "the standby")
        time.sleep(args.settle)  # every client working on the active node
        counts = {p: len(x.ack_times) for p, x in loads.items()}
        killed = time.monotonic()
        active.kill9()
        standby.wait_active(60)
        up = time.monotonic()
        takeovers.append(up - killed)

        # acknowledgements the killed node sent just before it died can still be in a client's
        # socket buffer: only those after the new node's listeners opened count
        def first_after(p: str, counts=counts, killed=killed, up=up) -> float | None:
            t = loads[p].ack_times
            for i in range(counts[p], len(t)):
                if t[i] > up:
                    return t[i] - killed
            return None

        wait_for(lambda: all(first_after(p) is not None for p in PROTOCOLS), 60, "every client")
        for p in PROTOCOLS:
            times[p].append(first_after(p))
        line = " ".join(f"{p} {times[p][-1]:.2f}s" for p in PROTOCOLS)
        print(f"round {r + 1}: node up {takeovers[-1]:.2f}s; first ack: {line}", flush=True)
        active.launch()  # the killed node comes back as the standby
        active, standby = standby, active
    for load in loads.values():
        load.stop.set()
    for load in loads.values():
        load.wait(120)
    drained = {
        "amqp": H.amqp_drain(active.address("amqp"), "bench.amqp", 3.0),
        "mqtt": H.mqtt_drain(active.address("mqtt"), "bench-sub", 3.0),
        "kafka": H.kafka_drain([active.address("kafka")], "bench.kafka"),
        "jms": H.jms_drain([active.address("openwire")], "bench.jms"),
    }
    out = {"takeover": takeovers, "times": times, "counts": {}}
    for p, load in loads.items():
        got = Counter(drained[p])
        acked = set(load.acked)
        out["counts"][p] = {
            "acked": len(acked),
            "consumed": len(got),
            "lost": len(acked - set(got)),
            "duplicates": sum(n - 1 for n in got.values()),
            "errors": load.errors,
        }
    return out


def throughput(pg: PgServer, tmp: Path, args) -> dict[str, dict[str, float]]:
    """Median of ``--repeat`` runs per set-up; the set-ups take turns, so that a change in the
    machine's load during the benchmark falls on all of them alike."""
    from common import compile_bench

    classes = compile_bench(tmp / "jms")
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.repeat):
        for label, result in _throughput_once(pg, tmp, args, classes).items():
            runs.setdefault(label, []).append(result)
    return {
        label: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for label, results in runs.items()
    }


def _throughput_once(pg: PgServer, tmp: Path, args, classes: Path) -> dict[str, dict[str, float]]:
    import amqp_bench
    import kafka_bench
    from common import run_bench

    results: dict[str, dict[str, float]] = {}
    for label in ("single node", "HA, alone", "HA + standby"):
        dsn = pg.create_database(f"tp{uuid.uuid4().hex[:8]}")
        adapters = ("amqp", "kafka", "openwire")
        standby = None
        if label == "single node":
            node: BrokerProcess = BrokerProcess(
                tmp / f"tp-{uuid.uuid4().hex[:6]}", adapters, store="postgres",
                settings={"store.dsn": dsn}, log_level="info",
            )  # fmt: skip
            node.start()
        else:
            node = H.HaNode(tmp / f"tp-{uuid.uuid4().hex[:6]}", dsn, "a", adapters)
            node.start()
            if label == "HA + standby":
                standby = H.HaNode(tmp / f"tp-{uuid.uuid4().hex[:6]}", dsn, "b", adapters)
                standby.launch()
                wait_for(lambda s=standby: standby_count(s) >= 1, 60, "standby")
        try:
            opts = types.SimpleNamespace(
                seconds=args.seconds, publishers=1, consumers=1, size=100, prefetch=200,
                ack_every=1, window=1000,
            )  # fmt: skip
            r = amqp_bench.run_scenario("persistent", node.host, node.port("amqp"), opts)
            bootstrap = f"{node.host}:{node.port('kafka')}"
            topic = f"tp-{uuid.uuid4().hex[:6]}"
            kafka_bench.create_topic(bootstrap, topic, 1)
            _, krate = kafka_bench.bench_produce(bootstrap, topic, args.records, 1024, "all")
            url = f"tcp://{node.host}:{node.port('openwire')}"
            j = run_bench(classes, url, "queue", True, 1, 1, args.jms_messages, 256, 0, node.pid)
            results[label] = {
                "AMQP confirms msg/s": r["confirmed/s"],
                "Kafka acks=all 1 KB rec/s": krate,
                "JMS sync persistent msg/s": j["send_rate"],
            }
            print(f"{label}: {results[label]}", flush=True)
        finally:
            for n in (node, standby):
                if n is not None:
                    n.kill9()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rate", type=int, default=100, help="messages/s per protocol's client")
    ap.add_argument("--settle", type=float, default=1.5, help="seconds of load before a kill")
    ap.add_argument("--seconds", type=float, default=5.0, help="AMQP throughput run length")
    ap.add_argument("--records", type=int, default=50000, help="Kafka throughput records")
    ap.add_argument("--jms-messages", type=int, default=2000, help="JMS throughput messages")
    ap.add_argument("--repeat", type=int, default=3, help="throughput runs per set-up (median)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-failover", action="store_true")
    args = ap.parse_args()
    # SIGTERM ends the run through the finally blocks (nodes killed, PostgreSQL stopped)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    bindir = pg_bindir()
    if bindir is None:
        print("PostgreSQL binaries not found (Debian package postgresql)", file=sys.stderr)
        return 1
    pg_root = tempfile.mkdtemp(prefix="polymq-ha-bench-pg-")
    tmp = Path(tempfile.mkdtemp(prefix="polymq-ha-bench-"))
    pg = PgServer(bindir, pg_root).start()
    try:
        if not args.skip_failover:
            f = failover_rounds(pg, tmp, args)
            print(f"\nfailover, {args.rounds} rounds of kill -9, {args.rate} msg/s per client")
            print("| protocol | median | max | acknowledged | consumed | lost | duplicates |")
            print("|---|---|---|---|---|---|---|")
            for p in PROTOCOLS:
                t, c = f["times"][p], f["counts"][p]
                print(
                    f"| {p} | {statistics.median(t):.2f} s | {max(t):.2f} s | {c['acked']} |"
                    f" {c['consumed']} | {c['lost']} | {c['duplicates']} |"
                )
                if c["errors"]:
                    print(f"  {p} client errors: {c['errors']}")
            tk = f["takeover"]
            print(
                f"new active's listeners open after the kill: median "
                f"{statistics.median(tk):.2f} s, max {max(tk):.2f} s"
            )
        if not args.skip_throughput:
            res = throughput(pg, tmp, args)
            labels = list(res)
            print(f"\nthroughput on the postgres store, median of {args.repeat} runs")
            print("| workload | " + " | ".join(labels) + " |")
            print("|---|" + "---|" * len(labels))
            for key in res[labels[0]]:
                base = res[labels[0]][key]
                cells = [
                    f"{res[lab][key]:,.0f}" + (f" ({res[lab][key] / base:.0%})" if i else "")
                    for i, lab in enumerate(labels)
                ]
                print(f"| {key} | " + " | ".join(cells) + " |")
    finally:
        pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
