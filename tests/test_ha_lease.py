"""The lease and the fencing of core/ha.py, in process, on a real PostgreSQL.

* a store fenced with a node's epoch commits while the epoch is current and never after another
  node took the lease (the transaction fails, nothing is reported durable, no row is written);
* the node notices the takeover at its next renewal and reports the loss;
* a clean stop hands the lease back at once; a second node takes it without waiting for expiry;
* ``lease_status`` (``polymq status``) reads the row.
"""

from __future__ import annotations

import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from polymq.core.config import ConfigError, load_config
from polymq.core.ha import HA_DEFAULTS, HaNode, lease_status
from polymq.core.plugins import get_plugin_manager
from polymq.core.store.postgres import PostgresStore


def section(node_id: str, **kw) -> dict:
    return {**HA_DEFAULTS, "lease_s": 2.0, "renew_s": 0.2, "poll_s": 0.05, "node_id": node_id, **kw}


@defer.inlineCallbacks
def wait_for(predicate, timeout: float = 20.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not met in time")


def sql(dsn: str, query: str, params=None) -> list:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@pytest_twisted.inlineCallbacks
def test_fenced_store_commits_only_with_the_current_epoch(pg_dsn):
    lost: list[str] = []
    node = HaNode(section("one"), pg_dsn, on_lost=lost.append)
    epoch = yield node.acquire()
    assert epoch == 1 and node.role == "active"
    fatal: list[BaseException] = []
    store = PostgresStore(pg_dsn, retries=0, on_fatal=fatal.append)
    node.install(store)
    yield store.open()
    done: list[str] = []
    store.put_kv("t", "before", b"1")
    store.after_durable(lambda: done.append("before"))
    yield wait_for(lambda: done == ["before"])

    # another node takes the lease over (what a standby's takeover does to the row)
    sql(pg_dsn, "UPDATE polymq.ha_renewal SET holder = 'two', epoch = epoch + 1")
    sql(pg_dsn, "UPDATE polymq.ha_lease SET holder = 'two', epoch = epoch + 1")
    store.put_kv("t", "after", b"2")
    store.after_durable(lambda: done.append("after"))
    yield wait_for(lambda: fatal)
    assert "fenced" in str(fatal[0])
    assert done == ["before"], "a fenced write must never be reported durable"
    keys = [bytes(k).decode() for (k,) in sql(pg_dsn, "SELECT key FROM polymq.kv")]
    assert keys == ["before"]
    (commits,) = sql(pg_dsn, "SELECT commits FROM polymq.ha_commits WHERE epoch = 1")[0]
    assert commits >= 1
    assert sql(pg_dsn, "SELECT count(*) FROM polymq.ha_commits WHERE epoch = 2") == [(0,)]

    yield wait_for(lambda: lost, timeout=5)
    assert "another node" in lost[0] and node.role == "lost"
    yield node.stop()
    yield store.close().addErrback(lambda f: None)  # failed store: close reports it


@pytest_twisted.inlineCallbacks
def test_clean_stop_hands_the_lease_over_at_once(pg_dsn):
    first = HaNode(section("one", lease_s=30.0, renew_s=1.0), pg_dsn)
    yield first.acquire()
    status = lease_status(pg_dsn)
    assert status["holder"] == "one" and status["epoch"] == 1 and status["active"]
    second = HaNode(section("two"), pg_dsn)
    won = second.acquire()
    yield task.deferLater(reactor, 0.5, lambda: None)
    assert not won.called and second.role == "standby"  # the lease is held and alive
    stopped = time.monotonic()
    yield first.stop(release=True)
    epoch = yield won
    assert epoch == 2
    assert time.monotonic() - stopped < 5, "a released lease is taken without waiting 30 s"
    assert lease_status(pg_dsn)["holder"] == "two"
    yield second.stop()
    assert not lease_status(pg_dsn)["active"]


@pytest_twisted.inlineCallbacks
def test_dead_holder_session_is_taken_over_before_expiry(pg_dsn):
    first = HaNode(section("one", lease_s=30.0, renew_s=1.0), pg_dsn)
    yield first.acquire()
    second = HaNode(section("two"), pg_dsn)
    won = second.acquire()
    yield task.deferLater(reactor, 0.3, lambda: None)
    assert not won.called
    # the holder's lease session ends (as when its process is killed): no need to wait 30 s
    ended = sql(
        pg_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        [first.application_name],
    )
    assert ended
    first._stop.set()  # the first node is "dead": it must not renew
    started = time.monotonic()
    epoch = yield won
    assert epoch == 2 and time.monotonic() - started < 5
    yield second.stop()
    yield first.stop(release=False)


def test_settings_are_checked():
    pm = get_plugin_manager()
    with pytest.raises(ConfigError) as e:
        load_config(pm, overrides=["ha.enabled=true"], environ={}, check_paths=False)
    assert "ha.enabled" in str(e.value) and "postgres" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(
            pm,
            overrides=['store.backend="postgres"', "ha.lease_s=1.0", 'ha.on_lease_lost="x"'],
            environ={},
            check_paths=False,
        )
    assert "ha.lease_s" in str(e.value) and "ha.on_lease_lost" in str(e.value)
    cfg = load_config(
        pm,
        environ={"POLYMQ_HA__ENABLED": "true", "POLYMQ_STORE__BACKEND": "postgres"},
        check_paths=False,
    )
    assert cfg["ha"]["enabled"] and cfg["ha"]["lease_s"] == 5.0


@pytest_twisted.inlineCallbacks
def test_a_long_store_transaction_does_not_stop_renewals(pg_dsn):
    """A writer transaction holds the fencing row FOR SHARE (as a big commit does) for longer
    than the lease: renewals go on (they update another row) and nobody takes over."""
    first = HaNode(section("one"), pg_dsn)
    yield first.acquire()
    second = HaNode(section("two"), pg_dsn)
    won = second.acquire()
    yield task.deferLater(reactor, 0.3, lambda: None)
    writer = psycopg.connect(pg_dsn)
    writer.execute("SELECT epoch FROM polymq.ha_lease WHERE id = 1 FOR SHARE").fetchone()
    before = first.renewals
    yield task.deferLater(reactor, first.lease_s * 1.5, lambda: None)
    during = first.renewals - before
    writer.rollback()
    writer.close()
    assert during >= 5, f"only {during} renewals while a writer held the fencing row"
    assert first.role == "active" and not won.called and second.role == "standby"
    assert lease_status(pg_dsn)["epoch"] == 1
    yield second.stop()
    yield first.stop()
