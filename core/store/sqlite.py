"""The ``sqlite`` store: the embedded default backend.

One file, ``<data_dir>/polymq.sqlite3``, in WAL mode with ``synchronous=FULL`` so that every
commit is fsynced before it is reported durable.

Threading model
---------------
The reactor-side half (batches, lazy flush, ``after_durable``, open/close, failure reports) is
``writer.py``'s :class:`~.writer.WriterStore`, shared with the postgres store.
The reactor thread never touches the disk. Every write method only appends an operation tuple
to the current batch. Once an ``after_durable`` callback waits for the batch, ``_flush`` is
scheduled with ``clock.callLater(0, ...)``; writes nobody waits for yet (consumer acks, writes
of publishers without confirms) are flushed lazily, ``lazy_flush_ms`` later, unless a callback
arrives first and takes them along into its commit (so an ack never costs the next confirmed
message an fsync of its own). The flush hands the whole batch (operations plus callbacks) to
the writer thread through a :class:`queue.SimpleQueue`. The writer thread owns the writing
connection: it takes *every* batch waiting in its queue at once, runs them in one transaction,
commits (one fsync of the WAL), and then calls ``reactor.callFromThread`` once with the
callbacks of all those batches (group commit: under load many reactor turns share one fsync).
With ``checkpoint_mb`` > 0 a checkpointer thread folds the WAL back into the database with
PASSIVE checkpoints beside the writer (off by default: sqlite's own automatic checkpoints).

Failure model
-------------
* ``open()`` fails with :class:`StoreOpenError` when the directory cannot be created or
  written, the file is not a database (corrupt), it was written by a newer schema version, or
  another process holds the data directory.
* If a transaction fails, it is rolled back and retried (``retries`` times, with a short
  back-off). If it still fails the store becomes *failed*: the callbacks of that batch and of
  every later batch are never called (nothing is ever reported durable that is not on disk),
  later writes are dropped, the error is logged as critical and ``on_fatal(exc)`` is called.
  The default ``on_fatal`` stops the reactor (the broker cannot keep its promises any more);
  the broker may install its own handler by setting :attr:`SqliteStore.on_fatal`.
* Writes issued after ``close()`` are ignored: the first one is logged, all are counted in
  :attr:`SqliteStore.dropped_after_close`. ``after_durable`` after close calls its callback at
  once if no write was dropped (everything issued before close is committed), otherwise it
  drops the callback too.
"""

from __future__ import annotations

import errno
import os
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from ..stats import SECONDS_BUCKETS, SIZE_BUCKETS, Histogram
from .interfaces import IPagingStore
from .segments import (  # noqa: F401 (re-exported: tests and tools name them from here)
    SEGMENT_SUFFIX,
    STREAMS_DIR,
    SegmentWriteError,
    StreamLog,
    encode_record,
    escape_name,
)
from .sqlite_open import FILENAME, SCHEMA_VERSION, StoreOpenError, _OpenMixin
from .sqlite_sql import (
    _APPEND_STREAM,
    _CALLBACKS,
    _DATA_INDEX,
    _DEL_MESSAGE,
    _DEL_QUEUE,
    _KIND,
    _OPS,
    _PARAMS,
    _PURGE_MESSAGES,
    _PUT_MESSAGE,
    _READ_LEVEL_SQL,
    _READ_SCHEDULED_SQL,
    _SCHEMA_V1,  # noqa: F401 (re-exported: tests build old schemas)
    _SQL,
    _SYNCHRONOUS,
    _TRIM_STREAM,
    _delete_many,
    _put_many,
)
from .writer import CLOSE as _CLOSE
from .writer import OPEN as _OPEN
from .writer import OPENING as _OPENING
from .writer import StoreFailedError, WriterStore
from .writer import default_on_fatal as _default_on_fatal  # noqa: F401 (re-exported)

__all__ = ["SqliteStore", "StoreOpenError", "StoreFailedError", "SCHEMA_VERSION", "FILENAME"]

log = Logger(namespace="polymq.store.sqlite")


class _Read:
    """A read for the writer thread: ``fn(conn, args)``, its result to ``callback``."""

    __slots__ = ("fn", "args", "callback")

    def __init__(self, fn: Callable, args: tuple, callback: Callable) -> None:
        self.fn = fn
        self.args = args
        self.callback = callback


# Giving free pages back to the filesystem (incremental vacuum): the writer looks every
# RECLAIM_CHECK_S between transactions; when at least RECLAIM_MIN_PAGES and a quarter of the
# file are free (a drained backlog, not the churn of a steady flow, whose free pages are reused
# at once) it frees RECLAIM_STEP_PAGES, and again at the next look.
RECLAIM_CHECK_S = 2.0
RECLAIM_MIN_PAGES = 1024
RECLAIM_STEP_PAGES = 4096
IDLE_WAL_TRUNCATE_BYTES = 4 << 20


@implementer(IPagingStore)
class SqliteStore(_OpenMixin, WriterStore):
    """Embedded durable store; see the module docstring for the threading and failure model.

    Counters (read them from the reactor thread; they are for tests and metrics):
    ``commits`` transactions committed (one fsync each), ``flushes`` batches handed to the
    writer, ``ops_written`` operations executed, ``cancelled`` message writes that never reached
    the disk because the message was deleted in the same batch.
    """

    name = "sqlite"
    log = log

    def __init__(
        self,
        data_dir: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        clock: Any = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        retries: int = 3,
        lazy_flush_ms: float = 20.0,
        lazy_flush_ops: int = 10000,
        checkpoint_mb: float = 0.0,
        segment_mb: float = 64.0,
        paging: bool = False,
        **ignored: Any,
    ) -> None:
        synchronous = str(synchronous).upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(
                f"sqlite synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}"
            )
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.join(self.data_dir, FILENAME)
        self.synchronous = synchronous
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.retries = int(retries)
        self.label = f"sqlite store {self.path}"
        self._init_writer(
            clock=clock,
            on_fatal=on_fatal,
            lazy_flush_ms=lazy_flush_ms,
            lazy_flush_ops=lazy_flush_ops,
            thread_name=f"polymq-sqlite-writer:{self.data_dir}",
        )
        # WAL bytes (estimated) after which the checkpointer thread runs; 0 = sqlite's own
        # automatic checkpoints inside the commit, as without a checkpointer
        self.checkpoint_bytes = int(max(0.0, float(checkpoint_mb)) * (1 << 20))
        # stream segments roll at this size
        self.segment_bytes = max(1, int(float(segment_mb) * (1 << 20)))
        # paging: open() reports queue levels and stream extents instead of every message and
        # entry, and the core reads bodies back with read_messages / read_stream
        self.pages = bool(paging)
        self.reads = 0  # read_messages / read_stream / retain_stream calls served
        self.streams_dir = os.path.join(self.data_dir, STREAMS_DIR)

        # counters
        self.commits = 0
        # writer thread: seconds per commit (fsyncs included) and operations per commit
        self.commit_seconds = Histogram(SECONDS_BUCKETS)
        self.commit_sizes = Histogram(SIZE_BUCKETS)
        self.segment_sync_seconds = Histogram(SECONDS_BUCKETS)
        self.ops_written = 0
        self.checkpoints = 0
        self.segment_fsyncs = 0  # fdatasync of segment files + fsync of stream directories
        self.segment_writes = 0  # os.writev calls on segment files
        self.segments_truncated = 0  # torn tails cut at open

        # writer side
        self._lock_fd: int | None = None
        self._wal_estimate = 0  # writer thread: bytes committed since the last checkpoint signal
        self._ckpt_event = threading.Event()
        self._ckpt_stop = False
        self._ckpt_catchup = False  # set by the checkpointer, cleared by the writer
        self.reclaim_steps = 0  # incremental vacuum steps done
        self._wal_path = self.path + "-wal"
        self._ckpt_thread: threading.Thread | None = None
        self._log: StreamLog | None = None
        self._seg_applied: list | None = None  # batches whose stream part is on disk (retries)

    def put_message(
        self, vhost: str, queue: str, seq: int, data: bytes, delivery_count: int
    ) -> None:
        self.put_queued(vhost, queue, seq, data, delivery_count, 0, None, len(data), False)

    def put_queued(
        self,
        vhost: str,
        queue: str,
        seq: int,
        data: bytes,
        delivery_count: int,
        priority: int,
        expires_at: int | None,
        size: int,
        transient: bool,
    ) -> None:
        self._put_message_op(
            (vhost, queue, seq),
            (vhost, queue, seq, data, delivery_count, priority, expires_at, size, transient),
        )

    def purge_messages(self, vhost: str, queue: str, priority: int, after_seq: int) -> None:
        self._write(_PURGE_MESSAGES, (vhost, queue, priority, after_seq))

    # ------------------------------------------------------------------ reads (paging)

    def read_messages(
        self,
        vhost: str,
        queue: str,
        priority: int,
        after_seq: int,
        limit: int,
        callback: Callable[[list], None],
    ) -> None:
        self._read(self._read_messages, (vhost, queue, priority, after_seq, limit), callback)

    def read_stream(
        self,
        vhost: str,
        stream: str,
        partition: int,
        offset: int,
        max_bytes: int,
        callback: Callable[[list], None],
    ) -> None:
        self._read(self._read_stream, (vhost, stream, partition, offset, max_bytes), callback)

    def find_stream_timestamp(
        self,
        vhost: str,
        stream: str,
        partition: int,
        timestamp: int,
        callback: Callable[[tuple | None], None],
    ) -> None:
        self._read(self._find_stream_timestamp, (vhost, stream, partition, timestamp), callback)

    def retain_stream(
        self,
        vhost: str,
        stream: str,
        partition: int,
        max_bytes: int | None,
        min_timestamp: int | None,
        callback: Callable[[int, int], None],
    ) -> None:
        self._read(
            self._retain_stream, (vhost, stream, partition, max_bytes, min_timestamp), callback
        )

    def read_scheduled(
        self, after_due: int, after_id: int, limit: int, callback: Callable[[list], None]
    ) -> None:
        self._read(self._read_scheduled, (after_due, after_id, limit), callback)

    def _read_scheduled(self, conn: sqlite3.Connection, args: tuple) -> list:  # writer thread
        return [(i, due, bytes(data)) for i, due, data in conn.execute(_READ_SCHEDULED_SQL, args)]

    def _read(self, fn: Callable, args: tuple, callback: Callable) -> None:
        """Queue a read for the writer thread behind every write issued so far.

        Reads run in the writer thread, after the batches queued before them are committed,
        so they see those writes; the callback goes back to the reactor thread.
        """
        if self._state not in (_OPEN, _OPENING):
            return  # closing or failed: nobody is served any more
        self._flush()
        self._q.put(_Read(fn, args, callback))

    def _read_messages(self, conn: sqlite3.Connection, args: tuple) -> list:  # writer thread
        rows = conn.execute(_READ_LEVEL_SQL, args).fetchall()
        return [(seq, bytes(data), dc, exp) for seq, data, dc, exp in rows]

    def _read_stream(self, conn: sqlite3.Connection, args: tuple) -> list:  # writer thread
        if self._log is None:
            return []
        return self._log.read(*args)

    def _find_stream_timestamp(self, conn: sqlite3.Connection, args: tuple) -> tuple:
        # writer thread; a 1-tuple, as the reactor side calls callback(*result) for tuples
        return (self._log.find_timestamp(*args) if self._log is not None else None,)

    def _retain_stream(self, conn: sqlite3.Connection, args: tuple) -> tuple:  # writer thread
        vhost, stream, partition = args[:3]
        if self._log is None:
            return (0, 0)
        start, size, dropped = self._log.retain(*args)
        if dropped:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_SQL[_TRIM_STREAM][0], (vhost, stream, partition, start))
            conn.execute("COMMIT")
            self._log.sync()
        return (start, size)

    def _closed_details(self) -> str:
        return f", {self.cancelled} puts cancelled by a delete"

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as e:
            err = (
                e
                if isinstance(e, StoreOpenError)
                else StoreOpenError(f"cannot open sqlite store {self.path}: {e}")
            )
            self._release_lock()
            self._call_from_thread(self._opened, None, err)
            return
        try:
            snapshot = self._load(conn)
        except BaseException as e:
            conn.close()
            if self._log is not None:
                self._log.close()
            self._release_lock()
            self._call_from_thread(
                self._opened,
                None,
                StoreOpenError(f"cannot read sqlite store {self.path} (corrupt?): {e}"),
            )
            return
        self._call_from_thread(self._opened, snapshot, None)
        if self.checkpoint_bytes:
            self._ckpt_thread = threading.Thread(
                target=self._checkpoint_loop,
                name=f"polymq-sqlite-checkpointer:{self.data_dir}",
                daemon=True,
            )
            self._ckpt_thread.start()
        try:
            self._loop(conn)
        finally:
            if self._ckpt_thread is not None:
                self._ckpt_stop = True
                self._ckpt_event.set()
                self._ckpt_thread.join(30.0)
                self._ckpt_thread = None
            try:
                conn.close()
            except sqlite3.Error as e:
                log.error("sqlite store {path}: close failed: {e}", path=self.path, e=e)
            if self._log is not None:
                self._log.close()
            self._release_lock()
            self._call_from_thread(self._closed)

    def _loop(self, conn: sqlite3.Connection) -> None:
        get, get_nowait = self._q.get, self._q.get_nowait
        failed = False
        synced_dir = False
        looked = time.monotonic()
        while True:
            try:
                first = get(timeout=RECLAIM_CHECK_S)
            except queue.Empty:
                first = None
            if time.monotonic() - looked >= RECLAIM_CHECK_S:
                looked = time.monotonic()
                if not failed:
                    self._maybe_reclaim(conn, idle=first is None and self._q.empty())
            if first is None:
                continue
            items = [first]
            while True:
                try:
                    items.append(get_nowait())
                except queue.Empty:
                    break
            closing = False
            batches = []
            reads = []
            for item in items:
                if item is _CLOSE:
                    closing = True  # nothing is queued after the sentinel
                elif type(item) is _Read:
                    reads.append(item)
                else:
                    batches.append(item)
            if batches and not failed:
                error = self._commit_batches(conn, batches)
                if error is not None:
                    failed = True
                    self._call_from_thread(self._fatal, error)
                else:
                    callbacks = list(chain.from_iterable(map(_CALLBACKS, batches)))
                    if not synced_dir:
                        # The WAL file was (re)created by this connection: make its directory
                        # entry durable once, so a power loss cannot orphan committed data.
                        self._fsync_dir()
                        synced_dir = True
                    self._call_from_thread(self._committed, len(batches), callbacks)
                    if self._ckpt_catchup:
                        self._catch_up(conn)
            for r in reads:  # after the writes queued before them (and maybe a few more)
                self._serve(conn, r, failed)
            if closing:
                if self._log is not None and not failed:
                    self._log.clean = True
                return

    def _serve(self, conn: sqlite3.Connection, r: _Read, failed: bool) -> None:
        if failed:
            return
        try:
            result = r.fn(conn, r.args)
        except Exception as e:  # a read that fails is logged; the reader waits for its next try
            try:
                if conn.in_transaction:
                    conn.rollback()
            except sqlite3.Error:
                pass
            log.error("sqlite store {path}: read failed: {e!r}", path=self.path, e=e)
            return
        self.reads += 1
        if isinstance(result, tuple):
            self._call_from_thread(r.callback, *result)
        else:
            self._call_from_thread(r.callback, result)

    def _commit_batches(self, conn: sqlite3.Connection, batches: list) -> BaseException | None:
        """Run all batches in one transaction; retry on error. Return the final error or None."""
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                started = time.monotonic()
                n = self._execute(conn, batches)
                self.commit_seconds.observe(time.monotonic() - started)
                self.commit_sizes.observe(n)
                return None
            except SegmentWriteError as e:  # nothing of the database part ran: not retried
                log.error(
                    "sqlite store {path}: stream segment write failed: {e!r}", path=self.path, e=e
                )
                return e
            except Exception as e:  # sqlite errors, and bad parameters (OverflowError, ...)
                try:
                    conn.rollback()
                except sqlite3.Error:
                    pass
                log.error(
                    "sqlite store {path}: transaction failed (attempt {n} of {total}): {e!r}",
                    path=self.path,
                    n=attempt + 1,
                    total=self.retries + 1,
                    e=e,
                )
                last: BaseException = e
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 4
        return last

    def _execute(self, conn: sqlite3.Connection, batches: list) -> int:  # writer thread
        """Execute the operations of ``batches`` in one transaction and commit (fsync).

        The Python-level work here holds the GIL against the reactor thread, so it is kept to
        C-level loops over the parameter tuples the reactor built (payload bytes passed through,
        no copies): one ``executemany`` per run of operations of one kind, and multi-row
        statements for message puts and deletes (few statement steps, few GIL hand-overs).
        """
        # (None marks a put cancelled by a later put or delete of the same message)
        if len(batches) == 1:
            ops = list(filter(None, batches[0][0]))
        else:
            ops = list(filter(None, chain.from_iterable(map(_OPS, batches))))
        n = len(ops)
        if n == 0:
            return 0  # only callbacks: everything before them is already committed
        groups = []
        slog = self._log if self._seg_applied is not batches else None
        try:
            for kind, group in groupby(ops, key=_KIND):
                params = list(map(_PARAMS, group))
                if kind == _APPEND_STREAM:
                    if slog is not None:
                        for p in params:
                            slog.append(p)
                    continue
                if slog is not None:
                    if kind == _TRIM_STREAM:
                        for p in params:
                            slog.trim(*p)
                    elif kind == _DEL_QUEUE:
                        for p in params:
                            slog.delete(*p)
                groups.append((kind, params))
            if slog is not None:
                # one writev per partition, then one fdatasync per segment file written
                slog.write_pending()
                synced = time.monotonic()
                slog.sync()
                self.segment_sync_seconds.observe(time.monotonic() - synced)
        except (OSError, ValueError, OverflowError, struct.error) as e:
            raise SegmentWriteError(errno.EIO, f"stream segments: {e!r}") from e
        finally:
            if slog is not None:
                self.segment_fsyncs = slog.fsyncs
                self.segment_writes = slog.writes
        self._seg_applied = batches
        if not groups:  # stream appends only: no database transaction
            self.commits += 1
            self.ops_written += n
            return n
        conn.execute("BEGIN IMMEDIATE")
        est = 0
        checkpointer = self.checkpoint_bytes
        execute, executemany = conn.execute, conn.executemany
        for kind, params in groups:
            if len(params) == 1:
                for sql in _SQL[kind]:
                    execute(sql, params[0])
            elif kind == _PUT_MESSAGE:
                _put_many(execute, params)
            elif kind == _DEL_MESSAGE:
                _delete_many(execute, params)
            else:
                for sql in _SQL[kind]:
                    executemany(sql, params)
            if checkpointer:
                i = _DATA_INDEX.get(kind)
                if i is not None:
                    est += sum(map(len, map(itemgetter(i), params)))
        execute("COMMIT")
        self.commits += 1
        self.ops_written += n
        if checkpointer:
            # WAL growth, roughly: a page per operation plus the payloads
            est += self._wal_estimate + 4096 * n
            if est >= self.checkpoint_bytes:
                est = 0
                self._ckpt_event.set()
            self._wal_estimate = est
        return n

    def _catch_up(self, conn: sqlite3.Connection) -> None:  # writer thread
        """Checkpoint the few frames committed while the checkpointer ran.

        The checkpointer's PASSIVE checkpoint copies what was in the WAL when it started, but
        the writer kept committing meanwhile, and sqlite only starts the WAL over (rewriting
        the same, already allocated file, whose fdatasync is cheaper than one that grows it)
        when every frame is in the database. This small checkpoint runs after the callbacks of
        the last commit have been handed to the reactor, between transactions.
        """
        self._ckpt_catchup = False
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:
            log.warn("sqlite store {path}: checkpoint failed: {e}", path=self.path, e=e)

    def _maybe_reclaim(self, conn: sqlite3.Connection, idle: bool) -> None:  # writer thread
        """Give free pages back to the filesystem in one bounded step when many are free, and
        when idle cut a large WAL back to nothing."""
        try:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            if free >= RECLAIM_MIN_PAGES and free * 4 >= pages:
                # executescript steps the pragma to the end; execute() frees one page only
                conn.executescript(f"PRAGMA incremental_vacuum({RECLAIM_STEP_PAGES})")
                self.reclaim_steps += 1
            if idle and os.path.getsize(self._wal_path) > IDLE_WAL_TRUNCATE_BYTES:
                # nothing waits for the writer: fold the WAL in and truncate it (the shorter
                # database file becomes real at this checkpoint too)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except (sqlite3.Error, OSError) as e:  # the next look retries
            log.warn("sqlite store {path}: reclaiming free pages failed: {e}", path=self.path, e=e)

    def _checkpoint_loop(self) -> None:  # checkpointer thread
        """Fold the WAL back into the database off the commit path (PASSIVE checkpoints).

        A PASSIVE checkpoint runs beside the writer's transactions without blocking them, so a
        commit (and the acknowledgements waiting for it) never pays for copying the WAL into
        the database and the two extra fsyncs that takes. The writer connection keeps a high
        ``wal_autocheckpoint`` as a bound on the WAL size in case this thread cannot keep up.
        """
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as e:
            log.error("sqlite store {path}: no checkpointer: {e}", path=self.path, e=e)
            return
        errors = 0
        try:
            while True:
                self._ckpt_event.wait(1.0)
                self._ckpt_event.clear()
                if self._ckpt_stop:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                    self._ckpt_catchup = True
                except sqlite3.Error as e:  # the next one retries; the WAL is still bounded
                    errors += 1
                    if errors == 1 or errors % 1000 == 0:
                        log.warn(
                            "sqlite store {path}: checkpoint failed ({n} so far): {e}",
                            path=self.path,
                            n=errors,
                            e=e,
                        )
        finally:
            conn.close()
