"""In-process core throughput: publish N messages through an exchange into a queue and out to
a consumer that acks, with the memory store and with the sqlite store.

    .venv/bin/python bench/core_throughput.py [-n 200000] [--size 100] [--runs 3]

Prints msgs/s per store (median of the runs). Not a test: numbers depend on the machine.
For sqlite, messages are persistent on a durable queue and the publisher waits for group
commit (``broker.when_durable``) every ``--window`` messages, as confirms would.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from twisted.internet import defer, task

from polymq.core.broker import Broker
from polymq.core.message import Message
from polymq.core.queue import Consumer
from polymq.core.store.memory import MemoryStore
from polymq.core.store.sqlite import SqliteStore


@defer.inlineCallbacks
def run_once(reactor, store, n: int, size: int, window: int, durable: bool):
    broker = Broker(store=store, clock=reactor)
    yield broker.start()
    vh = broker.vhost()
    vh.declare_exchange("bench", "direct", durable=durable)
    q = vh.declare_queue("bench-q", durable=durable)
    vh.bind_queue("bench-q", "bench", "k")
    received = 0

    def on_delivery(d):
        nonlocal received
        received += 1
        q.ack(d)

    q.add_consumer(Consumer("c", on_delivery, prefetch=1000))
    body = b"x" * size
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        batch = min(window, n - sent)
        for _ in range(batch):
            vh.publish("bench", "k", Message(body, durable=durable))
        sent += batch
        d = defer.Deferred()
        broker.when_durable(lambda d=d: d.callback(None))
        yield d
    elapsed = time.perf_counter() - t0
    assert received == n, (received, n)
    yield broker.stop()
    return n / elapsed


@defer.inlineCallbacks
def main(reactor, args):
    results = {}
    for name in ("memory", "sqlite"):
        rates = []
        for _ in range(args.runs):
            if name == "memory":
                store, durable = MemoryStore(), False
            else:
                store, durable = SqliteStore(tempfile.mkdtemp(prefix="polymq-bench-")), True
            rate = yield run_once(reactor, store, args.n, args.size, args.window, durable)
            rates.append(rate)
        results[name] = statistics.median(rates)
        print(
            f"{name:7s} {'persistent' if name == 'sqlite' else 'transient ':10s} "
            f"n={args.n} size={args.size}B  median {results[name]:,.0f} msgs/s  "
            f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--window", type=int, default=1000, help="messages between durability waits")
    task.react(main, [p.parse_args()])
