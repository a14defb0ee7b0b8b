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


def test_a_missing_dead_letter_exchange_drops_dead_letters_and_hurts_nobody(broker_factory):
    import pika

    broker = broker_factory(adapters=["amqp", "mqtt"], store="memory")
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    # a trap: every amq.topic message lands in a one-message queue whose DLX does not exist
    ch.queue_declare("trap", arguments={"x-dead-letter-exchange": "nope", "x-max-length": 1})
    ch.queue_bind("trap", "amq.topic", "#")
    # a queue whose messages expire into the same missing DLX
    ch.queue_declare("ttl", arguments={"x-dead-letter-exchange": "nope", "x-message-ttl": 200})
    sub = Client(broker, version=V3)
    topic = uid("dlx")
    sub.subscribe(topic, qos=1)
    pub = Client(broker, version=V3)
    for i in range(10):
        pub.publish(topic, b"%d" % i, qos=1)  # overflow of "trap" dead-letters each one
    assert [m.payload for m in sub.get_n(10)] == [b"%d" % i for i in range(10)]
    assert pub.c.is_connected()
    # expiry keeps working: the queue empties although its DLX is missing
    for _ in range(5):
        ch.basic_publish("", "ttl", b"x")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ch.queue_declare("ttl", passive=True).method.message_count == 0:
            break
        time.sleep(0.1)
    assert ch.queue_declare("ttl", passive=True).method.message_count == 0
    # a nack without requeue dead-letters into nowhere, and the channel stays open
    ch.queue_declare("rej", arguments={"x-dead-letter-exchange": "nope"})
    ch.basic_publish("", "rej", b"reject me")
    method, _, body = ch.basic_get("rej")
    assert body == b"reject me"
    ch.basic_nack(method.delivery_tag, requeue=False)
    ch.basic_publish("", "rej", b"next")
    method, _, body = ch.basic_get("rej")
    assert body == b"next" and ch.is_open
    assert broker.log_text().count("dead-letter exchange 'nope' does not exist") <= 3
    conn.close()
    for c in (pub, sub):
        c.disconnect()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_qos0_subscriber_that_never_reads_costs_bounded_memory(broker_factory):
    import struct

    from test_mqtt_helpers import connect_packet, raw, recv_packet, s16, varint

    broker = broker_factory(adapters=["mqtt"], store="memory")
    topic = uid("slow")
    # a subscriber that subscribes at QoS 0 to everything and then never reads its socket
    slow = raw(broker)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(connect_packet(uid("slow"), version=4))
    assert recv_packet(slow)[0] == 0x20
    body = struct.pack(">H", 1) + s16(topic + "/#") + b"\x00"
    slow.sendall(b"\x82" + varint(len(body)) + body)
    assert recv_packet(slow)[0] == 0x90
    # a well-behaved subscriber of the markers the publisher sends between bursts
    reader = Client(broker, version=V3)
    reader.subscribe(topic + "/mark", qos=1)
    pub = Client(broker, version=V3)
    before = _rss_mb(broker.pid)
    payload = b"x" * 2048
    n = 60000  # about 120 MB published to the subscriber that does not read
    for i in range(n):
        pub.publish(topic + "/data", payload, qos=0, wait=False)
        if i % 5000 == 4999:
            pub.publish(topic + "/mark", b"%d" % i, qos=1)  # paces the client
    marks = [m.payload for m in reader.get_n(n // 5000, timeout=30)]
    after = _rss_mb(broker.pid)
    assert marks == [b"%d" % i for i in range(4999, n, 5000)]  # served throughout
    assert after - before < 60, (before, after)  # what waits for the non-reader is bounded
    assert broker.running
    slow.close()
    for c in (pub, reader):
        c.disconnect()


def test_partial_frames_are_bounded_across_connections(broker_factory):
    import struct

    from test_mqtt_helpers import connect_packet, raw, recv_packet, varint

    broker = broker_factory(
        adapters=["mqtt"],
        store="memory",
        settings={"limits.max_partial_frame_bytes": 20 * 1024 * 1024},
    )
    sub = Client(broker, version=V3)
    topic = uid("partial")
    sub.subscribe(topic, qos=1)
    held = []
    size = 15 * 1024 * 1024
    head_body = struct.pack(">H", len(topic)) + topic.encode()
    for _i in range(3):
        s = raw(broker, timeout=10)
        s.sendall(connect_packet(uid("big"), version=4))
        assert recv_packet(s)[0] == 0x20
        s.sendall(b"\x30" + varint(len(head_body) + size) + head_body)
        s.sendall(b"y" * (8 * 1024 * 1024))  # more than half of the frame, never the rest
        held.append(s)
        time.sleep(0.3)
    # 24 MiB held in all: the connection whose bytes took the total over 20 MiB is closed
    # (the third, unless a loaded machine read them in another order), the other two are not
    deadline = time.monotonic() + 15
    closed: set[int] = set()
    while time.monotonic() < deadline and not closed:
        for i, s in enumerate(held):
            if _closed_by_peer(s, 0.2):
                closed.add(i)
    time.sleep(1)
    closed |= {i for i, s in enumerate(held) if _closed_by_peer(s, 0.2)}
    assert len(closed) == 1, closed
    pub = Client(broker, version=V3)
    pub.publish(topic, b"still served", qos=1)
    assert sub.get(timeout=10).payload == b"still served"
    assert "max_partial_frame_bytes" in broker.log_text()
    for s in held:
        s.close()
    for c in (pub, sub):
        c.disconnect()


def test_memory_taken_by_a_backlog_is_given_back_after_it_drains(broker_factory):
    import pika

    broker = broker_factory(adapters=["amqp"], store="memory")
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    ch.queue_declare("backlog")
    base = _rss_mb(broker.pid)
    body = b"b" * 4096
    for _ in range(50_000):  # about 200 MB held by the queue
        ch.basic_publish("", "backlog", body)
    assert ch.queue_declare("backlog", passive=True).method.message_count == 50_000
    peak = _rss_mb(broker.pid)
    assert peak - base > 150, (base, peak)
    got = 0
    for method, _props, _body in ch.consume("backlog", auto_ack=True, inactivity_timeout=2):
        if method is None:
            break
        got += 1
    assert got == 50_000
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _rss_mb(broker.pid) - base > 60:
        time.sleep(1)
    after = _rss_mb(broker.pid)
    assert after - base < 60, (base, peak, after)  # the allocator gave the pages back
    conn.close()
