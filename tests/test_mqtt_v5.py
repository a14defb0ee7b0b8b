"""MQTT 5.0 features with paho-mqtt (and raw frames where a client must misbehave)."""

from __future__ import annotations

import struct
import time

import pytest
from conftest import module_broker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from test_mqtt_helpers import (
    V3,
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


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    settings = {
        "adapters.mqtt.max_keep_alive": 30,
        "adapters.mqtt.max_packet_size": 8192,
        "adapters.mqtt.topic_alias_maximum": 5,
        "adapters.mqtt.receive_maximum": 50,
    }
    with module_broker(
        tmp_path_factory, "mqttbroker", ["mqtt"], store="sqlite", settings=settings
    ) as b:
        yield b


def props(kind=PacketTypes.PUBLISH, **kw) -> Properties:
    p = Properties(kind)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_connack_properties_and_server_keep_alive(broker):
    c = Client(broker, version=V5, keepalive=100)
    p = c.connack[2]
    assert p.ServerKeepAlive == 30
    assert p.MaximumPacketSize == 8192
    assert p.TopicAliasMaximum == 5
    assert p.ReceiveMaximum == 50
    assert p.SharedSubscriptionAvailable == 1
    assert p.SubscriptionIdentifierAvailable == 1
    c.disconnect()
    c = Client(broker, version=V5, keepalive=10)
    assert not hasattr(c.connack[2], "ServerKeepAlive")
    c.disconnect()


def test_publish_properties_round_trip(broker):
    t = uid("props")
    sub = Client(broker, version=V5)
    sub.subscribe(t, qos=1)
    pub = Client(broker, version=V5)
    p = props(
        ContentType="application/json",
        ResponseTopic="reply/here",
        CorrelationData=b"\x00\xffbin",
        PayloadFormatIndicator=1,
        MessageExpiryInterval=3600,
        UserProperty=[("a", "1"), ("b", "2"), ("a", "3")],
    )
    pub.publish(t, b'{"x": 1}', qos=1, properties=p)
    m = sub.get()
    mp = m.properties
    assert mp.ContentType == "application/json"
    assert mp.ResponseTopic == "reply/here"
    assert mp.CorrelationData == b"\x00\xffbin"
    assert mp.PayloadFormatIndicator == 1
    assert 3590 <= mp.MessageExpiryInterval <= 3600
    assert mp.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")]  # order and repeats kept
    # utf-8 correlation data also round-trips (it becomes the core correlation_id)
    pub.publish(t, b"2", qos=0, properties=props(CorrelationData=b"req-42"))
    assert sub.get().properties.CorrelationData == b"req-42"
    # a 3.1.1 subscriber gets the same payload without properties
    s3 = Client(broker, version=V3)
    s3.subscribe(t, qos=1)
    pub.publish(t, b"plain", qos=1, properties=p)
    assert s3.get().payload == b"plain"


def test_message_expiry_drops_stale_queued_messages(broker):
    cid, t = uid("mexp"), uid("mexpt")
    a = Client(broker, client_id=cid, version=V5, clean=False, expiry=600)
    a.subscribe(t, qos=1)
    a.disconnect()
    pub = Client(broker, version=V5)
    pub.publish(t, b"short", qos=1, properties=props(MessageExpiryInterval=1))
    pub.publish(t, b"long", qos=1, properties=props(MessageExpiryInterval=100))
    time.sleep(1.5)
    a = Client(broker, client_id=cid, version=V5, clean=False, expiry=600)
    m = a.get()
    assert m.payload == b"long"
    assert m.properties.MessageExpiryInterval <= 99
    assert a.none()
    a.disconnect()


def test_puback_reason_no_matching_subscribers(broker):
    pub = Client(broker, version=V5)
    seen = []
    pub.c.on_publish = lambda c, u, mid, rc, p: seen.append(rc)
    pub.publish(uid("nobody"), b"x", qos=1)
    assert seen and seen[0].value == 0x10
    pub.disconnect()


def test_topic_alias_inbound(broker):
    t = uid("alias")
    sub = Client(broker, version=V5)
    sub.subscribe(t, qos=1)
    pub = Client(broker, version=V5)
    pub.publish(t, b"first", qos=1, properties=props(TopicAlias=3))
    pub.publish("", b"second", qos=1, properties=props(TopicAlias=3))
    got = sub.get_n(2)
    assert [(m.topic, m.payload) for m in got] == [(t, b"first"), (t, b"second")]
    # an alias above the maximum is a protocol error (0x94)
    pub.publish(t, b"bad", qos=0, properties=props(TopicAlias=6))
    rc, _ = pub.disconnects.get(timeout=5)
    assert rc.value == 0x94


def test_topic_alias_outbound(broker):
    t = uid("oalias")
    cp = Properties(PacketTypes.CONNECT)
    cp.TopicAliasMaximum = 2
    sub = Client(broker, version=V5, properties=cp)
    sub.subscribe(t, qos=1)
    pub = Client(broker, version=V5)
    pub.publish(t, b"1", qos=1)
    pub.publish(t, b"2", qos=1)
    a, b = sub.get_n(2)
    assert a.topic == t and a.properties.TopicAlias == 1
    # paho does not resolve aliases: the second carries only the alias
    assert b.topic == "" and b.properties.TopicAlias == 1


def test_receive_maximum_is_consumer_credit(broker):
    t = uid("rm")
    s = raw(broker)
    cprops = b"\x03\x21\x00\x02"  # receive maximum 2
    s.sendall(connect_packet(uid("rmc"), version=5, props=cprops))
    assert recv_packet(s)[0] == 0x20
    body = struct.pack(">H", 1) + b"\x00" + s16(t) + b"\x01"
    s.sendall(bytes((0x82,)) + varint(len(body)) + body)
    assert recv_packet(s)[0] == 0x90
    pub = Client(broker, version=V3)
    for i in range(5):
        pub.publish(t, f"{i}".encode(), qos=1)
    pids = []
    for _ in range(2):
        first, body = recv_packet(s)
        assert first & 0xF0 == 0x30
        pids.append(body[2 + len(t) : 4 + len(t)])
    with pytest.raises(TimeoutError):  # nothing more until an acknowledgement
        recv_packet(s, timeout=0.5)
    s.sendall(b"\x40\x02" + pids[0])
    first, body = recv_packet(s)
    assert body.endswith(b"2")
    s.close()


def test_maximum_packet_size_both_directions(broker):
    t = uid("mps")
    cp = Properties(PacketTypes.CONNECT)
    cp.MaximumPacketSize = 200
    sub = Client(broker, version=V5, properties=cp)
    sub.subscribe(t, qos=1)
    pub = Client(broker, version=V5)
    pub.publish(t, b"x" * 500, qos=1)  # too big for the subscriber: not sent
    pub.publish(t, b"small", qos=1)
    assert sub.get().payload == b"small"
    assert sub.none(0.3)
    # over the server's maximum: DISCONNECT 0x95
    pub.publish(t, b"y" * 9000, qos=0, wait=False)
    rc, _ = pub.disconnects.get(timeout=5)
    assert rc.value == 0x95


def test_no_local_and_retain_as_published(broker):
    t = uid("nl")
    c = Client(broker, version=V5)
    c.subscribe(t + "/nl", options=SubscribeOptions(qos=1, noLocal=True))
    c.subscribe(t + "/rap", options=SubscribeOptions(qos=1, retainAsPublished=True))
    c.publish(t + "/nl", b"own", qos=1)
    other = Client(broker, version=V5)
    other.publish(t + "/nl", b"theirs", qos=1)
    assert c.get().payload == b"theirs"
    c.publish(t + "/rap", b"kept", qos=1, retain=True)
    m = c.get()
    assert (m.payload, m.retain) == (b"kept", True)
    plain = Client(broker, version=V5)
    plain.subscribe(t + "/x", qos=1)
    other.publish(t + "/x", b"r", qos=1, retain=True)
    assert plain.get().retain is False


def test_retain_handling(broker):
    t = uid("rh")
    pub = Client(broker, version=V5)
    pub.publish(t, b"ret", qos=1, retain=True)
    c = Client(broker, version=V5)
    c.subscribe(t, options=SubscribeOptions(qos=1, retainHandling=2))
    assert c.none(0.4)  # 2: never send retained
    d = Client(broker, version=V5)
    d.subscribe(t, options=SubscribeOptions(qos=1, retainHandling=1))
    assert d.get().payload == b"ret"
    d.subscribe(t, options=SubscribeOptions(qos=1, retainHandling=1))
    assert d.none(0.4)  # 1: only for a new subscription
    d.subscribe(t, options=SubscribeOptions(qos=1, retainHandling=0))
    assert d.get().payload == b"ret"  # 0: every time


def test_subscription_identifiers(broker):
    t = uid("sid")
    c = Client(broker, version=V5)
    c.subscribe(t + "/#", qos=1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    c.subscribe(t + "/+", qos=1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=9))
    pub = Client(broker, version=V5)
    pub.publish(t + "/a", b"both", qos=1)
    m = c.get()
    assert sorted(m.properties.SubscriptionIdentifier) == [7, 9]
    pub.publish(t + "/a/b", b"one", qos=0)
    assert c.get().properties.SubscriptionIdentifier == [7]


def test_shared_subscription_round_robin(broker):
    t = uid("share")
    members = [Client(broker, version=V5) for _ in range(2)]
    for m in members:
        m.subscribe(f"$share/g1/{t}/#", qos=1)
    other_group = Client(broker, version=V3)
    other_group.subscribe(f"$share/g2/{t}/#", qos=1)
    plain = Client(broker, version=V5)
    plain.subscribe(f"{t}/#", qos=1)
    pub = Client(broker, version=V5)
    for i in range(10):
        pub.publish(f"{t}/x", str(i).encode(), qos=1)
    a = members[0].get_n(5)
    b = members[1].get_n(5)
    assert len(a) == 5 and len(b) == 5
    assert sorted(int(m.payload) for m in a + b) == list(range(10))
    assert len(other_group.get_n(10)) == 10
    assert len(plain.get_n(10)) == 10
    # a member leaves: the other gets everything
    members[0].unsubscribe(f"$share/g1/{t}/#")
    for _ in range(4):
        pub.publish(f"{t}/x", b"after", qos=1)
    assert len(members[1].get_n(4)) == 4
    assert members[0].none(0.3)


def test_reason_string_on_refusal(broker):
    c = Client(broker, version=V5, username="mallory", password="x", connect=False)
    c.connect(expect_ok=False)
    assert c.connack[1].value == 0x86
    # the reason says why without telling whether the user exists
    assert c.connack[2].ReasonString == "bad user name or password"
    c.c.loop_stop()


def test_invalid_filter_gets_reason_code(broker):
    s = raw(broker)
    s.sendall(connect_packet(uid("badf"), version=5))
    assert recv_packet(s)[0] == 0x20
    body = struct.pack(">H", 3) + b"\x00" + s16("a/#/b") + b"\x01" + s16("ok/+") + b"\x01"
    s.sendall(bytes((0x82,)) + varint(len(body)) + body)
    assert recv_packet(s) == (0x90, b"\x00\x03\x00\x8f\x01")
    body = struct.pack(">H", 4) + b"\x00" + s16("never/subscribed")
    s.sendall(bytes((0xA2,)) + varint(len(body)) + body)
    assert recv_packet(s) == (0xB0, b"\x00\x04\x00\x11")
    s.sendall(b"\xe0\x00")
    assert closed(s)


def test_disconnect_with_will_and_session_expiry_update(broker):
    t = uid("dww")
    watcher = Client(broker, version=V5)
    watcher.subscribe(t, qos=1)
    a = Client(broker, version=V5, will=(t, b"asked for it", 1, True))
    dp = Properties(PacketTypes.DISCONNECT)
    a.c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=0x04), properties=dp)
    m = watcher.get()
    assert m.payload == b"asked for it"
    # the will was retained
    late = Client(broker, version=V5)
    late.subscribe(t, qos=1)
    assert late.get().retain is True
    # a persistent session ended by DISCONNECT with session expiry 0 is gone at once
    cid = uid("dse")
    b = Client(broker, client_id=cid, version=V5, clean=False, expiry=600)
    b.subscribe(uid("x"), qos=1)
    b.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    time.sleep(0.2)
    b2 = Client(broker, client_id=cid, version=V5, clean=False, expiry=600)
    assert b2.connack[0].session_present is False
    b2.disconnect()


def test_enhanced_auth_is_refused_with_bad_auth_method(broker):
    c = Client(
        broker,
        version=V5,
        connect=False,
        properties=props(PacketTypes.CONNECT, AuthenticationMethod="SCRAM-SHA-1"),
    )
    c.connect(expect_ok=False)
    assert c.connack[1].value == 0x8C
    c.c.loop_stop()


def test_retained_message_expires(broker):
    t = uid("rexp")
    pub = Client(broker, version=V5)
    pub.publish(t, b"brief", qos=1, retain=True, properties=props(MessageExpiryInterval=1))
    time.sleep(1.3)
    c = Client(broker, version=V5)
    c.subscribe(t, qos=1)
    assert c.none(0.4)


def test_server_receive_maximum_enforced(broker):
    s = raw(broker)
    s.sendall(connect_packet(uid("rmx"), version=5))
    assert recv_packet(s)[0] == 0x20
    t = uid("rmxt")
    out = b""
    for pid in range(1, 52):  # receive maximum is 50: the 51st QoS 2 in flight is too many
        body = s16(t) + struct.pack(">H", pid) + b"\x00" + b"x"
        out += bytes((0x34,)) + varint(len(body)) + body
    s.sendall(out)
    pkt = recv_packet(s)
    pubrecs = 0
    while pkt is not None and pkt[0] == 0x50:  # PUBRECs may or may not precede the refusal
        pubrecs += 1
        pkt = recv_packet(s)
    assert pubrecs <= 50
    assert pkt[0] == 0xE0 and pkt[1][0] == 0x93
    assert closed(s)


def test_unknown_pubrel_and_problem_information(broker):
    s = raw(broker)
    s.sendall(connect_packet(uid("pr"), version=5, props=b"\x02\x17\x00"))  # no problem info
    assert recv_packet(s)[0] == 0x20
    s.sendall(b"\x62\x02\x00\x33")  # PUBREL for an id never used
    first, body = recv_packet(s)
    assert first == 0x70 and body[:3] == b"\x00\x33\x92"
    s.sendall(b"\x30\x04\x00\x01#\x00")  # wildcard topic: DISCONNECT 0x90 without a reason string
    assert recv_packet(s) == (0xE0, b"\x90\x00")
    assert closed(s)


def test_shared_subscription_keeps_messages_for_persistent_members(broker):
    t = uid("shp")
    cid = uid("shm")
    m = Client(broker, client_id=cid, version=V5, clean=False, expiry=600)
    m.subscribe(f"$share/gp/{t}", qos=1)
    m.disconnect()
    pub = Client(broker, version=V5)
    for i in range(3):
        pub.publish(t, str(i).encode(), qos=1)
    m = Client(broker, client_id=cid, version=V5, clean=False, expiry=600)
    assert [x.payload for x in m.get_n(3)] == [b"0", b"1", b"2"]
    # ending the last member's session removes the group's queue: nothing piles up
    m.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    time.sleep(0.2)
    pub.publish(t, b"nobody", qos=1)
    m = Client(broker, client_id=cid, version=V5, clean=False, expiry=600)
    m.subscribe(f"$share/gp/{t}", qos=1)
    assert m.none(0.4)


def test_dropped_oversize_message_does_not_spend_a_topic_alias(broker):
    t = uid("adrop")
    cp = Properties(PacketTypes.CONNECT)
    cp.TopicAliasMaximum = 2
    cp.MaximumPacketSize = 200
    sub = Client(broker, version=V5, properties=cp)
    sub.subscribe(t, qos=1)
    pub = Client(broker, version=V5)
    pub.publish(t, b"z" * 400, qos=1)  # dropped: over the subscriber's maximum
    pub.publish(t, b"fits", qos=1)
    m = sub.get()
    assert (m.topic, m.payload) == (t, b"fits")  # the alias is introduced with its topic
