"""Malformed OpenWire input over a raw socket: the offending connection gets a ConnectionError
(or is simply closed), and the broker keeps serving other clients, including the real JMS
client. Also: keep-alive echo and the inactivity monitor."""

from __future__ import annotations

import socket
import struct
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))

import jmsrun  # noqa: E402
from brokerproc import BrokerProcess  # noqa: E402
from conftest import module_broker  # noqa: E402

from polymq.adapters.openwire import codec as c  # noqa: E402
from polymq.adapters.openwire.codec import Obj  # noqa: E402

MAX_FRAME = 65536
MAX_MESSAGE = 4096


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    settings = {
        "adapters.openwire.max_frame_size": MAX_FRAME,
        "limits.max_message_size": MAX_MESSAGE,
        "adapters.openwire.max_inactivity_ms": 1500,
        "adapters.openwire.inactivity_initial_delay_ms": 500,
    }
    with module_broker(
        tmp_path_factory,
        "ow-bad",
        ["openwire"],
        store="memory",
        log_level="info",
        settings=settings,
    ) as b:
        yield b


class Raw:
    """A minimal OpenWire peer written with our own codec (for bad input only)."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.sock = socket.create_connection((broker.host, broker.port("openwire")), timeout=5)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, inactivity: int = 30000) -> None:
        self.send(
            c.encode_wireformat(
                12,
                {
                    "TightEncodingEnabled": True,
                    "CacheEnabled": False,  # writes the plain form
                    "MaxInactivityDuration": inactivity,
                },
                {"MaxInactivityDuration": "long"},
            )
        )

    def read_frame(self) -> bytes | None:
        while True:
            if len(self.buf) >= 4:
                size = struct.unpack(">i", self.buf[:4])[0]
                if len(self.buf) >= 4 + size:
                    frame, self.buf = self.buf[4 : 4 + size], self.buf[4 + size :]
                    return frame
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return None
            if not data:
                return None
            self.buf += data

    def frames_until_closed(self) -> list[bytes]:
        out = []
        while True:
            f = self.read_frame()
            if f is None:
                return out
            out.append(f)

    def command(self) -> Obj:
        f = self.read_frame()
        assert f is not None
        return c.decode_command(f)

    def close(self) -> None:
        self.sock.close()


def connection_info(cid: int = 1, client_id: str = "raw") -> Obj:
    return Obj(
        c.CONNECTION_INFO,
        command_id=cid,
        response_required=True,
        connection_id=Obj(c.CONNECTION_ID, value="ID:raw-1"),
        client_id=client_id,
    )


def handshake(broker) -> Raw:
    r = Raw(broker)
    first = r.read_frame()
    version, props = c.decode_wireformat(first, 64)
    assert version == 12
    assert props["TightEncodingEnabled"] is False
    assert props["CacheEnabled"] is True and props["CacheSize"] == 1024
    assert props["StackTraceEnabled"] is False
    r.hello()
    info = r.command()
    assert info.type == c.BROKER_INFO
    return r


def assert_served(broker) -> None:
    """Another client still gets a full handshake and a Response to ConnectionInfo."""
    r = handshake(broker)
    r.send(c.encode_frame(connection_info(7)))
    resp = r.command()
    assert resp.type == c.RESPONSE and resp.correlation_id == 7
    r.close()


def closed_with_error(r: Raw) -> list[Obj]:
    """Everything the broker sent before closing (it must close)."""
    frames = r.frames_until_closed()
    r.close()
    return [c.decode_command(f) for f in frames if f[0] != c.WIREFORMAT_INFO]


def test_good_handshake(broker):
    assert_served(broker)


def test_wrong_magic(broker):
    r = Raw(broker)
    r.read_frame()
    good = c.encode_wireformat(12, {}, {})
    r.send(good[:5] + b"ActiveMX" + good[13:])
    assert closed_with_error(r) == []
    assert_served(broker)


def test_frame_size_over_maximum(broker):
    r = handshake(broker)
    r.send(struct.pack(">i", MAX_FRAME + 1) + bytes([c.CONNECTION_INFO]) + b"\x00" * 100)
    cmds = closed_with_error(r)
    assert [x.type for x in cmds] == [c.CONNECTION_ERROR]
    assert cmds[0].exception[0] == "java.io.IOException"
    assert_served(broker)


def test_negative_frame_size(broker):
    r = handshake(broker)
    r.send(struct.pack(">i", -5))
    closed_with_error(r)
    assert_served(broker)


def test_unknown_type_id(broker):
    r = handshake(broker)
    r.send(struct.pack(">i", 6) + bytes([77]) + b"\x00\x00\x00\x01\x01")
    cmds = closed_with_error(r)
    assert [x.type for x in cmds] == [c.CONNECTION_ERROR]
    assert_served(broker)


def test_truncated_command(broker):
    r = handshake(broker)
    frame = c.encode_frame(connection_info())
    cut = frame[4:20]
    r.send(struct.pack(">i", len(cut)) + cut)
    cmds = closed_with_error(r)
    assert [x.type for x in cmds] == [c.CONNECTION_ERROR]
    assert_served(broker)


def test_command_before_wireformat_info(broker):
    r = Raw(broker)
    r.read_frame()
    r.send(c.encode_frame(connection_info()))
    assert closed_with_error(r) == []
    assert_served(broker)


def test_command_before_connection_info(broker):
    r = handshake(broker)
    r.send(
        c.encode_frame(
            Obj(
                c.SESSION_INFO,
                command_id=1,
                response_required=True,
                session_id=Obj(c.SESSION_ID, connection_id="x", value=1),
            )
        )
    )
    cmds = closed_with_error(r)
    assert [x.type for x in cmds] == [c.CONNECTION_ERROR]
    assert_served(broker)


def test_invalid_modified_utf8(broker):
    r = handshake(broker)
    frame = bytearray(c.encode_frame(connection_info(client_id="abcd")))
    i = frame.index(b"abcd")
    frame[i : i + 4] = b"\xff\xfe\xc3\x28"
    r.send(bytes(frame))
    cmds = closed_with_error(r)
    assert [x.type for x in cmds] == [c.CONNECTION_ERROR]
    assert "UTF-8" in cmds[0].exception[1]
    assert_served(broker)


def test_unsupported_version(broker):
    r = Raw(broker)
    r.read_frame()
    r.send(c.encode_wireformat(1, {}, {}))
    assert closed_with_error(r) == []
    assert_served(broker)


def test_keepalive_echo_and_inactivity_close(broker):
    r = handshake(broker)
    r.send(c.encode_frame(connection_info(3)))
    assert r.command().type == c.RESPONSE
    r.send(c.encode_frame(Obj(c.KEEP_ALIVE_INFO, command_id=4, response_required=True)))
    assert r.command().type == c.KEEP_ALIVE_INFO
    # the broker sends keep-alives on its own, then closes an idle peer (1.5 s negotiated)
    start = time.monotonic()
    got = closed_with_error(r)
    assert all(x.type == c.KEEP_ALIVE_INFO for x in got) and got
    assert 1.0 < time.monotonic() - start < 8


def test_jms_client_still_served_after_garbage(broker, tmp_path):
    for junk in (b"\x00\x00\x00\x05\x01ActiveMQ", b"GET / HTTP/1.0\r\n\r\n", b"\xff" * 64):
        s = socket.create_connection((broker.host, broker.port("openwire")))
        s.sendall(junk)
        s.close()
    if jmsrun.missing():
        pytest.skip(jmsrun.missing())
    classes = jmsrun.classes_once()
    r = jmsrun.run_java(
        classes, "JmsTest", f"tcp://{broker.host}:{broker.port('openwire')}", "basic", "idle"
    )
    # idle for several 1.5 s inactivity periods: the keep-alives of both sides keep it open
    r.check("connect", "basic.receive", "close", "idle.alive")


def test_message_over_the_broker_limit_is_refused(broker):
    r = handshake(broker)
    r.send(c.encode_frame(connection_info(1, client_id="big")))
    assert r.command().type == c.RESPONSE
    dest = Obj(c.QUEUE, physical_name="big.q")
    for cid, size in ((2, MAX_MESSAGE + 1), (3, 10)):
        r.send(
            c.encode_frame(
                Obj(
                    c.BYTES_MESSAGE,
                    command_id=cid,
                    response_required=True,
                    destination=dest,
                    content=b"x" * size,
                    persistent=True,
                )
            )
        )
    refused = r.command()
    assert refused.type == c.EXCEPTION_RESPONSE and refused.correlation_id == 2
    assert refused.exception[0] == "javax.jms.JMSException"
    accepted = r.command()
    assert accepted.type == c.RESPONSE and accepted.correlation_id == 3
    r.close()


def test_client_id_taken_over_only_by_a_failover_reconnect(broker):
    first = handshake(broker)
    first.send(c.encode_frame(connection_info(1, client_id="sticky")))
    assert first.command().type == c.RESPONSE
    second = handshake(broker)
    second.send(c.encode_frame(connection_info(1, client_id="sticky")))
    refused = second.command()
    assert refused.type == c.EXCEPTION_RESPONSE
    assert refused.exception[0] == "javax.jms.InvalidClientIDException"
    second.close()
    third = handshake(broker)
    info = connection_info(2, client_id="sticky")
    info.failover_reconnect = True
    third.send(c.encode_frame(info))
    assert third.command().type == c.RESPONSE
    assert closed_with_error(first) == []  # the stale connection is closed
    third.close()


def test_empty_destination_names_are_refused(broker):
    r = handshake(broker)
    r.send(c.encode_frame(connection_info(1, client_id="empty-dest")))
    assert r.command().type == c.RESPONSE
    for cid, name in ((2, ""), (3, ",")):
        r.send(
            c.encode_frame(
                Obj(
                    c.TEXT_MESSAGE,
                    command_id=cid,
                    response_required=True,
                    destination=Obj(c.QUEUE, physical_name=name),
                )
            )
        )
        resp = r.command()
        assert resp.type == c.EXCEPTION_RESPONSE
        assert resp.exception[0] == "javax.jms.InvalidDestinationException"
    r.send(
        c.encode_frame(
            Obj(
                c.CONSUMER_INFO,
                command_id=4,
                response_required=True,
                consumer_id=Obj(c.CONSUMER_ID, connection_id="ID:raw-1", session_id=1, value=1),
                destination=Obj(c.QUEUE, physical_name=""),
                prefetch_size=10,
            )
        )
    )
    assert r.command().type == c.EXCEPTION_RESPONSE
    r.close()
