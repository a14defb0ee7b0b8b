"""The postgres store on a real PostgreSQL: schema and migrations, open errors (also through
the real ``polymq serve``), the one-writer lock, multi-host DSNs, and connection loss
(``pg_terminate_backend``) between and during commits.

The IStore contract itself (round trips, ordering, group commit, model) is in
test_store_contract.py, on both backends.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import pytest_twisted
from pgserver import PgServer, free_port, pg_bindir
from test_store_sqlite import durable
from twisted.internet import defer, reactor, task

from polymq.core.store.postgres import SCHEMA_VERSION, PostgresStore, StoreOpenError


def dbname(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]


@defer.inlineCallbacks
def wait_for(predicate, timeout: float = 20.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not met in time")


@pytest_twisted.inlineCallbacks
def test_schema_created_on_first_open(pg_dsn):
    store = PostgresStore(pg_dsn)
    yield store.open()
    with psycopg.connect(pg_dsn) as con:
        tables = {
            r[0] for r in con.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'polymq'")
        }
        version = con.execute("SELECT version FROM polymq.schema_version").fetchone()[0]
        app = con.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'polymq'"
        ).fetchone()[0]
    assert tables == {
        "schema_version", "exchanges", "queues", "bindings", "messages", "stream_entries", "kv",
        "scheduled",
    }  # fmt: skip
    assert version == SCHEMA_VERSION == 3
    assert app == 1  # the writer connection
    yield store.close()
    # a second open finds the schema and leaves it as it is
    store = PostgresStore(pg_dsn)
    snap = yield store.open()
    assert snap.queues == []
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_schemas_are_independent(pg_dsn):
    a, b = PostgresStore(pg_dsn, schema="node a"), PostgresStore(pg_dsn, schema="node b")
    yield a.open()
    yield b.open()  # another schema: not locked by a
    a.put_queue("/", "qa", {})
    b.put_queue("/", "qb", {})
    yield durable(a)
    yield durable(b)
    yield a.close()
    yield b.close()
    a = PostgresStore(pg_dsn, schema="node a")
    snap = yield a.open()
    yield a.close()
    assert snap.queues == [("/", "qa", {})]


@pytest_twisted.inlineCallbacks
def test_unreachable_server(pg_server):
    store = PostgresStore(
        f"postgresql://polymq@127.0.0.1:{free_port()}/postgres", connect_timeout_s=2
    )
    with pytest.raises(StoreOpenError) as info:
        yield store.open()
    msg = str(info.value)
    assert "cannot connect to PostgreSQL" in msg and "\n" not in msg
    assert "port=" in msg
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_wrong_password_is_one_line_without_the_password(pg_server):
    store = PostgresStore(pg_server.dsn(password="not-the-password"))
    with pytest.raises(StoreOpenError) as info:
        yield store.open()
    msg = str(info.value)
    assert "password authentication failed" in msg and "\n" not in msg
    assert "not-the-password" not in msg


@pytest_twisted.inlineCallbacks
def test_missing_dsn():
    with pytest.raises(StoreOpenError, match="store.dsn is not set"):
        yield PostgresStore("").open()


def _compression(con, table: str) -> str:
    return con.execute(
        "SELECT attcompression FROM pg_attribute WHERE attrelid = %s::regclass"
        " AND attname = 'data'",
        [f"polymq.{table}"],
    ).fetchone()[0]


@pytest_twisted.inlineCallbacks
def test_schema_v1_migrated_to_lz4_payloads(pg_dsn):
    """A schema of version 1 (pglz payloads) is brought to version 2: lz4 on both payload
    columns; the rows already there stay readable."""
    from polymq.core.store import postgres_schema as S

    with psycopg.connect(pg_dsn) as con:
        con.execute("CREATE SCHEMA polymq")
        for stmt in S.MIGRATIONS[0].split(";"):
            if stmt.strip():
                con.execute(stmt.format(s="polymq"))
        con.execute("UPDATE polymq.schema_version SET version = 1")
        con.execute("INSERT INTO polymq.messages VALUES ('/', 'q', 1, 0, %s)", [b"body" * 1000])
        assert _compression(con, "messages") == ""  # the server default (pglz)
    store = PostgresStore(pg_dsn)
    snap = yield store.open()
    assert snap.messages[("/", "q")] == [(1, b"body" * 1000, 0)]
    store.put_message("/", "q", 2, b"more" * 1000, 0)
    yield store.close()
    with psycopg.connect(pg_dsn) as con:
        assert (
            con.execute("SELECT version FROM polymq.schema_version").fetchone()[0] == SCHEMA_VERSION
        )
        assert _compression(con, "messages") == "l"
        assert _compression(con, "stream_entries") == "l"
        method = con.execute(
            "SELECT pg_column_compression(data) FROM polymq.messages WHERE seq = 2"
        ).fetchone()[0]
        assert method == "lz4"


@pytest_twisted.inlineCallbacks
def test_newer_schema_refused(pg_dsn):
    store = PostgresStore(pg_dsn)
    yield store.open()
    yield store.close()
    with psycopg.connect(pg_dsn) as con:
        con.execute("UPDATE polymq.schema_version SET version = 99")
    with pytest.raises(
        StoreOpenError, match=f"has version 99; this polymq understands up to {SCHEMA_VERSION}"
    ):
        yield PostgresStore(pg_dsn).open()


@pytest_twisted.inlineCallbacks
def test_foreign_tables_without_version_refused(pg_dsn):
    with psycopg.connect(pg_dsn) as con:
        con.execute("CREATE SCHEMA polymq")
        con.execute("CREATE TABLE polymq.messages (x int)")
    with pytest.raises(StoreOpenError, match="holds polymq tables but no schema version"):
        yield PostgresStore(pg_dsn).open()


@pytest_twisted.inlineCallbacks
def test_read_only_server_refused(pg_server, pg_dsn):
    pg_server.sql(f'ALTER DATABASE "{dbname(pg_dsn)}" SET default_transaction_read_only = on')
    with pytest.raises(StoreOpenError, match="read-only"):
        yield PostgresStore(pg_dsn).open()


@pytest_twisted.inlineCallbacks
def test_schema_in_use_by_another_store(pg_dsn):
    store = PostgresStore(pg_dsn)
    yield store.open()
    with pytest.raises(StoreOpenError, match="in use by another polymq store"):
        yield PostgresStore(pg_dsn, connect_timeout_s=1).open()
    yield store.close()
    again = PostgresStore(pg_dsn)  # the lock went with the connection
    yield again.open()
    yield again.close()


@pytest_twisted.inlineCallbacks
def test_multi_host_dsn_finds_the_server(pg_server, pg_dsn):
    """libpq multi-host syntax: a dead host first, then the real one, read-write wanted."""
    db = dbname(pg_dsn)
    dsn = (
        f"postgresql://polymq:polymq-test@127.0.0.1:{free_port()},127.0.0.1:{pg_server.port}"
        f"/{db}?target_session_attrs=read-write&connect_timeout=2"
    )
    store = PostgresStore(dsn)
    yield store.open()
    store.put_kv("ns", "k", b"v")
    yield durable(store)
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_reconnects_after_terminate_between_commits(pg_server, pg_dsn):
    store = PostgresStore(pg_dsn)
    yield store.open()
    store.put_message("/", "q", 1, b"before", 0)
    yield durable(store)
    assert pg_server.terminate_backends(dbname(pg_dsn), "polymq") == 1
    acked = []
    for seq in range(2, 102):
        store.put_message("/", "q", seq, b"after", 0)
        store.after_durable(lambda seq=seq: acked.append(seq))
    yield durable(store)
    assert acked == list(range(2, 102))
    assert store.reconnects == 1
    yield store.close()
    store = PostgresStore(pg_dsn)
    snap = yield store.open()
    yield store.close()
    assert [s for s, _, _ in snap.messages[("/", "q")]] == list(range(1, 102))


@pytest.mark.parametrize("where", ["before the statement", "inside the transaction"])
@pytest_twisted.inlineCallbacks
def test_batch_in_flight_is_retried_after_terminate(pg_server, pg_dsn, where):
    """The connection dies while a batch is being written (before its one statement is sent,
    or half-way through a transaction of several, after the write guard): it is written again
    on a new connection, its callbacks run once, and nothing is doubled or lost."""
    kills = []

    class Cut(PostgresStore):
        def _execute(self, conn, runs):
            if where == "before the statement" and not kills:
                kills.append(pg_server.terminate_backends(dbname(pg_dsn), "polymq"))
            return super()._execute(conn, runs)

        def _write_guard(self):
            if where == "inside the transaction" and not kills:
                kills.append(1)  # the session ends itself: pg_terminate_backend(own pid)
                return [("SELECT pg_terminate_backend(pg_backend_pid())", [])]
            return []

    store = Cut(pg_dsn, lazy_flush_ms=0)
    yield store.open()
    calls = []
    store.put_queue("/", "s", {"type": "stream"})
    for seq in range(50):
        store.put_message("/", "q", seq, b"m%d" % seq, 0)
    store.append_stream("/", "s", 0, 0, 2, 7, "kafka.v2", b"batch")
    store.put_kv("ns", "k", b"v")
    store.delete_message("/", "q", 3)
    store.after_durable(lambda: calls.append("durable"))
    yield durable(store)
    assert kills == [1]
    assert calls == ["durable"]
    assert store.reconnects == 1 and store.retried == 1
    yield store.close()
    store = PostgresStore(pg_dsn)
    snap = yield store.open()
    yield store.close()
    assert [s for s, _, _ in snap.messages[("/", "q")]] == [s for s in range(50) if s != 3]
    assert snap.stream_entries == {("/", "s", 0): [(0, 2, 7, "kafka.v2", b"batch")]}
    assert snap.kv == {"ns": {"k": b"v"}}


@pytest_twisted.inlineCallbacks
def test_outage_longer_than_reconnect_timeout_fails_writes_back(pg_server, pg_dsn):
    """The database stays unreachable past reconnect_timeout_s: the waiting writes get their
    failure callbacks (never their success ones), the store reports itself unavailable and
    keeps taking writes, each failed back quickly; once the database is back, everything kept
    is written in order, the store says it is available again and confirms new writes."""
    fatal: list = []
    availability: list = []
    store = PostgresStore(
        pg_dsn, reconnect_timeout_s=1.0, retry_interval_s=0.2, on_fatal=fatal.append
    )
    store.on_availability = lambda up, reason: availability.append((up, reason))
    yield store.open()
    store.put_message("/", "q", 1, b"ok", 0)
    yield durable(store)
    db = dbname(pg_dsn)
    pg_server.sql(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
    calls: list = []
    try:
        pg_server.terminate_backends(db)
        store.put_message("/", "q", 2, b"answered negatively", 0)
        store.after_durable(lambda: calls.append("ok 2"), lambda e: calls.append(("nack 2", e)))
        store.after_durable(lambda: calls.append("plain 2"))  # no failure callback: never runs
        yield wait_for(lambda: calls)
        assert calls[0][0] == "nack 2"
        assert isinstance(calls[0][1], psycopg.OperationalError | StoreOpenError)
        assert availability == [(False, "store unavailable")]
        # later writes are failed back at the writer's next attempt, not after another timeout
        started = time.monotonic()
        store.put_message("/", "q", 3, b"also negative", 0)
        store.delete_message("/", "q", 1)
        store.after_durable(lambda: calls.append("ok 3"), lambda e: calls.append("nack 3"))
        yield wait_for(lambda: "nack 3" in calls)
        assert time.monotonic() - started < 0.9
        # nothing is confirmed while the database is away, even with no write pending
        store.after_durable(lambda: calls.append("ok 4"), lambda e: calls.append("nack 4"))
        yield wait_for(lambda: "nack 4" in calls)
    finally:
        pg_server.sql(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    yield wait_for(lambda: len(availability) == 2)
    assert availability[1] == (True, "")
    store.put_message("/", "q", 5, b"after", 0)
    store.after_durable(lambda: calls.append("ok 5"), lambda e: calls.append("nack 5"))
    yield wait_for(lambda: "ok 5" in calls)
    assert [c for c in calls if isinstance(c, str)] == ["nack 3", "nack 4", "ok 5"]
    assert fatal == [] and store.outages == 1 and store.failed_batches == 3
    yield store.close()
    # the writes answered negatively were kept and written, in order (1 deleted after 3)
    store = PostgresStore(pg_dsn)
    snap = yield store.open()
    yield store.close()
    assert snap.messages[("/", "q")] == [
        (2, b"answered negatively", 0),
        (3, b"also negative", 0),
        (5, b"after", 0),
    ]


@pytest_twisted.inlineCallbacks
def test_terminate_under_load_loses_no_acknowledged_write(pg_server, pg_dsn):
    """Store level: writes stream in while a thread keeps killing the writer's connection;
    every write reported durable is in the database afterwards."""
    store = PostgresStore(pg_dsn, reconnect_timeout_s=20)
    yield store.open()
    acked: set[int] = set()
    stop = threading.Event()
    kills = []

    def killer():
        while not stop.wait(0.05):
            kills.append(pg_server.terminate_backends(dbname(pg_dsn), "polymq"))

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        seq = 0
        rounds = 0
        deadline = time.monotonic() + 60
        # at least 150 rounds, and on until the writer has reconnected three times (a kill
        # that lands while the writer is idle is only noticed at its next write)
        while rounds < 150 or (store.reconnects < 3 and time.monotonic() < deadline):
            rounds += 1
            lo = seq
            for _ in range(20):
                store.put_message("/", "q", seq, b"x" * 200, 0)
                seq += 1
            store.after_durable(lambda lo=lo, hi=seq: acked.update(range(lo, hi)))
            yield task.deferLater(reactor, 0.002, lambda: None)
        yield durable(store)
    finally:
        stop.set()
        t.join()
    assert sum(kills) >= 3 and store.reconnects >= 3
    assert acked == set(range(seq))
    yield store.close()
    store = PostgresStore(pg_dsn)
    snap = yield store.open()
    yield store.close()
    assert {s for s, _, _ in snap.messages[("/", "q")]} == acked


# ------------------------------------------------------------------ the real command line


def serve(*sets: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "polymq.core", "serve", "--set", "store.backend=postgres"]
    for s in sets:
        cmd += ["--set", s]
    for name in ("mqtt", "amqp", "kafka", "openwire"):
        cmd += ["--set", f"adapters.{name}.port=0", "--set", f"adapters.{name}.host=127.0.0.1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in out.stderr, out.stderr
    errors = [ln for ln in lines if "cannot open store" in ln]
    assert len(errors) == 1, out.stderr
    return errors[0]


@pytest.mark.parametrize("case", ["unreachable", "credentials", "newer-schema"])
def test_cli_exits_1_with_one_line(pg_server, pg_dsn, case, tmp_path):
    if case == "unreachable":
        dsn = f"postgresql://polymq@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
        expect = "cannot connect to PostgreSQL"
    elif case == "credentials":
        dsn = pg_server.dsn(dbname(pg_dsn), password="wrong")
        expect = "password authentication failed"
    else:
        dsn = pg_dsn
        with psycopg.connect(pg_dsn) as con:
            con.execute("CREATE SCHEMA polymq")
            con.execute("CREATE TABLE polymq.schema_version (version integer NOT NULL)")
            con.execute("INSERT INTO polymq.schema_version VALUES (7)")
        expect = f"has version 7; this polymq understands up to {SCHEMA_VERSION}"
    out = serve(f"store.dsn={dsn}", f"store.data_dir={tmp_path}")
    assert out.returncode == 1, out.stderr
    line = one_error_line(out)
    assert expect in line and "wrong" not in line


@pytest_twisted.inlineCallbacks
def test_server_turning_read_only_is_survived(pg_server, pg_dsn):
    """A server that becomes read-only under the store (as a demoted primary does) fails the
    write; the store reconnects and writes the batch once the server takes writes again."""
    store = PostgresStore(pg_dsn)
    yield store.open()
    db = dbname(pg_dsn)
    pg_server.sql(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
    pg_server.terminate_backends(db, "polymq")  # new sessions are read-only now
    acked = []
    store.put_message("/", "q", 1, b"m", 0)
    store.after_durable(lambda: acked.append(1))

    def writable():
        pg_server.sql(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')

    reactor.callLater(1.0, writable)
    yield wait_for(lambda: acked)
    assert store.reconnects >= 1
    yield store.close()
    store = PostgresStore(pg_dsn)
    snap = yield store.open()
    yield store.close()
    assert snap.messages == {("/", "q"): [(1, b"m", 0)]}


@pytest_twisted.inlineCallbacks
def test_statement_error_is_retried_then_fatal(pg_dsn):
    """An error that is not about the connection (here: an SQL error in every write
    transaction) is retried a few times, then the store fails without confirming anything."""
    attempts = []

    class Bad(PostgresStore):
        def _write_guard(self):
            attempts.append(1)
            return [("SELECT * FROM no_such_table", [])]

    fatal = []
    store = Bad(pg_dsn, retries=2, on_fatal=fatal.append)
    yield store.open()
    calls = []
    store.put_message("/", "q", 1, b"m", 0)
    store.after_durable(lambda: calls.append("bad"))
    yield wait_for(lambda: fatal)
    assert isinstance(fatal[0], psycopg.errors.UndefinedTable)
    assert len(attempts) == 3 and calls == []
    with pytest.raises(Exception, match="no_such_table"):
        yield store.close()


@pytest_twisted.inlineCallbacks
def test_commit_not_confirmed_by_the_sync_standby_is_never_reported():
    """With synchronous replication, a commit whose wait for the standby is cancelled
    (pg_cancel_backend; no standby ever answers here) returns success with a WARNING: committed
    locally, maybe lost in a failover. The store treats it as not durable: it writes it again
    until reconnect_timeout_s, then answers negatively (never positively) and keeps it; once a
    commit works again it is written. A server of its own: synchronous_standby_names is
    server-wide."""
    import tempfile

    root = tempfile.mkdtemp(prefix="polymq-pg-")
    server = PgServer(pg_bindir(), root)
    stop = threading.Event()
    try:
        server.start()
        fatal = []
        store = PostgresStore(server.dsn(), reconnect_timeout_s=1.0, on_fatal=fatal.append)
        yield store.open()
        server.sql("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        server.sql("SELECT pg_reload_conf()")
        # every backend, the store's idle writer included, applies the reload on its own time
        yield task.deferLater(reactor, 1.0, lambda: None)
        cancels = []

        def canceller():  # cancels every wait of the store's session for the standby
            while not stop.wait(0.1):
                cancels.append(
                    server.sql(
                        "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = 'polymq' AND wait_event = 'SyncRep'"
                    )[0][0]
                )

        t = threading.Thread(target=canceller, daemon=True)
        t.start()
        calls = []
        store.put_message("/", "q", 1, b"m", 0)
        store.after_durable(lambda: calls.append("bad"), calls.append)
        yield wait_for(lambda: calls)
        assert sum(cancels) >= 2  # cancelled, written again, cancelled again ...
        assert "synchronous standby" in str(calls[0]) and fatal == []
        stop.set()
        t.join()
        server.sql("ALTER SYSTEM RESET synchronous_standby_names")
        server.sql("SELECT pg_reload_conf()")
        yield task.deferLater(reactor, 1.0, lambda: None)
        yield store.close()  # writes what was kept
        assert calls[1:] == [] and fatal == []
        assert server.sql("SELECT seq FROM polymq.messages") == [(1,)]
    finally:
        stop.set()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
