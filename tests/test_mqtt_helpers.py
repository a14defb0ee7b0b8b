"""Helpers shared by the MQTT tests (no tests here): a paho-mqtt wrapper and raw sockets."""

from __future__ import annotations

import itertools
import queue
import socket
import struct
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from brokerproc import BrokerProcess
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from wire import peer_closed

V3 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
VERSIONS = pytest.mark.parametrize("version", [V3, V5], ids=["v311", "v5"])

_ids = itertools.count(1)


def uid(prefix: str = "t") -> str:
    return f"{prefix}{next(_ids)}x{int(time.time() * 1000) % 100000}"


def start_broker(tmp_path_factory, **kw) -> BrokerProcess:
    return BrokerProcess(tmp_path_factory.mktemp("mqttbroker"), adapters=["mqtt"], **kw).start()


class Client:
    """A paho client run in its own network thread, with blocking helpers for tests."""

    def __init__(
        self,
        broker,
        client_id: str | None = None,
        version=V5,
        clean: bool = True,
        keepalive: int = 60,
        username=None,
        password=None,
        will=None,
        properties: Properties | None = None,
        connect: bool = True,
        expiry: int | None = None,
    ) -> None:
        self.version = version
        self.client_id = client_id if client_id is not None else uid("c")
        kw = {}
        if version == V3:
            kw["clean_session"] = clean
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=version, **kw
        )
        self.messages: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_connect = lambda c, u, f, rc, p: self.connacks.put((f, rc, p))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put((rc, p))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put((mid, rcs, p))
        if username is not None:
            self.c.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain, *rest = will
            self.c.will_set(topic, payload, qos, retain, properties=rest[0] if rest else None)
        self.host = broker.host
        self.port = broker.port("mqtt")
        self.keepalive = keepalive
        self.clean = clean
        self.properties = properties
        if version == V5 and expiry is not None:
            if self.properties is None:
                self.properties = Properties(PacketTypes.CONNECT)
            self.properties.SessionExpiryInterval = expiry
        self.connack = None
        if connect:
            self.connect()

    def connect(self, expect_ok: bool = True):
        kw = {}
        if self.version == V5:
            kw["clean_start"] = self.clean
            kw["properties"] = self.properties
        self.c.connect(self.host, self.port, keepalive=self.keepalive, **kw)
        self.c.loop_start()
        self.connack = self.connacks.get(timeout=10)
        if expect_ok:
            assert not self.connack[1].is_failure, self.connack
        return self.connack

    def subscribe(self, topic, qos=1, **kw):
        opts = kw.pop("options", None)
        if opts is not None:
            rc, mid = self.c.subscribe(topic, options=opts, **kw)
        else:
            rc, mid = self.c.subscribe(topic, qos, **kw)
        assert rc == 0
        got = self.subacks.get(timeout=10)
        return got[1]

    def unsubscribe(self, topic):
        self.c.unsubscribe(topic)
        time.sleep(0.2)

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, wait=True):
        info = self.c.publish(topic, payload, qos, retain, properties=properties)
        if wait and qos:
            info.wait_for_publish(10)
            assert info.is_published()
        return info

    def get(self, timeout=5.0):
        return self.messages.get(timeout=timeout)

    def get_n(self, n, timeout=10.0):
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return out

    def none(self, wait=0.5) -> bool:
        try:
            m = self.messages.get(timeout=wait)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message {m.topic} {m.payload!r}")

    def disconnect(self, properties=None):
        self.c.disconnect(properties=properties)
        self.c.loop_stop()

    def drop(self):
        """Close the socket without DISCONNECT (an abnormal end: the will fires)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()


def raw(broker, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection((broker.host, broker.port("mqtt")), timeout=timeout)
    return s


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def connect_packet(
    client_id: str,
    version: int = 4,
    clean: bool = True,
    keepalive: int = 60,
    props: bytes = b"\x00",
) -> bytes:
    body = s16("MQTT") + bytes((version, 2 if clean else 0)) + struct.pack(">H", keepalive)
    if version == 5:
        body += props
    body += s16(client_id)
    return bytes((0x10,)) + varint(len(body)) + body


def recv_packet(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """One packet (first byte, body) or None when the connection was closed."""
    sock.settimeout(timeout)
    try:
        first = sock.recv(1)
        if not first:
            return None
        mult, length = 1, 0
        while True:
            b = sock.recv(1)
            if not b:
                return None
            length += (b[0] & 0x7F) * mult
            mult *= 128
            if b[0] < 0x80:
                break
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
        return first[0], body
    except (ConnectionResetError, BrokenPipeError):
        return None


def closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closes the connection (reading whatever it still sends)."""
    return peer_closed(sock, timeout)


def wait_until(pred, timeout=5.0, step=0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


__all__ = ["threading"]
