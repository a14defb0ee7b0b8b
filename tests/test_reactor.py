"""The reactor of ``polymq serve`` (core/reactor.py): events dispatched without the legacy
logging context still reach their handlers, and a handler that raises loses only its own
connection."""

from __future__ import annotations

import socket
import time

from twisted.internet import protocol

from polymq.core.reactor import EPollReactor


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise RuntimeError("handler failure")
        self.transport.write(data)


def _recv(reactor, sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reactor.iterate(0.01)
        try:
            data = sock.recv(100)
        except BlockingIOError:
            continue
        return data
    raise AssertionError("no answer")


def test_events_reach_handlers_and_a_failing_handler_loses_only_its_connection():
    reactor = EPollReactor()
    factory = protocol.ServerFactory.forProtocol(Echo)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        good = socket.create_connection(("127.0.0.1", port.getHost().port))
        bad = socket.create_connection(("127.0.0.1", port.getHost().port))
        good.sendall(b"hello")
        assert _recv(reactor, good) == b"hello"
        bad.sendall(b"boom")
        assert _recv(reactor, bad) == b""  # closed by the reactor after the failure
        good.sendall(b"still here")
        assert _recv(reactor, good) == b"still here"
        good.close()
        bad.close()
    finally:
        port.stopListening()
        for _ in range(5):
            reactor.iterate(0.01)


class Gathering(protocol.Protocol):
    """Writes its answer only at the end of the reactor turn (as adapters/output.py does)."""

    def dataReceived(self, data: bytes) -> None:
        self.got = getattr(self, "got", b"") + data
        self.factory.reactor.call_at_turn_end(self._answer)

    def _answer(self) -> None:
        if self.got:
            self.transport.write(b"[" + self.got + b"]")
            self.got = b""


def test_turn_end_calls_run_after_the_events_of_the_turn():
    reactor = EPollReactor()
    factory = protocol.ServerFactory.forProtocol(Gathering)
    factory.reactor = reactor
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        sock = socket.create_connection(("127.0.0.1", port.getHost().port))
        sock.sendall(b"one")
        assert _recv(reactor, sock) == b"[one]"
        order = []
        reactor.callLater(0, lambda: reactor.call_at_turn_end(lambda: order.append("end")))
        reactor.callLater(0, lambda: order.append("timed"))
        reactor.iterate(0)
        assert order == ["timed", "end"]
        sock.close()
    finally:
        port.stopListening()
        for _ in range(5):
            reactor.iterate(0.01)
