"""Paged queues on the sqlite store: bounded memory, order, priorities, TTL, DLX, selectors,
redelivery and restart with a backlog many times the in-memory budget (in process)."""

from __future__ import annotations

import sqlite3

import pytest_twisted
from twisted.internet import defer, reactor, task

from polymq.core.broker import Broker
from polymq.core.message import Message
from polymq.core.queue import Consumer
from polymq.core.store.sqlite import FILENAME, SqliteStore

BUDGET = 20  # messages in memory per queue


def settle(seconds: float = 0.05) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def until(predicate, timeout: float = 10.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        yield settle(0.01)
    assert predicate()


@defer.inlineCallbacks
def start_broker(path, **store_cfg):
    cfg = {"queue_max_in_memory_length": BUDGET, **store_cfg}
    store = SqliteStore(str(path), paging=True, lazy_flush_ms=1)
    broker = Broker(store=store, config={"store": cfg})
    yield broker.start()
    return broker


def publish(vh, key, n, start=0, **kw):
    for i in range(start, start + n):
        vh.publish("", key, Message(b"m%d" % i, **kw))


@pytest_twisted.inlineCallbacks
def test_backlog_beyond_budget_stays_in_store_and_comes_back_in_order(tmp_path):
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    q = vh.declare_queue("q", durable=True)
    publish(vh, "q", 500, durable=True)
    assert q.message_count == 500
    assert q.paged_count == 500 - BUDGET
    assert len(q._levels[0]) == BUDGET
    got = []
    c = Consumer("c", got.append, prefetch=7)
    q.add_consumer(c)
    peak = 0
    while len(got) < 500:
        yield until(lambda: len(c.unacked) > 0 or len(got) == 500)
        for d in list(c.unacked.values()):
            q.ack(d)
        # what is in memory stays near the read-ahead, never the backlog
        peak = max(peak, sum(len(lv) for lv in q._levels))
    for d in list(c.unacked.values()):
        q.ack(d)
    assert [d.message.body for d in got] == [b"m%d" % i for i in range(500)]
    assert peak <= BUDGET + 7
    assert q.message_count == 0 and q.paged_count == 0
    yield broker.stop()
    con = sqlite3.connect(tmp_path / FILENAME)
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


@pytest_twisted.inlineCallbacks
def test_restart_reads_no_body_and_delivers_backlog_in_order(tmp_path):
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    vh.declare_queue("q", durable=True)
    publish(vh, "q", 300, durable=True)
    publish(vh, "q", 50, start=300, durable=False)  # transient: gone after a restart
    yield broker.stop()
    con = sqlite3.connect(tmp_path / FILENAME)
    # the transient messages over the budget were written out, marked transient
    assert con.execute("SELECT count(*) FROM messages WHERE transient = 1").fetchone()[0] == 50
    con.close()

    broker = yield start_broker(tmp_path)
    q = broker.vhost().queues["q"]
    assert q.message_count == 300
    # only the read-ahead of the head is in memory
    assert sum(len(lv) for lv in q._levels) <= BUDGET
    got = [q.get(no_ack=True) for _ in range(5)]
    assert [d.message.body for d in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    out = []
    q.add_consumer(Consumer("c", out.append, no_ack=True))
    yield until(lambda: len(out) == 295)
    assert [d.message.body for d in out] == [b"m%d" % i for i in range(5, 300)]
    yield broker.stop()
    con = sqlite3.connect(tmp_path / FILENAME)
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


@pytest_twisted.inlineCallbacks
def test_priorities_on_paged_messages(tmp_path):
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    q = vh.declare_queue("pq", durable=True, arguments={"x-max-priority": 5})
    for i in range(100):
        vh.publish("", "pq", Message(b"low%d" % i, durable=True, priority=1))
    for i in range(100):
        vh.publish("", "pq", Message(b"high%d" % i, durable=True, priority=5))
    assert q.paged_count == 200 - BUDGET
    yield broker.stop()
    broker = yield start_broker(tmp_path)
    q = broker.vhost().queues["pq"]
    assert q.message_count == 200
    out = []
    q.add_consumer(Consumer("c", out.append, no_ack=True))
    yield until(lambda: len(out) == 200)
    want = [b"high%d" % i for i in range(100)] + [b"low%d" % i for i in range(100)]
    assert [d.message.body for d in out] == want
    yield broker.stop()


@pytest_twisted.inlineCallbacks
def test_ttl_and_dead_lettering_of_paged_messages(tmp_path):
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    vh.declare_exchange("dlx", "fanout", durable=True)
    dead = vh.declare_queue("dead", durable=True)
    vh.bind_queue("dead", "dlx")
    q = vh.declare_queue(
        "tq", durable=True, arguments={"x-message-ttl": 200, "x-dead-letter-exchange": "dlx"}
    )
    publish(vh, "tq", 100, durable=True)
    assert q.paged_count == 100 - BUDGET
    yield settle(0.4)  # every message is past its TTL, most of them only in the store
    out = []
    q.add_consumer(Consumer("c", out.append, no_ack=True))
    yield until(lambda: q.message_count == 0)
    assert out == []
    yield until(lambda: dead.message_count == 100)
    got = []
    dc = Consumer("d", got.append, no_ack=True)
    dead.add_consumer(dc)
    yield until(lambda: len(got) == 100)
    dead.remove_consumer(dc)
    assert [d.message.body for d in got] == [b"m%d" % i for i in range(100)]
    assert got[-1].message.headers["x-death"][0]["reason"] == "expired"
    # rejected paged messages dead-letter too
    q2 = vh.declare_queue("nq", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
    publish(vh, "nq", 60, start=100, durable=True)
    assert q2.paged_count == 60 - BUDGET
    seen = []
    c = Consumer("r", seen.append, prefetch=5)
    q2.add_consumer(c)
    while len(seen) < 60:
        yield until(lambda: len(c.unacked) > 0)
        for d in list(c.unacked.values()):
            q2.nack(d, requeue=False)
    for d in list(c.unacked.values()):
        q2.nack(d, requeue=False)
    yield until(lambda: dead.message_count == 60)
    dead.add_consumer(dc)
    yield until(lambda: len(got) == 160)
    assert [d.message.body for d in got[100:]] == [b"m%d" % i for i in range(100, 160)]
    assert got[-1].message.headers["x-death"][0]["reason"] == "rejected"
    yield broker.stop()


@pytest_twisted.inlineCallbacks
def test_redelivery_of_paged_messages_keeps_count_and_order(tmp_path):
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    q = vh.declare_queue("rq", durable=True)
    publish(vh, "rq", 100, durable=True)
    first = []
    c = Consumer("c1", first.append, prefetch=30)
    q.add_consumer(c)
    yield until(lambda: len(first) == 30)
    q.remove_consumer(c)  # requeued at the head, in order, delivery count 1
    yield broker.stop()
    broker = yield start_broker(tmp_path)
    q = broker.vhost().queues["rq"]
    assert q.message_count == 100
    out = []
    q.add_consumer(Consumer("c2", out.append, no_ack=True))
    yield until(lambda: len(out) == 100)
    assert [d.message.body for d in out] == [b"m%d" % i for i in range(100)]
    assert [d.delivery_count for d in out[:30]] == [1] * 30
    assert all(d.delivery_count == 0 for d in out[30:])
    yield broker.stop()


@pytest_twisted.inlineCallbacks
def test_selector_consumer_reaches_paged_messages(tmp_path):
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    q = vh.declare_queue("sq", durable=True)
    for i in range(30):
        vh.publish("", "sq", Message(b"m%d" % i, durable=True, headers={"k": i % 3}))
    assert q.paged_count == 10
    out = []
    q.add_consumer(Consumer("s", out.append, no_ack=True, selector=lambda m: m.headers["k"] == 2))
    yield until(lambda: len(out) == 10)
    assert [d.message.body for d in out] == [b"m%d" % i for i in range(2, 30, 3)]
    assert q.message_count == 20
    yield broker.stop()


@pytest_twisted.inlineCallbacks
def test_transient_messages_of_a_non_durable_queue_are_paged_and_cleaned_up(tmp_path):
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    q = vh.declare_queue("tmp", durable=False)
    publish(vh, "tmp", 200)
    assert q.paged_count == 200 - BUDGET
    got = [q.get(no_ack=True) for _ in range(BUDGET)]
    assert [d.message.body for d in got] == [b"m%d" % i for i in range(BUDGET)]
    if q.get(no_ack=True) is None:  # the head is still in the store: a pull can wait for it
        ready = []
        assert q.when_head_ready(lambda: ready.append(True))
        yield until(lambda: ready == [True])
        assert q.get(no_ack=True).message.body == b"m%d" % BUDGET
    else:
        raise AssertionError("the head was read back before anyone could ask")
    assert not q.when_head_ready(lambda: None)  # in memory now: answer at once
    assert q.purge() == 200 - BUDGET - 1
    assert not q.when_head_ready(lambda: None)  # empty: "empty" is the answer
    yield settle(0.1)
    vh.publish("", "tmp", Message(b"after"))
    assert q.get(no_ack=True).message.body == b"after"
    publish(vh, "tmp", 100)
    vh.delete_queue("tmp")
    yield broker.stop()
    con = sqlite3.connect(tmp_path / FILENAME)
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


@pytest_twisted.inlineCallbacks
def test_store_opened_without_paging_drops_transient_rows_and_loads_the_rest(tmp_path):
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    vh.declare_queue("q", durable=True)
    publish(vh, "q", 40, durable=True)
    publish(vh, "q", 30, start=40)  # transient, over the budget: written out
    yield broker.stop()
    store = SqliteStore(str(tmp_path), paging=False)
    broker = Broker(store=store, config={"store": {"queue_max_in_memory_length": BUDGET}})
    yield broker.start()
    q = broker.vhost().queues["q"]
    assert q.message_count == 40 and q.paged_count == 0
    assert [q.get(no_ack=True).message.body for _ in range(40)] == [b"m%d" % i for i in range(40)]
    yield broker.stop()
    con = sqlite3.connect(tmp_path / FILENAME)
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_a_store_without_put_queued_still_gets_put_message():
    class OlderStore:
        """A backend written before paging: no ``pages``, no ``put_queued``."""

        def __init__(self):
            self.puts = []

        def put_message(self, vhost, queue, seq, data, delivery_count):
            self.puts.append((vhost, queue, seq, delivery_count))

        def __getattr__(self, name):
            if name in ("put_queued", "pages"):
                raise AttributeError(name)
            return lambda *a, **kw: None

    store = OlderStore()
    vh = Broker(store=store).vhost()
    vh.declare_queue("q", durable=True)
    vh.publish("", "q", Message(b"x", durable=True))
    vh.publish("", "q", Message(b"y", durable=False))
    assert store.puts == [("/", "q", 1, 0)]
    assert vh.queues["q"].paged_count == 0


@pytest_twisted.inlineCallbacks
def test_drop_head_reaches_into_the_store(tmp_path):
    """x-max-length with drop-head on a queue whose head is paged out: the queue comes back to
    its limit by itself (the head is read back and dropped), keeping the newest messages."""
    broker = yield start_broker(tmp_path)
    vh = broker.vhost()
    q = vh.declare_queue("capped", durable=True, arguments={"x-max-length": 100})
    publish(vh, "capped", 1000, durable=True)
    yield until(lambda: q.message_count == 100)
    yield settle(0.2)
    assert q.message_count == 100 and q.dropped == 900
    got = []
    c = Consumer("c", got.append, prefetch=0)
    q.add_consumer(c)
    yield until(lambda: len(got) == 100)
    assert [d.message.body for d in got] == [b"m%d" % i for i in range(900, 1000)]
    yield broker.stop()
