"""The Kafka adapter's own cost per record, in-process (no sockets, no client, memory store).

    .venv/bin/python bench/kafka_inproc.py [--requests 400] [--records 1000] [--size 1024]
    .venv/bin/python bench/kafka_inproc.py --baseline /tmp/old --repeat 3   # before / after

Builds the Kafka listener's connection over a ``StringTransport`` and feeds it Produce requests
(v7, acks=1, one batch of ``--records`` records each) in 64 KiB reads, as a socket would, then
Fetch requests reading everything back; prints CPU microseconds per record for each phase.
``--baseline DIR`` runs the same measurement in a subprocess with ``PYTHONPATH=DIR`` (a
``polymq`` tree of another commit) alternately with this tree, ``--repeat`` times, and prints
the medians. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

READ = 65536


def measure(requests: int, records: int, size: int) -> dict:
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from polymq.adapters.kafka import codec as C
    from polymq.adapters.kafka.plugin import DEFAULT_CONFIG
    from polymq.adapters.kafka.records import encode_batch
    from polymq.adapters.kafka.transport import KafkaFactory
    from polymq.core import output
    from polymq.core.broker import Broker
    from polymq.core.store.memory import MemoryStore

    clock = Clock()
    broker = Broker(MemoryStore(), clock=clock)
    factory = KafkaFactory(broker, dict(DEFAULT_CONFIG))
    conn = factory.buildProtocol(None)
    tr = StringTransport()
    conn.makeConnection(tr)
    value = os.urandom(size)
    batch = encode_batch([(None, value, [], 1)] * records)
    body = {
        "transactional_id": None,
        "acks": 1,
        "timeout_ms": 5000,
        "topic_data": [{"name": "bench", "partition_data": [{"index": 0, "records": batch}]}],
    }
    stream = b"".join(C.encode_request(C.PRODUCE, 7, i, "bench", body) for i in range(requests))
    start = time.process_time()
    for pos in range(0, len(stream), READ):
        conn.dataReceived(stream[pos : pos + READ])
        tr.clear()
    produce = time.process_time() - start
    output.flush_pending()
    tr.clear()
    fetches = []
    for i in range(requests):
        fetches.append(
            C.encode_request(
                C.FETCH,
                11,
                i,
                "bench",
                {
                    "replica_id": -1,
                    "max_wait_ms": 0,
                    "min_bytes": 1,
                    "max_bytes": 52428800,
                    "isolation_level": 0,
                    "session_id": 0,
                    "session_epoch": -1,
                    "topics": [
                        {
                            "topic": "bench",
                            "partitions": [
                                {
                                    "partition": 0,
                                    "current_leader_epoch": -1,
                                    "fetch_offset": i * records,
                                    "log_start_offset": -1,
                                    "partition_max_bytes": len(batch) + 100,
                                }
                            ],
                        }
                    ],
                    "forgotten_topics_data": [],
                    "rack_id": "",
                },
            )
        )
    start = time.process_time()
    for f in fetches:
        conn.dataReceived(f)
        tr.clear()
    fetch = time.process_time() - start
    n = requests * records
    return {"produce_us": produce * 1e6 / n, "fetch_us": fetch * 1e6 / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure(args.requests, args.records, args.size)))
        return
    targets = [("this tree", None)]
    if args.baseline:
        targets.insert(0, ("baseline", args.baseline))
    results: dict[str, list[dict]] = {name: [] for name, _ in targets}
    for _ in range(args.repeat):
        for name, path in targets:
            env = dict(os.environ)
            if path:
                env["PYTHONPATH"] = path
            out = subprocess.run(
                [sys.executable, __file__, "--json", "--requests", str(args.requests),
                 "--records", str(args.records), "--size", str(args.size)],
                capture_output=True, text=True, env=env, check=True, cwd="/",
            )  # fmt: skip
            results[name].append(json.loads(out.stdout))
    print(f"requests={args.requests} records/request={args.records} size={args.size}B "
          f"repeat={args.repeat} (medians, CPU µs per record)")  # fmt: skip
    print("| polymq | produce | fetch |")
    print("|---|---:|---:|")
    for name, runs in results.items():
        p = statistics.median(r["produce_us"] for r in runs)
        f = statistics.median(r["fetch_us"] for r in runs)
        print(f"| {name} | {p:.3f} | {f:.3f} |")


if __name__ == "__main__":
    main()
