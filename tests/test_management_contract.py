"""Management over the connection contract, with an adapter that is on it today.

The built-in adapters move onto the contract separately (their listing tests are in
test_management_api.py); here a minimal third-party adapter, installed as a real plugin (a
distribution with a ``polymq`` entry point on PYTHONPATH), shows what management does with
any contract connection: listed with its user, client id and counters, counted per protocol
in the overview, /metrics and $SYS, closed from the API and from ``polymq ctl``, and its
totals kept after it is gone.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
from conftest import stopping
from prometheus_client.parser import text_string_to_metric_families
from test_management_support import (
    Api,
    echo_client,
    frame,
    install_echo_plugin,
    start_broker,
    wait_for,
)


@pytest.fixture(scope="module")
def echo_env(tmp_path_factory):
    return install_echo_plugin(tmp_path_factory.mktemp("echo-plugin"))


@pytest.fixture(scope="module")
def mbroker(tmp_path_factory, echo_env):
    workdir = tmp_path_factory.mktemp("mgmt-contract")
    broker, url = start_broker(workdir, adapters=["echo", "mqtt"], env=echo_env, sys_interval=0.5)
    with stopping(broker):
        yield broker, Api(url), url


def test_contract_connections_listed_counted_and_closed(mbroker):
    broker, api, url = mbroker
    a = echo_client(broker, "client-a", 5)
    b = echo_client(broker, "client-b", 3)
    try:
        conns = {c["client_id"]: c for c in api.get("/api/connections")}
        assert set(conns) == {"client-a", "client-b"}
        ca = conns["client-a"]
        assert ca["protocol"] == "echo" and ca["user"] == "echo-user"
        assert ca["peer_host"] == "127.0.0.1" and ca["local_port"] == broker.port("echo")
        assert ca["messages_in"] == 5 and ca["messages_out"] == 5
        assert ca["bytes_in"] == len(frame(b"HELLO client-a")) + 5 * len(frame(b"m0"))
        assert ca["recv_oct"] == ca["bytes_in"] and ca["send_oct"] == ca["bytes_out"] > 0
        assert api.get(f"/api/connections/{ca['id']}")["client_id"] == "client-a"
        by_name = api.get("/api/connections/" + urllib.request.quote(ca["name"], safe=""))
        assert by_name["id"] == ca["id"]
        # per protocol, side by side: overview and /metrics
        ov = wait_for(
            lambda: (
                (x := api.get("/api/overview"))["protocols"]["echo"].get("messages_in") == 8 and x
            ),
            what="per-protocol totals sampled",
        )
        assert ov["protocols"]["echo"]["connections"] == 2
        assert ov["protocols"]["mqtt"]["connections"] == 0
        assert ov["object_totals"]["connections"] == 2
        metrics = _scrape(url)
        assert metrics["polymq_connections"][(("protocol", "echo"),)] == 2
        assert metrics["polymq_messages_received_total"][(("protocol", "echo"),)] == 8
        assert metrics["polymq_messages_sent_total"][(("protocol", "echo"),)] == 8
        assert metrics["polymq_connections_opened_total"][()] >= 2
        # close one from the API: the client sees its socket closed, the other stays
        status, _, _ = api.call(
            "DELETE", f"/api/connections/{ca['id']}", headers={"X-Reason": "maintenance window"}
        )
        assert status == 204
        a.settimeout(5)
        data = b""
        while chunk := a.recv(4096):
            data += chunk
        assert b"maintenance window" in data  # the session said why, in its protocol
        assert "closing 127.0.0.1" in broker.log_text() and "maintenance window" in (
            broker.log_text()
        )
        assert [c["client_id"] for c in api.get("/api/connections")] == ["client-b"]
        # close the other with polymq ctl, by name
        name = api.get("/api/connections")[0]["name"]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "polymq.core",
                "ctl",
                "--url",
                url,
                "close",
                name,
                "--reason",
                "bye",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        b.settimeout(5)
        while b.recv(4096):
            pass
        wait_for(lambda: api.get("/api/connections") == [], what="no connections")
    finally:
        a.close()
        b.close()
    # totals are monotonic: closed connections keep counting
    metrics = _scrape(url)
    assert metrics["polymq_connections"][(("protocol", "echo"),)] == 0
    assert metrics["polymq_messages_received_total"][(("protocol", "echo"),)] == 8


def test_sys_clients_connected_counts_contract_connections(mbroker):
    import paho.mqtt.client as mqtt

    broker, api, _ = mbroker
    got: dict[str, str] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sys-contract")
    c.on_message = lambda cl, u, m: got.__setitem__(m.topic, m.payload.decode())
    c.connect(broker.host, broker.port("mqtt"))
    c.subscribe("$SYS/broker/clients/#")
    c.loop_start()
    try:
        base = int(wait_for(lambda: got.get("$SYS/broker/clients/connected"), timeout=10))
        s = echo_client(broker, "sys-echo", 1)
        wait_for(
            lambda: int(got["$SYS/broker/clients/connected"]) == base + 1,
            timeout=10,
            what="$SYS clients/connected",
        )
        s.close()
        wait_for(lambda: int(got["$SYS/broker/clients/connected"]) == base, timeout=10)
    finally:
        c.disconnect()
        c.loop_stop()


def _scrape(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as res:
        text = res.read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out
