"""The ``postgres`` store: broker state in a PostgreSQL database (psycopg 3).

Same semantics as the sqlite store (see ``sqlite.py`` and docs/storage.md); the schema is in
``postgres_schema.py``.

Threading model
---------------
The reactor thread never talks to the database. The reactor-side half is the one the sqlite
store has too (``writer.py``, :class:`~.writer.WriterStore`): write methods append operations
to a batch, ``after_durable`` flushes it on the next reactor turn, writes nobody waits for yet
wait up to ``lazy_flush_ms``, a put and a delete of one message in a batch cancel out. A flush
hands (operations, callbacks, failure callbacks) to the writer thread through a queue. The
writer thread owns one connection: it takes every batch waiting and writes them in one
transaction, usually a single statement (see ``postgres_sql.py``) run in autocommit mode,
otherwise statements between BEGIN and COMMIT; then it hands the callbacks of all those batches
to the reactor with one ``callFromThread``.

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
import time
from collections.abc import Callable
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from . import postgres_schema as S
from .interfaces import IStore, StoreSnapshot
from .postgres_sql import Statements
from .sqlite_open import StoreOpenError
from .sqlite_sql import _unpack
from .writer import CLOSE as _CLOSE
from .writer import StoreFailedError, WriterStore
from .writer import one_line as _one_line

__all__ = ["PostgresStore", "StoreOpenError", "StoreFailedError", "SCHEMA_VERSION"]

log = Logger(namespace="polymq.store.postgres")

SCHEMA_VERSION = S.SCHEMA_VERSION

_KIND = itemgetter(0)
_PARAMS = itemgetter(1)
_OPS = itemgetter(0)
_CALLBACKS = itemgetter(1)
_FAILBACKS = itemgetter(2)

_SYNC_REP_CANCEL = "canceling wait for synchronous replication"


class _Retry(Exception):
    """A commit that cannot be trusted although the server said COMMIT (sync-rep cancel)."""


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
class PostgresStore(WriterStore):
    """Durable store in PostgreSQL; see the module docstring for the threading and failure model.

    Counters (reactor thread; for tests and metrics): ``commits`` transactions committed,
    ``flushes`` batches handed to the writer, ``ops_written`` operations executed,
    ``cancelled`` message puts cancelled by a delete in the same batch, ``reconnects``
    connections re-established after a loss, ``retried`` batches run again after an error.
    """

    name = "postgres"
    reports_write_failures = True  # after_durable(callback, failed): see the module docstring
    log = log

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
        self.dsn = dsn
        self.schema = schema
        self.where = f"{describe_dsn(dsn)} schema={schema}"
        self.connect_timeout = max(1, int(connect_timeout_s))
        self.reconnect_timeout = max(0.0, float(reconnect_timeout_s))
        self.retries = int(retries)
        self.retry_interval = max(0.05, float(retry_interval_s))
        self.label = f"postgres store {self.where}"
        # on_availability (reactor thread) is called with (False, reason) when the database
        # stays away and with (True, "") when it is back; the broker holds publishers back
        self._init_writer(
            clock=clock,
            on_fatal=on_fatal,
            lazy_flush_ms=lazy_flush_ms,
            lazy_flush_ops=lazy_flush_ops,
            thread_name=f"polymq-postgres-writer:{schema}",
        )
        self._s = S.quote_ident(schema)
        self._statements = Statements(self._s).statements

        # counters
        self.commits = 0
        self.ops_written = 0
        self.reconnects = 0
        self.retried = 0

        # writer side
        self._conn: Any = None
        self._names: dict[str, bytes] = {}
        self._sync_rep_cancelled = False

    # ------------------------------------------------------------------ writes (reactor thread)

    def put_message(
        self, vhost: str, queue: str, seq: int, data: bytes, delivery_count: int
    ) -> None:
        self._put_message_op((vhost, queue, seq), (vhost, queue, seq, data, delivery_count))

    def _apply_stats(self, stats: tuple) -> None:
        self.commits, self.ops_written, self.reconnects, self.retried = stats

    def _closed_details(self) -> str:
        return f", {self.reconnects} reconnects"

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
        snap.scheduled = [
            (i, due, bytes(data)) for i, due, data in cur.execute(S.LOAD_SCHEDULED.format(s=s))
        ]
        snap.scheduled_count = len(snap.scheduled)
        snap.scheduled_top_id = max((i for i, _, _ in snap.scheduled), default=0)
        conn.commit()
        return snap
