"""The coordinator: runs each target's workload (consumer process, then producer process),
shows progress, samples the broker's CPU time and builds one result per target."""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import time
from collections.abc import Callable

from .brokercpu import BrokerCpu
from .side import Shared, side_main
from .workload import CompareError, Target, Workload, run_id

READY_TIMEOUT = 60.0


def run_target(
    target: Target,
    wl: Workload,
    broker_pid: int | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> dict:
    """Run the workload once against ``target``; return its result record."""
    mp = multiprocessing.get_context("fork")
    shared = Shared(mp)
    results = mp.Queue()
    run = run_id()
    cpu = BrokerCpu.find(target, broker_pid)
    procs = {}
    got: dict[str, tuple[str, object]] = {}
    tracebacks: list[str] = []
    started = time.time()

    def start(side: str) -> None:
        p = mp.Process(
            target=side_main,
            args=(side, target, wl, run, shared, results),
            name=f"compare-{target.protocol}-{side}",
            daemon=True,
        )
        p.start()
        procs[side] = p

    def collect(timeout: float) -> None:
        try:
            side, status, value = results.get(timeout=timeout)
            if status == "traceback":
                tracebacks.append(f"{side}:\n{value}")
                return
            got[side] = (status, value)
        except queue_mod.Empty:
            pass

    def first_error() -> str | None:
        for status, value in got.values():
            if status == "error":
                return str(value)
        return None

    total_hint = wl.expected(wl.count * wl.producers) if wl.count else 0
    try:
        _drive(
            target,
            wl,
            shared,
            procs,
            got,
            start,
            collect,
            first_error,
            cpu,
            total_hint,
            on_progress,
        )
    except CompareError as e:  # the run could not start: a failed result, not a crash
        got.setdefault("consumers", ("error", str(e)))
        got.setdefault("producers", ("skipped", None))
    finally:
        if len(got) < 2:
            shared.abort.set()
        for p in procs.values():
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    return build_result(target, wl, run, got, cpu, time.time() - started, tracebacks)


def _drive(
    target, wl, shared, procs, got, start, collect, first_error, cpu, total_hint, on_progress
) -> None:
    """Consumers first (until every one is subscribed), then producers; wait for both."""
    start("consumers")
    deadline = time.monotonic() + READY_TIMEOUT
    while not shared.ready.is_set():
        collect(0.05)
        if first_error():
            raise CompareError(first_error())
        if not procs["consumers"].is_alive() and not shared.ready.is_set():
            collect(1.0)
            raise CompareError(first_error() or f"{target.protocol}: consumer side died")
        if time.monotonic() > deadline:
            raise CompareError(
                f"{target.protocol}: consumers not subscribed after {READY_TIMEOUT:.0f} s"
            )
    cpu.begin()
    start("producers")
    limit = _time_limit(wl)
    t0 = time.monotonic()
    while len(got) < 2:
        collect(0.1)
        if "consumers" in got:
            shared.consumers_done.set()
        if on_progress:
            expected = (
                wl.expected(shared.sent.value)
                if shared.producers_done.is_set() or not total_hint
                else total_hint
            )
            on_progress(shared.sent.value, shared.received.value, expected)
        if first_error():
            shared.abort.set()
        for side, p in procs.items():
            if side not in got and not p.is_alive():
                collect(1.0)
                if side not in got:
                    got[side] = (
                        "error",
                        f"{target.protocol} {side} process exited with code {p.exitcode}",
                    )
        if time.monotonic() - t0 > limit:
            shared.abort.set()
            if time.monotonic() - t0 > limit + 30:
                break
    cpu.end()


def _time_limit(wl: Workload) -> float:
    if wl.duration is not None:
        base = wl.duration
    elif wl.rate:
        base = wl.count / wl.rate
    else:
        base = 0
    return max(120.0, base * 2 + 60)


def build_result(
    target: Target,
    wl: Workload,
    run: str,
    got: dict,
    cpu: BrokerCpu,
    wall: float,
    tracebacks: list[str] | None = None,
) -> dict:
    from hdrh.histogram import HdrHistogram

    from .common import LATENCY_MAX_US

    prod_status, prod = got.get("producers", ("error", "producer side did not report"))
    cons_status, cons = got.get("consumers", ("error", "consumer side did not report"))
    failures: list[str] = []
    warnings: list[str] = []
    if cons_status != "ok":
        failures.append(str(cons))
        cons = {}
    if prod_status != "ok":
        if prod_status != "skipped":
            failures.append(str(prod))
        prod = {}
    sent = prod.get("sent", 0)
    expected = wl.expected(sent)
    unique = cons.get("unique", 0)
    lost = max(0, expected - unique)
    dups = cons.get("duplicates", 0)
    disorder = cons.get("out_of_order", 0)
    for side in (prod, cons):
        failures.extend(side.get("errors", []))
    if wl.count is not None and prod_status == "ok" and sent < wl.count * wl.producers:
        failures.append(f"only {sent} of {wl.count * wl.producers} messages were sent")
    if lost:
        text = f"{lost} of {expected} deliveries missing"
        if wl.guarantee == "at-most-once":
            warnings.append(text + " (allowed by at-most-once)")
        else:
            failures.append(text)
    if unique > expected:
        failures.append(f"{unique - expected} deliveries of messages never counted as sent")
    if dups:
        (failures if wl.guarantee == "at-most-once" else warnings).append(
            f"{dups} duplicate deliveries"
        )
    if disorder:
        failures.append(f"{disorder} deliveries out of order")
    if cons.get("malformed"):
        failures.append(f"{cons['malformed']} deliveries with a malformed body")
    if wl.guarantee != "at-most-once" and prod.get("confirmed", sent) < sent:
        failures.append(f"{sent - prod.get('confirmed', 0)} publishes not confirmed")

    hist = HdrHistogram(1, LATENCY_MAX_US, 3)
    if cons.get("histogram"):
        hist.decode_and_add(cons["histogram"])
    percentiles = [50.0, 90.0, 99.0, 99.9]
    curve_pcts = [
        0,
        10,
        20,
        30,
        40,
        50,
        60,
        70,
        75,
        80,
        85,
        90,
        95,
        97.5,
        99,
        99.5,
        99.9,
        99.95,
        99.99,
        100,
    ]
    count = hist.get_total_count()

    def ms(us: float) -> float:
        return round(us / 1000.0, 3)

    latency = None
    if count:
        latency = {
            "count": count,
            "min_ms": ms(hist.get_min_value()),
            "mean_ms": ms(hist.get_mean_value()),
            "max_ms": ms(hist.get_max_value()),
            **{f"p{_pct_name(p)}_ms": ms(hist.get_value_at_percentile(p)) for p in percentiles},
            "histogram": hist.encode().decode("ascii"),
            # a percentile above 100 * (1 - 1/count) has no sample of its own (it would repeat
            # the maximum as a flat line): the curve goes from the last measured one to the max
            "curve": [
                [p, ms(hist.get_value_at_percentile(p) if p < 100 else hist.get_max_value())]
                for p in curve_pcts
                if p == 100 or p <= 100.0 * (1 - 1 / count)
            ],
        }
    first = prod.get("first_ns") or 0
    last = cons.get("last_ns") or 0
    window = (last - first) / 1e9 if first and last > first else 0.0
    send_window = ((prod.get("last_ns", 0) - first) / 1e9) if first else 0.0
    mps = unique / window if window else 0.0
    msgs_in = sent
    bytes_up = _sum(prod.get("bytes_up"), cons.get("bytes_up"))
    bytes_down = _sum(prod.get("bytes_down"), cons.get("bytes_down"))
    wire = {
        "producer_up_per_msg": _per(prod.get("bytes_up"), msgs_in),
        "producer_down_per_msg": _per(prod.get("bytes_down"), msgs_in),
        "consumer_down_per_msg": _per(cons.get("bytes_down"), unique),
        "consumer_up_per_msg": _per(cons.get("bytes_up"), unique),
        "client_to_broker_per_msg": _per(bytes_up, msgs_in),
        "broker_to_client_per_msg": _per(bytes_down, msgs_in),
        "method": "kernel TCP counters of the client sockets (ss -ti), handshakes included",
    }
    for side_name, side in (("producer", prod), ("consumer", cons)):
        busy = side.get("cpu_s")
        if busy is not None and window > 0.5 and busy > 0.8 * window:
            warnings.append(
                f"{side_name} side used {busy:.2f} CPU s in {window:.2f} s: the load "
                "client may be the bottleneck"
            )
    broker_cpu = cpu.result()
    per10k = None
    if broker_cpu is not None and unique:
        per10k = round(broker_cpu["cpu_s"] / max(sent, 1) * 10000, 4)
    return {
        "label": target.label,
        "protocol": target.protocol,
        "target": target.as_dict(),
        "run_id": run,
        "ok": not failures,
        "failures": failures,
        "warnings": warnings,
        "counts": {
            "sent": sent,
            "confirmed": prod.get("confirmed", 0),
            "expected": expected,
            "delivered": cons.get("total", 0),
            "unique": unique,
            "lost": lost,
            "duplicates": dups,
            "out_of_order": disorder,
        },
        "throughput": {
            "msgs_per_s": round(mps, 1) if window else None,
            "mb_per_s": round(mps * wl.size / 1e6, 3) if window else None,
            "send_msgs_per_s": round(sent / send_window, 1) if send_window else None,
            "seconds": round(window, 3),
        },
        "latency": latency,
        "wire": wire,
        "broker_cpu": broker_cpu,
        "broker_cpu_s_per_10k": per10k,
        "client_cpu_s": {"producers": _r(prod.get("cpu_s")), "consumers": _r(cons.get("cpu_s"))},
        "wall_s": round(wall, 2),
        "tracebacks": list(tracebacks or ()),
    }


def _pct_name(p: float) -> str:
    return str(p).rstrip("0").rstrip(".").replace(".", "_") if p % 1 else str(int(p))


def _r(v):
    return None if v is None else round(v, 3)


def _sum(a, b):
    if a is None and b is None:
        return None
    return (a or 0) + (b or 0)


def _per(total, n):
    if total is None or not n:
        return None
    return round(total / n, 1)


def pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
