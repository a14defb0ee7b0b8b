"""Malformed and hostile input: each gets its reason code or a closed connection, and the
broker keeps serving everybody else."""

from __future__ import annotations

import struct
import time

import pytest
from conftest import module_broker
from test_mqtt_helpers import (
    V3,
    Client,
    closed,
    connect_packet,
    raw,
    recv_packet,
    s16,
    start_broker,
    uid,
    varint,
)

BOTH = pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    settings = {"adapters.mqtt.max_packet_size": 65536, "adapters.mqtt.handshake_timeout": 1.0}
    with module_broker(
        tmp_path_factory, "mqttbroker", ["mqtt"], store="memory", settings=settings
    ) as b:
        yield b


@pytest.fixture
def bystander(broker):
    """A well-behaved client connected before the bad one; it must keep working after."""
    c = Client(broker, version=V3)
    t = uid("by")
    c.subscribe(t, qos=1)
    yield c
    p = Client(broker, version=V3)
    p.publish(t, b"still here", qos=1)
    assert c.get().payload == b"still here"
    p.disconnect()
    c.disconnect()


def connected(broker, level):
    s = raw(broker)
    s.sendall(connect_packet(uid("bad"), version=level))
    first, _ = recv_packet(s)
    assert first == 0x20
    return s


def expect_refusal(s, level, reason):
    """5.0: DISCONNECT with ``reason`` then close; 3.1.1: close."""
    if level == 5:
        pkt = recv_packet(s)
        assert pkt is not None and pkt[0] == 0xE0, pkt
        assert pkt[1][0] == reason, hex(pkt[1][0])
    assert closed(s)


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def publish(topic: bytes, payload: bytes = b"x", level: int = 4) -> bytes:
    body = struct.pack(">H", len(topic)) + topic + (b"\x00" if level == 5 else b"") + payload
    return packet(0x30, body)


@BOTH
def test_remaining_length_over_four_bytes(broker, bystander, level):
    s = connected(broker, level)
    s.sendall(b"\x30\xff\xff\xff\xff\x7f")
    expect_refusal(s, level, 0x81)


def test_remaining_length_over_four_bytes_before_connect(broker, bystander):
    s = raw(broker)
    s.sendall(b"\x10\xff\xff\xff\xff\x01")
    assert closed(s)


def test_huge_connect_is_refused_before_it_is_buffered(broker, bystander):
    s = raw(broker)
    s.sendall(b"\x10" + varint(200_000_000) + b"\x00" * 1000)
    assert closed(s, timeout=3)


@pytest.mark.parametrize(
    "first",
    [b"\x30\x02\x00\x00", b"\x82\x06\x00\x01\x00\x01a\x00", b"\xc0\x00", b"\x20\x02\x00\x00"],
    ids=["publish", "subscribe", "pingreq", "connack"],
)
def test_packet_before_connect(broker, bystander, first):
    s = raw(broker)
    s.sendall(first)
    assert recv_packet(s) is None  # closed, nothing sent


@BOTH
def test_second_connect(broker, bystander, level):
    s = connected(broker, level)
    s.sendall(connect_packet(uid("again"), version=level))
    expect_refusal(s, level, 0x82)


@BOTH
@pytest.mark.parametrize("first", [0x00, 0xF0], ids=["type0", "type15"])
def test_reserved_packet_type(broker, bystander, level, first):
    s = connected(broker, level)
    s.sendall(bytes((first, 0)))
    expect_refusal(s, level, 0x81 if first == 0 else 0x82)


@BOTH
def test_server_only_packet_from_client(broker, bystander, level):
    s = connected(broker, level)
    s.sendall(b"\x20\x02\x00\x00")  # CONNACK
    expect_refusal(s, level, 0x82)


@BOTH
@pytest.mark.parametrize("topic", [b"a/+/b", b"a/#", b"#"], ids=["plus", "hash", "bare"])
def test_wildcard_in_publish_topic(broker, bystander, level, topic):
    s = connected(broker, level)
    s.sendall(publish(topic, level=level))
    expect_refusal(s, level, 0x90)


@BOTH
def test_invalid_utf8_in_publish_topic(broker, bystander, level):
    s = connected(broker, level)
    s.sendall(publish(b"a/\xff\xfe/b", level=level))
    expect_refusal(s, level, 0x90)


@BOTH
def test_invalid_utf8_in_subscribe_filter(broker, bystander, level):
    s = connected(broker, level)
    body = struct.pack(">H", 1) + (b"\x00" if level == 5 else b"") + s16(b"x/\xc3\x28") + b"\x01"
    s.sendall(packet(0x82, body))
    expect_refusal(s, level, 0x81)


@BOTH
def test_zero_length_topic(broker, bystander, level):
    s = connected(broker, level)
    s.sendall(publish(b"", level=level))
    expect_refusal(s, level, 0x90)


@BOTH
def test_packet_over_maximum_size(broker, bystander, level):
    s = connected(broker, level)
    s.sendall(b"\x30" + varint(70000))  # the header alone is enough to refuse it
    expect_refusal(s, level, 0x95)


@BOTH
def test_bad_fixed_header_flags(broker, bystander, level):
    s = connected(broker, level)
    body = struct.pack(">H", 1) + (b"\x00" if level == 5 else b"") + s16("a") + b"\x00"
    s.sendall(packet(0x80, body))  # SUBSCRIBE must have flags 0b0010
    expect_refusal(s, level, 0x81)


@BOTH
def test_qos3_publish(broker, bystander, level):
    s = connected(broker, level)
    body = s16("a") + b"\x00\x01" + (b"\x00" if level == 5 else b"") + b"x"
    s.sendall(packet(0x36, body))
    expect_refusal(s, level, 0x81)


def test_deep_filter_does_not_recurse(broker, bystander):
    c = Client(broker, version=V3)
    deep = "/".join(["a"] * 20000) + "/#"
    c.subscribe(deep, qos=0)
    c.publish("/".join(["a"] * 20001), b"deep", qos=0)
    assert c.get().payload == b"deep"
    c.disconnect()


def test_repeated_qos2_same_id_without_pubrel(broker, bystander):
    t = uid("q2rep")
    sub = Client(broker, version=V3)
    sub.subscribe(t, qos=2)
    s = connected(broker, 4)
    body = s16(t) + struct.pack(">H", 9) + b"same"
    for _ in range(200):
        s.sendall(packet(0x34, body))
    for _ in range(200):
        assert recv_packet(s) == (0x50, b"\x00\x09")
    assert sub.get().payload == b"same"
    assert sub.none(0.3)
    s.close()


def test_silent_connection_is_closed_after_connect_timeout(broker, bystander):
    s = raw(broker)
    assert closed(s, timeout=4)


def test_unsupported_protocol_level(broker, bystander):
    s = raw(broker)
    body = s16("MQTT") + b"\x06\x02\x00\x3c\x00\x00" + s16("x") + b"\xff\xff"
    s.sendall(packet(0x10, body))
    assert recv_packet(s) == (0x20, b"\x00\x01")  # unacceptable protocol version
    assert closed(s)
    s = raw(broker)
    s.sendall(packet(0x10, s16("HTTP") + b"\x04\x02\x00\x3c" + s16("x")))
    assert recv_packet(s) is None  # not MQTT at all: just closed


def test_connection_caps(broker_factory):
    b = broker_factory(
        adapters=["mqtt"], store="memory", settings={"adapters.mqtt.max_connections_per_host": 2}
    )
    a1, a2 = raw(b), raw(b)
    for s in (a1, a2):
        s.sendall(connect_packet(uid("cap")))
        assert recv_packet(s)[0] == 0x20
    third = raw(b)
    assert closed(third)  # over the per-address cap
    a1.close()
    time.sleep(0.3)
    again = raw(b)
    again.sendall(connect_packet(uid("cap")))
    assert recv_packet(again)[0] == 0x20  # a slot was freed


@BOTH
def test_a_large_publish_in_the_same_read_as_connect_is_accepted(tmp_path_factory, level):
    """CONNECT is capped at max_connect_size; a PUBLISH riding in the same read is measured
    against the session's limit (here the default 16 MiB + 64 KiB), not CONNECT's."""
    b = start_broker(tmp_path_factory, store="memory")
    try:
        sub = Client(b, version=level)
        t = uid("big")
        sub.subscribe(t, qos=0)
        payload = bytes(range(256)) * 1200  # 300 KiB, over the 256 KiB CONNECT cap
        s = raw(b)
        s.sendall(connect_packet(uid("pub"), version=level) + publish(t.encode(), payload, level))
        first, _ = recv_packet(s)
        assert first == 0x20
        got = sub.get()
        assert got.payload == payload
        s.close()
        sub.disconnect()
    finally:
        b.stop()
