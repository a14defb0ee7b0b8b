"""guest and clients without a user name are refused from a non-loopback address.

The broker and the clients run in a fresh network namespace (``unshare -rn``) whose loopback
interface also carries 10.9.9.9: a client connecting to that address has a real non-loopback peer
address, so the check is the broker's own, on the peer address the kernel reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
OUTSIDE = "10.9.9.9"

SCRIPT = textwrap.dedent(
    """
    import json, sys, time, uuid
    sys.path.insert(0, {tests!r})
    import paho.mqtt.client as mqtt
    from brokerproc import BrokerProcess
    from polymq.core.cli import main

    users = {workdir!r} + "/users.toml"
    main(["users", "add", "alice", "--password", "pw", "--set",
          "security.users_file=" + json.dumps(users)])
    b = BrokerProcess({workdir!r}, adapters=["mqtt"], store="memory", log_level="info",
                      settings={{"adapters.mqtt.host": "0.0.0.0",
                                "security.users_file": users}})
    b.start()

    def login(host, user, password):
        got = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:8])
        if user is not None:
            c.username_pw_set(user, password)
        c.on_connect = lambda cl, ud, fl, rc, pr=None: got.append(int(rc.value))
        c.connect(host, b.port("mqtt"))
        c.loop_start()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        c.disconnect()
        c.loop_stop()
        return got[0] if got else None

    out = {{}}
    for host in ("127.0.0.1", {outside!r}):
        for user, pw in (("guest", "guest"), ("alice", "pw"), (None, None)):
            out[f"{{host}} {{user}}"] = login(host, user, pw)
    b.stop()
    out["log"] = b.log_text()
    print("RESULT " + json.dumps(out))
    """
)


def _namespace_works() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip missing"
    p = subprocess.run(
        ["unshare", "-rn", "sh", "-c", f"ip link set lo up && ip addr add {OUTSIDE}/32 dev lo"],
        capture_output=True,
        text=True,
    )
    return None if p.returncode == 0 else f"no network namespace here: {p.stderr.strip()}"


def test_guest_and_nameless_clients_only_from_loopback(tmp_path):
    why = _namespace_works()
    if why:
        pytest.skip(why)
    script = tmp_path / "netns_login.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), workdir=str(tmp_path), outside=OUTSIDE))
    setup = (
        f"ip link set lo up && ip addr add {OUTSIDE}/32 dev lo && exec {sys.executable} {script}"
    )
    p = subprocess.run(
        ["unshare", "-rn", "sh", "-c", setup], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr[-3000:]}"
    out = json.loads(lines[0][7:])
    # from loopback: guest, alice and a client without a user name (logged in as guest)
    assert out["127.0.0.1 guest"] == 0
    assert out["127.0.0.1 alice"] == 0
    assert out["127.0.0.1 None"] == 0
    # from 10.9.9.9: only alice. paho reports a refusing MQTT 3.1.1 CONNACK (4 bad user name or
    # password, 5 not authorized) as the MQTT 5 reason codes 0x86 / 0x87
    assert out[f"{OUTSIDE} alice"] == 0
    assert out[f"{OUTSIDE} guest"] in (0x86, 0x87)
    assert out[f"{OUTSIDE} None"] in (0x86, 0x87)
    assert "user 'guest' can only connect via localhost" in out["log"]
