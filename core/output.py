"""Output of a connection gathered per reactor turn and sent straight to its socket.

Twisted's ``transport.write`` only buffers: a connection whose buffer was empty is registered
for writability (one ``epoll_ctl``), sent to one poll later, and unregistered once its buffer
is empty (another ``epoll_ctl``), each step a trip through the reactor's logging context. When
every message is answered on a connection of its own (synchronous JMS producers, one per
connection, each waiting for its response) that costs more than the ``send`` itself.

A :class:`SocketWriter` gathers what a connection writes during one reactor turn (or read,
see :class:`_Turn`) and then sends it with one ``send`` from the reactor thread, if the transport
has nothing buffered (else, and for whatever the kernel does not take, through
``transport.write``, so Twisted's buffering, back-pressure and error handling apply as
before). Past ``FLUSH_BYTES`` (or the writer's own ``flush_bytes``) a writer flushes at once,
so that a full socket still pauses the connection's producers in time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

FLUSH_BYTES = 65536


class _Turn:
    """The writers with output pending. They are flushed at the end of the reactor turn when
    the reactor offers a hook for it (``call_at_turn_end``, polymq's own reactor: the output
    of every event of one poll leaves together); otherwise when the outermost read ends or,
    for writes made outside any read (timers, store callbacks), at the next reactor turn."""

    def __init__(self) -> None:
        self.dirty: list[SocketWriter] = []
        self.reading = 0
        self.scheduled = False
        self.call: Any = None

    def schedule(self, clock: Any) -> None:
        if self.scheduled:
            return
        at_end = getattr(clock, "call_at_turn_end", None)
        if at_end is not None:
            at_end(self.flush_all)
            self.scheduled = True
        elif not self.reading:
            self.call = clock.callLater(0, self.flush_all)
            self.scheduled = True
        # else: flushed when the outermost read ends

    def flush_all(self) -> None:
        self.scheduled = False
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()
        dirty = self.dirty
        while dirty:
            writers = dirty[:]
            dirty.clear()
            for w in writers:
                w.flush()


_turn = _Turn()


def current_turn() -> _Turn:
    """The writers of this reactor turn (a read marks itself in ``reading`` while it runs)."""
    return _turn


class reading:
    """Context of one ``dataReceived`` (see :class:`_Turn`)."""

    __slots__ = ()

    def __enter__(self) -> None:
        _turn.reading += 1

    def __exit__(self, *exc: Any) -> None:
        _turn.reading -= 1
        # flushed now unless the reactor's turn-end hook will (a pending callLater may belong
        # to a clock nobody advances: a test's, or one replaced since)
        if not _turn.reading and _turn.dirty and (not _turn.scheduled or _turn.call is not None):
            _turn.flush_all()


class SocketWriter:
    """The output side of one connection (see the module docstring)."""

    __slots__ = ("transport", "clock", "flush_bytes", "_sock", "_out", "_out_len")

    def __init__(self, transport: Any, clock: Any, flush_bytes: int = FLUSH_BYTES) -> None:
        self.transport = transport
        self.clock = clock
        self.flush_bytes = flush_bytes
        # only a plain TCP connection is sent to directly (TLS and test transports buffer)
        self._sock = transport.socket if isinstance(transport, tcp.Connection) else None
        self._out: list[bytes] = []
        self._out_len = 0

    def write(self, data: bytes) -> None:
        out = self._out
        if not out:
            _turn.dirty.append(self)
            _turn.schedule(self.clock)
        out.append(data)
        self._out_len += len(data)
        if self._out_len >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_len = 0
        t = self.transport
        sock = self._sock
        if (
            sock is not None
            and t.connected
            and not t.disconnecting
            and not t._tempDataBuffer
            and len(t.dataBuffer) == t.offset
        ):
            try:
                sent = sock.send(data)
            except OSError:  # EAGAIN, or an error Twisted reports on its own write
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        t.write(data)


def flush_pending() -> None:
    """Send what every writer has gathered now (tests; shutdown)."""
    _turn.flush_all()
