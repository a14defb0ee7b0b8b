"""Password hashes off the reactor thread: a small thread pool with a bounded wait list.

A PBKDF2 verification costs 0.1-0.7 s of CPU; run on the reactor it would stall every client
for that long, at each first login and each failed one. :class:`HashPool` runs them in at most
``threads`` threads (hashlib releases the GIL, so two threads verify two passwords at once) and
lets at most ``max_waiting`` more wait their turn: a login flood gets a refusal beyond that,
never an unbounded queue. Each waiting login is a connection whose reading is paused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class HashPool:
    """``run(f, *args)``: a Deferred of ``f(*args)`` computed in a thread, or None when
    ``threads + max_waiting`` hashes are already under way (the caller refuses the login)."""

    def __init__(self, reactor: Any, threads: int = 2, max_waiting: int = 64) -> None:
        self.reactor = reactor
        self.threads = max(1, int(threads))
        self.max_waiting = max(0, int(max_waiting))
        self._pool = ThreadPool(minthreads=0, maxthreads=self.threads, name="polymq-password")
        self._slots = DeferredSemaphore(self.threads)
        self.hashed = 0  # hashes finished since start
        self.turned_away = 0  # logins refused because the wait list was full
        self._started = False

    @property
    def busy(self) -> int:
        """Hashes running now."""
        return self.threads - self._slots.tokens

    @property
    def waiting(self) -> int:
        """Hashes waiting for a thread."""
        return len(self._slots.waiting)

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._pool.start()

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._pool.stop()

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred | None:
        if len(self._slots.waiting) >= self.max_waiting and not self._slots.tokens:
            self.turned_away += 1
            return None
        self.start()
        d = self._slots.run(deferToThreadPool, self.reactor, self._pool, f, *args)

        def counted(result: Any) -> Any:
            self.hashed += 1
            return result

        return d.addBoth(counted)
