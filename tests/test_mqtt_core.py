"""MQTT 3.1.1 and 5.0 basics with paho-mqtt against a real broker subprocess."""

from __future__ import annotations

import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_mqtt_helpers import (
    V3,
    V5,
    VERSIONS,
    Client,
    closed,
    connect_packet,
    raw,
    recv_packet,
    s16,
    uid,
    varint,
)


@pytest.fixture(scope="module")
def broker(mqtt_broker):
    return mqtt_broker


@VERSIONS
def test_publish_qos_0_1_2_both_directions(broker, version):
    t = uid("q/")
    sub = Client(broker, version=version)
    assert sub.subscribe(t + "/#", qos=2)
    pub = Client(broker, version=version)
    for qos in (0, 1, 2):
        pub.publish(f"{t}/{qos}", f"m{qos}".encode(), qos=qos)
    got = sorted(sub.get_n(3), key=lambda m: m.topic)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"{t}/0", b"m0", 0),
        (f"{t}/1", b"m1", 1),
        (f"{t}/2", b"m2", 2),
    ]
    # the subscription QoS caps the delivery QoS
    sub1 = Client(broker, version=version)
    sub1.subscribe(t + "/#", qos=1)
    pub.publish(f"{t}/2", b"x", qos=2)
    assert sub1.get().qos == 1
    assert sub.get().qos == 2
    for c in (sub, sub1, pub):
        c.disconnect()


@VERSIONS
def test_wildcards_and_overlapping_subscriptions(broker, version):
    t = uid("w")
    sub = Client(broker, version=version)
    sub.subscribe(f"{t}/+/c", qos=0)
    sub.subscribe(f"{t}/#", qos=1)
    pub = Client(broker, version=version)
    pub.publish(f"{t}/b/c", b"1", qos=1)
    pub.publish(f"{t}/b/d", b"2", qos=1)
    pub.publish(f"{t}", b"3", qos=1)  # "#" also matches the parent level
    pub.publish(f"{t}x/b/c", b"4", qos=1)
    got = sub.get_n(3)
    # overlapping subscriptions: one copy, the highest granted QoS
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        (t, b"3", 1),
        (f"{t}/b/c", b"1", 1),
        (f"{t}/b/d", b"2", 1),
    ]
    assert sub.none()
    sub.unsubscribe(f"{t}/#")
    pub.publish(f"{t}/b/d", b"5", qos=1)
    pub.publish(f"{t}/b/c", b"6", qos=1)
    m = sub.get()
    assert (m.payload, m.qos) == (b"6", 0)
    assert sub.none()


@VERSIONS
def test_dots_in_topics_and_dollar_topics(broker, version):
    t = uid("d")
    sub = Client(broker, version=version)
    sub.subscribe("#", qos=0)
    sub.subscribe("+/sys", qos=0)
    dsub = Client(broker, version=version)
    dsub.subscribe(f"$X{t}/#", qos=0)
    pub = Client(broker, version=version)
    pub.publish(f"$X{t}/sys", b"dollar", qos=1)
    assert dsub.get().topic == f"$X{t}/sys"
    pub.publish(f"{t}/v1.2/x", b"dotted", qos=1)
    m = sub.get()
    assert (m.topic, m.payload) == (f"{t}/v1.2/x", b"dotted")
    # a leading wildcard never matches a $ topic
    while not sub.messages.empty():
        assert not sub.messages.get().topic.startswith("$")
    sub.disconnect()


@VERSIONS
def test_retained_store_deliver_clear(broker, version):
    t = uid("r")
    pub = Client(broker, version=version)
    pub.publish(f"{t}/a", b"keep", qos=1, retain=True)
    pub.publish(f"{t}/b", b"keep-b", qos=0, retain=True)
    time.sleep(0.2)
    sub = Client(broker, version=version)
    sub.subscribe(f"{t}/+", qos=1)
    got = sorted(sub.get_n(2), key=lambda m: m.topic)
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        (f"{t}/a", b"keep", True),
        (f"{t}/b", b"keep-b", True),
    ]
    # live messages are not flagged retained
    pub.publish(f"{t}/a", b"live", qos=1, retain=True)
    m = sub.get()
    assert (m.payload, m.retain) == (b"live", False)
    # an empty retained payload clears it
    pub.publish(f"{t}/a", b"", qos=1, retain=True)
    pub.publish(f"{t}/b", b"", qos=1, retain=True)
    time.sleep(0.2)
    sub2 = Client(broker, version=version)
    sub2.subscribe(f"{t}/#", qos=1)
    assert sub2.none()


@VERSIONS
def test_will_on_abnormal_disconnect_only(broker, version):
    t = uid("will")
    watcher = Client(broker, version=version)
    watcher.subscribe(f"{t}/#", qos=1)
    a = Client(broker, version=version, will=(f"{t}/a", b"a died", 1, False), keepalive=60)
    a.drop()
    m = watcher.get()
    assert (m.topic, m.payload) == (f"{t}/a", b"a died")
    b = Client(broker, version=version, will=(f"{t}/b", b"b died", 1, False))
    b.disconnect()
    assert watcher.none(0.7)


@VERSIONS
def test_assigned_client_id_and_empty_id_rules(broker, version):
    if version == V5:
        c = Client(broker, client_id="", version=version)
        assigned = c.connack[2].AssignedClientIdentifier
        assert assigned
        c.disconnect()
    else:
        c = Client(broker, client_id="", version=version, clean=True)
        c.disconnect()
        s = raw(broker)
        s.sendall(connect_packet("", version=4, clean=False))
        first, body = recv_packet(s)
        assert first == 0x20 and body == b"\x00\x02"  # identifier rejected
        assert closed(s)


@VERSIONS
def test_session_takeover(broker, version):
    cid = uid("take")
    watcher = Client(broker, version=version)
    watcher.subscribe(cid + "/will", qos=1)
    a = Client(broker, client_id=cid, version=version, will=(cid + "/will", b"a gone", 1, False))
    b = Client(broker, client_id=cid, version=version)
    rc, _props = a.disconnects.get(timeout=5)
    if version == V5:
        assert rc.value == 0x8E  # session taken over
    assert watcher.get().payload == b"a gone"  # the server closed it: its will is published
    b.subscribe(cid + "/t", qos=1)
    b.publish(cid + "/t", b"still works", qos=1)
    assert b.get().payload == b"still works"
    b.disconnect()


def test_keep_alive_is_enforced_at_one_and_a_half(broker):
    s = raw(broker)
    s.sendall(connect_packet(uid("ka"), keepalive=1))
    assert recv_packet(s)[0] == 0x20
    start = time.monotonic()
    assert closed(s, timeout=5)
    took = time.monotonic() - start
    assert 1.2 <= took < 3.5, took
    # a client that pings stays connected
    s = raw(broker)
    s.sendall(connect_packet(uid("ka"), keepalive=1))
    assert recv_packet(s)[0] == 0x20
    for _ in range(4):
        time.sleep(0.6)
        s.sendall(b"\xc0\x00")
        assert recv_packet(s) == (0xD0, b"")
    s.close()


@VERSIONS
def test_authentication_hook(broker, version):
    c = Client(broker, version=version, username="bob", password="nope", connect=False)
    c.connect(expect_ok=False)
    rc = c.connack[1]
    assert rc.is_failure
    assert rc.value == 0x86  # paho reports the 3.1.1 return code 4 as 0x86 too
    c.c.loop_stop()
    ok = Client(broker, version=version, username="guest", password="guest")
    assert not ok.connack[1].is_failure
    ok.disconnect()


@VERSIONS
def test_persistent_session_keeps_messages_and_subscriptions(broker, version):
    cid = uid("p")
    t = uid("pt")
    a = Client(broker, client_id=cid, version=version, clean=False, expiry=3600)
    assert a.connack[0].session_present is False
    a.subscribe(t, qos=1)
    a.disconnect()
    pub = Client(broker, version=version)
    for i in range(5):
        pub.publish(t, str(i).encode(), qos=1)
    a = Client(broker, client_id=cid, version=version, clean=False, expiry=3600)
    assert a.connack[0].session_present is True
    assert [m.payload for m in a.get_n(5)] == [b"0", b"1", b"2", b"3", b"4"]
    a.disconnect()
    # a clean session throws it away
    c = Client(broker, client_id=cid, version=version, clean=True)
    assert c.connack[0].session_present is False
    pub.publish(t, b"gone", qos=1)
    assert c.none()
    c.disconnect()


def test_inflight_resent_with_dup_on_reconnect(broker):
    cid = uid("dup")
    t = uid("dt")
    s = raw(broker)
    s.sendall(connect_packet(cid, clean=False))
    assert recv_packet(s) == (0x20, b"\x00\x00")
    body = struct.pack(">H", 1) + s16(t) + b"\x01"
    s.sendall(bytes((0x82,)) + varint(len(body)) + body)
    assert recv_packet(s) == (0x90, b"\x00\x01\x01")
    pub = Client(broker, version=V3)
    for _ in range(2):  # acknowledged ones first, so the packet ids have moved on
        pub.publish(t, b"acked", qos=1)
        first, body = recv_packet(s)
        s.sendall(b"\x40\x02" + body[2 + len(t) : 4 + len(t)])
    pub.publish(t, b"unacked", qos=1)
    first, body = recv_packet(s)
    assert first == 0x32 and body.endswith(b"unacked")
    first_pid = body[2 + len(t) : 4 + len(t)]
    assert first_pid == b"\x00\x03"
    s.close()  # never acknowledged
    time.sleep(0.3)
    s = raw(broker)
    s.sendall(connect_packet(cid, clean=False))
    assert recv_packet(s) == (0x20, b"\x01\x00")
    first, body = recv_packet(s)
    assert first == 0x3A and body.endswith(b"unacked")  # DUP set on the resend
    pid = body[2 + len(t) : 4 + len(t)]
    assert pid == first_pid  # resent with its original packet identifier
    s.sendall(b"\x40\x02" + pid)
    s.sendall(b"\xe0\x00")
    s.close()


def test_qos2_inbound_exactly_once(broker):
    t = uid("eo")
    sub = Client(broker, version=V5)
    sub.subscribe(t, qos=2)
    s = raw(broker)
    s.sendall(connect_packet(uid("qos2")))
    assert recv_packet(s)[0] == 0x20
    body = s16(t) + struct.pack(">H", 7) + b"once"
    s.sendall(bytes((0x34,)) + varint(len(body)) + body)
    assert recv_packet(s) == (0x50, b"\x00\x07")
    # the same packet again (DUP), before PUBREL: acknowledged, not published again
    s.sendall(bytes((0x3C,)) + varint(len(body)) + body)
    assert recv_packet(s) == (0x50, b"\x00\x07")
    s.sendall(b"\x62\x02\x00\x07")
    assert recv_packet(s) == (0x70, b"\x00\x07")
    m = sub.get()
    assert (m.payload, m.qos) == (b"once", 2)
    assert sub.none()
    # after PUBREL the id is free again: a new message with it is a new message
    s.sendall(bytes((0x34,)) + varint(len(body)) + body)
    assert recv_packet(s) == (0x50, b"\x00\x07")
    assert sub.get().payload == b"once"
    s.close()


def test_session_expiry_v5(broker):
    cid = uid("exp")
    a = Client(broker, client_id=cid, version=V5, clean=False, expiry=1)
    a.subscribe(uid("e"), qos=1)
    a.disconnect()
    b = Client(broker, client_id=cid, version=V5, clean=False, expiry=1)
    assert b.connack[0].session_present is True
    b.disconnect()
    time.sleep(2.2)
    c = Client(broker, client_id=cid, version=V5, clean=False, expiry=1)
    assert c.connack[0].session_present is False
    c.disconnect()


def test_will_delay_v5(broker):
    t = uid("wd")
    watcher = Client(broker, version=V5)
    watcher.subscribe(t, qos=1)
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = 1
    cid = uid("wdc")
    # reconnecting within the delay cancels the will
    a = Client(
        broker, client_id=cid, version=V5, clean=False, expiry=60, will=(t, b"late", 1, False, wp)
    )
    a.drop()
    time.sleep(0.3)
    a2 = Client(broker, client_id=cid, version=V5, clean=False, expiry=60)
    assert watcher.none(1.3)
    # not reconnecting: the will comes after the delay
    a2.disconnect()
    b = Client(
        broker, client_id=uid("wdb"), version=V5, expiry=60, will=(t, b"delayed", 1, False, wp)
    )
    b.drop()
    start = time.monotonic()
    assert watcher.get(timeout=4).payload == b"delayed"
    assert time.monotonic() - start >= 0.7


@VERSIONS
def test_unsubscribe_and_v3_flags(broker, version):
    t = uid("u")
    c = Client(broker, version=version)
    c.subscribe(t, qos=1)
    c.unsubscribe(t)
    c.publish(t, b"x", qos=1)
    assert c.none()
    c.disconnect()


def test_second_client_is_served_after_errors(broker):
    # kept here as a smoke check; the full set of bad inputs is in test_mqtt_badinput.py
    s = raw(broker)
    s.sendall(b"\x30\x02\x00\x00")  # PUBLISH before CONNECT
    assert closed(s)
    c = Client(broker, version=V3)
    c.subscribe("ok/x", qos=0)
    c.publish("ok/x", b"y", qos=0)
    assert c.get().payload == b"y"
    c.disconnect()


def test_mqtt_3_1_clients_are_served(broker):
    from paho.mqtt.client import MQTTv31

    t = uid("v31")
    sub = Client(broker, version=MQTTv31)
    sub.subscribe(t, qos=1)
    pub = Client(broker, version=V5)
    pub.publish(t, b"old protocol", qos=1)
    m = sub.get()
    assert (m.payload, m.qos) == (b"old protocol", 1)
    sub.disconnect()


@VERSIONS
def test_large_payload_round_trip(broker, version):
    t = uid("big")
    sub = Client(broker, version=version)
    sub.subscribe(t, qos=1)
    pub = Client(broker, version=version)
    payload = bytes(range(256)) * (3 * 4096)  # 3 MiB, every byte value
    pub.publish(t, payload, qos=1)
    m = sub.get(timeout=15)
    assert m.payload == payload
    sub.disconnect()
    pub.disconnect()


def test_v5_clients_are_told_when_the_server_shuts_down(broker_factory):
    b = broker_factory(adapters=["mqtt"], store="memory")
    c5 = Client(b, version=V5)
    c3 = Client(b, version=V3)
    assert b.stop() == 0
    rc, _ = c5.disconnects.get(timeout=5)
    assert rc.value == 0x8B  # server shutting down
    c3.disconnects.get(timeout=5)  # 3.1.1 has no DISCONNECT from the server: just closed
