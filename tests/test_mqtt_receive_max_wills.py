"""MQTT 5: the server's Receive Maximum for QoS 1 publishes (raw frames and paho), and delayed
wills (Will Delay Interval) that survive ``kill -9`` of the broker (paho)."""

from __future__ import annotations

import struct
import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_mqtt_helpers import (
    V5,
    Client,
    closed,
    connect_packet,
    raw,
    recv_packet,
    s16,
    uid,
    varint,
)

RECEIVE_MAXIMUM = 10


def test_qos1_publishes_beyond_receive_maximum_disconnect_0x93(broker_factory):
    b = broker_factory(
        adapters=["mqtt"], settings={"adapters.mqtt.receive_maximum": RECEIVE_MAXIMUM}
    )
    t = uid("rm1t")
    # a persistent subscriber: each publish is written to the store before its PUBACK
    keeper = Client(b, version=V5, clean=False, expiry=600)
    keeper.subscribe(t, qos=1)
    s = raw(b)
    s.sendall(connect_packet(uid("rm1"), version=5))
    assert recv_packet(s)[0] == 0x20
    out = b""
    # 200 QoS 1 publishes at once: their PUBACKs wait for the store, so more than 10 are
    # unacknowledged when the broker reads them
    for pid in range(1, 201):
        body = s16(t) + struct.pack(">H", pid) + b"\x00" + b"x"
        out += bytes((0x32,)) + varint(len(body)) + body
    s.sendall(out)
    pkt = recv_packet(s)
    pubacks = 0
    while pkt is not None and pkt[0] == 0x40:
        pubacks += 1
        pkt = recv_packet(s)
    assert pubacks < 200
    assert pkt is not None and pkt[0] == 0xE0 and pkt[1][0] == 0x93, pkt
    assert closed(s)
    # the broker goes on serving others
    c = Client(b, version=V5)
    c.subscribe(t, qos=1)
    c.publish(t, b"still here", qos=1)
    assert c.get().payload == b"still here"


def test_paho_within_the_advertised_receive_maximum_and_beyond_it(broker_factory):
    b = broker_factory(
        adapters=["mqtt"], settings={"adapters.mqtt.receive_maximum": RECEIVE_MAXIMUM}
    )
    t = uid("rm2")
    sub = Client(b, version=V5, clean=False, expiry=600)  # persistent: PUBACKs wait for disk
    sub.subscribe(t, qos=1)
    probe = Client(b, version=V5)
    advertised = probe.connack[2].ReceiveMaximum
    probe.disconnect()
    assert advertised == RECEIVE_MAXIMUM
    # a client that keeps to the advertised window: everything is taken
    pub = Client(b, version=V5, connect=False)
    pub.c.max_inflight_messages_set(advertised)
    pub.connect()
    infos = [pub.publish(t, b"%d" % i, qos=1, wait=False) for i in range(300)]
    for info in infos:
        info.wait_for_publish(20)
        assert info.is_published()
    assert pub.disconnects.empty()
    got = sub.get_n(300, timeout=20)
    assert sorted(int(m.payload) for m in got) == list(range(300))
    # the same client without a window is disconnected with 0x93
    rude = Client(b, version=V5, connect=False)
    rude.c.max_inflight_messages_set(0)  # 0: unlimited
    rude.connect()
    for i in range(500):
        rude.publish(t, b"r%d" % i, qos=1, wait=False)
    rc, _ = rude.disconnects.get(timeout=10)
    # paho reports 0x93 when it reads the DISCONNECT before its next write fails
    assert rc.value in (0x93, 0x80), rc
    rude.c.loop_stop()
    assert "receive maximum exceeded" in b.log_text()


def _will_props(delay: int) -> Properties:
    p = Properties(PacketTypes.WILLMESSAGE)
    p.WillDelayInterval = delay
    return p


def _persistent_subscriber(b, topic: str) -> str:
    """A subscriber session kept by the broker (its queue is durable): it gets the will
    whenever the will is published, even before it reconnects after the restart."""
    cid = uid("ws")
    sub = Client(b, client_id=cid, version=V5, clean=False, expiry=600)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    return cid


def _resume(b, cid: str) -> Client:
    return Client(b, client_id=cid, version=V5, clean=False, expiry=600)


def _connect_with_will(b, topic: str, delay: int) -> Client:
    c = Client(
        b,
        client_id=uid("w"),
        version=V5,
        clean=False,
        expiry=600,
        will=(topic, b"gone", 1, False, _will_props(delay)),
    )
    # a QoS 1 round trip: its PUBACK waits for the store, so the will record is durable too
    c.publish(uid("sync"), b"x", qos=1)
    return c


def test_will_of_a_client_connected_at_a_crash_is_published_after_the_restart(broker_factory):
    b = broker_factory(adapters=["mqtt"])
    t = uid("will1")
    sid = _persistent_subscriber(b, t)
    c = _connect_with_will(b, t, 3)
    c.c.loop_stop()  # no reconnect by paho: the connection just ends with the broker
    b.kill9()
    b.start()
    started = time.monotonic()
    sub = _resume(b, sid)
    m = sub.get(timeout=10)
    waited = time.monotonic() - started
    assert m.payload == b"gone" and m.topic == t
    assert waited >= 2.7, waited  # its delay counts from the connection's end (the restart)
    assert sub.none(1.0)  # once


def test_will_waiting_at_a_crash_keeps_its_due_time(broker_factory):
    b = broker_factory(adapters=["mqtt"])
    t = uid("will2")
    sid = _persistent_subscriber(b, t)
    c = _connect_with_will(b, t, 4)
    dropped = time.monotonic()
    c.drop()  # the will is now waiting out its delay
    time.sleep(1.0)
    b.kill9()
    restarted = time.monotonic()
    b.start()
    sub = _resume(b, sid)
    m = sub.get(timeout=10)
    got = time.monotonic()
    assert m.payload == b"gone"
    assert got - dropped >= 3.7, got - dropped  # not before its time
    # due 4 s after the drop, not 4 s after the restart
    assert got - restarted < 3.5 or got - dropped < 4.6, (got - dropped, got - restarted)


def test_will_cancelled_when_the_client_returns_after_a_crash(broker_factory):
    b = broker_factory(adapters=["mqtt"])
    t = uid("will3")
    sid = _persistent_subscriber(b, t)
    c = _connect_with_will(b, t, 3)
    cid = c.client_id
    c.c.loop_stop()
    b.kill9()
    b.start()
    sub = _resume(b, sid)
    back = Client(b, client_id=cid, version=V5, clean=False, expiry=600)
    assert back.connack[0].session_present
    assert sub.none(4.5)  # the session continued: no will
    back.disconnect()
