"""`polymq compare` with the RocketMQ driver (the ali-ons client run by Node.js) against polymq's
RocketMQ adapter plugin: fan-out and queue patterns, each checked for completeness and order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from rocketmq_helpers import ADAPTER, NODE_DIR, ensure_ali_ons


@pytest.fixture
def rmq(broker_factory):
    ensure_ali_ons()
    return broker_factory(adapters=[ADAPTER], store="sqlite")


def compare(*args: str) -> subprocess.CompletedProcess:
    # the driver's ali-ons: the tests' install rather than a download into ~/.cache
    env = dict(os.environ, POLYMQ_COMPARE_NODE=str(NODE_DIR))
    return subprocess.run(
        [sys.executable, "-m", "polymq.core", "compare", *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize(
    "pattern, producers, consumers, expected",
    [("fanout", 1, 2, 600), ("queue", 2, 2, 600)],
)
def test_rocketmq_compare_run(rmq, tmp_path, pattern, producers, consumers, expected):
    out = tmp_path / "r.json"
    res = compare(
        "--url", f"rocketmq=127.0.0.1:{rmq.port(ADAPTER)}",
        "--pattern", pattern, "--producers", str(producers), "--consumers", str(consumers),
        "--count", "300", "--size", "200", "--json", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    (r,) = json.loads(out.read_text())["results"]
    assert r["protocol"] == "rocketmq" and r["ok"], r["failures"]
    c = r["counts"]
    assert c["sent"] == c["confirmed"] == 300 * producers
    assert c["unique"] == c["expected"] == expected
    assert c["lost"] == c["duplicates"] == c["out_of_order"] == 0
    assert r["latency"]["count"] == expected
    assert r["broker_cpu"]["pid"] == rmq.pid


def test_rocketmq_is_named_not_defaulted():
    from polymq.plugins.compare.cli import resolve_targets
    from polymq.plugins.compare.workload import PROTOCOLS, target_from_url

    assert "rocketmq" not in PROTOCOLS  # a plain `polymq compare` runs the built-ins only

    class Args:
        url = None
        protocols = "rocketmq"

    (t,) = resolve_targets(Args())
    assert (t.protocol, t.port) == ("rocketmq", 9876)
    assert target_from_url("rocketmq", "10.1.2.3:9877").port == 9877
