"""The IStore contract, on every durable backend: sqlite and postgres (a real PostgreSQL).

Round trips of every kind, delete semantics, ``after_durable`` order and visibility to another
connection, group commit, put/delete cancellation, close, and arbitrary operation sequences
against a model (hypothesis). Backend-specific behaviour is in test_store_sqlite.py and
test_store_postgres.py.
"""

from __future__ import annotations

import itertools
import sqlite3

import psycopg
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store_sqlite import Model, ThreadClock, durable, ops_strategy, turn
from twisted.internet import defer
from zope.interface.verify import verifyObject

from polymq.core.store.interfaces import IStore
from polymq.core.store.postgres import PostgresStore
from polymq.core.store.sqlite import FILENAME, SqliteStore

_schemas = itertools.count(1)
_model_dsn: str | None = None  # one database for every example of test_model_postgres


class Backend:
    """Opens stores of one backend on one place (a data dir, or a database + schema)."""

    def __init__(self, kind: str, where: str, schema: str = "polymq") -> None:
        self.kind, self.where, self.schema = kind, where, schema

    def make(self, **kw):
        if self.kind == "sqlite":
            return SqliteStore(self.where, **kw)
        return PostgresStore(self.where, schema=self.schema, **kw)

    def open(self, **kw):
        store = self.make(**kw)
        return store, store.open()

    def count_messages(self, upto: int) -> int:
        """Messages with seq <= upto, read through a connection of its own."""
        if self.kind == "sqlite":
            con = sqlite3.connect(f"{self.where}/{FILENAME}")
            try:
                return con.execute(
                    "SELECT count(*) FROM messages WHERE seq <= ?", (upto,)
                ).fetchone()[0]
            finally:
                con.close()
        with psycopg.connect(self.where) as con:
            return con.execute(
                f'SELECT count(*) FROM "{self.schema}".messages WHERE seq <= %s', (upto,)
            ).fetchone()[0]

    def fresh(self) -> Backend:
        """An empty schema in the same database (postgres only)."""
        return Backend("postgres", self.where, f"s{next(_schemas)}")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "data"))
    return Backend("postgres", request.getfixturevalue("pg_dsn"))


@pytest_twisted.inlineCallbacks
def test_provides_interface(backend):
    store, d = backend.open()
    snap = yield d
    assert verifyObject(IStore, store)
    assert store.name == backend.kind
    assert snap.queues == [] and snap.messages == {} and snap.kv == {}
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_round_trip_every_kind(backend):
    store, d = backend.open()
    yield d
    store.put_exchange("/", "ex", {"type": "topic", "durable": True, "args": {"a": [1, b"x"]}})
    store.put_exchange("v2", "ex", {"type": "direct"})
    store.put_queue("/", "q1", {"durable": True, "arguments": {"x-max-length": 10}})
    store.put_queue("/", "s1", {"type": "stream"})
    store.put_binding("/", "ex", "queue", "q1", "a.*", {})
    store.put_binding("/", "ex", "queue", "q1", "a.*", {})  # idempotent
    store.put_binding("/", "amq.headers", "queue", "q1", "", {"x-match": "all", "h": 1})
    store.put_binding("/", "ex", "exchange", "ex2", "#", {})
    yield turn()
    for seq in range(5):
        store.put_message("/", "q1", seq, b"m%d" % seq, 0)
    store.put_message("/", "q1", 3, b"m3", 2)  # delivery-count update
    store.append_stream("/", "s1", 0, 0, 3, 1000, "kafka.v2", b"batch0")
    store.append_stream("/", "s1", 0, 3, 1, 1001, "polymq", b"batch1")
    store.append_stream("/", "s1", 1, 0, 1, 1002, "polymq", b"p1")
    store.put_kv("mqtt.session", "client-1", b"\x00\x01")
    store.put_kv("mqtt.retained", "a/b", b"ret")
    yield durable(store)
    yield store.close()

    store2, d2 = backend.open()
    snap = yield d2
    assert sorted(snap.exchanges) == [
        ("/", "ex", {"type": "topic", "durable": True, "args": {"a": [1, b"x"]}}),
        ("v2", "ex", {"type": "direct"}),
    ]
    assert sorted(snap.queues, key=lambda q: q[1]) == [
        ("/", "q1", {"durable": True, "arguments": {"x-max-length": 10}}),
        ("/", "s1", {"type": "stream"}),
    ]
    assert sorted(snap.bindings, key=repr) == sorted(
        [
            ("/", "ex", "queue", "q1", "a.*", {}),
            ("/", "amq.headers", "queue", "q1", "", {"x-match": "all", "h": 1}),
            ("/", "ex", "exchange", "ex2", "#", {}),
        ],
        key=repr,
    )
    assert snap.messages == {
        ("/", "q1"): [(0, b"m0", 0), (1, b"m1", 0), (2, b"m2", 0), (3, b"m3", 2), (4, b"m4", 0)]
    }
    assert snap.stream_entries == {
        ("/", "s1", 0): [(0, 3, 1000, "kafka.v2", b"batch0"), (3, 1, 1001, "polymq", b"batch1")],
        ("/", "s1", 1): [(0, 1, 1002, "polymq", b"p1")],
    }
    assert snap.kv == {"mqtt.session": {"client-1": b"\x00\x01"}, "mqtt.retained": {"a/b": b"ret"}}
    yield store2.close()


@pytest_twisted.inlineCallbacks
def test_delete_semantics(backend):
    store, d = backend.open()
    yield d
    store.put_exchange("/", "x", {})
    store.put_exchange("/", "y", {})
    store.put_queue("/", "q", {})
    store.put_queue("/", "other", {})
    store.put_binding("/", "x", "queue", "q", "k", {"b": 1, "a": 2})
    store.put_binding("/", "x", "exchange", "y", "k", {})
    store.put_binding("/", "y", "queue", "other", "k", {})
    store.put_binding("/", "y", "exchange", "x", "k", {})
    store.put_binding("/", "y", "queue", "q", "z", {})
    for s in range(3):
        store.put_message("/", "q", s, b"q", 0)
        store.put_message("/", "other", s, b"o", 0)
    store.append_stream("/", "q", 0, 0, 1, 0, "f", b"e")
    store.append_stream("/", "other", 0, 0, 1, 0, "f", b"e0")
    store.append_stream("/", "other", 0, 1, 2, 0, "f", b"e1")
    store.append_stream("/", "other", 0, 3, 1, 0, "f", b"e3")
    store.put_kv("ns", "a", b"1")
    store.put_kv("ns", "b", b"2")
    yield durable(store)
    # binding args are matched regardless of dict order
    store.delete_binding("/", "x", "queue", "q", "k", {"a": 2, "b": 1})
    store.put_binding("/", "x", "queue", "q", "k2", {})
    store.delete_queue("/", "q")  # messages, stream entries, bindings *to* q
    store.delete_exchange("/", "x")  # bindings from x and to x
    store.delete_message("/", "other", 1)
    store.trim_stream("/", "other", 0, 3)
    store.delete_kv("ns", "a")
    yield durable(store)
    yield store.close()

    store2, d2 = backend.open()
    snap = yield d2
    yield store2.close()
    assert snap.exchanges == [("/", "y", {})]
    assert snap.queues == [("/", "other", {})]
    assert snap.bindings == [("/", "y", "queue", "other", "k", {})]
    assert snap.messages == {("/", "other"): [(0, b"o", 0), (2, b"o", 0)]}
    assert snap.stream_entries == {("/", "other", 0): [(3, 1, 0, "f", b"e3")]}
    assert snap.kv == {"ns": {"b": b"2"}}


@pytest_twisted.inlineCallbacks
def test_after_durable_order_and_visibility(backend):
    store, d = backend.open()
    yield d
    seen: list[tuple[int, int]] = []
    called = []
    store.after_durable(lambda: called.append(1))  # nothing pending: at once
    assert called == [1]
    for turn_no in range(5):
        for i in range(20):
            seq = turn_no * 20 + i
            store.put_message("/", "q", seq, b"x" * 100, 0)
            if i % 7 == 0:
                store.after_durable(lambda seq=seq: seen.append((seq, backend.count_messages(seq))))
                assert seen == [] or seen[-1][0] < seq  # never synchronous while pending
        yield turn()
    yield durable(store)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert len(seen) == 15
    # at callback time every message up to seq was readable by another connection
    assert all(count == seq + 1 for seq, count in seen)
    store.after_durable(lambda: called.append(2))
    assert called == [1, 2]
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_group_commit(backend):
    store, d = backend.open()
    yield d
    acks = []
    for t in range(20):
        for i in range(50):
            seq = t * 50 + i
            store.put_message("/", "q", seq, b"payload", 0)
            store.after_durable(lambda seq=seq: acks.append(seq))
        yield turn()
    yield durable(store)
    assert acks == list(range(1000))
    assert 1 <= store.commits <= 20 < 1000
    assert store.ops_written == 1000
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_put_delete_cancel(backend):
    store, d = backend.open()
    yield d
    store.put_message("/", "q", 1, b"keep", 0)
    yield durable(store)
    order = []
    store.put_message("/", "q", 2, b"gone", 0)
    store.after_durable(lambda: order.append("confirm2"))
    store.put_message("/", "q", 2, b"gone", 1)
    store.delete_message("/", "q", 2)  # acked before it reached the database
    store.delete_message("/", "q", 1)  # deletes a message flushed earlier
    store.put_message("/", "q", 3, b"three", 0)
    store.after_durable(lambda: order.append("confirm3"))
    assert store.cancelled == 1
    yield durable(store)
    assert order == ["confirm2", "confirm3"]
    yield store.close()
    store2, d2 = backend.open()
    snap = yield d2
    yield store2.close()
    assert snap.messages == {("/", "q"): [(3, b"three", 0)]}


@pytest_twisted.inlineCallbacks
def test_runs_of_puts_and_deletes(backend):
    """Runs of puts and deletes (several queues, repeated keys, odd sizes) keep their meaning,
    also when several reactor turns' batches share one transaction."""
    store, d = backend.open(lazy_flush_ms=0)
    yield d
    expect: dict[tuple[str, str], dict[int, tuple[bytes, int]]] = {}
    for n in (1, 2, 3, 129, 300):
        for seq in range(n):
            q = ("/", f"q{seq % 3}") if n > 3 else ("v", "x")
            store.put_message(*q, seq, b"%d-%d" % (n, seq), n)
            expect.setdefault(q, {})[seq] = (b"%d-%d" % (n, seq), n)
        yield turn()
        for seq in range(0, n, 2):
            q = ("/", f"q{seq % 3}") if n > 3 else ("v", "x")
            store.delete_message(*q, seq)
            store.delete_message(*q, seq)  # twice: harmless
            expect[q].pop(seq, None)
        yield turn()
        for seq in range(1, n, 4):  # a delivery-count update in a later batch
            q = ("/", f"q{seq % 3}") if n > 3 else ("v", "x")
            store.put_message(*q, seq, b"%d-%d" % (n, seq), n + 1)
            expect[q][seq] = (b"%d-%d" % (n, seq), n + 1)
        yield durable(store)
    yield store.close()
    store2, d2 = backend.open()
    snap = yield d2
    yield store2.close()
    got = {q: {s: (b, c) for s, b, c in rows} for q, rows in snap.messages.items()}
    assert got == {q: m for q, m in expect.items() if m}


@pytest_twisted.inlineCallbacks
def test_close_commits_pending_then_writes_ignored(backend):
    store, d = backend.open()
    yield d
    calls = []
    for seq in range(100):
        store.put_message("/", "q", seq, b"m", 0)
    store.after_durable(lambda: calls.append("before-close"))
    closed = store.close()
    store.after_durable(lambda: calls.append("while-closing"))
    yield closed
    assert calls[0] == "before-close"
    assert store._thread is None  # the writer thread is gone
    # everything issued before close is committed: a late after_durable runs at once
    store.after_durable(lambda: calls.append("after-close"))
    assert calls == ["before-close", "while-closing", "after-close"]
    # writes after close are ignored (counted, logged once) and never reported durable
    store.put_message("/", "q", 1000, b"late", 0)
    store.put_queue("/", "late", {})
    assert store.dropped_after_close == 2
    store.after_durable(lambda: calls.append("never"))
    yield turn()
    assert "never" not in calls
    yield store.close()  # idempotent
    store2, d2 = backend.open()
    snap = yield d2
    yield store2.close()
    assert [s for s, _, _ in snap.messages[("/", "q")]] == list(range(100))
    assert snap.queues == []


@pytest_twisted.inlineCallbacks
def test_unusual_names_round_trip(backend):
    """Names with characters some databases refuse in text (NUL) and non-ASCII ones."""
    store, d = backend.open()
    yield d
    names = ["a\x00b", "grüße/世界", "quote'\"", ""]
    for i, n in enumerate(names):
        store.put_queue(n, n, {"i": i})
        store.put_message(n, n, i, b"m", 0)
        store.put_kv(n, n, b"v")
        store.put_binding(n, n, "queue", n, n, {n: 1})
    yield durable(store)
    yield store.close()
    store2, d2 = backend.open()
    snap = yield d2
    yield store2.close()
    assert sorted(snap.queues, key=repr) == sorted(
        [(n, n, {"i": i}) for i, n in enumerate(names)], key=repr
    )
    assert snap.messages == {(n, n): [(i, b"m", 0)] for i, n in enumerate(names)}
    assert snap.kv == {n: {n: b"v"} for n in names}
    assert len(snap.bindings) == 4


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(ops_strategy, min_size=8, max_size=60))
def test_model_postgres(pg_server, ops):
    """Arbitrary operation sequences, flushed and reopened at arbitrary points, match a model
    (the same model and operations as test_store_sqlite.py's test_model)."""
    global _model_dsn
    if _model_dsn is None:
        _model_dsn = pg_server.create_database()
    backend = Backend("postgres", _model_dsn).fresh()
    clock = ThreadClock()
    model = Model()
    store = backend.make(clock=clock)
    clock.wait(store.open())
    for op in ops:
        if op[0] == "turn":
            d: defer.Deferred = defer.Deferred()
            store.after_durable(lambda d=d: d.callback(None))
            clock.wait(d)
        elif op[0] in ("append_stream", "trim_stream"):
            v, s, p, n = op[1:5]
            nxt = model.next.get((v, s, p), 0)
            off = nxt + n if op[0] == "append_stream" else min(n, nxt)
            op = (op[0], v, s, p, off, *op[5:])
            getattr(store, op[0])(*op[1:])
            model.apply(op)
        elif op[0] == "reopen":
            clock.wait(store.close())
            store = backend.make(clock=clock)
            model.check(clock.wait(store.open()))
        else:
            getattr(store, op[0])(*op[1:])
            model.apply(op)
    clock.wait(store.close())
    store = backend.make(clock=clock)
    snap = clock.wait(store.open())
    clock.wait(store.close())
    model.check(snap)
