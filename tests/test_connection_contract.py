"""The adapter contract of core (core/connection.py, core/framing.py), protocol-neutral.

A minimal line-based adapter defined here drives the contract over Twisted's test transports:
limits, registry, timers, the error boundary, ordered replies and the length-prefixed framer.
(Each real adapter's behaviour on top of the contract is proved with real clients in its own
tests.)
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from polymq.core import output
from polymq.core.broker import Broker
from polymq.core.connection import ConnectionFactory, SessionBase, registry_of
from polymq.core.errors import FrameTooLarge, IdleTimeout, ProtocolError
from polymq.core.framing import LengthPrefixedFramer


class LineFramer:
    max_length = 1024
    error = None

    def __init__(self) -> None:
        self.buf = b""

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> list:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        if len(self.buf) > self.max_length:
            raise FrameTooLarge("line too long")
        return lines


class LineSession(SessionBase):
    """HELLO <user> finishes the handshake; BUG raises a KeyError (a bug); BAD is bad input;
    DUR answers after the store; ECHO x answers at once."""

    def __init__(self, conn) -> None:
        super().__init__(conn)
        self.events: list = []

    def frames_received(self, frames: list) -> None:
        for line in frames:
            cmd, _, arg = line.partition(b" ")
            if cmd == b"HELLO":
                self.conn.handshake_done(user=arg.decode(), client_id="c-" + arg.decode())
                self.conn.reply(b"OK\n")
            elif cmd == b"BUG":
                {}["missing"]
            elif cmd == b"BAD":
                raise ProtocolError("bad command", code=7)
            elif cmd == b"DUR":
                self.conn.reply_after_durable(b"DURABLE " + arg + b"\n")
            elif cmd == b"DURN":  # with a negative answer for when the store fails
                self.conn.reply_after_durable(
                    b"DURABLE " + arg + b"\n", lambda a=arg: b"NOT DURABLE " + a + b"\n"
                )
            elif cmd == b"ECHO":
                self.conn.reply(b"ECHO " + arg + b"\n")
            elif cmd == b"LIVE":
                self.conn.set_liveness(float(arg), float(arg) / 3)

    def protocol_error(self, error: Exception) -> None:
        self.events.append(("protocol_error", type(error).__name__, getattr(error, "code", None)))
        self.conn.write(b"ERR " + str(error).encode() + b"\n")

    def internal_error(self, error: BaseException) -> None:
        self.events.append(("internal_error", type(error).__name__))
        self.conn.write(b"INTERNAL\n")

    def keepalive(self) -> None:
        self.events.append(("keepalive",))
        self.conn.write(b"PING\n")

    def connection_lost(self) -> None:
        self.events.append(("lost",))

    def publishing_blocked(self, blocked: bool, reason: str) -> None:
        self.events.append(("blocked", blocked, reason))


class LineFactory(ConnectionFactory):
    protocol_name = "line"

    def build_framer(self, conn):
        return LineFramer()

    def build_session(self, conn):
        return LineSession(conn)


class SlowStore:
    """Durability that arrives when the test says so, in registration order."""

    def __init__(self) -> None:
        self.waiting: list = []

    def after_durable(self, callback) -> None:
        self.waiting.append(callback)

    def commit(self) -> None:
        waiting, self.waiting = self.waiting, []
        for cb in waiting:
            cb()


class FailingStore(SlowStore):
    """A store that reports write failures: ``fail()`` answers the waiters negatively."""

    reports_write_failures = True

    def after_durable(self, callback, failed=None) -> None:
        self.waiting.append((callback, failed))

    def commit(self) -> None:
        waiting, self.waiting = self.waiting, []
        for cb, _ in waiting:
            cb()

    def fail(self) -> None:
        waiting, self.waiting = self.waiting, []
        for _, failed in waiting:
            failed(OSError("database away"))


def make(section=None, store=None):
    clock = Clock()
    broker = Broker(clock=clock)
    if store is not None:
        broker.store = store
    return clock, broker, LineFactory(broker, section or {})


def connect(factory, host="127.0.0.1", port=40000):
    t = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    p = factory.buildProtocol(None)
    p.makeConnection(t)
    return p, t


def send(p, data: bytes) -> None:
    p.dataReceived(data)
    output.flush_pending()


def test_registry_lists_a_connection_with_what_the_handshake_said_and_its_counters():
    clock, broker, f = make()
    p, t = connect(f, port=40001)
    reg = registry_of(broker)
    assert len(reg) == 1 and reg.count("line") == 1
    send(p, b"HELLO alice\nECHO hi\n")
    (info,) = list(reg)
    assert (info.protocol, info.peer, info.user, info.client_id) == (
        "line",
        "127.0.0.1:40001",
        "alice",
        "c-alice",
    )
    assert info.bytes_in == len(b"HELLO alice\nECHO hi\n")
    assert info.bytes_out == len(b"OK\nECHO hi\n") and t.value() == b"OK\nECHO hi\n"
    p.connectionLost(None)
    assert len(reg) == 0 and p.session.events[-1] == ("lost",)


def test_listener_and_per_host_limits_refuse_before_a_session_exists():
    clock, broker, f = make({"max_connections": 3, "max_connections_per_host": 2})
    a, _ = connect(f, "10.0.0.1")
    b, _ = connect(f, "10.0.0.1")
    c, tc = connect(f, "10.0.0.1")
    assert c.session is None and tc.disconnecting  # third from one host
    d, _ = connect(f, "10.0.0.2")
    e, te = connect(f, "10.0.0.3")
    assert e.session is None and te.disconnecting  # fourth on the listener
    assert registry_of(broker).refused == 2 and len(registry_of(broker)) == 3
    a.connectionLost(None)
    g, tg = connect(f, "10.0.0.1")
    assert g.session is not None and not tg.disconnecting  # room again


def test_broker_wide_limit_counts_every_listener():
    clock, broker, f = make()
    broker.config = {"limits": {"max_connections": 1}}
    broker.connections = None
    f2 = LineFactory(broker, {})
    f = LineFactory(broker, {})
    connect(f)
    p, t = connect(f2)
    assert p.session is None and t.disconnecting


def test_handshake_timeout_closes_a_silent_connection_but_not_one_that_said_hello():
    clock, broker, f = make({"handshake_timeout": 2})
    silent, ts = connect(f)
    hello, th = connect(f)
    send(hello, b"HELLO bob\n")
    clock.advance(2.5)
    assert ts.disconnecting and not th.disconnecting
    assert silent.session.events[0][:2] == ("protocol_error", "ProtocolError")


def test_liveness_sends_keepalives_and_closes_after_silence():
    clock, broker, f = make()
    p, t = connect(f)
    send(p, b"HELLO x\nLIVE 3\n")
    for _ in range(5):
        clock.advance(0.5)
        send(p, b"ECHO still-here\n")
    assert not t.disconnecting
    clock.advance(1.1)
    output.flush_pending()
    assert ("keepalive",) in p.session.events and b"PING\n" in t.value()
    clock.advance(2.5)
    assert t.disconnecting
    assert ("protocol_error", IdleTimeout.__name__, None) in p.session.events


def test_a_bug_is_an_internal_error_for_that_connection_only():
    clock, broker, f = make()
    bad, tb = connect(f)
    good, tg = connect(f)
    send(bad, b"HELLO x\nBUG\nECHO never\n")
    assert ("internal_error", "KeyError") in bad.session.events
    assert tb.disconnecting and b"INTERNAL\n" in tb.value() and b"never" not in tb.value()
    send(good, b"ECHO fine\n")
    assert tg.value() == b"ECHO fine\n" and not tg.disconnecting


def test_bad_input_gets_the_protocol_error_and_a_close():
    clock, broker, f = make()
    p, t = connect(f)
    send(p, b"BAD\n")
    assert p.session.events == [("protocol_error", "ProtocolError", 7)]
    assert t.disconnecting and t.value() == b"ERR bad command\n"
    send(p, b"ECHO after-close\n")
    assert b"after-close" not in t.value()


def test_replies_stay_in_request_order_behind_a_durable_one():
    store = SlowStore()
    clock, broker, f = make(store=store)
    p, t = connect(f)
    send(p, b"ECHO 1\nDUR 2\nECHO 3\n")
    send(p, b"DUR 4\nECHO 5\n")
    assert t.value() == b"ECHO 1\n"  # the rest waits for the store
    assert len(store.waiting) == 2  # one store wait per read, not per reply
    store.commit()
    output.flush_pending()
    assert t.value() == b"ECHO 1\nDURABLE 2\nECHO 3\nDURABLE 4\nECHO 5\n"


def test_a_store_failure_sends_the_negative_answers_in_order():
    """Replies whose writes the store could not make durable: each gets its negative answer,
    in request order with the rest; a batch with a reply that has none closes the connection
    at its place (what came before it still goes out)."""
    store = FailingStore()
    clock, broker, f = make(store=store)
    p, t = connect(f)
    send(p, b"ECHO 1\nDURN 2\nDURN 3\nECHO 4\n")
    send(p, b"DURN 5\n")
    store.fail()
    output.flush_pending()
    assert t.value() == b"ECHO 1\nNOT DURABLE 2\nNOT DURABLE 3\nECHO 4\nNOT DURABLE 5\n"
    assert not t.disconnecting
    send(p, b"DURN 6\n")
    store.commit()  # the store is back: positive again
    output.flush_pending()
    assert t.value().endswith(b"NOT DURABLE 5\nDURABLE 6\n")
    q, tq = connect(f)
    send(q, b"DURN 7\n")
    send(q, b"ECHO 8\nDUR 9\nECHO 10\n")  # DUR has no negative answer (MQTT's PUBACK)
    store.fail()
    output.flush_pending()
    assert tq.value() == b"NOT DURABLE 7\nECHO 8\n"
    assert tq.disconnecting


def test_the_resource_alarm_reaches_every_session_and_new_ones():
    clock, broker, f = make()
    p, _ = connect(f)
    registry_of(broker).set_publishing_blocked(True, "memory")
    q, _ = connect(f)
    assert ("blocked", True, "memory") in p.session.events
    assert ("blocked", True, "memory") in q.session.events
    registry_of(broker).set_publishing_blocked(False)
    assert p.session.events[-1] == ("blocked", False, "")


def test_pause_reading_nests():
    clock, broker, f = make()
    p, t = connect(f)
    p.pause_reading()
    p.pause_reading()
    p.resume_reading()
    assert t.producerState == "paused"
    p.resume_reading()
    assert t.producerState == "producing"


# -- the length-prefixed framer ----------------------------------------------------------------


def frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.lists(st.integers(1, 50), max_size=40),
    st.booleans(),
)
def test_framer_gives_the_same_frames_however_the_bytes_are_split(bodies, cuts, views):
    data = b"".join(frame(b) for b in bodies)
    framer = LengthPrefixedFramer(1000, views=views)
    got = []
    pos = 0
    for n in cuts:
        got += [bytes(x) for x in framer.feed(data[pos : pos + n])]
        pos += n
    got += [bytes(x) for x in framer.feed(data[pos:])]
    assert got == bodies
    assert framer.buffered == 0


def test_framer_completes_a_held_frame_from_the_next_read():
    """A read that ends mid-frame (mid-header too): the next read completes that frame and
    its own frames follow, as bytes (or views that later reads leave intact)."""
    data = frame(b"first") + frame(b"second") + frame(b"third")
    for cut in (3, 4, 8):  # inside the 2nd frame's header, at its body, inside its body
        for views in (False, True):
            framer = LengthPrefixedFramer(100, views=views)
            got = framer.feed(data[: len(frame(b"first")) + cut])
            assert framer.buffered == cut
            got += framer.feed(data[len(frame(b"first")) + cut :])
            got += framer.feed(frame(b"fourth")[:2])
            assert [bytes(x) for x in got] == [b"first", b"second", b"third"]
            assert all(isinstance(x, memoryview if views else bytes) for x in got)
            assert framer.buffered == 2


def test_framer_refuses_an_oversized_frame_before_keeping_its_bytes():
    framer = LengthPrefixedFramer(100)
    assert framer.feed(frame(b"ok") + struct.pack(">i", 10**8)[:3]) == [b"ok"]
    with pytest.raises(FrameTooLarge):
        framer.feed(b"\x00" + b"x" * 10)
    with pytest.raises(ProtocolError):
        LengthPrefixedFramer(100).feed(struct.pack(">i", -5))


def test_framer_waits_for_a_large_frame_without_rejoining_it_each_read():
    framer = LengthPrefixedFramer(10**7)
    body = bytes(range(256)) * 4000
    data = frame(body)
    out = []
    for i in range(0, len(data), 4096):
        out += framer.feed(data[i : i + 4096])
        assert framer.buffered <= len(data)
    assert out == [body]


def test_protocol_counts_span_listeners_while_limits_stay_per_listener():
    clock, broker, plain = make({"max_connections": 1})
    tls = plain.sibling({"listener_name": "line+tls", "tls": True})
    connect(plain)
    p, t = connect(plain)
    assert p.session is None and t.disconnecting  # the plain listener's own limit
    q, _ = connect(tls)
    assert q.session is not None and q.info.tls  # another listener, its own count
    reg = registry_of(broker)
    assert reg.count("line") == 2 and reg.count() == 2
