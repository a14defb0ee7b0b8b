"""The ``postgres`` store: broker state in a PostgreSQL database (psycopg 3).

Same semantics as the sqlite store (see ``sqlite.py`` and docs/storage.md); the schema is in
``postgres_schema.py``.

Threading model
---------------
The reactor thread never talks to the database. Every write method appends an operation tuple
to the current batch; once an ``after_durable`` callback waits for it, the batch is flushed on
the next reactor turn (``callLater(0)``); writes nobody waits for yet (consumer acks, publishes
without confirms) wait up to ``lazy_flush_ms`` so that a callback arriving meanwhile takes them
along. A message put and its delete in the same batch cancel each other (nothing is written).
A flush hands (operations, callbacks) to the writer thread through a queue. The writer thread
owns one connection: it takes every batch waiting and writes them in one transaction, usually
a single statement (see ``postgres_sql.py``) run in autocommit mode, otherwise statements
between BEGIN and COMMIT; then it hands the callbacks of all those batches to the reactor with
one ``callFromThread``.

Every write transaction starts with the statements of :meth:`PostgresStore._write_guard` (none
yet: where a shared-store failover adds its lease/epoch check, so that a deposed node's commit
fails; a guard makes every commit a BEGIN ... COMMIT transaction).

Failure model
-------------
* ``open()`` fails with :class:`StoreOpenError` (one line) when the server cannot be reached,
  the credentials are wrong, the server is read-only (a standby), the schema was written by a
  newer polymq, or another store holds the schema (session advisory lock).
* Connection loss (server restart, ``pg_terminate_backend``, network) and other operational
  errors: the writer reconnects and retries the same batches. Every statement is idempotent
  (upserts, deletes, inserts that skip existing entries), so a batch whose commit happened
  but was not reported is simply applied again. Callbacks run only after a commit succeeded.
* If the database stays unusable for ``reconnect_timeout_s``, the store is *unavailable*: the
  batches waiting get their ``failed(exc)`` callbacks (``after_durable(callback, failed)``;
  the protocols send their negative answers) and their plain callbacks never run; the
  broker keeps serving. The writes themselves are kept and written, in order, before anything
  newer once the database answers again, so the database catches up with the broker's memory
  (what a client resends after a negative answer may then be there twice: at least once).
  While unavailable, each new batch gets one connection attempt before it is failed, and the
  writer tries every ``retry_interval_s`` on its own; ``on_availability(False/True, reason)``
  reports the change (the broker holds publishers back meanwhile).
* A batch that fails ``retries`` times with another error (bad data: a bug) makes the store
  *failed*: no callback ever runs again (nothing unconfirmed is reported durable), later
  writes are dropped, ``on_fatal(exc)`` is called (default: stop the reactor, so every client
  connection closes and clients resend what was not confirmed).
* A commit that PostgreSQL reports with the warning "canceling wait for synchronous
  replication" (it is committed locally but maybe not on the standby) is treated as failed and
  retried.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from . import postgres_schema as S
from .interfaces import IStore, StoreSnapshot
from .postgres_sql import Statements
from .sqlite import StoreFailedError, _default_on_fatal
from .sqlite_open import StoreOpenError
from .sqlite_sql import _pack, _pack_args, _unpack

__all__ = ["PostgresStore", "StoreOpenError", "StoreFailedError", "SCHEMA_VERSION"]

log = Logger(namespace="polymq.store.postgres")

SCHEMA_VERSION = S.SCHEMA_VERSION

_CLOSE = object()
_NEW, _OPENING, _OPEN, _CLOSING, _CLOSED, _FAILED = range(6)

_KIND = itemgetter(0)
_PARAMS = itemgetter(1)
_OPS = itemgetter(0)
_CALLBACKS = itemgetter(1)
_FAILBACKS = itemgetter(2)

_SYNC_REP_CANCEL = "canceling wait for synchronous replication"


class _Retry(Exception):
    """A commit that cannot be trusted although the server said COMMIT (sync-rep cancel)."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def _decode(b: bytes) -> str:
    return bytes(b).decode("utf-8", "surrogatepass")


def describe_dsn(dsn: str) -> str:
    """The DSN's host, port, database and user (never the password), for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return "(psycopg missing)"
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable dsn)"
    keys = ("host", "hostaddr", "port", "dbname", "user")
    return " ".join(f"{k}={params[k]}" for k in keys if params.get(k)) or "(libpq defaults)"


@implementer(IStore)
class PostgresStore:
    """Durable store in PostgreSQL; see the module docstring for the threading and failure model.

    Counters (reactor thread; for tests and metrics): ``commits`` transactions committed,
    ``flushes`` batches handed to the writer, ``ops_written`` operations executed,
    ``cancelled`` message puts cancelled by a delete in the same batch, ``reconnects``
    connections re-established after a loss, ``retried`` batches run again after an error.
    """

    name = "postgres"
    reports_write_failures = True  # after_durable(callback, failed): see the module docstring

    def __init__(
        self,
        dsn: str = "",
        *,
        schema: str = "polymq",
        connect_timeout_s: int = 5,
        reconnect_timeout_s: float = 30.0,
        lazy_flush_ms: float = 20.0,
        lazy_flush_ops: int = 10000,
        retries: int = 3,
        retry_interval_s: float = 1.0,
        clock: Any = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        **ignored: Any,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        from twisted.internet import reactor

        self.dsn = dsn
        self.schema = schema
        self.where = f"{describe_dsn(dsn)} schema={schema}"
        self.connect_timeout = max(1, int(connect_timeout_s))
        self.reconnect_timeout = max(0.0, float(reconnect_timeout_s))
        self.lazy_flush = max(0.0, float(lazy_flush_ms)) / 1000.0
        self.lazy_flush_ops = max(1, int(lazy_flush_ops))
        self.retries = int(retries)
        self.retry_interval = max(0.05, float(retry_interval_s))
        self.on_fatal: Callable[[BaseException], None] = on_fatal or _default_on_fatal
        # called (reactor thread) with (False, reason) when the database stays away and with
        # (True, "") when it is back; the broker holds publishers back in between
        self.on_availability: Callable[[bool, str], None] | None = None
        self._clock = clock
        self._call_from_thread = getattr(clock, "callFromThread", reactor.callFromThread)
        self._s = S.quote_ident(schema)
        self._statements = Statements(self._s).statements

        # counters
        self.commits = 0
        self.flushes = 0
        self.ops_written = 0
        self.cancelled = 0
        self.dropped_after_close = 0
        self.reconnects = 0
        self.retried = 0
        self.failed_batches = 0
        self.outages = 0

        # reactor side
        self._state = _NEW
        self._ops: list[tuple[int, tuple] | None] = []
        self._callbacks: list[Callable[[], None]] = []
        self._failbacks: list[Callable[[BaseException], None]] = []
        self._unavailable = False  # writes failed back, kept by the writer until it is back
        self._puts: dict[tuple[str, str, int], int] = {}
        self._flush_call: Any = None
        self._flush_lazy = False
        self._inflight = 0
        self._open_d: defer.Deferred | None = None
        self._close_d: defer.Deferred | None = None
        self._close_waiters: list[defer.Deferred] = []
        self._failure: BaseException | None = None
        self._open_failed = False

        # writer side
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._names: dict[str, bytes] = {}
        self._sync_rep_cancelled = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> defer.Deferred:
        """Connect, migrate and load in the writer thread; fire with a :class:`StoreSnapshot`."""
        if self._state != _NEW:
            return defer.fail(StoreOpenError(f"postgres store {self.where} was already opened"))
        self._state = _OPENING
        d: defer.Deferred = defer.Deferred()
        self._open_d = d
        self._thread = threading.Thread(
            target=self._run, name=f"polymq-postgres-writer:{self.schema}", daemon=True
        )
        self._thread.start()
        return d

    def close(self) -> defer.Deferred:
        """Commit every queued write, close the connection, end the thread; return a Deferred."""
        if self._state in (_NEW, _CLOSED) or self._open_failed:
            self._state = _CLOSED
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._close_waiters.append(d)
        if self._state == _CLOSING or (self._state == _FAILED and self._close_d is not None):
            return d
        self._flush()
        if self._state != _FAILED:
            self._state = _CLOSING
        self._close_d = d
        self._q.put(_CLOSE)
        return d

    # ------------------------------------------------------------------ writes (reactor thread)

    def _write(self, kind: int, params: tuple) -> None:
        if self._state >= _CLOSING:
            self._dropped(kind)
            return
        self._ops.append((kind, params))
        if self._flush_call is None or (self._flush_lazy and len(self._ops) >= self.lazy_flush_ops):
            self._schedule_lazy()

    def _schedule_lazy(self) -> None:
        """Flush this turn if a callback waits, else after ``lazy_flush_ms`` (see module doc)."""
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
            log.warn(
                "postgres store {where} is {state}: write ignored (kind {kind}); further ignored"
                " writes are only counted",
                where=self.where,
                state="failed" if self._state == _FAILED else "closed",
                kind=kind,
            )

    def put_exchange(self, vhost: str, name: str, record: dict) -> None:
        self._write(S.PUT_EXCHANGE, (vhost, name, _pack(record)))

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._write(S.DEL_EXCHANGE, (vhost, name))

    def put_queue(self, vhost: str, name: str, record: dict) -> None:
        self._write(S.PUT_QUEUE, (vhost, name, _pack(record)))

    def delete_queue(self, vhost: str, name: str) -> None:
        self._write(S.DEL_QUEUE, (vhost, name))

    def put_binding(
        self, vhost: str, source: str, kind: str, destination: str, key: str, arguments: dict
    ) -> None:
        self._write(S.PUT_BINDING, (vhost, source, kind, destination, key, _pack_args(arguments)))

    def delete_binding(
        self, vhost: str, source: str, kind: str, destination: str, key: str, arguments: dict
    ) -> None:
        self._write(S.DEL_BINDING, (vhost, source, kind, destination, key, _pack_args(arguments)))

    def put_message(
        self, vhost: str, queue: str, seq: int, data: bytes, delivery_count: int
    ) -> None:
        if self._state >= _CLOSING:
            self._dropped(S.PUT_MESSAGE)
            return
        ops = self._ops
        k = (vhost, queue, seq)
        old = self._puts.get(k)
        if old is not None:  # an older version of the same message in this batch: superseded
            ops[old] = None
        self._puts[k] = len(ops)
        ops.append((S.PUT_MESSAGE, (vhost, queue, seq, data, delivery_count)))
        if self._flush_call is None or (self._flush_lazy and len(ops) >= self.lazy_flush_ops):
            self._schedule_lazy()

    def delete_message(self, vhost: str, queue: str, seq: int) -> None:
        if self._state >= _CLOSING:
            self._dropped(S.DEL_MESSAGE)
            return
        ops = self._ops
        i = self._puts.pop((vhost, queue, seq), None)
        if i is not None:
            # put and delete in one unflushed batch: the data never goes to the database; the
            # delete stays because an earlier batch may have written the message
            ops[i] = None
            self.cancelled += 1
        ops.append((S.DEL_MESSAGE, (vhost, queue, seq)))
        if self._flush_call is None or (self._flush_lazy and len(ops) >= self.lazy_flush_ops):
            self._schedule_lazy()

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
        self._write(
            S.APPEND_STREAM, (vhost, stream, partition, offset, count, timestamp, fmt, data)
        )

    def trim_stream(self, vhost: str, stream: str, partition: int, before_offset: int) -> None:
        self._write(S.TRIM_STREAM, (vhost, stream, partition, before_offset))

    def put_kv(self, namespace: str, key: str, value: bytes) -> None:
        self._write(S.PUT_KV, (namespace, key, value))

    def delete_kv(self, namespace: str, key: str) -> None:
        self._write(S.DEL_KV, (namespace, key))

    def after_durable(
        self,
        callback: Callable[[], None],
        failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Call ``callback`` (reactor thread) once every write issued before it is committed;
        or ``failed(exc)`` if the database stays away longer than ``reconnect_timeout_s``."""
        state = self._state
        if state >= _CLOSING:
            if state == _FAILED or self.dropped_after_close:
                log.warn(
                    "postgres store {where}: after_durable callback dropped (store {state})",
                    where=self.where,
                    state="failed" if state == _FAILED else "closed with dropped writes",
                )
                return
            if state == _CLOSED:
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
        if self._state == _FAILED:
            return  # never report durable (already logged)
        self._inflight += 1
        self.flushes += 1
        self._q.put((ops, callbacks, failbacks))

    def _committed(self, nbatches: int, callbacks: list[Callable[[], None]], stats: tuple) -> None:
        self._inflight -= nbatches
        self.commits, self.ops_written, self.reconnects, self.retried = stats
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.failure("after_durable callback {cb!r} failed", cb=cb)

    def _write_failed(
        self, nbatches: int, failbacks: list[Callable[[BaseException], None]], exc: BaseException
    ) -> None:
        """Reactor thread: the batches could not be committed in time; answer negatively."""
        self._inflight -= nbatches
        self.failed_batches += nbatches
        if not self._unavailable:
            self._unavailable = True
            self.outages += 1
            log.error(
                "postgres store {where}: the database is unavailable; writes are answered"
                " negatively and kept until it is back: {exc}",
                where=self.where,
                exc=_one_line(exc),
            )
            self._availability(False, "store unavailable")
        for fb in failbacks:
            try:
                fb(exc)
            except Exception:
                log.failure("after_durable failure callback {fb!r} failed", fb=fb)

    def _available_again(self, stats: tuple) -> None:
        """Reactor thread: the writes kept during the outage are committed."""
        self.commits, self.ops_written, self.reconnects, self.retried = stats
        if not self._unavailable:
            return
        self._unavailable = False
        log.info("postgres store {where}: the database is back", where=self.where)
        self._availability(True, "")

    def _availability(self, available: bool, reason: str) -> None:
        if self.on_availability is not None:
            try:
                self.on_availability(available, reason)
            except Exception:
                log.failure("postgres store on_availability handler failed")

    def _opened(self, snapshot: StoreSnapshot | None, error: BaseException | None) -> None:
        d, self._open_d = self._open_d, None
        if error is not None:
            self._state = _FAILED
            self._open_failed = True
            self._failure = error
            if self._thread is not None:
                self._thread.join(1.0)
                self._thread = None
            self._ops, self._callbacks, self._failbacks, self._puts = [], [], [], {}
            log.error("postgres store failed to open: {error}", error=error)
            if d is not None:
                d.errback(error)
            waiters, self._close_waiters = self._close_waiters, []
            self._close_d = None
            for w in waiters:
                w.callback(None)
            return
        if self._state == _OPENING:
            self._state = _OPEN
        log.info("postgres store {where} opened", where=self.where)
        if d is not None:
            d.callback(snapshot)

    def _fatal(self, exc: BaseException) -> None:
        self._state = _FAILED
        self._failure = exc
        self._ops, self._callbacks, self._failbacks, self._puts = [], [], [], {}
        log.critical(
            "postgres store {where}: write failed, nothing more will be reported durable: {exc}",
            where=self.where,
            exc=_one_line(exc),
        )
        try:
            self.on_fatal(exc)
        except Exception:
            log.failure("postgres store on_fatal handler failed")

    def _closed(self, stats: tuple) -> None:
        self.commits, self.ops_written, self.reconnects, self.retried = stats
        self._close_d = None
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None
        waiters, self._close_waiters = self._close_waiters, []
        if self._state == _FAILED:
            for d in waiters:
                d.errback(StoreFailedError(str(self._failure)))
            return
        self._state = _CLOSED
        log.info(
            "postgres store {where} closed ({commits} commits, {flushes} flushes, {ops}"
            " operations written, {reconnects} reconnects)",
            where=self.where,
            commits=self.commits,
            flushes=self.flushes,
            ops=self.ops_written,
            reconnects=self.reconnects,
        )
        for d in waiters:
            d.callback(None)

    # ------------------------------------------------------------------ writer thread

    def _stats(self) -> tuple:
        return (self._w_commits, self._w_ops, self._w_reconnects, self._w_retried)

    def _run(self) -> None:
        self._w_commits = self._w_ops = self._w_reconnects = self._w_retried = 0
        try:
            self._conn = self._connect(first=True)
            snapshot = self._load(self._conn)
        except BaseException as e:
            self._close_conn()
            err = (
                e
                if isinstance(e, StoreOpenError)
                else StoreOpenError(f"cannot open postgres store ({self.where}): {_one_line(e)}")
            )
            self._call_from_thread(self._opened, None, err)
            return
        self._call_from_thread(self._opened, snapshot, None)
        try:
            self._loop()
        finally:
            self._close_conn()
            self._call_from_thread(self._closed, self._stats())

    def _loop(self) -> None:
        get, get_nowait = self._q.get, self._q.get_nowait
        failed = False
        unavailable = False
        # operations of batches failed back while the database was away: written, in order,
        # before anything newer once it answers again
        kept: list = []
        while True:
            try:
                items = [get(timeout=self.retry_interval) if unavailable else get()]
            except queue.Empty:
                items = []
            while True:
                try:
                    items.append(get_nowait())
                except queue.Empty:
                    break
            closing = False
            batches = []
            for item in items:
                if item is _CLOSE:
                    closing = True  # nothing is queued after the sentinel
                else:
                    batches.append(item)
            if not failed and (batches or unavailable):
                work = [(ops, (), ()) for ops in kept] + batches
                error, lost = self._commit_batches(work, patient=not unavailable)
                if error is None:
                    kept = []
                    if unavailable:
                        unavailable = False
                        self._call_from_thread(self._available_again, self._stats())
                    if batches:
                        callbacks = list(chain.from_iterable(map(_CALLBACKS, batches)))
                        self._call_from_thread(
                            self._committed, len(batches), callbacks, self._stats()
                        )
                elif lost:
                    unavailable = True
                    kept = [ops for ops, _, _ in work]
                    if batches:
                        failbacks = list(chain.from_iterable(map(_FAILBACKS, batches)))
                        self._call_from_thread(self._write_failed, len(batches), failbacks, error)
                else:
                    failed = True
                    self._call_from_thread(self._fatal, error)
            if closing:
                if kept and not failed:
                    log.error(
                        "postgres store {where}: closing while the database is away;"
                        " {n} operations answered negatively are not written",
                        where=self.where,
                        n=sum(map(len, kept)),
                    )
                return

    def _commit_batches(
        self, batches: list, patient: bool = True
    ) -> tuple[BaseException | None, bool]:
        """Run all batches in one transaction until it commits: (None, False) when it did, else
        (the final error, whether it is the database being away rather than bad data).

        Operational errors (a lost connection above all) are retried, reconnecting as needed,
        until ``reconnect_timeout_s`` has passed since the first of them (``patient``; else
        they end the attempt at once: the database is known to be away); any other error is
        retried ``retries`` times. With nothing to write, it only checks the connection.
        """
        import psycopg

        try:
            ops = self._prepare(batches)
        except Exception as e:  # nothing can be written (a bug): never report it durable
            log.error("postgres store {where}: bad batch: {e!r}", where=self.where, e=e)
            return e, False
        if not ops and patient:
            return None, False  # only callbacks: everything before them is committed already
        # connection lost, server shutting down, disk full, lock busy ...; a server that
        # turned read-only (demoted after a failover): find the primary again
        connection_errors = (
            psycopg.OperationalError,
            psycopg.InterfaceError,
            psycopg.errors.ReadOnlySqlTransaction,
            _Retry,
            StoreOpenError,
        )
        deadline: float | None = None
        errors = 0
        delay = 0.02
        while True:
            try:
                if self._conn is None:
                    self._conn = self._connect(first=False)
                    self._w_reconnects += 1
                    log.info("postgres store {where}: reconnected", where=self.where)
                if ops:
                    self._execute(self._conn, ops)
                else:  # the database was away: is it back?
                    self._conn.autocommit = True
                    self._conn.execute("SELECT 1")
                if deadline is not None or errors:
                    self._w_retried += 1
                return None, False
            except Exception as e:
                conn = self._conn
                broken = conn is None or conn.broken or conn.closed
                if broken or isinstance(e, psycopg.errors.ReadOnlySqlTransaction):
                    self._close_conn()
                else:
                    self._rollback()
                if not broken and not isinstance(e, connection_errors):
                    # bad data, constraint or programming errors: a few more tries only
                    errors += 1
                    log.error(
                        "postgres store {where}: transaction failed (attempt {n} of {total}): {e}",
                        where=self.where,
                        n=errors,
                        total=self.retries + 1,
                        e=_one_line(e),
                    )
                    if errors > self.retries:
                        return e, False
                elif not patient:
                    return e, True
                else:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.reconnect_timeout
                        log.warn(
                            "postgres store {where}: {what}, retrying for up to {t}s: {e}",
                            where=self.where,
                            what="connection lost" if broken else "transaction failed",
                            t=self.reconnect_timeout,
                            e=_one_line(e),
                        )
                    if now >= deadline:
                        log.warn(
                            "postgres store {where}: still failing after {t}s: {e}",
                            where=self.where,
                            t=self.reconnect_timeout,
                            e=_one_line(e),
                        )
                        return e, True
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _rollback(self) -> None:
        try:
            self._conn.rollback()
        except Exception:
            self._close_conn()

    def _b(self, name: str) -> bytes:
        """A name as stored (UTF-8 bytea), cached: the same few names come again and again."""
        b = self._names.get(name)
        if b is None:
            b = name.encode("utf-8", "surrogatepass")
            if len(self._names) < 65536:
                self._names[name] = b
        return b

    def _prepare(self, batches: list) -> list[tuple[int, list[tuple]]]:
        """The operations of ``batches`` as runs of one kind, names encoded: [(kind, params)]."""
        if len(batches) == 1:
            ops = list(filter(None, batches[0][0]))
        else:
            ops = list(filter(None, chain.from_iterable(map(_OPS, batches))))
        self._prepared_count = len(ops)
        runs = []
        b = self._b
        for kind, group in groupby(ops, key=_KIND):
            fields = S.NAME_FIELDS[kind]
            rows = []
            if fields == (0, 1):
                for p in map(_PARAMS, group):
                    rows.append((b(p[0]), b(p[1]), *p[2:]))
            else:
                for p in map(_PARAMS, group):
                    row = list(p)
                    for i in fields:
                        row[i] = b(row[i])
                    rows.append(tuple(row))
            runs.append((kind, rows))
        return runs

    def _write_guard(self) -> list[tuple[str, list]]:
        """Statements that start every write transaction (none yet; see module docstring)."""
        return []

    def _execute(self, conn: Any, runs: list[tuple[int, list[tuple]]]) -> None:
        """Write the runs in one transaction and commit (one WAL flush).

        Each statement costs the writer thread one wait for the server, and each wait may cost
        it a GIL hand-over from a busy reactor thread: so the usual batch (message puts and
        deletes, stream appends, kv records) is folded into one statement, run on its own
        (autocommit: the statement is the transaction, no BEGIN/COMMIT round trips).
        """
        self._sync_rep_cancelled = False
        stmts = self._statements(runs)
        guard = self._write_guard()
        cur = conn.cursor()
        if len(stmts) == 1 and not guard:
            conn.autocommit = True
            cur.execute(*stmts[0])
        else:
            conn.autocommit = False
            for sql, params in guard + stmts:
                cur.execute(sql, params)
            conn.commit()
        if self._sync_rep_cancelled:
            raise _Retry("commit not confirmed by the synchronous standby")
        self._w_commits += 1
        self._w_ops += self._prepared_count

    # ------------------------------------------------------------------ connect / migrate / load

    def _connect(self, first: bool) -> Any:
        """A writer connection: schema checked (and migrated on first open), advisory lock held.

        Raises StoreOpenError with a one-line reason.
        """
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError as e:
            raise StoreOpenError(
                f"the postgres store needs psycopg 3: pip install 'polymq[postgres]' ({e})"
            ) from e
        if not self.dsn:
            raise StoreOpenError("store.dsn is not set (e.g. postgresql://user@host/dbname)")
        try:
            given = conninfo_to_dict(self.dsn)
        except psycopg.Error as e:
            raise StoreOpenError(f"store.dsn is not a valid libpq DSN: {_one_line(e)}") from e
        extra: dict[str, Any] = {}
        defaults = {
            "connect_timeout": self.connect_timeout,
            "application_name": "polymq",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        for k, v in defaults.items():
            if k not in given:
                extra[k] = v
        try:
            conn = psycopg.connect(self.dsn, autocommit=False, **extra)
        except psycopg.Error as e:
            raise StoreOpenError(
                f"cannot connect to PostgreSQL ({self.where}): {_one_line(e)}"
            ) from e
        try:
            conn.add_notice_handler(self._notice)
            if conn.execute("SHOW transaction_read_only").fetchone()[0] == "on":
                raise StoreOpenError(
                    f"PostgreSQL ({self.where}) is read-only (a standby?); list every host in"
                    " store.dsn with target_session_attrs=read-write"
                )
            conn.rollback()
            self._lock(conn)
            if first:
                self._migrate(conn)
            else:
                self._check_version(conn)
            conn.commit()
        except BaseException:
            try:
                conn.close()
            except Exception:
                pass
            raise
        return conn

    def _notice(self, diag: Any) -> None:
        if diag.message_primary and _SYNC_REP_CANCEL in diag.message_primary:
            self._sync_rep_cancelled = True

    def _lock(self, conn: Any) -> None:
        """Hold a session advisory lock on the schema: one store writes it at a time.

        Tried for up to ``connect_timeout_s``: the session of a broker killed a moment ago
        (and its lock) goes away only when its backend notices the closed socket.
        """
        deadline = time.monotonic() + self.connect_timeout
        while True:
            got = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                [f"polymq.store:{self.schema}"],
            ).fetchone()[0]
            conn.commit()
            if got or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not got:
            raise StoreOpenError(
                f"schema {self.schema} ({self.where}) is in use by another polymq store"
            )

    def _version(self, conn: Any) -> int | None:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", [f"{self._s}.schema_version"]
        ).fetchone()
        if not row[0]:
            return None
        return conn.execute(f"SELECT version FROM {self._s}.schema_version").fetchone()[0]

    def _check_version(self, conn: Any) -> int | None:
        version = self._version(conn)
        if version is not None and version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"schema {self.schema} ({self.where}) has version {version}; this polymq"
                f" understands up to {SCHEMA_VERSION}"
            )
        return version

    def _migrate(self, conn: Any) -> None:
        import psycopg

        try:
            # two brokers starting on an empty database: one migrates, the other waits
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                [f"polymq.migrate:{self.schema}"],
            )
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema]
            ).fetchone()
            if not exists:
                conn.execute(f"CREATE SCHEMA {self._s}")
            version = self._check_version(conn)
            if version is None:
                others = conn.execute(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = ANY(%s)",
                    [self.schema, list(S.TABLES)],
                ).fetchone()[0]
                if others:
                    raise StoreOpenError(
                        f"schema {self.schema} ({self.where}) holds polymq tables but no"
                        " schema version"
                    )
                version = 0
            start = version
            while version < SCHEMA_VERSION:
                step = S.MIGRATIONS[version]
                if callable(step):
                    step(conn, self._s)
                else:
                    for stmt in step.split(";"):
                        if stmt.strip():
                            conn.execute(stmt.format(s=self._s))
                version += 1
            if version != start:
                conn.execute(f"UPDATE {self._s}.schema_version SET version = %s", [version])
                log.info(
                    "postgres store {where}: schema migrated from version {a} to {b}",
                    where=self.where,
                    a=start,
                    b=version,
                )
            conn.commit()
        except StoreOpenError:
            conn.rollback()
            raise
        except psycopg.Error as e:
            conn.rollback()
            raise StoreOpenError(
                f"cannot create or migrate schema {self.schema} ({self.where}): {_one_line(e)}"
            ) from e

    def _load(self, conn: Any) -> StoreSnapshot:
        """Read everything in one read-only snapshot; big tables through server-side cursors."""
        s = self._s
        snap = StoreSnapshot()
        cur = conn.cursor(binary=True)
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snap.exchanges = [
            (_decode(v), _decode(n), _unpack(r))
            for v, n, r in cur.execute(S.LOAD_EXCHANGES.format(s=s))
        ]
        snap.queues = [
            (_decode(v), _decode(n), _unpack(r))
            for v, n, r in cur.execute(S.LOAD_QUEUES.format(s=s))
        ]
        snap.bindings = [
            (_decode(v), _decode(src), kind, _decode(d), _decode(key), _unpack(a))
            for v, src, kind, d, key, a in cur.execute(S.LOAD_BINDINGS.format(s=s))
        ]
        messages: dict[tuple[str, str], list[tuple[int, bytes, int]]] = {}
        names: dict[bytes, str] = {}

        def name(b: bytes) -> str:
            n = names.get(b)
            if n is None:
                n = names[b] = _decode(b)
            return n

        with conn.cursor(name="polymq_load_messages", binary=True) as big:
            big.itersize = 2000
            lst: list | None = None
            last_key = None
            for v, q, seq, data, dc in big.execute(S.LOAD_MESSAGES.format(s=s)):
                if (v, q) != last_key:
                    last_key = (v, q)
                    lst = messages.setdefault((name(v), name(q)), [])
                lst.append((seq, bytes(data), dc))  # type: ignore[union-attr]
        snap.messages = messages
        entries: dict[tuple[str, str, int], list[tuple[int, int, int, str, bytes]]] = {}
        with conn.cursor(name="polymq_load_entries", binary=True) as big:
            big.itersize = 500
            for v, st, p, off, cnt, ts, fmt, data in big.execute(S.LOAD_ENTRIES.format(s=s)):
                entries.setdefault((name(v), name(st), p), []).append(
                    (off, cnt, ts, fmt, bytes(data))
                )
        snap.stream_entries = entries
        kv: dict[str, dict[str, bytes]] = {}
        for ns, k, value in cur.execute(S.LOAD_KV.format(s=s)):
            kv.setdefault(name(ns), {})[_decode(k)] = bytes(value)
        snap.kv = kv
        conn.commit()
        return snap
