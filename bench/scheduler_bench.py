"""Scheduled delivery at scale: many pending jobs, one timer, a bounded window in memory.

    .venv/bin/python bench/scheduler_bench.py [--jobs 1000000] [--size 100] [--window 100000]

In one process, on the sqlite store (paging) in a temporary directory: schedules ``--jobs``
messages due between one and two hours from now (the scheduler's own cost plus the store's
group commits; each batch of 10 000 is waited for until durable, as a publisher with confirms
would), reports the timers pending in the reactor, the jobs held in memory and the process's
RSS; reopens the store (seconds until the first window of jobs is back in memory); then moves
the clock two hours on and measures how fast the jobs are routed (to an exchange with no
bindings: the scheduler's cost, reading the jobs back from the store in due order and deleting
them). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, reactor, task  # noqa: E402

from polymq.core.broker import Broker  # noqa: E402
from polymq.core.message import Message  # noqa: E402
from polymq.core.store.sqlite import SqliteStore  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def durable(b: Broker) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    b.when_durable(lambda: d.callback(None))
    return d


@defer.inlineCallbacks
def run(args: argparse.Namespace):
    data = tempfile.mkdtemp(prefix="polymq-sched-bench-")
    cfg = {"broker": {"scheduled_max_in_memory": args.window}}
    try:
        b = Broker(SqliteStore(data, paging=True), config=cfg, clock=reactor)
        yield b.start()
        b.vhost().declare_exchange("nowhere", "fanout", durable=True)
        body = b"x" * args.size
        hour = 3_600_000
        t0 = time.perf_counter()
        sched = b.scheduler.schedule
        batch = 10_000
        for start in range(0, args.jobs, batch):
            for i in range(start, min(start + batch, args.jobs)):
                msg = Message(body, durable=True)
                sched("/", "nowhere", "", msg, delay_ms=hour + (i * 7919) % hour)
            # durable per batch, as publishers with confirms would wait (bounds the store's
            # queue of writes)
            yield durable(b)
        took = time.perf_counter() - t0
        timers = len(reactor.getDelayedCalls())
        print(
            f"scheduled {args.jobs} jobs of {args.size} B in {took:.1f} s: "
            f"{args.jobs / took:,.0f} jobs/s (each batch durable)"
        )
        print(
            f"  reactor timers pending: {timers} (the scheduler's: 1); jobs in memory: "
            f"{b.scheduler.in_memory()}; RSS {rss_mb():.0f} MB (peak {peak_rss_mb():.0f} MB)"
        )
        yield b.stop()

        t0 = time.perf_counter()
        b = Broker(SqliteStore(data, paging=True), config=cfg, clock=reactor)
        yield b.start()
        while b.scheduler.in_memory() == 0:
            yield task.deferLater(reactor, 0.001, lambda: None)
        print(
            f"reopened: {b.scheduler.pending} pending, first {b.scheduler.in_memory()} back "
            f"in memory after {time.perf_counter() - t0:.2f} s; RSS {rss_mb():.0f} MB"
        )

        later = b.now() + 2 * hour + 60_000
        b.now = lambda: later  # type: ignore[method-assign]
        t0 = time.perf_counter()
        b.scheduler._fire()
        while b.scheduler.pending:
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield durable(b)
        took = time.perf_counter() - t0
        print(
            f"fired {b.scheduler.delivered} jobs in {took:.1f} s: "
            f"{b.scheduler.delivered / took:,.0f} jobs/s (read back, routed, deleted); "
            f"RSS {rss_mb():.0f} MB"
        )
        yield b.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--window", type=int, default=100_000)
    args = p.parse_args()

    def go():
        d = run(args)
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()


if __name__ == "__main__":
    main()
