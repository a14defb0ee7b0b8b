"""The reactor-side half shared by the stores that write from a thread (sqlite, postgres).

Every write method appends an operation tuple ``(kind, params)`` to the current batch; once an
``after_durable`` callback waits for it, the batch is flushed on the next reactor turn
(``callLater(0)``); writes nobody waits for yet (consumer acks, publishes without confirms)
wait up to ``lazy_flush_ms`` (or ``lazy_flush_ops`` operations) so that a callback arriving
meanwhile takes them along. A message put and its delete in the same batch cancel each other
(the data is never written). A flush hands ``(operations, callbacks, failure callbacks)`` to
the writer thread through a queue; the subclass's writer thread commits and reports back on
the reactor thread through :meth:`WriterStore._committed`, :meth:`WriterStore._write_failed`,
:meth:`WriterStore._fatal`, :meth:`WriterStore._opened` and :meth:`WriterStore._closed`.

States: new → opening → open → closing → closed; failed after a fatal write error (nothing is
reported durable any more, later writes are dropped, ``on_fatal(exc)`` runs: by default the
reactor stops) or when open fails.

A store may also be *unavailable* (``reports_write_failures``; the postgres store when its
database stays away): the batches waiting get their ``failed(exc)`` callbacks instead, writes
go on, and :meth:`WriterStore._available_again` ends it; ``on_availability(available, reason)``
tells the broker.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

# operation kinds: the same numbers in both stores (postgres_schema repeats them)
from .sqlite_sql import (
    _APPEND_STREAM,
    _DEL_BINDING,
    _DEL_EXCHANGE,
    _DEL_KV,
    _DEL_MESSAGE,
    _DEL_QUEUE,
    _DEL_SCHEDULED,
    _PUT_BINDING,
    _PUT_EXCHANGE,
    _PUT_KV,
    _PUT_MESSAGE,
    _PUT_QUEUE,
    _PUT_SCHEDULED,
    _TRIM_STREAM,
    _pack,
    _pack_args,
)

__all__ = ["WriterStore", "StoreFailedError", "default_on_fatal", "CLOSE"]

CLOSE = object()  # writer-queue item: commit what came before, then end the thread
NEW, OPENING, OPEN, CLOSING, CLOSED, FAILED = range(6)


class StoreFailedError(Exception):
    """The store hit an unrecoverable write error; nothing after it was made durable."""


def default_on_fatal(exc: BaseException) -> None:
    """Stop the reactor: the broker cannot keep its promises any more."""
    from twisted.internet import reactor

    if reactor.running:  # type: ignore[attr-defined]
        reactor.stop()  # type: ignore[attr-defined]


class WriterStore:
    """Batching, lazy flush, ``after_durable`` and the lifecycle of a store with a writer thread.

    Subclasses call :meth:`_init_writer` from ``__init__``, set ``label`` (``"sqlite store
    <path>"``: the start of every log line) and ``log``, and implement ``_run`` (the writer
    thread's body). Counters (reactor thread): ``flushes`` batches handed to the writer,
    ``cancelled`` message puts cancelled by a delete in the same batch, ``dropped_after_close``
    writes ignored because the store was closing, closed or failed.
    """

    reports_write_failures = False
    label = "store"
    log = Logger(namespace="polymq.store")

    def _init_writer(
        self,
        *,
        clock: Any,
        on_fatal: Callable[[BaseException], None] | None,
        lazy_flush_ms: float,
        lazy_flush_ops: int,
        thread_name: str,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        from twisted.internet import reactor

        self.lazy_flush = max(0.0, float(lazy_flush_ms)) / 1000.0
        self.lazy_flush_ops = max(1, int(lazy_flush_ops))
        self.on_fatal: Callable[[BaseException], None] = on_fatal or default_on_fatal
        # (reactor thread) False with a reason when writes are failed back, True when not
        self.on_availability: Callable[[bool, str], None] | None = None
        self._clock = clock
        self._call_from_thread = getattr(clock, "callFromThread", reactor.callFromThread)
        self._thread_name = thread_name

        self.flushes = 0
        self.cancelled = 0
        self.dropped_after_close = 0
        self.failed_batches = 0
        self.outages = 0

        # reactor side
        self._state = NEW
        self._ops: list[tuple[int, tuple] | None] = []
        self._callbacks: list[Callable[[], None]] = []
        self._failbacks: list[Callable[[BaseException], None]] = []
        self._puts: dict[tuple[str, str, int], int] = {}  # message key -> index in _ops
        self._flush_call: Any = None
        self._flush_lazy = False  # the scheduled flush is the lazy one (no callback waits)
        self._inflight = 0  # batches handed to the writer whose callbacks have not run yet
        self._unavailable = False  # writes failed back, kept by the writer until it is back
        self._open_d: defer.Deferred | None = None
        self._close_d: defer.Deferred | None = None
        self._close_waiters: list[defer.Deferred] = []
        self._failure: BaseException | None = None
        self._open_failed = False

        # writer side
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:  # pragma: no cover - every store has its own
        raise NotImplementedError

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> defer.Deferred:
        """Open in the writer thread; fire with a :class:`~.interfaces.StoreSnapshot`."""
        from .sqlite_open import StoreOpenError

        if self._state != NEW:
            return defer.fail(StoreOpenError(f"{self.label} was already opened"))
        self._state = OPENING
        d: defer.Deferred = defer.Deferred()
        self._open_d = d
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        return d

    def close(self) -> defer.Deferred:
        """Commit every queued write, close, end the writer thread; return a Deferred."""
        if self._state in (NEW, CLOSED) or self._open_failed:
            self._state = CLOSED
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._close_waiters.append(d)
        if self._state == CLOSING or (self._state == FAILED and self._close_d is not None):
            return d
        self._flush()
        if self._state != FAILED:
            self._state = CLOSING
        self._close_d = d
        self._q.put(CLOSE)
        return d

    # ------------------------------------------------------------------ writes (reactor thread)

    def _write(self, kind: int, params: tuple) -> None:
        if self._state >= CLOSING:
            self._dropped(kind)
            return
        self._ops.append((kind, params))
        if self._flush_call is None or (self._flush_lazy and len(self._ops) >= self.lazy_flush_ops):
            self._schedule_lazy()

    def put_exchange(self, vhost: str, name: str, record: dict) -> None:
        self._write(_PUT_EXCHANGE, (vhost, name, _pack(record)))

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._write(_DEL_EXCHANGE, (vhost, name))

    def put_queue(self, vhost: str, name: str, record: dict) -> None:
        self._write(_PUT_QUEUE, (vhost, name, _pack(record)))

    def delete_queue(self, vhost: str, name: str) -> None:
        self._write(_DEL_QUEUE, (vhost, name))

    def put_binding(
        self, vhost: str, source: str, kind: str, destination: str, key: str, arguments: dict
    ) -> None:
        self._write(_PUT_BINDING, (vhost, source, kind, destination, key, _pack_args(arguments)))

    def delete_binding(
        self, vhost: str, source: str, kind: str, destination: str, key: str, arguments: dict
    ) -> None:
        self._write(_DEL_BINDING, (vhost, source, kind, destination, key, _pack_args(arguments)))

    def append_stream(
        self,
        vhost: str,
        stream: str,
        partition: int,
        offset: int,
        count: int,
        timestamp: int,
        fmt: str,
        data: bytes,
    ) -> None:
        self._write(_APPEND_STREAM, (vhost, stream, partition, offset, count, timestamp, fmt, data))

    def trim_stream(self, vhost: str, stream: str, partition: int, before_offset: int) -> None:
        self._write(_TRIM_STREAM, (vhost, stream, partition, before_offset))

    def put_kv(self, namespace: str, key: str, value: bytes) -> None:
        self._write(_PUT_KV, (namespace, key, value))

    def delete_kv(self, namespace: str, key: str) -> None:
        self._write(_DEL_KV, (namespace, key))

    def put_scheduled(self, job_id: int, due: int, record: bytes) -> None:
        self._write(_PUT_SCHEDULED, (job_id, due, record))

    def delete_scheduled(self, job_id: int) -> None:
        self._write(_DEL_SCHEDULED, (job_id,))

    def _put_message_op(self, key: tuple[str, str, int], params: tuple) -> None:
        """A message put; an older version of the same message in this batch is superseded."""
        if self._state >= CLOSING:
            self._dropped(_PUT_MESSAGE)
            return
        ops = self._ops
        old = self._puts.get(key)
        if old is not None:
            ops[old] = None
        self._puts[key] = len(ops)
        ops.append((_PUT_MESSAGE, params))
        if self._flush_call is None or (self._flush_lazy and len(ops) >= self.lazy_flush_ops):
            self._schedule_lazy()

    def delete_message(self, vhost: str, queue: str, seq: int) -> None:
        if self._state >= CLOSING:
            self._dropped(_DEL_MESSAGE)
            return
        ops = self._ops
        i = self._puts.pop((vhost, queue, seq), None)
        if i is not None:
            # Put and delete in the same unflushed batch: the data is never written. The
            # delete stays (a cheap primary-key miss when the row does not exist) because an
            # earlier, already flushed batch may have written the message.
            ops[i] = None
            self.cancelled += 1
        ops.append((_DEL_MESSAGE, (vhost, queue, seq)))
        if self._flush_call is None or (self._flush_lazy and len(ops) >= self.lazy_flush_ops):
            self._schedule_lazy()

    def _schedule_lazy(self) -> None:
        """Schedule the flush of a batch nobody waits for yet (no ``after_durable`` callback).

        Such writes (consumer acks, writes of publishers without confirms) are held up to
        ``lazy_flush_ms`` (or until ``lazy_flush_ops`` operations are pending): a callback
        registered meanwhile takes them along in its own commit, instead of queueing behind a
        commit of theirs. Nobody was promised anything about them, so this costs no durability.
        """
        call = self._flush_call
        if call is not None and call.active():
            call.cancel()
        if self._callbacks or len(self._ops) >= self.lazy_flush_ops or not self.lazy_flush:
            self._flush_call = self._clock.callLater(0, self._flush)
            self._flush_lazy = False
        else:
            self._flush_call = self._clock.callLater(self.lazy_flush, self._flush)
            self._flush_lazy = True

    def _dropped(self, kind: int) -> None:
        self.dropped_after_close += 1
        if self.dropped_after_close == 1:
            self.log.warn(
                "{label} is {state}: write ignored (kind {kind}); further ignored writes are"
                " only counted",
                label=self.label,
                state="failed" if self._state == FAILED else "closed",
                kind=kind,
            )

    def after_durable(
        self,
        callback: Callable[[], None],
        failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Call ``callback`` (reactor thread) once every write issued before it is committed;
        ``failed(exc)`` instead if the store reports write failures and could not."""
        state = self._state
        if state >= CLOSING:
            if state == FAILED or self.dropped_after_close:
                self.log.warn(
                    "{label}: after_durable callback dropped (store {state})",
                    label=self.label,
                    state="failed" if state == FAILED else "closed with dropped writes",
                )
                return
            if state == CLOSED:
                callback()
                return
            if self._close_d is not None:  # closing: runs once the last batches committed

                def run(result: Any) -> Any:
                    callback()
                    return result

                self._close_d.addCallback(run)
            return
        if not self._ops and not self._callbacks and self._inflight == 0 and not self._unavailable:
            callback()
            return
        self._callbacks.append(callback)
        if failed is not None:
            self._failbacks.append(failed)
        call = self._flush_call
        if call is None:
            self._flush_call = self._clock.callLater(0, self._flush)
        elif self._flush_lazy:  # someone waits now: flush this turn, not after the delay
            if call.active():
                call.cancel()
            self._flush_call = self._clock.callLater(0, self._flush)
            self._flush_lazy = False

    # ------------------------------------------------------------------ flush (reactor thread)

    def _flush(self) -> None:
        call, self._flush_call = self._flush_call, None
        self._flush_lazy = False
        if call is not None and call.active():
            call.cancel()
        if not self._ops and not self._callbacks:
            return
        ops, callbacks, failbacks = self._ops, self._callbacks, self._failbacks
        self._ops, self._callbacks, self._failbacks, self._puts = [], [], [], {}
        if self._state == FAILED:
            return  # never report durable; the writes are lost (already logged)
        self._inflight += 1
        self.flushes += 1
        self._q.put((ops, callbacks, failbacks))

    # ------------------------------------------------------------------ reports (reactor thread)

    def _apply_stats(self, stats: tuple) -> None:
        """Counters the writer thread keeps, copied on the reactor thread (postgres)."""

    def _committed(
        self, nbatches: int, callbacks: list[Callable[[], None]], stats: tuple | None = None
    ) -> None:
        """The batches are durable; run their callbacks in order."""
        self._inflight -= nbatches
        if stats is not None:
            self._apply_stats(stats)
        for cb in callbacks:
            try:
                cb()
            except Exception:
                self.log.failure("after_durable callback {cb!r} failed", cb=cb)

    def _write_failed(
        self, nbatches: int, failbacks: list[Callable[[BaseException], None]], exc: BaseException
    ) -> None:
        """The batches could not be made durable in time; their waiters answer negatively."""
        self._inflight -= nbatches
        self.failed_batches += nbatches
        if not self._unavailable:
            self._unavailable = True
            self.outages += 1
            self.log.error(
                "{label}: the database is unavailable; writes are answered negatively and kept"
                " until it is back: {exc}",
                label=self.label,
                exc=one_line(exc),
            )
            self._availability(False, "store unavailable")
        for fb in failbacks:
            try:
                fb(exc)
            except Exception:
                self.log.failure("after_durable failure callback {fb!r} failed", fb=fb)

    def _available_again(self, stats: tuple | None = None) -> None:
        """The writes kept during the outage are durable."""
        if stats is not None:
            self._apply_stats(stats)
        if not self._unavailable:
            return
        self._unavailable = False
        self.log.info("{label}: the database is back", label=self.label)
        self._availability(True, "")

    def _availability(self, available: bool, reason: str) -> None:
        if self.on_availability is not None:
            try:
                self.on_availability(available, reason)
            except Exception:
                self.log.failure("{label}: on_availability handler failed", label=self.label)

    def _opened(self, snapshot: Any, error: BaseException | None) -> None:
        d, self._open_d = self._open_d, None
        if error is not None:
            self._state = FAILED
            self._open_failed = True
            self._failure = error
            if self._thread is not None:
                self._thread.join(1.0)
                self._thread = None
            self._ops, self._callbacks, self._failbacks, self._puts = [], [], [], {}
            self.log.error("{label} failed to open: {error}", label=self.label, error=error)
            if d is not None:
                d.errback(error)
            waiters, self._close_waiters = self._close_waiters, []
            self._close_d = None
            for w in waiters:  # close() was called while opening
                w.callback(None)
            return
        if self._state == OPENING:
            self._state = OPEN
        self.log.info("{label} opened", label=self.label)
        if d is not None:
            d.callback(snapshot)

    def _fatal(self, exc: BaseException) -> None:
        """The writer gave up on a batch: nothing more is reported durable."""
        self._state = FAILED
        self._failure = exc
        self._ops, self._callbacks, self._failbacks, self._puts = [], [], [], {}
        self.log.critical(
            "{label}: write failed, nothing more will be reported durable: {exc}",
            label=self.label,
            exc=one_line(exc),
        )
        try:
            self.on_fatal(exc)
        except Exception:
            self.log.failure("{label}: on_fatal handler failed", label=self.label)

    def _closed_details(self) -> str:
        """What the close line adds after the common counters."""
        return ""

    def _closed(self, stats: tuple | None = None) -> None:
        if stats is not None:
            self._apply_stats(stats)
        self._close_d = None
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None
        waiters, self._close_waiters = self._close_waiters, []
        if self._state == FAILED:
            for d in waiters:
                d.errback(StoreFailedError(str(self._failure)))
            return
        self._state = CLOSED
        self.log.info(
            "{label} closed ({commits} commits, {flushes} flushes, {ops} operations written{more})",
            label=self.label,
            commits=getattr(self, "commits", 0),
            flushes=self.flushes,
            ops=getattr(self, "ops_written", 0),
            more=self._closed_details(),
        )
        for d in waiters:
            d.callback(None)


def one_line(exc: BaseException) -> str:
    """An exception as one line (PostgreSQL errors span several)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__
