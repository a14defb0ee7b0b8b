"""Opening the sqlite store, in its writer thread: the data directory's lock, the schema and
its migrations, and the snapshot (or, with paging, the summaries) read at open.

``_OpenMixin`` is part of :class:`polymq.core.store.sqlite.SqliteStore`; see that module for
the threading and failure model.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sqlite3
import time

from twisted.logger import Logger

from .interfaces import StoreSnapshot
from .segments import StreamLog
from .sqlite_sql import (
    _DROP_QUEUE_MESSAGES_SQL,
    _DROP_TRANSIENT_SQL,
    _LEVELS_SQL,
    _MIGRATIONS,
    _SCHEMA_V1,
    _unpack,
)

log = Logger(namespace="polymq.store.sqlite")

FILENAME = "polymq.sqlite3"
LOCKNAME = "polymq.lock"
SCHEMA_VERSION = 4
# WAL file size kept after a checkpoint lets it start over (bytes)
JOURNAL_SIZE_LIMIT = 64 << 20
# an old store is converted to incremental vacuum at open only up to this much live data
CONVERT_MAX_LIVE_BYTES = 256 << 20


class StoreOpenError(Exception):
    """The store could not be opened (unwritable directory, corrupt file, newer schema, in use)."""


def _migrate_message_meta(conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3: priority level, expiration and body size of the messages already stored
    (each one decoded once; one that cannot be decoded keeps level 0 and its data length)."""
    from ..message import Message

    levels: dict[tuple[str, str], int] = {}
    for vhost, name, record in conn.execute("SELECT vhost, name, record FROM queues"):
        top = (_unpack(record).get("arguments") or {}).get("x-max-priority")
        if isinstance(top, int) and not isinstance(top, bool) and top > 0:
            levels[(vhost, name)] = top
    updates = []
    for vhost, qname, seq, data in conn.execute("SELECT vhost, queue, seq, data FROM messages"):
        try:
            m = Message.from_bytes(bytes(data))
        except Exception:
            continue  # left at level 0; the queue reports it when it reads it back
        top = levels.get((vhost, qname), 0)
        level = min(m.priority or 0, top)
        updates.append((level, m.expiration, len(m.body), vhost, qname, seq))
    conn.executemany(
        "UPDATE messages SET priority = ?, expires_at = ?, size = ?"
        " WHERE vhost = ? AND queue = ? AND seq = ?",
        updates,
    )


class _OpenMixin:
    """Open, lock, migrate and load (writer thread); mixed into SqliteStore."""

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.data_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:  # some filesystems refuse fsync on directories
            log.debug("fsync of {dir} failed: {e}", dir=self.data_dir, e=e)

    def _connect(self) -> sqlite3.Connection:
        try:
            os.makedirs(self.data_dir, exist_ok=True)
        except OSError as e:
            raise StoreOpenError(f"cannot create data directory {self.data_dir}: {e}") from e
        if not os.access(self.data_dir, os.W_OK | os.X_OK):
            raise StoreOpenError(f"data directory {self.data_dir} is not writable")
        self._take_lock()
        existed = os.path.exists(self.path)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as e:
            raise StoreOpenError(f"cannot open {self.path}: {e}") from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            if not existed:
                # free pages can then be given back to the filesystem after a backlog drains
                # (the writer reclaims them in steps); only settable before the first table
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreOpenError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            if self.checkpoint_bytes:  # the checkpointer thread does it; this is a bound only
                pages = max(1000, 8 * self.checkpoint_bytes // 4096)
                conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
            # a WAL that grew under a burst is cut back to this size when it starts over
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            conn.execute("PRAGMA foreign_keys = OFF")
            self._migrate(conn)
            if existed:
                self._convert_to_incremental_vacuum(conn)
        except StoreOpenError:
            conn.close()
            raise
        except sqlite3.Error as e:
            conn.close()
            raise StoreOpenError(
                f"cannot open {self.path} (corrupt or not a database?): {e}"
            ) from e
        if not existed:
            self._fsync_dir()
        return conn

    def _convert_to_incremental_vacuum(self, conn: sqlite3.Connection) -> None:
        """A database created before incremental vacuum keeps every page it ever had. Switching
        needs one full VACUUM, which rewrites the live data: done at open when that is small
        (a quick restart matters more than the file size), otherwise logged."""
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        live = (pages - free) * page_size
        if live > CONVERT_MAX_LIVE_BYTES:
            log.info(
                "sqlite store {path}: {live} MB of live data; free pages ({free} MB) are given "
                "back only after the store is converted at a restart with under {limit} MB live",
                path=self.path,
                live=live >> 20,
                free=(free * page_size) >> 20,
                limit=CONVERT_MAX_LIVE_BYTES >> 20,
            )
            return
        started = time.monotonic()
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
        log.info(
            "sqlite store {path}: converted to incremental vacuum in {s:.2f} s ({before} -> "
            "{after} MB)",
            path=self.path,
            s=time.monotonic() - started,
            before=(pages * page_size) >> 20,
            after=(conn.execute("PRAGMA page_count").fetchone()[0] * page_size) >> 20,
        )

    def _take_lock(self) -> None:
        path = os.path.join(self.data_dir, LOCKNAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreOpenError(f"cannot create lock file {path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreOpenError(
                    f"data directory {self.data_dir} is in use by another store or process"
                ) from e
            raise StoreOpenError(f"cannot lock {path}: {e}") from e
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"{self.path} has schema version {version}; this polymq understands up to"
                f" {SCHEMA_VERSION}"
            )
        if version == SCHEMA_VERSION:
            return
        if version == 1:
            self._migrate_streams(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version == 0:
                tables = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                ).fetchone()[0]
                if tables:
                    raise StoreOpenError(f"{self.path} holds tables but no polymq schema version")
                for stmt in _SCHEMA_V1.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                version = 1
                # a fresh database: whatever a segment directory holds belongs to nothing
                shutil.rmtree(self.streams_dir, ignore_errors=True)
            while version < SCHEMA_VERSION:
                for stmt in _MIGRATIONS[version].split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                if version == 2:
                    _migrate_message_meta(conn)
                version += 1
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    def _migrate_streams(self, conn: sqlite3.Connection) -> None:
        """Schema 1 -> 2: write the rows of ``stream_entries`` into segment files (synced).

        Runs before the transaction that drops the table; if the process dies in between, the
        next open finds version 1 again and starts over from an empty segment directory.
        """
        shutil.rmtree(self.streams_dir, ignore_errors=True)
        slog = StreamLog(self.streams_dir, self.segment_bytes, True)
        os.makedirs(self.streams_dir, exist_ok=True)
        n = 0
        try:
            for row in conn.execute(
                'SELECT vhost, stream, "partition", "offset", "count", "timestamp", "format", data'
                ' FROM stream_entries ORDER BY vhost, stream, "partition", "offset"'
            ):
                slog.append(row[:7] + (bytes(row[7]),))
                n += 1
                if n % 10000 == 0:
                    slog.write_pending()
            slog.write_pending()
            slog.sync()
        finally:
            slog.close()
        self._fsync_dir()
        if n:
            log.info(
                "sqlite store {path}: moved {n} stream entries into segment files",
                path=self.path,
                n=n,
            )

    def _load_levels(self, conn: sqlite3.Connection, durable: set) -> dict:
        """Each queue's priority levels from the index alone; drops what must not survive.

        Rows of queues that are not durable (any more) and transient rows (non-persistent
        messages written out to bound memory) are deleted here, before anyone reads them.
        """
        levels: dict[tuple[str, str], list[tuple[int, int, int, int]]] = {}
        drop_queues: set[tuple[str, str]] = set()
        transient = []
        for v, q, prio, count, size, top, trans in conn.execute(_LEVELS_SQL).fetchall():
            if (v, q) not in durable:
                drop_queues.add((v, q))
                continue
            if trans:
                transient.append((v, q, prio))
                count -= trans
                if not count:
                    continue
                size = None  # recounted below
            levels.setdefault((v, q), []).append((prio, count, size, top))
        if drop_queues or transient:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_DROP_QUEUE_MESSAGES_SQL, sorted(drop_queues))
            conn.executemany(_DROP_TRANSIENT_SQL, transient)
            conn.execute("COMMIT")
            for key, rows in levels.items():
                for i, (prio, _count, size, _top) in enumerate(rows):
                    if size is None:
                        c, b, t = conn.execute(
                            "SELECT count(*), sum(size), max(seq) FROM messages INDEXED BY"
                            " messages_levels WHERE vhost = ? AND queue = ? AND priority = ?",
                            (*key, prio),
                        ).fetchone()
                        rows[i] = (prio, c, b or 0, t or 0)
            log.info(
                "sqlite store {path}: dropped the messages of {q} non-durable queues and the"
                " transient messages of {t} queue levels",
                path=self.path,
                q=len(drop_queues),
                t=len(transient),
            )
        return levels

    def _load(self, conn: sqlite3.Connection) -> StoreSnapshot:
        snap = StoreSnapshot()
        snap.exchanges = [
            (v, n, _unpack(r))
            for v, n, r in conn.execute(
                "SELECT vhost, name, record FROM exchanges ORDER BY vhost, name"
            )
        ]
        snap.queues = [
            (v, n, _unpack(r))
            for v, n, r in conn.execute(
                "SELECT vhost, name, record FROM queues ORDER BY vhost, name"
            )
        ]
        snap.bindings = [
            (v, s, k, d, key, _unpack(a))
            for v, s, k, d, key, a in conn.execute(
                'SELECT vhost, source, kind, destination, "key", args FROM bindings'
                ' ORDER BY vhost, source, kind, destination, "key"'
            )
        ]
        if self.pages:
            snap.queue_levels = self._load_levels(conn, {(v, n) for v, n, _ in snap.queues})
        else:
            # (rows a paging run wrote only to bound memory: never restored)
            if conn.execute("SELECT 1 FROM messages WHERE transient = 1 LIMIT 1").fetchone():
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM messages WHERE transient = 1")
                conn.execute("COMMIT")
            messages: dict[tuple[str, str], list[tuple[int, bytes, int]]] = {}
            for v, q, seq, data, dc in conn.execute(
                "SELECT vhost, queue, seq, data, delivery_count FROM messages"
                " WHERE transient = 0 ORDER BY vhost, queue, seq"
            ):
                messages.setdefault((v, q), []).append((seq, bytes(data), dc))
            snap.messages = messages
        starts = {
            (v, s, p): start
            for v, s, p, start in conn.execute(
                'SELECT vhost, stream, "partition", start FROM stream_starts'
            )
        }
        self._log = StreamLog(
            self.streams_dir, self.segment_bytes, self.synchronous.upper() in ("FULL", "EXTRA")
        )
        if self.pages:
            snap.stream_partitions = self._log.open_extents(starts)
        else:
            snap.stream_entries = self._log.load(starts)
        self.segments_truncated = self._log.truncated
        kv: dict[str, dict[str, bytes]] = {}
        for ns, k, value in conn.execute('SELECT namespace, "key", value FROM kv'):
            kv.setdefault(ns, {})[k] = bytes(value)
        snap.kv = kv
        snap.scheduled_count, snap.scheduled_top_id = conn.execute(
            "SELECT count(*), coalesce(max(id), 0) FROM scheduled"
        ).fetchone()
        if not self.pages:
            snap.scheduled = [
                (i, due, bytes(data))
                for i, due, data in conn.execute(
                    "SELECT id, due, data FROM scheduled ORDER BY due, id"
                )
            ]
        return snap
