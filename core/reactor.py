"""The reactor ``polymq serve`` runs on: Twisted's epoll reactor, less one cost per I/O event.

For every ready descriptor, Twisted's ``doPoll`` calls ``log.callWithLogger``, which asks the
descriptor for its log prefix and runs the handler inside a fresh legacy logging context (a
dict copied and pushed and popped). Nothing in polymq logs through that legacy context (every
module uses ``twisted.logger.Logger`` with its own namespace), and when each message arrives on
a connection of its own (synchronous producers) that wrapper costs several microseconds per
message. :class:`EPollReactor` dispatches events directly and logs what escapes a handler.
It also runs calls registered for the end of the turn (``call_at_turn_end``), after the events
of one poll or the timed calls of one pass: adapters gather their output until then.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import epollreactor
from twisted.logger import Logger

log = Logger(namespace="polymq.reactor")


class EPollReactor(epollreactor.EPollReactor):
    def __init__(self) -> None:
        super().__init__()
        self._turn_end: list[Callable[[], Any]] = []

    def call_at_turn_end(self, f: Callable[[], Any]) -> None:
        """Call ``f`` once the events of the current poll (or the timed and thread calls now
        running) are handled: output gathered over one turn leaves with one write."""
        self._turn_end.append(f)

    def _run_turn_end(self) -> None:
        while self._turn_end:
            calls, self._turn_end = self._turn_end, []
            for f in calls:
                try:
                    f()
                except Exception:
                    log.failure("reactor: turn-end call {f!r} failed", f=f)

    def runUntilCurrent(self) -> None:
        super().runUntilCurrent()
        if self._turn_end:
            self._run_turn_end()

    def doPoll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except Exception:  # _doReadOrWrite already reports a handler's own errors
                log.failure(
                    "reactor: event {event} on {selectable!r}", event=event, selectable=selectable
                )
        if self._turn_end:
            self._run_turn_end()

    doIteration = doPoll


def install() -> Any:
    """Install :class:`EPollReactor` as the global reactor (where epoll exists; otherwise
    Twisted's default is kept). Returns the reactor."""
    try:
        reactor = EPollReactor()
    except (AttributeError, OSError):  # no epoll on this platform
        from twisted.internet import reactor as default

        return default
    from twisted.internet.main import installReactor

    installReactor(reactor)
    return reactor
