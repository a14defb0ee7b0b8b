"""The postgres backend under the real broker and real clients.

* Connection cuts: pika publishes persistent messages with confirms (and a second channel
  consumes with manual acks) into a broker subprocess on the postgres backend while a thread
  keeps killing the broker's database session (``pg_terminate_backend``); then the broker is
  killed (-9) and restarted, and every confirmed, unacknowledged message must be there.
* The kill -9 durability tests of test_durability.py and test_amqp_durability.py, and the
  interop matrix's persistence cell (test_interop_matrix.py), run unchanged on postgres: the
  same test functions are called with the store swapped (their writer scripts import
  ``PostgresStore`` instead of ``SqliteStore``; their brokers start with
  ``store.backend = "postgres"``), so both backends are held to one set of assertions.
"""

from __future__ import annotations

import functools
import threading
import time

import pika
import pika.exceptions as pe
import psycopg
import pytest
import pytest_twisted
import test_amqp_durability as amqp_durability
import test_durability as durability
from brokerproc import BrokerProcess

from polymq.core.store.postgres import PostgresStore


def dbname(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]


def pg_script(script: str) -> str:
    """A writer script of test_durability.py, on the postgres store (argv[1]: a DSN file)."""
    out = script.replace(
        "from polymq.core.store.sqlite import SqliteStore",
        "from polymq.core.store.postgres import PostgresStore",
    ).replace("SqliteStore(sys.argv[1]", "PostgresStore(open(sys.argv[1]).read()")
    assert "SqliteStore" not in out
    return out


@pytest.fixture
def pg_durability(monkeypatch, tmp_path, pg_dsn):
    """test_durability.py's module, switched to postgres for one test."""
    (tmp_path / "data").write_text(pg_dsn)  # the "data dir" argument names the DSN file
    for name in ("STORE_WRITER", "STREAM_WRITER", "BROKER_WRITER"):
        monkeypatch.setattr(durability, name, pg_script(getattr(durability, name)))
    monkeypatch.setattr(
        durability, "SqliteStore", lambda path, **kw: PostgresStore(open(path).read(), **kw)
    )
    return durability


@pytest.mark.parametrize("attempt", range(2))
@pytest.mark.parametrize("opts", ["", ", lazy_flush_ms=0"], ids=["default", "eager"])
@pytest_twisted.inlineCallbacks
def test_store_kill9_loses_no_acknowledged_write(pg_durability, tmp_path, attempt, opts):
    yield pg_durability.test_store_kill9_loses_no_acknowledged_write(tmp_path, attempt, opts)


@pytest.mark.parametrize("attempt", range(2))
@pytest_twisted.inlineCallbacks
def test_store_kill9_stream_appends(pg_durability, tmp_path, attempt):
    yield pg_durability.test_store_kill9_stream_appends(tmp_path, attempt)


@pytest.mark.parametrize("attempt", range(2))
@pytest_twisted.inlineCallbacks
def test_broker_kill9_loses_no_confirmed_message(pg_durability, tmp_path, attempt):
    yield pg_durability.test_broker_kill9_loses_no_confirmed_message(tmp_path, attempt)


@pytest_twisted.inlineCallbacks
def test_clean_restart_keeps_durable_state_only(pg_durability, tmp_path):
    yield pg_durability.test_clean_restart_keeps_durable_state_only(tmp_path)


@pytest.fixture
def pg_broker_factory(broker_factory, pg_dsn):
    """``broker_factory`` whose brokers use the postgres store on a fresh database."""

    def start(adapters=(), settings=None, **kwargs):
        sets = {"store.dsn": pg_dsn, **(settings or {})}
        return broker_factory(adapters=adapters, store="postgres", settings=sets, **kwargs)

    return start


def test_amqp_confirmed_persistent_message_survives_kill9(pg_broker_factory):
    amqp_durability.test_confirmed_persistent_message_survives_kill9(pg_broker_factory)


def test_amqp_no_confirmed_message_lost_when_killed_under_load(pg_broker_factory):
    amqp_durability.test_no_confirmed_message_lost_when_killed_under_load(pg_broker_factory)


def test_interop_persistence_cell_on_postgres(monkeypatch, tmp_path, pg_dsn):
    """The matrix's persistence cell: persistent messages from each protocol, broker killed
    and restarted, consumed by another protocol, with the store in PostgreSQL."""
    matrix = pytest.importorskip("test_interop_matrix")
    monkeypatch.setattr(
        matrix,
        "BrokerProcess",
        functools.partial(BrokerProcess, store="postgres", settings={"store.dsn": pg_dsn}),
    )
    matrix.test_persistent_messages_survive_restart_across_protocols(tmp_path)


def test_pika_confirms_through_connection_cuts(pg_server, pg_dsn, pg_broker_factory):
    """Every confirm is for a committed message although the database session is killed again
    and again under load; consumers' acks go on too; kill -9 and restart lose nothing."""
    broker = pg_broker_factory(adapters=["amqp"], log_level="info")
    params = pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    conn = pika.BlockingConnection(params)
    pub = conn.channel()
    pub.queue_declare("cut-q", durable=True)
    pub.confirm_delivery()
    sub = conn.channel()
    stop = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        while not stop.wait(0.15):
            kills.append(pg_server.terminate_backends(dbname(pg_dsn), "polymq"))

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    confirmed: list[int] = []
    acked: set[int] = set()
    deadline = time.monotonic() + 6
    try:
        i = 0
        while time.monotonic() < deadline and i < 20000:
            pub.basic_publish(
                "", "cut-q", str(i).encode(), pika.BasicProperties(delivery_mode=2)
            )  # returns once confirmed (raises on a nack)
            confirmed.append(i)
            i += 1
            if i % 10 == 0:
                method, _, body = sub.basic_get("cut-q", auto_ack=False)
                if method is not None:
                    sub.basic_ack(method.delivery_tag)
                    acked.add(int(body))
    finally:
        stop.set()
        t.join()
    assert sum(kills) >= 10, kills  # the writer's session really was cut many times
    assert len(confirmed) >= 200
    conn.close()
    log = broker.log_text()
    assert "reconnected" in log and "giving up" not in log
    broker.kill9()
    broker.start()
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    )
    ch = conn.channel()
    received: set[int] = set()
    while True:
        method, _, body = ch.basic_get("cut-q", auto_ack=True)
        if method is None:
            break
        received.add(int(body))
    conn.close()
    missing = set(confirmed) - acked - received
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"


def test_broker_stops_when_the_database_stays_away(pg_server, pg_dsn, pg_broker_factory):
    """Past store.reconnect_timeout_s the broker exits rather than confirm what is not stored:
    the unconfirmed publish is never confirmed and the client sees its connection close."""
    broker = pg_broker_factory(
        adapters=["amqp"], log_level="info", settings={"store.reconnect_timeout_s": 1.0}
    )
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    )
    ch = conn.channel()
    ch.queue_declare("gone-q", durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", "gone-q", b"stored", pika.BasicProperties(delivery_mode=2))
    db = dbname(pg_dsn)
    pg_server.sql(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
    try:
        pg_server.terminate_backends(db)
        with pytest.raises((pe.AMQPError, OSError)):
            ch.basic_publish("", "gone-q", b"never", pika.BasicProperties(delivery_mode=2))
        for _ in range(200):
            if not broker.running:
                break
            time.sleep(0.05)
        assert not broker.running
        assert broker.returncode == 1
        assert "giving up" in broker.log_text()
    finally:
        pg_server.sql(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    broker.start()
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    )
    ch = conn.channel()
    assert ch.basic_get("gone-q", auto_ack=True)[2] == b"stored"
    assert ch.basic_get("gone-q", auto_ack=True)[0] is None
    conn.close()
