"""The core scheduler: delays, repeats, cron, the delayed exchange, one timer, paging window,
and jobs that survive a reopen of the sqlite store."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from polymq.core.broker import Broker
from polymq.core.errors import PreconditionFailed
from polymq.core.message import Message
from polymq.core.scheduler import ScheduleError, next_cron
from polymq.core.store.sqlite import SqliteStore


class Clocked(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.rightNow = 1_700_000_000.0


def drain(q) -> list[bytes]:
    out = []
    while (d := q.get(no_ack=True)) is not None:
        out.append(d.message.body)
    return out


@pytest.fixture
def clock():
    return Clocked()


@pytest.fixture
def broker(clock):
    return Broker(clock=clock)


def test_delay_fires_in_due_order_with_one_timer(broker, clock):
    vh = broker.vhost()
    q = vh.declare_queue("q")
    for i, delay in enumerate([3000, 1000, 2000, 1000]):
        broker.scheduler.schedule("/", "", "q", Message(b"m%d" % i), delay_ms=delay)
    assert len(clock.getDelayedCalls()) == 1  # one timer however many jobs
    assert broker.scheduler.pending == 4
    clock.advance(0.999)
    assert drain(q) == []
    clock.advance(0.001)
    assert drain(q) == [b"m1", b"m3"]
    clock.advance(1.0)
    assert drain(q) == [b"m2"]
    clock.advance(1.0)
    assert drain(q) == [b"m0"]
    assert broker.scheduler.pending == 0 and not clock.getDelayedCalls()


def test_repeat_with_period_gives_each_delivery_its_own_id(broker, clock):
    vh = broker.vhost()
    q = vh.declare_queue("q")
    m = Message(b"r", message_id="ID:x-1", annotations={"openwire.pid": ["c", 1, 1, 1]})
    broker.scheduler.schedule("/", "", "q", m, delay_ms=500, period_ms=1000, repeat=2)
    clock.advance(0.5)
    got = [q.get(no_ack=True).message]
    for _ in range(4):
        clock.advance(1.0)
        while (d := q.get(no_ack=True)) is not None:
            got.append(d.message)
    assert [g.body for g in got] == [b"r"] * 3  # the first delivery and two repeats
    assert len({g.message_id for g in got}) == 3
    assert "openwire.pid" not in got[1].annotations
    assert broker.scheduler.pending == 0


def test_cron(broker, clock):
    vh = broker.vhost()
    q = vh.declare_queue("q")
    now = broker.now()
    first = next_cron("* * * * *", now)
    assert first > now and first % 60000 == 0
    broker.scheduler.schedule("/", "", "q", Message(b"c"), cron="* * * * *", repeat=1)
    clock.advance((first - now) / 1000.0 - 0.01)
    assert drain(q) == []
    clock.advance(0.01)
    assert drain(q) == [b"c"]
    clock.advance(60)
    assert drain(q) == [b"c"]
    clock.advance(120)
    assert drain(q) == []
    with pytest.raises(ScheduleError):
        broker.scheduler.schedule("/", "", "q", Message(b"x"), cron="not a cron")


def test_delayed_message_exchange_routes_like_its_type(broker, clock):
    vh = broker.vhost()
    with pytest.raises(PreconditionFailed):
        vh.declare_exchange("bad", "x-delayed-message")
    vh.declare_exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "topic"})
    q = vh.declare_queue("q")
    vh.bind_queue("q", "dx", "a.*")
    vh.publish("dx", "a.b", Message(b"now"))  # no x-delay: routed at once
    vh.publish("dx", "a.b", Message(b"later", headers={"x-delay": 2000}))
    vh.publish("dx", "x.y", Message(b"nowhere", headers={"x-delay": 1000}))
    assert drain(q) == [b"now"]
    clock.advance(2)
    got = q.get(no_ack=True).message
    assert got.body == b"later" and got.headers["x-delay"] == -2000
    assert drain(q) == []  # the x.y one matched no binding when it was due


@pytest_twisted.inlineCallbacks
def test_sqlite_window_pages_and_jobs_survive_reopen(tmp_path):
    """Many jobs, a window of 16 in memory: the rest stay in the store and come back in due
    order; a reopen finds every job not yet delivered."""
    store = SqliteStore(str(tmp_path), paging=True)
    b = Broker(store, config={"broker": {"scheduled_max_in_memory": 16}}, clock=reactor)
    yield b.start()
    vh = b.vhost()
    vh.declare_queue("q", durable=True)
    n = 200
    base = b.now()
    # due times in a shuffled order, all at least 60 s away
    order = [(i * 37) % n for i in range(n)]
    for i in order:
        msg = Message(b"%d" % i, durable=True)
        b.scheduler.schedule("/", "", "q", msg, delay_ms=60_000 + i * 10 - (b.now() - base))
    assert b.scheduler.pending == n
    assert b.scheduler.in_memory() <= 16
    yield b.stop()

    store2 = SqliteStore(str(tmp_path), paging=True)
    b2 = Broker(store2, config={"broker": {"scheduled_max_in_memory": 16}}, clock=reactor)
    yield b2.start()
    try:
        assert b2.scheduler.pending == n
        # the window is read back from the store in due order
        for _ in range(50):
            if b2.scheduler.in_memory():
                break
            yield _sleep(0.02)
        assert 0 < b2.scheduler.in_memory() <= 16
        assert b2.scheduler.next_due() is not None
        assert b2.scheduler.next_due() >= base + 60_000
        # pretend the time has come: fire by moving the jobs' clock
        b2.now = lambda: base + 10**7  # type: ignore[method-assign]
        b2.scheduler._fire()
        q = b2.vhost().get_queue("q")
        for _ in range(200):
            if q.message_count == n:
                break
            yield _sleep(0.02)
        got = [int(x) for x in drain(q)]
        assert got == list(range(n))  # all of them, in due order, across many reads
        assert b2.scheduler.pending == 0
    finally:
        yield b2.stop()


def _sleep(s: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(s, d.callback, None)
    return d


@pytest.fixture(params=["sqlite", "sqlite-nopaging", "postgres"])
def store_maker(request, tmp_path):
    if request.param.startswith("sqlite"):
        paging = request.param == "sqlite"
        return lambda: SqliteStore(str(tmp_path / "data"), paging=paging)
    from polymq.core.store.postgres import PostgresStore

    dsn = request.getfixturevalue("pg_dsn")
    return lambda: PostgresStore(dsn, schema="sched")


@pytest_twisted.inlineCallbacks
def test_store_keeps_scheduled_jobs(store_maker):
    """put/replace/delete of jobs on every durable backend, as read back after a reopen."""
    store = store_maker()
    yield store.open()
    for i in range(1, 8):
        store.put_scheduled(i, 1000 * (8 - i), b"job%d" % i)
    store.put_scheduled(3, 99_000, b"job3-moved")  # a repeat moved on: replaced
    store.delete_scheduled(5)
    d: defer.Deferred = defer.Deferred()
    store.after_durable(lambda: d.callback(None))
    yield d
    yield store.close()
    store = store_maker()
    snap = yield store.open()
    try:
        expect = [(i, 1000 * (8 - i), b"job%d" % i) for i in (7, 6, 4, 2, 1)]
        expect.append((3, 99_000, b"job3-moved"))
        assert snap.scheduled_count == 6 and snap.scheduled_top_id == 7
        if getattr(store, "pages", False):
            assert snap.scheduled == []
            got: defer.Deferred = defer.Deferred()
            store.read_scheduled(2000, 4, 3, got.callback)  # from (due 2000, id 4) on, 3 rows
            assert (yield got) == [r for r in expect if (r[1], r[0]) >= (2000, 4)][:3]
        else:
            assert snap.scheduled == expect
    finally:
        yield store.close()


@pytest_twisted.inlineCallbacks
def test_postgres_schema_1_is_migrated(pg_dsn):
    import psycopg

    from polymq.core.store.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
    from polymq.core.store.postgres import PostgresStore

    store = PostgresStore(pg_dsn, schema="mig")
    yield store.open()
    yield store.close()
    with psycopg.connect(pg_dsn) as con:  # what a broker of schema version 1 left
        con.execute("DROP TABLE mig.scheduled")
        con.execute("UPDATE mig.schema_version SET version = 1")
    store = PostgresStore(pg_dsn, schema="mig")
    yield store.open()
    store.put_scheduled(1, 5, b"x")
    d: defer.Deferred = defer.Deferred()
    store.after_durable(lambda: d.callback(None))
    yield d
    yield store.close()
    with psycopg.connect(pg_dsn) as con:
        assert (
            con.execute("SELECT version FROM mig.schema_version").fetchone()[0] == PG_SCHEMA_VERSION
        )
        assert con.execute("SELECT id, due FROM mig.scheduled").fetchall() == [(1, 5)]


def test_a_store_without_scheduled_support_keeps_jobs_in_memory(clock):
    from polymq.core.store.memory import MemoryStore

    class OldStore:
        """A third-party backend written before scheduled delivery."""

        def __init__(self) -> None:
            self._inner = MemoryStore()

        def __getattr__(self, name: str):
            if "scheduled" in name:
                raise AttributeError(name)
            return getattr(self._inner, name)

    b = Broker(OldStore(), clock=clock)
    q = b.vhost().declare_queue("q")
    b.scheduler.schedule("/", "", "q", Message(b"old"), delay_ms=100)
    clock.advance(0.1)
    assert drain(q) == [b"old"]
