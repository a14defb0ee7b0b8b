"""`polymq status` and the management API's /api/ha name the active node, its epoch and since
when, before and after a failover; a clean stop of the active hands over at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from hanodes import make_nodes
from test_management_support import Api

MGMT = {"management.port_file": "mgmt.json", "management.sys_interval": 0.0}


def status(dsn: str) -> tuple[int, dict, str]:
    base = [sys.executable, "-m", "polymq.core", "status"]
    sets = ["--set", 'store.backend="postgres"', "--set", f'store.dsn="{dsn}"']
    text = subprocess.run(base + sets, capture_output=True, text=True, timeout=60)
    js = subprocess.run(base + sets + ["--json"], capture_output=True, text=True, timeout=60)
    return js.returncode, json.loads(js.stdout), text.stdout


def api(node) -> Api:
    port = json.loads((node.workdir / "mgmt.json").read_text())["management"]
    return Api(f"http://127.0.0.1:{port}")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def test_status_and_api_name_the_active_node_across_failover(pg_server, tmp_path):
    dsn, (a, b, c) = make_nodes(pg_server, tmp_path, count=3, adapters=("amqp",), settings=MGMT)
    a.start()
    b.launch()
    c.launch()
    try:
        wait_for(lambda: all("is standby; " in n.log_text() for n in (b, c)), 30, "standbys")
        time.sleep(1.5)  # every node has written its row
        code, st, text = status(dsn)
        assert code == 0, text
        assert (st["holder"], st["epoch"], st["active"]) == ("a", 1, True)
        roles = {n["node_id"]: n["role"] for n in st["nodes"]}
        assert roles == {"a": "active", "b": "standby", "c": "standby"}
        assert text.startswith("active: a since ") and "epoch 1" in text

        ha = api(a).get("/api/ha")
        assert (ha["role"], ha["node_id"], ha["epoch"]) == ("active", "a", 1)
        assert ha["since"] == st["since"]
        assert api(a).get("/api/overview")["ha_role"] == "active"

        # a standby stops cleanly on SIGTERM, and comes back as standby
        assert c.stop() == 0, c.log_tail()
        c.launch()
        wait_for(lambda: "is standby; " in c.log_text(), 30, "c standby again")

        a.kill9()
        wait_for(lambda: b.port_file.exists() or c.port_file.exists(), 30, "a takeover")
        new = b if b.port_file.exists() else c
        new.wait_active(5)
        code, st, text = status(dsn)
        assert code == 0 and st["holder"] == new.node_id and st["epoch"] == 2, st
        ha = api(new).get("/api/ha")
        assert (ha["role"], ha["node_id"], ha["epoch"]) == ("active", new.node_id, 2)

        # a clean stop hands the lease over at once (no lease expiry to wait for)
        other = c if new is b else b
        stopped = time.monotonic()
        assert new.stop() == 0
        other.wait_active(10)
        assert time.monotonic() - stopped < 10
        code, st, _ = status(dsn)
        assert st["holder"] == other.node_id and st["epoch"] == 3
        roles = {n["node_id"]: n["role"] for n in st["nodes"]}
        assert roles[new.node_id] == "stopped" and roles[other.node_id] == "active"

        other.stop()
        code, st, text = status(dsn)
        assert code == 1 and not st["active"] and text.startswith("active: none"), text
    finally:
        for node in (a, b, c):
            node.kill9()
