"""Bad input over a raw socket: the right AMQP error, only that connection closed, others served.

The frames are built by hand here (with the codec for the well-formed parts), since no real
client can be made to send them; every test then checks a real client (pika) still works.
"""

from __future__ import annotations

import socket
import struct
import time

import pika
import pytest
from conftest import module_broker
from wire import peer_closed

from polymq.adapters.amqp import codec as C


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    settings = {"adapters.amqp.frame_max": 8192, "adapters.amqp.handshake_timeout": 3}
    with module_broker(
        tmp_path_factory, "amqp_raw", ["amqp"], log_level="info", settings=settings
    ) as b:
        yield b


class Raw:
    def __init__(self, broker, heartbeat=0):
        self.sock = socket.create_connection((broker.host, broker.port("amqp")), timeout=5)
        self.buf = b""
        self.heartbeat = heartbeat

    def send(self, data):
        self.sock.sendall(data)

    def read_frame(self):
        while True:
            if len(self.buf) >= 7:
                ftype, ch, size = struct.unpack(">BHI", self.buf[:7])
                if len(self.buf) >= 8 + size:
                    payload = self.buf[7 : 7 + size]
                    assert self.buf[7 + size] == C.FRAME_END
                    self.buf = self.buf[8 + size :]
                    return ftype, ch, payload
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data

    def read_method(self):
        while True:
            ftype, ch, payload = self.read_frame()
            if ftype == C.FRAME_METHOD:
                spec, args = C.decode_method(payload)
                return ch, spec.name, args

    def handshake(self):
        self.send(C.PROTOCOL_HEADER)
        assert self.read_method()[1] == "connection.start"
        self.send(
            C.method_frame(
                0,
                "connection.start-ok",
                client_properties={},
                mechanism="PLAIN",
                response=b"\x00guest\x00guest",
            )
        )
        _, name, tune = self.read_method()
        assert name == "connection.tune"
        self.send(
            C.method_frame(
                0,
                "connection.tune-ok",
                channel_max=tune["channel_max"],
                frame_max=tune["frame_max"],
                heartbeat=self.heartbeat,
            )
        )
        self.send(C.method_frame(0, "connection.open", virtual_host="/"))
        assert self.read_method()[1] == "connection.open-ok"
        self.send(C.method_frame(1, "channel.open"))
        assert self.read_method()[1] == "channel.open-ok"
        return tune

    def expect_close(self, code, channel=0):
        while True:
            ch, name, args = self.read_method()
            if name in ("connection.close", "channel.close"):
                assert (name, ch, args["reply_code"]) == (
                    "connection.close" if channel == 0 else "channel.close",
                    channel,
                    code,
                ), args
                return args

    def closed(self, timeout=5.0):
        """True once the server has closed the socket."""
        return peer_closed(self.sock, timeout)

    def close(self):
        self.sock.close()


def still_serving(broker):
    c = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    try:
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"ok")
        assert ch.basic_get(q, auto_ack=True)[2] == b"ok"
    finally:
        c.close()


def publish_frames(channel, exchange, key, body, props=None):
    return C.method_frame(
        channel, "basic.publish", exchange=exchange, routing_key=key
    ) + C.content_frames(channel, C.encode_properties(props or {}), body, 8192)


@pytest.mark.parametrize(
    "header", [b"AMQP\x00\x01\x00\x00", b"AMQP\x01\x01\x00\x0a", b"GET / HTTP/1.1\r\n\r\n"]
)
def test_unsupported_protocol_header_gets_ours_back(broker, header):
    r = Raw(broker)
    r.send(header)
    r.sock.settimeout(5)
    data = b""
    while len(data) < 8:
        chunk = r.sock.recv(64)
        if not chunk:
            break
        data += chunk
    assert data == C.PROTOCOL_HEADER
    assert r.closed()
    still_serving(broker)


def test_wrong_frame_end_is_501(broker):
    r = Raw(broker)
    r.handshake()
    f = C.method_frame(1, "queue.declare", queue="")
    r.send(f[:-1] + b"\x00")
    r.expect_close(501)
    r.send(C.method_frame(0, "connection.close-ok"))
    assert r.closed()
    still_serving(broker)


def test_unknown_class_and_method_is_540(broker):
    r = Raw(broker)
    r.handshake()
    r.send(C.frame(C.FRAME_METHOD, 1, struct.pack(">HH", 60, 999)))
    args = r.expect_close(540)
    assert (args["class_id"], args["method_id"]) == (60, 999)
    r2 = Raw(broker)
    r2.handshake()
    r2.send(C.frame(C.FRAME_METHOD, 1, struct.pack(">HH", 77, 10)))
    r2.expect_close(540)
    still_serving(broker)


def test_frame_over_frame_max_is_501(broker):
    r = Raw(broker)
    tune = r.handshake()
    assert tune["frame_max"] == 8192
    # announce a frame bigger than frame_max: refused before the payload is read
    r.send(struct.pack(">BHI", 3, 1, 8192))
    r.expect_close(501)
    still_serving(broker)


def test_content_header_without_publish_is_505(broker):
    r = Raw(broker)
    r.handshake()
    r.send(C.method_frame(1, "queue.declare", queue="", exclusive=True))
    assert r.read_method()[1] == "queue.declare-ok"
    r.send(C.frame(C.FRAME_HEADER, 1, struct.pack(">HHQ", 60, 0, 3) + b"\x00\x00"))
    r.expect_close(505)
    still_serving(broker)


def test_body_frame_on_the_wrong_channel(broker):
    r = Raw(broker)
    r.handshake()
    r.send(C.method_frame(2, "channel.open"))
    assert r.read_method()[1] == "channel.open-ok"
    r.send(C.method_frame(1, "basic.publish", exchange="", routing_key="x"))
    r.send(C.frame(C.FRAME_HEADER, 1, struct.pack(">HHQ", 60, 0, 3) + b"\x00\x00"))
    r.send(C.frame(C.FRAME_BODY, 2, b"abc"))  # open channel, no content expected there
    r.expect_close(505)
    r2 = Raw(broker)
    r2.handshake()
    r2.send(C.frame(C.FRAME_BODY, 9, b"abc"))  # channel never opened
    r2.expect_close(504)
    still_serving(broker)


def test_method_on_unopened_channel_is_504(broker):
    r = Raw(broker)
    r.handshake()
    r.send(C.method_frame(5, "queue.declare", queue=""))
    r.expect_close(504)
    still_serving(broker)


def test_method_interrupting_content_is_505(broker):
    r = Raw(broker)
    r.handshake()
    r.send(C.method_frame(1, "basic.publish", exchange="", routing_key="x"))
    r.send(C.method_frame(1, "queue.declare", queue=""))
    r.expect_close(505)
    still_serving(broker)


def test_malformed_method_arguments_is_502(broker):
    r = Raw(broker)
    r.handshake()
    # queue.declare whose table length runs past the frame
    bad = struct.pack(">HHH", 50, 10, 0) + b"\x01q\x00\xff\xff\xff\xff"
    r.send(C.frame(C.FRAME_METHOD, 1, bad))
    r.expect_close(502)
    still_serving(broker)


def test_frames_split_across_reads(broker):
    r = Raw(broker)
    r.handshake()
    r.send(C.method_frame(1, "queue.declare", queue="", exclusive=True))
    _, _, ok = r.read_method()
    q = ok["queue"]
    data = publish_frames(1, "", q, b"x" * 20000, {"message_id": "split"})
    for i in range(0, len(data), 7):  # 7 bytes at a time
        r.send(data[i : i + 7])
        if i % 700 == 0:
            time.sleep(0.001)
    r.send(C.method_frame(1, "basic.get", queue=q, no_ack=True))
    ch, name, args = r.read_method()
    assert name == "basic.get-ok"
    ftype, _, payload = r.read_frame()
    _, size, props, _ = C.decode_content_header(payload)
    body = b""
    while len(body) < size:
        ftype, _, part = r.read_frame()
        assert ftype == C.FRAME_BODY and len(part) <= 8192 - 8
        body += part
    assert body == b"x" * 20000 and props["message_id"] == "split"
    r.close()


def test_missed_heartbeats_close_the_connection(broker):
    r = Raw(broker, heartbeat=1)
    r.handshake()
    t0 = time.monotonic()
    # send nothing: after two missed intervals (2 s) the broker drops the connection
    saw_heartbeat = False
    r.sock.settimeout(8)
    try:
        while True:
            ftype, _, _ = r.read_frame()
            if ftype == C.FRAME_HEARTBEAT:
                saw_heartbeat = True
    except (EOFError, ConnectionResetError):
        pass
    elapsed = time.monotonic() - t0
    assert saw_heartbeat
    assert 1.5 <= elapsed <= 6.5  # two intervals, checked every half interval; slack for load
    still_serving(broker)


def test_heartbeats_keep_a_quiet_connection_open(broker):
    r = Raw(broker, heartbeat=1)
    r.handshake()
    for _ in range(6):
        time.sleep(0.5)
        r.send(C.HEARTBEAT_FRAME)
    r.send(C.method_frame(1, "queue.declare", queue="", exclusive=True))
    assert r.read_method()[1] == "queue.declare-ok"
    r.close()


def test_handshake_timeout(broker):
    r = Raw(broker)
    r.send(C.PROTOCOL_HEADER)
    assert r.read_method()[1] == "connection.start"
    assert r.closed(timeout=6)


def test_bad_credentials_close_with_403(broker):
    r = Raw(broker)
    r.send(C.PROTOCOL_HEADER)
    r.read_method()
    r.send(
        C.method_frame(
            0,
            "connection.start-ok",
            client_properties={},
            mechanism="PLAIN",
            response=b"\x00guest\x00nope",
        )
    )
    r.expect_close(403)
    still_serving(broker)


def test_amqplain_login(broker):
    r = Raw(broker)
    r.send(C.PROTOCOL_HEADER)
    start = r.read_method()[2]
    assert b"AMQPLAIN" in start["mechanisms"].split() and b"PLAIN" in start["mechanisms"].split()
    response = C.encode_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]
    r.send(
        C.method_frame(
            0, "connection.start-ok", client_properties={}, mechanism="AMQPLAIN", response=response
        )
    )
    assert r.read_method()[1] == "connection.tune"
    r.close()


def test_pipelined_publishes_beyond_one_burst(broker):
    """2000 publishes in one write: handled in bursts (the connection yields the reactor
    between them), none lost, order kept."""
    r = Raw(broker)
    r.handshake()
    r.send(C.method_frame(1, "queue.declare", queue="", exclusive=True))
    q = r.read_method()[2]["queue"]
    r.send(
        b"".join(publish_frames(1, "", q, b"%d" % i) for i in range(2000))
        + C.method_frame(1, "queue.declare", queue=q, passive=True)
    )
    _, name, ok = r.read_method()
    assert name == "queue.declare-ok" and ok["message_count"] == 2000
    r.send(C.method_frame(1, "basic.get", queue=q, no_ack=True))
    assert r.read_method()[1] == "basic.get-ok"
    r.read_frame()
    assert r.read_frame()[2] == b"0"
    r.close()
