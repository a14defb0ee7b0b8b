"""The timers of a connection, whatever its protocol: the handshake timeout, liveness (the
idle timeout and keep-alives), lingering after an error answer, and TCP keep-alive on the socket.

:class:`ConnectionTimers` is a part of :class:`~polymq.core.connection.ProtocolConnection` (a
mixin); it supplies the state the timers use.
"""

from __future__ import annotations

import socket
from typing import Any

from .errors import IdleTimeout, ProtocolError

__all__ = ["ConnectionTimers", "set_tcp_keepalive"]


def set_tcp_keepalive(transport: Any, idle: int) -> None:
    """Have the kernel probe the peer after ``idle`` silent seconds (6 probes 10 s apart)."""
    sock = getattr(transport, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    except OSError:
        pass


class ConnectionTimers:
    """The timer methods of :class:`~polymq.core.connection.ProtocolConnection`."""

    def linger(self, timeout: float) -> None:
        """Called from ``protocol_error`` / ``internal_error``: keep the connection open after
        the answer, until the session calls :meth:`close` or ``timeout`` seconds pass (a
        protocol whose close is a handshake, such as AMQP's connection.close / close-ok).
        Reads still reach the session meanwhile, so the client's last frames are read rather
        than reset; a second error while lingering closes at once."""
        if self.closing or self._linger_timer is not None:
            return
        self._linger_timer = self.clock.callLater(timeout, self.close, True)

    def set_liveness(self, read_timeout: float, keepalive: float = 0.0) -> None:
        """Close the connection after ``read_timeout`` seconds without a byte from the client
        (0: never), and call ``session.keepalive()`` when nothing was written for
        ``keepalive`` seconds (0: never). Replaces the listener's ``idle_timeout``."""
        self._read_timeout = float(read_timeout or 0)
        self._keepalive_interval = float(keepalive or 0)
        if self._liveness_timer is not None and self._liveness_timer.active():
            self._liveness_timer.cancel()
        self._liveness_timer = None
        self._arm_liveness()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        self.call_session(
            self._raise, ProtocolError(f"no handshake within {self.factory.handshake_timeout:g} s")
        )

    @staticmethod
    def _raise(error: Exception) -> None:
        raise error

    def _arm_liveness(self) -> None:
        if self.closing:
            return
        steps = [x for x in (self._read_timeout, self._keepalive_interval) if x > 0]
        if not steps:
            return
        # wake at the nearest deadline (at least 10 ms ahead)
        now = self.clock.seconds()
        due = []
        if self._read_timeout > 0:
            due.append(self._last_read + self._read_timeout - now)
        if self._keepalive_interval > 0:
            due.append(self._last_write + self._keepalive_interval - now)
        self._liveness_timer = self.clock.callLater(max(min(due), 0.01), self._check_liveness)

    def _check_liveness(self) -> None:
        self._liveness_timer = None
        if self.closing:
            return
        now = self.clock.seconds()
        if self._reading_paused:
            # not read on purpose (flow control): the silence is ours, not the client's
            self._last_read = now
        if self._read_timeout > 0 and now - self._last_read >= self._read_timeout:
            silent = now - self._last_read
            self.call_session(self._raise, IdleTimeout(f"nothing received for {silent:.1f} s"))
            return
        if self._keepalive_interval > 0 and now - self._last_write >= self._keepalive_interval:
            self.call_session(self.session.keepalive)
            # after the call: write() sets the cheap "recently" (the last read), which for a
            # silent client is long ago and would bring the next keep-alive due at once
            self._last_write = now
        self._arm_liveness()

    def _cancel_timers(self) -> None:
        for name in ("_handshake_timer", "_liveness_timer", "_linger_timer"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, None)
                if t.active():
                    t.cancel()
