"""Hostile conditions: no client can take the broker down or hurt the others.

Each case is driven on loopback against a broker subprocess, with real clients on the
well-behaved side checking that they are served throughout.
"""

from __future__ import annotations

import socket
import time

from test_mqtt_helpers import V3, Client, uid


def _flood(host: str, port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=2)
        except OSError:
            break
        socks.append(s)
    return socks


def _closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except OSError:
        return False


def test_descriptor_exhaustion_pauses_accepting_and_the_broker_keeps_serving(broker_factory):
    broker = broker_factory(
        adapters=["mqtt"],
        rlimit_nofile=160,
        settings={"adapters.mqtt.handshake_timeout": 4.0},
    )
    sub = Client(broker, version=V3)
    topic = uid("fd")
    sub.subscribe(topic, qos=1)
    pub = Client(broker, version=V3)
    # far more idle sockets than the descriptor limit leaves room for
    flood = _flood(broker.host, broker.port("mqtt"), 300)
    try:
        for i in range(20):
            pub.publish(topic, b"m%d" % i, qos=1)
        got = sub.get_n(20, timeout=15)
        assert [m.payload for m in got] == [b"m%d" % i for i in range(20)]
        assert broker.running
        assert "file descriptors nearly exhausted" in broker.log_text()
    finally:
        for s in flood:
            s.close()
    # the idle sockets are gone (closed above, or by the handshake timeout): room again
    late = Client(broker, version=V3)
    late.subscribe(topic, qos=1)
    pub.publish(topic, b"after", qos=1)
    assert late.get(timeout=10).payload == b"after"
    assert broker.running
    for c in (late, pub, sub):
        c.disconnect()
    assert "accepting new connections again" in broker.log_text()


def test_silent_connections_are_closed_after_the_handshake_timeout(broker_factory):
    broker = broker_factory(
        adapters=["mqtt"], store="memory", settings={"adapters.mqtt.handshake_timeout": 1.0}
    )
    socks = _flood(broker.host, broker.port("mqtt"), 20)
    assert len(socks) == 20
    start = time.monotonic()
    assert all(_closed_by_peer(s, 6) for s in socks)
    assert time.monotonic() - start < 6
    for s in socks:
        s.close()
