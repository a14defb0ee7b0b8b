"""Bad STOMP input: each case gets an ERROR frame and a closed connection, and the broker
keeps serving others (checked after every case with stomp.py). Then hypothesis fuzzes the
framer (any bytes, any split) and the session in-process (any frame sequence): only protocol
errors, never an internal one."""

from __future__ import annotations

import pytest
from conftest import module_broker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polymq_stomp.codec import (
    CLIENT_COMMANDS,
    V10,
    V11,
    V12,
    Frame,
    StompFramer,
    encode_frame,
    escape,
    unescape,
)
from stompclient import RawStomp, connect, connect_frame

from polymq.core.errors import ProtocolError

MAX = 64 * 1024


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    settings = {
        "limits.max_message_size": MAX,
        "adapters.stomp.max_header_bytes": 4096,
        "adapters.stomp.max_headers": 50,
    }
    with module_broker(tmp_path_factory, "stompbad", ["stomp"], settings=settings) as b:
        yield b
        assert "internal error" not in b.log_text()


def still_serving(port: int) -> None:
    conn, got = connect(port)
    conn.subscribe("/queue/alive", id="a")
    conn.send("/queue/alive", "yes")
    assert got.get().body == "yes"
    conn.disconnect()


def expect_error(port: int, data: list[bytes], message: str, connected: bool = True) -> dict:
    raw = RawStomp(port)
    if connected:
        raw.send(connect_frame())
        assert raw.frame()[0] == "CONNECTED"
    for chunk in data:
        try:
            raw.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break  # closed while we were still sending (the rest was never read)
    frame = raw.frame()
    assert frame is not None, "closed without an ERROR frame"
    command, headers, body = frame
    assert command == "ERROR", frame
    assert message in headers["message"], headers
    assert raw.closed()
    still_serving(port)
    return headers


CASES = {
    "send before connect": (
        [b"SEND\ndestination:/queue/x\n\nhi\0"],
        "first frame must be CONNECT",
        False,
    ),
    "unknown command": ([b"FROB\n\n\0"], "unknown command", True),
    "server frame from a client": ([b"MESSAGE\ndestination:/queue/x\n\n\0"], "unknown", True),
    "second connect": ([connect_frame()], "CONNECT is not allowed", True),
    "header without colon": ([b"SEND\ndestination /queue/x\n\n\0"], "without a colon", True),
    "bad escape": ([b"SEND\ndestination:/queue/x\nh:a\\tb\n\n\0"], "undefined escape", True),
    "bad content-length": ([b"SEND\ndestination:/queue/x\ncontent-length:-1\n\n\0"], "not a", True),
    "no NUL after content-length": (
        [b"SEND\ndestination:/queue/x\ncontent-length:2\n\nabc\0"],
        "not followed by NUL",
        True,
    ),
    "content-length over the maximum": (
        [b"SEND\ndestination:/queue/x\ncontent-length:%d\n\n" % (MAX + 1)],
        "over the maximum",
        True,
    ),
    "body without NUL over the maximum": (
        [b"SEND\ndestination:/queue/x\n\n"] + [b"x" * 8192] * 10,
        "body longer than",
        True,
    ),
    "header block over the maximum": (
        [b"SEND\ndestination:/queue/x\n" + b"h:" + b"v" * 5000 + b"\n"],
        "headers longer than",
        True,
    ),
    "too many headers": (
        [b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(60)) + b"\n\0"],
        "more than 50 headers",
        True,
    ),
    "carriage return alone": ([b"\r\r"], "carriage return", True),
    "not UTF-8": ([b"SEND\ndestination:/queue/\xff\n\n\0"], "UTF-8", True),
    "send without destination": ([b"SEND\n\nbody\0"], "without a destination", True),
    "subscribe without id (1.2)": ([b"SUBSCRIBE\ndestination:/queue/x\n\n\0"], "id", True),
    "unknown ack mode": (
        [b"SUBSCRIBE\nid:1\ndestination:/queue/x\nack:maybe\n\n\0"],
        "unknown ack mode",
        True,
    ),
    "same subscription id twice": (
        [b"SUBSCRIBE\nid:1\ndestination:/queue/x\n\n\0SUBSCRIBE\nid:1\ndestination:/queue/y\n\n\0"],
        "already in use",
        True,
    ),
    "unsubscribe unknown": ([b"UNSUBSCRIBE\nid:nope\n\n\0"], "no subscription", True),
    "begin twice": (
        [b"BEGIN\ntransaction:t\n\n\0BEGIN\ntransaction:t\n\n\0"],
        "already open",
        True,
    ),
    "unknown destination kind": (
        [b"SEND\ndestination:/nowhere/x\n\n\0"],
        "unknown destination",
        True,
    ),
    "reserved queue name": ([b"SEND\ndestination:/queue/amq.x\n\n\0"], "reserved", True),
    "missing exchange": ([b"SEND\ndestination:/exchange/nope/k\n\n\0"], "no exchange", True),
    "bad selector": (
        [b"SUBSCRIBE\nid:1\ndestination:/queue/x\nselector:a = = b\n\n\0"],
        "invalid selector",
        True,
    ),
    "bad heart-beat": (
        [connect_frame(heart_beat="x,y")],
        "bad heart-beat",
        False,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_error_and_close(broker, case):
    data, message, connected = CASES[case]
    expect_error(broker.port("stomp"), data, message, connected)


def test_receipt_id_in_error(broker):
    headers = expect_error(
        broker.port("stomp"), [b"COMMIT\ntransaction:none\nreceipt:77\n\n\0"], "unknown"
    )
    assert headers["receipt-id"] == "77"


def test_unsupported_version(broker):
    raw = RawStomp(broker.port("stomp"))
    raw.send(connect_frame("2.0"))
    command, headers, _ = raw.frame()
    assert command == "ERROR" and headers["version"] == "1.0,1.1,1.2"
    assert raw.closed()
    still_serving(broker.port("stomp"))


def test_wrong_password(broker):
    raw = RawStomp(broker.port("stomp"))
    raw.send(b"CONNECT\naccept-version:1.2\nlogin:guest\npasscode:wrong\n\n\0")
    command, headers, _ = raw.frame()
    assert command == "ERROR" and "access refused" in headers["message"]
    assert raw.closed()
    still_serving(broker.port("stomp"))


def test_frames_after_error_are_not_read(broker):
    """A SEND after a bad frame in the same packet is never published."""
    raw = RawStomp(broker.port("stomp"))
    raw.send(connect_frame())
    raw.frame()
    raw.send(b"FROB\n\n\0SEND\ndestination:/queue/after-error\n\nnever\0")
    assert raw.frame()[0] == "ERROR"
    conn, got = connect(broker.port("stomp"))
    conn.subscribe("/queue/after-error", id="x")
    assert got.none()
    conn.disconnect()


# -- fuzzing, in-process ---------------------------------------------------------------------


def feed_all(framer: StompFramer, data: bytes, cuts: list[int]) -> list[Frame]:
    frames: list[Frame] = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        frames += framer.feed(data[last:cut])
        last = cut
    return frames


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_fuzz_framer_any_bytes(data, cuts):
    framer = StompFramer(1000, max_header_bytes=300, max_headers=20)
    framer.version = V12
    framer.one_at_a_time = False
    frames = feed_all(framer, data, cuts)
    for f in frames:
        assert f.command in CLIENT_COMMANDS
        assert len(f.body) <= 1000
    assert framer.error is None or isinstance(framer.error, ProtocolError)
    assert framer.buffered <= len(data)


header_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\0", exclude_categories=("Cs",)),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(CLIENT_COMMANDS - {"CONNECT", "STOMP"})),
    st.lists(
        st.tuples(header_text.filter(bool), header_text), max_size=6, unique_by=lambda h: h[0]
    ),
    st.binary(max_size=300),
    st.sampled_from([V11, V12]),
    st.lists(st.integers(0, 1000), max_size=5),
)
def test_fuzz_roundtrip(command, headers, body, version, cuts):
    """Whatever encode_frame writes, the framer reads back the same (escaping, NUL bodies)."""
    headers = [(k, v) for k, v in headers if k != "content-length"]
    if version == V11:  # 1.1 cannot carry a carriage return in a header
        headers = [(k.replace("\r", ""), v.replace("\r", "")) for k, v in headers]
    data = encode_frame(command, headers + [("content-length", str(len(body)))], body, version)
    framer = StompFramer(1000)
    framer.version = version
    framer.one_at_a_time = False
    frames = feed_all(framer, b"\n" + data + b"\r\n" + data, cuts)
    assert framer.error is None
    assert len(frames) == 2
    for f in frames:
        assert f.command == command
        assert f.body == body
        expect = {}
        for k, v in headers:
            expect.setdefault(k, v)
        expect["content-length"] = str(len(body))
        assert f.headers == expect


@given(header_text)
def test_escape_inverse(text):
    assert unescape(escape(text, V12), V12) == text
    assert "\n" not in escape(text, V10)


@given(st.text(max_size=20))
def test_escape_never_writes_nul(text):
    """Header values from other protocols may hold NUL (Kafka binary headers): it would end the
    frame, so it is replaced."""
    for version in (V10, V11, V12):
        assert "\0" not in escape(text, version)


# one frame of a random session: commands with headers that make sense, or not
frame_strategy = st.builds(
    lambda cmd, hdrs, body: encode_frame(cmd, hdrs, body, V12),
    st.sampled_from(sorted(CLIENT_COMMANDS)),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "destination",
                    "id",
                    "ack",
                    "transaction",
                    "receipt",
                    "message-id",
                    "selector",
                    "persistent",
                    "priority",
                    "expiration",
                    "reply-to",
                    "requeue",
                    "durable",
                    "activemq.subscriptionName",
                    "prefetch-count",
                ]
            ),
            st.sampled_from(
                [
                    "/queue/f",
                    "/topic/f.*",
                    "/exchange/amq.fanout/k",
                    "/amq/queue/f",
                    "f",
                    "1",
                    "2",
                    "auto",
                    "client",
                    "client-individual",
                    "true",
                    "false",
                    "t",
                    "-1",
                    "x = 1",
                    "",
                ]
            ),
        ),
        max_size=5,
    ),
    st.binary(max_size=20),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_strategy, max_size=12))
def test_fuzz_session_frames(frames):
    """Random frame sequences after CONNECT, in-process with a fake clock: the session answers
    or refuses them, and never fails internally."""
    from polymq_stomp.plugin import DEFAULT_CONFIG
    from polymq_stomp.transport import StompFactory
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from polymq.core import output
    from polymq.core.broker import Broker

    clock = Clock()
    broker = Broker(clock=clock)
    factory = StompFactory(broker, dict(DEFAULT_CONFIG))
    out = []
    for _ in range(2):  # two connections: topics and queues shared between them
        conn = factory.buildProtocol(None)
        transport = StringTransport()
        conn.makeConnection(transport)
        conn.dataReceived(connect_frame())
        out.append((conn, transport))
    for i, frame in enumerate(frames):
        conn, transport = out[i % 2]
        conn.dataReceived(frame)
        output.flush_pending()
    clock.advance(60)
    for conn, transport in out:
        conn.connectionLost(None)
        assert b"message:internal error" not in transport.value()


@given(st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=5))
def test_crlf_headers_with_any_body(body, cuts):
    """STOMP 1.2 CRLF line ends: the first empty line ends the headers, whatever the body holds
    (LF LF, CR LF CR LF) and wherever the reads split it."""
    data = b"SEND\r\ndestination:/queue/x\r\nh:v\r\n\r\n" + body.replace(b"\0", b"") + b"\0"
    framer = StompFramer(1000)
    framer.version = V12
    framer.one_at_a_time = False
    frames = feed_all(framer, data + data, cuts)
    assert framer.error is None
    assert [(f.headers, f.body) for f in frames] == [
        ({"destination": "/queue/x", "h": "v"}, body.replace(b"\0", b""))
    ] * 2


def test_error_after_a_receipt_waiting_for_the_disk(broker):
    """A persistent SEND's RECEIPT waits for the store; a bad frame right behind it still gets
    both, in order: RECEIPT, then ERROR, then the close."""
    raw = RawStomp(broker.port("stomp"))
    raw.send(connect_frame())
    assert raw.frame()[0] == "CONNECTED"
    raw.send(
        b"SEND\ndestination:/queue/before-error\npersistent:true\nreceipt:kept\n\nbody\0FROB\n\n\0"
    )
    command, headers, _ = raw.frame()
    assert (command, headers.get("receipt-id")) == ("RECEIPT", "kept")
    command, headers, _ = raw.frame()
    assert command == "ERROR" and "unknown command" in headers["message"]
    assert raw.closed()
    conn, got = connect(broker.port("stomp"))
    conn.subscribe("/queue/before-error", id="x")
    assert got.get().body == "body"
    conn.disconnect()
