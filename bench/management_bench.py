#!/usr/bin/env python3
"""What management costs the message path: the same MQTT load against a broker with the
management port closed and one with it open and scraped every second, in one run.

Two broker processes (memory store, MQTT on a free port) are started side by side; the
"open" one has management on with statistics every second and a scraper fetching
``/metrics`` and ``/api/overview`` once a second during the load. Rounds alternate
closed/open so machine noise hits both alike. Reports msgs/s and broker CPU µs per delivered
message (bench/mqtt_bench.py does the load), and how long one scrape takes.

Example::

    .venv/bin/python bench/management_bench.py --rounds 3 --count 20000 --shape 1x1 \\
        --queues 1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from brokerproc import BrokerProcess  # noqa: E402
from mqtt_bench import Run, cpu_seconds  # noqa: E402

AUTH = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}


def start(workdir: Path, management: bool) -> tuple[BrokerProcess, str | None]:
    port_file = workdir / "mgmt.json"
    settings = {"management.enabled": management}
    if management:
        settings.update(
            {
                "management.port": 0,
                "management.port_file": str(port_file),
                "management.stats_interval": 1.0,
                "management.sys_interval": 1.0,
            }
        )
    b = BrokerProcess(
        workdir, adapters=["mqtt"], store="memory", settings=settings, log_level="warn"
    )
    b.start()
    if not management:
        return b, None
    deadline = time.monotonic() + 15
    while not port_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return b, f"http://127.0.0.1:{json.loads(port_file.read_text())['management']}"


def http(url: str, method: str = "GET", body: bytes | None = None) -> bytes:
    headers = dict(AUTH, **({"Content-Type": "application/json"} if body else {}))
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as res:
        return res.read()


class Scraper(threading.Thread):
    """Fetches /metrics and /api/overview once a second until stopped (bounded by ``limit``)."""

    def __init__(self, base: str, limit: float) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.limit = limit
        self.stop = threading.Event()
        self.times: list[float] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            t0 = time.perf_counter()
            http(self.base + "/metrics")
            http(self.base + "/api/overview")
            self.times.append(time.perf_counter() - t0)
            self.stop.wait(1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="closed/open pairs")
    p.add_argument("--count", type=int, default=20000, help="messages per publisher")
    p.add_argument("--shape", default="1x1", help="PUBSxSUBS")
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument(
        "--queues",
        type=int,
        default=0,
        help="idle queues declared in both brokers (what a scrape walks)",
    )
    args = p.parse_args(argv)
    pubs, subs = (int(x) for x in args.shape.split("x"))
    load = argparse.Namespace(
        size=args.size,
        count=args.count,
        version=4,
        window=100,
        batch=50,
        rate=0.0,
        sample=10,
        idle_timeout=5.0,
    )
    with tempfile.TemporaryDirectory(prefix="polymq-mgmt-bench-") as tmp:
        closed, _ = start(Path(tmp) / "closed", management=False)
        opened, base = start(Path(tmp) / "open", management=True)
        try:
            if args.queues:
                for i in range(args.queues):
                    http(f"{base}/api/queues/%2F/idle-{i}", "PUT", b'{"durable": false}')
            idle = []
            for _ in range(20):  # the scrape's own cost, with no load queued before it
                t0 = time.perf_counter()
                http(base + "/metrics")
                http(base + "/api/overview")
                idle.append(time.perf_counter() - t0)
            results: dict[str, list[tuple[float, float]]] = {"closed": [], "open": []}
            scrape_times: list[float] = []
            for _ in range(args.rounds):
                for name, broker in (("closed", closed), ("open", opened)):
                    scraper = Scraper(base, limit=120) if name == "open" else None
                    if scraper is not None:
                        scraper.start()
                    cpu0 = cpu_seconds(broker.pid)
                    r = asyncio.run(
                        Run(load, broker.host, broker.port("mqtt"), pubs, subs, args.qos).go()
                    )
                    cpu1 = cpu_seconds(broker.pid)
                    if scraper is not None:
                        scraper.stop.set()
                        scraper.join(30)
                        scrape_times += scraper.times
                    cpu_us = (cpu1 - cpu0) / max(r["received"], 1) * 1e6
                    results[name].append((r["rate"], cpu_us))
                    print(
                        f"{name:>6}: {r['received']}/{r['expected']} delivered, "
                        f"{r['rate']:,.0f} msgs/s, {cpu_us:.1f} µs CPU/msg",
                        flush=True,
                    )
            print()
            print(
                f"# management_bench: MQTT {args.shape} QoS {args.qos}, {args.size} B, "
                f"{args.count} msgs/publisher, {args.rounds} rounds, {args.queues} idle queues"
            )
            print("| management | msgs/s (median) | broker CPU µs/msg (median) |")
            print("|---|---|---|")
            for name in ("closed", "open"):
                rates = [x[0] for x in results[name]]
                cpus = [x[1] for x in results[name]]
                label = "closed" if name == "closed" else "open, scraped every 1 s"
                print(
                    f"| {label} | {statistics.median(rates):,.0f} | {statistics.median(cpus):.1f} |"
                )
            print(
                f"\none scrape (/metrics + /api/overview) of the idle broker: median "
                f"{statistics.median(idle) * 1000:.1f} ms over {len(idle)} scrapes"
            )
            if scrape_times:
                print(
                    f"the same during the load (queued behind message work): median "
                    f"{statistics.median(scrape_times) * 1000:.1f} ms, max "
                    f"{max(scrape_times) * 1000:.1f} ms over {len(scrape_times)} scrapes"
                )
        finally:
            for b in (closed, opened):
                b.stop()
                b.kill9()
    return 0


if __name__ == "__main__":
    sys.exit(main())
