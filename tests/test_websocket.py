"""WebSocket listeners (core/websocket.py): MQTT over WebSocket with paho's websocket transport
and the `mqtt` npm package, STOMP over WebSocket with @stomp/stompjs on Node.js, both sharing
state with their TCP listeners; the upgrade's path and subprotocol checks; bad input before and
after the upgrade; and the contract's limits and login applying to WebSocket connections."""

from __future__ import annotations

import base64
import socket
import threading
import time
import uuid

import nodeclients
import paho.mqtt.client as mqtt
import pytest
from brokerproc import BrokerProcess
from conftest import module_broker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stompclient import connect

WS = {
    "adapters.mqtt.websocket_port": 0,
    "adapters.stomp.websocket_port": 0,
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory, "ws", ["mqtt", "stomp"], settings=WS) as b:
        yield b
        log = b.log_text()
    assert "internal error" not in log


def paho_client(port: int, version: int, transport: str = "websockets", **kw) -> mqtt.Client:
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"ws-{uuid.uuid4().hex[:8]}",
        transport=transport,
        protocol=version,
    )
    if transport == "websockets":
        c.ws_set_options(path=kw.get("path", "/mqtt"))
    c.username_pw_set(kw.get("user", "guest"), kw.get("password", "guest"))
    return c


class Inbox:
    def __init__(self, client: mqtt.Client) -> None:
        self.messages: list = []
        self.event = threading.Event()
        self.connected = threading.Event()
        self.reason = None
        client.on_message = self.on_message
        client.on_connect = self.on_connect

    def on_connect(self, client, userdata, flags, reason, properties) -> None:
        self.reason = reason
        self.connected.set()

    def on_message(self, client, userdata, m) -> None:
        self.messages.append((m.topic, bytes(m.payload)))
        self.event.set()

    def wait(self, n: int, timeout: float = 10) -> list:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.messages


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_paho_over_websocket_meets_a_tcp_client(broker, version):
    topic = f"ws/{uuid.uuid4().hex[:8]}"
    ws = paho_client(broker.port("mqtt+ws"), version)
    ws_in = Inbox(ws)
    ws.connect("127.0.0.1", broker.port("mqtt+ws"))
    ws.loop_start()
    tcp = paho_client(broker.port("mqtt"), version, transport="tcp")
    tcp_in = Inbox(tcp)
    tcp.connect("127.0.0.1", broker.port("mqtt"))
    tcp.loop_start()
    try:
        assert ws_in.connected.wait(10) and not ws_in.reason.is_failure
        assert tcp_in.connected.wait(10)
        ws.subscribe(topic + "/#", qos=1)[1]
        tcp.subscribe(topic + "/#", qos=1)
        time.sleep(0.3)
        big = bytes(range(256)) * 1024  # 256 KiB: many WebSocket frames and TCP reads
        ws.publish(topic + "/from-ws", big, qos=1).wait_for_publish(10)
        tcp.publish(topic + "/from-tcp", b"small", qos=1).wait_for_publish(10)
        for inbox in (ws_in, tcp_in):
            got = dict(inbox.wait(2))
            assert got == {topic + "/from-ws": big, topic + "/from-tcp": b"small"}
    finally:
        for c in (ws, tcp):
            c.disconnect()
            c.loop_stop()


def test_paho_wrong_password_over_websocket(broker):
    c = paho_client(broker.port("mqtt+ws"), mqtt.MQTTv5, password="wrong")
    inbox = Inbox(c)
    c.connect("127.0.0.1", broker.port("mqtt+ws"))
    c.loop_start()
    try:
        assert inbox.connected.wait(10)
        assert inbox.reason.is_failure  # refused by the same login as on TCP
    finally:
        c.loop_stop()


@pytest.mark.parametrize("version", ["4", "5"])
def test_mqtt_npm_over_websocket(broker, version):
    topic = f"npm/{uuid.uuid4().hex[:8]}"
    url = f"ws://127.0.0.1:{broker.port('mqtt+ws')}/mqtt"
    events = nodeclients.run("mqtt_ws.js", url, topic, version)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connected" and "puback" in kinds and kinds[-1] == "closed", events
    message = next(e for e in events if e["event"] == "message")
    assert message["topic"] == topic
    assert base64.b64decode(message["body"]) == bytes([0, 1, 2, 255])


def test_stompjs_over_websocket(broker):
    queue = f"stompjs{uuid.uuid4().hex[:8]}"
    url = f"ws://127.0.0.1:{broker.port('stomp+ws')}/ws"
    # a stomp.py client on TCP sees the same queue
    conn, got = connect(broker.port("stomp"))
    events = nodeclients.run("stomp_ws.js", url, queue)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connected" and kinds[-1] == "closed", events
    assert events[0]["version"] == "1.2"
    assert events[0]["heartBeat"]  # negotiated through the contract's liveness timers
    assert "receipt" in kinds
    messages = [e for e in events if e["event"] == "message"]
    assert base64.b64decode(messages[0]["body"]).decode() == "héllo from stompjs"
    assert messages[0]["headers"]["x-from"] == "stompjs"
    assert messages[0]["headers"]["destination"] == f"/queue/{queue}"
    assert base64.b64decode(messages[1]["body"]) == bytes([0, 1, 2, 255, 0, 10])
    # both were acknowledged over WebSocket: nothing is left for the TCP client
    conn.subscribe(f"/queue/{queue}", id="left")
    assert got.none(1.0)
    conn.send(f"/queue/{queue}", "tcp")
    assert got.get().body == "tcp"
    conn.disconnect()


def raw_upgrade(port: int, path: str = "/mqtt", protocol: str | None = "mqtt") -> tuple:
    """Send an upgrade request; returns (status line, socket)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode(), data, sock


def closed(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_upgrade_checks_path_and_subprotocol(broker):
    port = broker.port("mqtt+ws")
    status, _, sock = raw_upgrade(port, path="/elsewhere")
    assert status.startswith("HTTP/1.1 404") and closed(sock)
    status, _, sock = raw_upgrade(port, protocol="v12.stomp")
    assert status.startswith("HTTP/1.1 400") and closed(sock)
    status, data, sock = raw_upgrade(port, protocol="mqttv3.1, mqtt")
    assert status.startswith("HTTP/1.1 101")
    assert b"sec-websocket-protocol: mqttv3.1" in data.lower()
    sock.close()


def test_bad_input_before_and_after_the_upgrade(broker):
    port = broker.port("mqtt+ws")
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # MQTT, not an HTTP upgrade
    data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")
    assert closed(sock)
    # an unmasked frame from a client breaks RFC 6455: close frame 1002, connection closed
    status, _, sock = raw_upgrade(port)
    assert status.startswith("HTTP/1.1 101")
    sock.sendall(b"\x82\x02ab")
    data = sock.recv(4096)
    assert data[:1] == b"\x88" and data[2:4] == (1002).to_bytes(2, "big")
    assert closed(sock)
    assert "WebSocket close 1002" in broker.log_text()
    # garbage MQTT inside a good WebSocket: the adapter closes it as on TCP
    status, _, sock = raw_upgrade(port)
    mask = b"\x01\x02\x03\x04"
    payload = b"\xf0\x00"  # packet type 15 before CONNECT
    sock.sendall(b"\x82" + bytes([0x80 | len(payload)]) + mask)
    sock.sendall(bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    assert closed(sock)
    # the broker still serves
    c = paho_client(port, mqtt.MQTTv5)
    inbox = Inbox(c)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert inbox.connected.wait(10) and not inbox.reason.is_failure
    finally:
        c.disconnect()
        c.loop_stop()


def test_limits_and_handshake_timeout_apply(tmp_path):
    settings = dict(
        WS,
        **{"adapters.mqtt.max_connections": 1, "adapters.mqtt.handshake_timeout": 1.0},
    )
    with BrokerProcess(tmp_path / "b", adapters=["mqtt"], settings=settings) as b:
        port = b.port("mqtt+ws")
        first = paho_client(port, mqtt.MQTTv5)
        first_in = Inbox(first)
        first.connect("127.0.0.1", port)
        first.loop_start()
        assert first_in.connected.wait(10) and not first_in.reason.is_failure
        # a second WebSocket connection is over the listener's max_connections
        status, _, sock = raw_upgrade(port)
        assert status.startswith("HTTP/1.1 101")
        assert closed(sock)
        first.disconnect()
        first.loop_stop()
        # a connection that never upgrades is dropped after handshake_timeout
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        start = time.monotonic()
        assert closed(sock)
        assert time.monotonic() - start < 8
        assert "no WebSocket upgrade" in b.log_text()


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: v12.stomp\r\n\r\n"
)


def _masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = b"\x11\x22\x33\x44"
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


ws_chunk = st.one_of(
    st.binary(max_size=64),  # anything at all
    st.builds(  # well-formed frames of any opcode carrying STOMP bytes or garbage
        _masked,
        st.sampled_from([0, 1, 2, 8, 9, 10, 3, 15]),
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    b"CONNECT\naccept-version:1.2\nlogin:guest\npasscode:guest\n\n\0",
                    b"SEND\ndestination:/queue/fz\n\nhi\0",
                    b"SUBSCRIBE\nid:1\ndestination:/queue/fz\n\n\0",
                    b"\n",
                ]
            ),
        ),
        st.booleans(),
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(ws_chunk, max_size=8))
def test_fuzz_websocket_layer(upgrade, chunks):
    """Random bytes and frames, before or after a good upgrade, in-process: the WebSocket
    layer and the STOMP connection under it answer or close, and nothing escapes as an error."""
    from polymq_stomp.plugin import DEFAULT_CONFIG
    from polymq_stomp.transport import StompFactory
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from polymq.core import output
    from polymq.core.broker import Broker
    from polymq.core.websocket import WebSocketListenerFactory

    clock = Clock()
    inner = StompFactory(Broker(clock=clock), dict(DEFAULT_CONFIG))
    factory = WebSocketListenerFactory(inner, clock)
    factory.path, factory.subprotocols = "/ws", ["v12.stomp"]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    if upgrade:
        proto.dataReceived(UPGRADE)
        assert transport.value().startswith(b"HTTP/1.1 101")
    for chunk in chunks:
        if transport.disconnecting:
            break
        proto.dataReceived(chunk)
        output.flush_pending()
    clock.advance(60)
    proto.connectionLost(None)
    assert b"internal error" not in transport.value()


def test_websocket_port_clash_names_its_setting(tmp_path):
    from brokerproc import BrokerStartError

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    try:
        with pytest.raises(BrokerStartError) as failed:
            BrokerProcess(
                tmp_path / "b", adapters=["mqtt"], settings={"adapters.mqtt.websocket_port": taken}
            ).start()
    finally:
        holder.close()
    text = str(failed.value)
    assert f"adapter mqtt: WebSocket: cannot listen on 127.0.0.1:{taken}" in text
    assert "--set adapters.mqtt.websocket_port=N" in text
    assert "POLYMQ_ADAPTERS__MQTT__WEBSOCKET_PORT=N" in text
    assert "--set adapters.mqtt.websocket_port=-1" in text
