"""The two sides of one run, each in its own process: producers and consumers.

The coordinator (runner.py) starts the consumer side, waits for ``ready`` (every consumer is
subscribed), then starts the producer side. Progress goes through shared counters; the final
result of each side comes back on a queue.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .common import DriverError, Tally, cpu_seconds, merge_tallies, socket_bytes
from .workload import Target, Workload


class Shared:
    """Counters and events shared by the coordinator and both sides (multiprocessing)."""

    def __init__(self, mp) -> None:
        self.sent = mp.Value("q", 0, lock=False)
        self.received = mp.Value("q", 0, lock=False)
        self.ready = mp.Event()
        self.producers_done = mp.Event()
        self.consumers_done = mp.Event()
        self.abort = mp.Event()


class SideContext:
    def __init__(self, side: str, target: Target, wl: Workload, run: str, shared: Shared):
        self.side = side
        self.target = target
        self.wl = wl
        self.run = run
        self.shared = shared
        self.errors: list[str] = []
        self._lock = threading.Lock()

    # names every driver uses for the run's destination
    @property
    def topic(self) -> str:  # dot-separated (AMQP routing key, Kafka topic, OpenWire topic)
        return f"polymq-compare.{self.run}"

    def error(self, text: str) -> None:
        with self._lock:
            if len(self.errors) < 20:
                self.errors.append(text)

    def aborted(self) -> bool:
        return self.shared.abort.is_set()

    def wire_bytes(self, pid: int | None = None) -> tuple[int, int] | None:
        return socket_bytes(pid or os.getpid(), self.target.port)


class ConsumerMonitor:
    """Sums the tallies of consumer threads into the shared counter and decides when to stop."""

    def __init__(self, ctx: SideContext, tallies: list[Tally]) -> None:
        self.ctx = ctx
        self.tallies = tallies
        self.stop = threading.Event()
        self.complete = False

    def unique(self) -> int:
        return sum(t.unique for t in self.tallies)

    def watch(self, threads: list[threading.Thread], poll: float = 0.02) -> None:
        ctx = self.ctx
        last_count = -1
        last_change = time.monotonic()
        done_at = None
        while True:
            n = self.unique()
            ctx.shared.received.value = n
            now = time.monotonic()
            if n != last_count:
                last_count, last_change = n, now
            if ctx.aborted():
                break
            if not any(t.is_alive() for t in threads):
                break
            if ctx.shared.producers_done.is_set():
                done_at = done_at or now
                if n >= ctx.wl.expected(ctx.shared.sent.value):
                    self.complete = True
                    break
                if now - max(last_change, done_at) > ctx.wl.drain_timeout:
                    break
            time.sleep(poll)
        ctx.shared.received.value = self.unique()


def run_consumer_threads(
    ctx: SideContext, clients: list, consume: Callable[..., None], *args: Any
) -> tuple[list[Tally], Any, float]:
    """Run ``consume(ctx, client, tally, stop, *args)`` on a thread per client until the
    workload is complete or drained; returns (tallies, wire bytes, CPU seconds at the start)
    for :func:`consumer_result`. Signals readiness so the producers start."""
    cpu0 = cpu_seconds()
    tallies = [Tally() for _ in clients]
    mon = ConsumerMonitor(ctx, tallies)
    threads = [
        threading.Thread(target=consume, args=(ctx, c, t, mon.stop, *args), daemon=True)
        for c, t in zip(clients, tallies, strict=True)
    ]
    for t in threads:
        t.start()
    ctx.shared.ready.set()
    mon.watch(threads)
    mon.stop.set()
    for t in threads:
        t.join(5)
    return tallies, ctx.wire_bytes(), cpu0


def run_producer_threads(
    ctx: SideContext,
    connect: Callable[[int], Any],
    produce: Callable[..., None],
    close: bool = True,
) -> dict:
    """Connect ``wl.producers`` clients, run ``produce(ctx, index, client, out)`` on a thread
    each, report the final count to the consumers and sum the producers' result. ``close``:
    the clients have a ``close()`` to call afterwards."""
    conns = [connect(i) for i in range(ctx.wl.producers)]
    cpu0 = cpu_seconds()
    outs = [{} for _ in conns]
    threads = [
        threading.Thread(target=produce, args=(ctx, i, c, outs[i]), daemon=True)
        for i, c in enumerate(conns)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    producers_finished(ctx, sum(o.get("sent", 0) for o in outs))
    wire = ctx.wire_bytes()
    if close:
        for c in conns:
            c.close()
    result = {
        "sent": sum(o.get("sent", 0) for o in outs),
        "confirmed": sum(o.get("confirmed", 0) for o in outs),
        "first_ns": min((o["first_ns"] for o in outs if o.get("first_ns")), default=0),
        "last_ns": max((o.get("last_ns", 0) for o in outs), default=0),
        "cpu_s": cpu_seconds() - cpu0,
        "errors": list(ctx.errors),
    }
    result.update(wire_result(wire))
    return result


def consumer_result(ctx: SideContext, tallies: list[Tally], wire, cpu0: float) -> dict:
    out = merge_tallies(tallies)
    out.update(wire_result(wire))
    out["cpu_s"] = cpu_seconds() - cpu0
    out["errors"] = list(ctx.errors)
    return out


def producers_finished(ctx: SideContext, sent: int) -> None:
    """Publish the final sent count, then wait until the consumers are done, so that the kernel
    has sent everything queued on the producer sockets before their bytes are counted."""
    ctx.shared.sent.value = sent
    ctx.shared.producers_done.set()
    deadline = time.monotonic() + ctx.wl.drain_timeout + 600
    while time.monotonic() < deadline and not ctx.aborted():
        if ctx.shared.consumers_done.wait(0.05):
            break


def wire_result(wire) -> dict:
    if wire is None:
        return {"bytes_up": None, "bytes_down": None}
    return {"bytes_up": wire[0], "bytes_down": wire[1]}


def side_main(side: str, target: Target, wl: Workload, run: str, shared: Shared, results) -> None:
    """Process entry point: run one side of one protocol and put its result on ``results``."""
    ctx = SideContext(side, target, wl, run, shared)
    try:
        mod = importlib.import_module(f"polymq.plugins.compare.drivers.{target.protocol}")
        fn = mod.run_consumers if side == "consumers" else mod.run_producers
        result = fn(ctx)
        results.put((side, "ok", result))
    except DriverError as e:
        shared.abort.set()
        results.put((side, "error", str(e)))
    except OSError as e:
        shared.abort.set()
        results.put((side, "error", f"{target.protocol} {side}: {e.strerror or e}"))
    except BaseException as e:  # noqa: BLE001 - reported to the coordinator, not lost
        shared.abort.set()
        # the failure is one line; the traceback goes to the JSON (and the HTML's details)
        results.put((side, "traceback", traceback.format_exc(limit=4)))
        results.put((side, "error", f"{target.protocol} {side}: {type(e).__name__}: {e}"))
