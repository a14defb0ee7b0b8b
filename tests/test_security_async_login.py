"""Password hashes run off the reactor thread: other clients are served while logins are checked.

A PBKDF2 verification (600,000 iterations) takes 0.1-0.7 s. The broker verifies in a small thread
pool (``security.hash_threads``) with a bounded wait list (``security.max_waiting_logins``); the
connection whose login is being checked stops reading, and what it sent meanwhile is handled, in
order, once the answer is in. Proved by counting: a paho client keeps completing round trips
while 20 bad logins are hashed, and a login flood beyond the bound is refused, not queued.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from brokerproc import BrokerProcess
from conftest import running_broker

from polymq.core.cli import main


def wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(client_id: str, user: str, password: str, v5: bool = False) -> bytes:
    """MQTT CONNECT with user name and password, clean session, keep-alive 60 s."""
    head = _utf8("MQTT") + bytes((5 if v5 else 4, 0xC2)) + (60).to_bytes(2, "big")
    if v5:
        head += b"\x00"  # no properties
    return _packet(0x10, head + _utf8(client_id) + _utf8(user) + _utf8(password))


def read_until_closed(sock: socket.socket, timeout: float = 60.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (ConnectionResetError, TimeoutError):
        return data


@contextlib.contextmanager
def _broker(tmp_path_factory, name: str, **settings) -> Iterator[BrokerProcess]:
    d = tmp_path_factory.mktemp(name)
    users = d / "users.toml"
    where = f"security.users_file={json.dumps(str(users))}"
    assert main(["users", "add", "alice", "--password", "right", "--set", where,
                 "--configure", ".*", "--write", ".*", "--read", ".*"]) == 0  # fmt: skip
    with running_broker(d, ["mqtt"], store="memory", log_level="info",
                        settings={"security.users_file": str(users), **settings}) as b:  # fmt: skip
        yield b


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with _broker(tmp_path_factory, "async-login", **{"security.hash_threads": 2}) as b:
        yield b


def test_round_trips_go_on_while_twenty_bad_logins_are_hashed(broker):
    done = 0
    got = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="steady")
    c.username_pw_set("alice", "right")
    connected: list = []
    c.on_connect = lambda cl, ud, fl, rc, pr=None: connected.append(rc.value)
    c.on_message = lambda cl, ud, m: got.set()
    c.connect(broker.host, broker.port("mqtt"))
    c.loop_start()
    try:
        assert wait(lambda: connected) and connected[0] == 0
        sub_done = threading.Event()
        c.on_subscribe = lambda *a: sub_done.set()
        c.subscribe("rt/steady", qos=0)
        assert sub_done.wait(10)
        stop = threading.Event()

        def round_trips() -> None:
            nonlocal done
            while not stop.is_set():
                got.clear()
                c.publish("rt/steady", b"x", qos=0)
                if got.wait(30):
                    done += 1

        loop = threading.Thread(target=round_trips, daemon=True)
        loop.start()
        assert wait(lambda: done >= 5)
        socks = [socket.create_connection((broker.host, broker.port("mqtt"))) for _ in range(20)]
        before = done
        for i, s in enumerate(socks):
            s.sendall(connect_packet(f"bad-{i}", "alice", f"wrong-{i}"))
        answers = [read_until_closed(s) for s in socks]
        during = done - before
        stop.set()
        loop.join(35)
        for s in socks:
            s.close()
        # every bad login was hashed and refused: 3.1.1 CONNACK return code 4
        assert answers == [b"\x20\x02\x00\x04"] * 20
        # with the hashes on the reactor thread (20 x 0.1-0.7 s) hardly any round trip would
        # complete in that window; in the hash threads the reactor keeps serving
        assert during >= 100, f"only {during} round trips while 20 logins were hashed"
    finally:
        c.loop_stop()
        c.disconnect()


def test_packets_sent_with_connect_wait_for_the_login_and_keep_their_order(broker):
    # CONNECT (a password to hash), SUBSCRIBE and a QoS 1 PUBLISH in one write: the later
    # packets wait while the password is verified, then are handled in order
    s = socket.create_connection((broker.host, broker.port("mqtt")))
    try:
        subscribe = _packet(0x82, (1).to_bytes(2, "big") + _utf8("pipe/t") + b"\x01")
        publish = _packet(0x32, _utf8("pipe/t") + (2).to_bytes(2, "big") + b"hello")
        s.sendall(connect_packet("pipelined", "alice", "right") + subscribe + publish)
        s.settimeout(30)
        data = b""
        while b"hello" not in data or b"\x40\x02\x00\x02" not in data:
            chunk = s.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
        assert data.startswith(b"\x20\x02\x00\x00")  # CONNACK accepted first
        assert data.index(b"\x90\x03\x00\x01\x01") < data.index(b"hello")  # SUBACK, then it
    finally:
        s.close()


def test_a_login_flood_beyond_the_bound_is_refused_not_queued(tmp_path_factory):
    with _broker(
        tmp_path_factory,
        "login-flood",
        **{"security.hash_threads": 1, "security.max_waiting_logins": 2},
    ) as b:
        socks = [socket.create_connection((b.host, b.port("mqtt"))) for _ in range(20)]
        for i, s in enumerate(socks):
            s.sendall(connect_packet(f"flood-{i}", "alice", f"wrong-{i}", v5=True))
        answers = [read_until_closed(s) for s in socks]
        for s in socks:
            s.close()
        flooded = sum(b"too many logins in progress" in a for a in answers)
        hashed = sum(b"bad user name or password" in a for a in answers)
        assert all(a[:1] == b"\x20" for a in answers), answers  # each got its CONNACK
        assert flooded >= 1 and hashed >= 3, (flooded, hashed)
        assert flooded + hashed == 20
        # a correct login is still served once the flood has passed
        ok = socket.create_connection((b.host, b.port("mqtt")))
        ok.sendall(connect_packet("after-flood", "alice", "right"))
        ok.settimeout(30)
        assert ok.recv(4) == b"\x20\x02\x00\x00"
        ok.close()
        assert "password checks already under way" in b.log_text()
