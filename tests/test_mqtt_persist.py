"""Persistent sessions: queued messages while away, across a broker restart, and kill -9."""

from __future__ import annotations

import struct
import time

import pytest
from test_mqtt_helpers import (
    V3,
    V5,
    VERSIONS,
    Client,
    connect_packet,
    raw,
    recv_packet,
    s16,
    uid,
    varint,
)


@pytest.fixture(scope="module")
def shared_broker(mqtt_broker):
    return mqtt_broker


def _session(broker, cid, version):
    return Client(broker, client_id=cid, version=version, clean=False, expiry=3600)


@VERSIONS
def test_persistent_session_receives_100_queued(shared_broker, version):
    cid, t = uid("p100"), uid("p100t")
    a = _session(shared_broker, cid, version)
    a.subscribe(t, qos=1)
    a.disconnect()
    pub = Client(shared_broker, version=version)
    for i in range(100):
        pub.publish(t, f"m{i}".encode(), qos=1)
    pub.disconnect()
    a = _session(shared_broker, cid, version)
    assert a.connack[0].session_present is True
    got = a.get_n(100)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(100)]
    assert all(m.qos == 1 for m in got)
    assert a.none(0.3)
    a.disconnect()


@VERSIONS
def test_persistent_session_100_across_restart(broker_factory, version):
    broker = broker_factory(adapters=["mqtt"], store="sqlite")
    cid, t = uid("pr"), uid("prt")
    a = _session(broker, cid, version)
    a.subscribe(t, qos=1)
    a.disconnect()
    pub = Client(broker, version=version)
    for i in range(100):
        pub.publish(t, f"m{i}".encode(), qos=1)
    pub.disconnect()
    broker.restart()
    a = _session(broker, cid, version)
    assert a.connack[0].session_present is True
    got = a.get_n(100)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(100)]
    # the subscription itself survived too
    pub = Client(broker, version=version)
    pub.publish(t, b"after", qos=1)
    assert a.get().payload == b"after"
    a.disconnect()


def test_acknowledged_publishes_survive_kill9_and_retained_is_kept(broker_factory):
    broker = broker_factory(adapters=["mqtt"], store="sqlite")
    cid, t = uid("k9"), uid("k9t")
    a = _session(broker, cid, V5)
    a.subscribe(t, qos=1)
    a.disconnect()
    pub = Client(broker, version=V3)
    for i in range(20):
        pub.publish(t, f"k{i}".encode(), qos=1)  # waits for PUBACK: sent once durable
    pub.publish(t + "/ret", b"retained", qos=1, retain=True)
    broker.kill9()
    broker.start()
    a = _session(broker, cid, V5)
    assert [m.payload for m in a.get_n(20)] == [f"k{i}".encode() for i in range(20)]
    s = Client(broker, version=V3)
    s.subscribe(t + "/ret", qos=1)
    m = s.get()
    assert (m.payload, m.retain) == (b"retained", True)
    a.disconnect()
    s.disconnect()


def test_session_expiry_counts_across_restart(broker_factory):
    broker = broker_factory(adapters=["mqtt"], store="sqlite")
    short, long_ = uid("short"), uid("long")
    for cid, expiry in ((short, 2), (long_, 600)):
        c = Client(broker, client_id=cid, version=V5, clean=False, expiry=expiry)
        c.subscribe(uid("st"), qos=1)
        c.disconnect()
    broker.restart()
    time.sleep(2.5)
    a = Client(broker, client_id=short, version=V5, clean=False, expiry=2)
    assert a.connack[0].session_present is False
    b = Client(broker, client_id=long_, version=V5, clean=False, expiry=600)
    assert b.connack[0].session_present is True
    a.disconnect()
    b.disconnect()


def test_qos2_exactly_once_across_restart(broker_factory):
    broker = broker_factory(adapters=["mqtt"], store="sqlite")
    t = uid("eo2")
    # a persistent QoS 2 subscriber that will stop half-way through the QoS 2 handshake
    scid = uid("eo2s")
    sub = raw(broker)
    sub.sendall(connect_packet(scid, clean=False))
    assert recv_packet(sub)[0] == 0x20
    body = struct.pack(">H", 1) + s16(t) + b"\x02"
    sub.sendall(b"\x82" + varint(len(body)) + body)
    assert recv_packet(sub)[0] == 0x90
    # a persistent publisher: PUBLISH QoS 2, PUBREC, then the broker restarts
    pcid = uid("eo2p")
    pub = raw(broker)
    pub.sendall(connect_packet(pcid, clean=False))
    assert recv_packet(pub)[0] == 0x20
    frame = s16(t) + struct.pack(">H", 5) + b"exactly"
    pub.sendall(b"\x34" + varint(len(frame)) + frame)
    assert recv_packet(pub) == (0x50, b"\x00\x05")
    first, body = recv_packet(sub)
    assert first & 0xF6 == 0x34 and body.endswith(b"exactly")
    pid = body[2 + len(t) : 4 + len(t)]
    sub.sendall(b"\x50\x02" + pid)  # PUBREC
    assert recv_packet(sub) == (0x62, pid)  # PUBREL; no PUBCOMP from us
    time.sleep(0.3)  # let the session records reach the disk
    pub.close()
    sub.close()
    broker.restart()
    # the publisher resends the PUBLISH (DUP): acknowledged, not routed a second time
    pub = raw(broker)
    pub.sendall(connect_packet(pcid, clean=False))
    assert recv_packet(pub) == (0x20, b"\x01\x00")
    pub.sendall(b"\x3c" + varint(len(frame)) + frame)
    assert recv_packet(pub) == (0x50, b"\x00\x05")
    pub.sendall(b"\x62\x02\x00\x05")
    assert recv_packet(pub) == (0x70, b"\x00\x05")
    # the subscriber gets the PUBREL it is owed, and no second copy of the message
    sub = raw(broker)
    sub.sendall(connect_packet(scid, clean=False))
    assert recv_packet(sub) == (0x20, b"\x01\x00")
    assert recv_packet(sub) == (0x62, pid)
    sub.sendall(b"\x70\x02" + pid)
    with pytest.raises(TimeoutError):
        recv_packet(sub, timeout=0.7)


@VERSIONS
def test_subscription_acknowledged_is_kept_after_kill9(broker_factory, version):
    broker = broker_factory(adapters=["mqtt"], store="sqlite")
    cid, t = uid("sk9"), uid("sk9t")
    a = _session(broker, cid, version)
    a.subscribe(t, qos=1)  # SUBACK: the subscription is on disk
    broker.kill9()
    broker.start()
    pub = Client(broker, version=version)
    pub.publish(t, b"for the survivor", qos=1)
    a = _session(broker, cid, version)
    assert a.connack[0].session_present is True
    assert a.get().payload == b"for the survivor"
    a.disconnect()


def test_max_queued_messages_drops_the_oldest(broker_factory):
    broker = broker_factory(
        adapters=["mqtt"], store="memory", settings={"adapters.mqtt.max_queued_messages": 5}
    )
    cid, t = uid("mq"), uid("mqt")
    a = _session(broker, cid, V3)
    a.subscribe(t, qos=1)
    a.disconnect()
    pub = Client(broker, version=V3)
    for i in range(10):
        pub.publish(t, str(i).encode(), qos=1)
    a = _session(broker, cid, V3)
    assert [m.payload for m in a.get_n(10, timeout=2)] == [b"5", b"6", b"7", b"8", b"9"]
    a.disconnect()
