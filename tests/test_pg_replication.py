"""Replicated PostgreSQL under polymq: a primary with a synchronous streaming standby.

The test starts both servers itself (``initdb``; ``pg_basebackup -R`` for the standby, which
connects with ``application_name=standby1``; ``synchronous_standby_names = 'standby1'`` and
``synchronous_commit = on`` on the primary, so a commit returns only once the standby has the
WAL on disk). polymq gets a multi-host DSN with ``target_session_attrs=read-write``. Under load
from pika (persistent messages, publisher confirms) and confluent-kafka (``acks=all``), the
primary's postmaster is killed with SIGKILL and the standby promoted (``pg_ctl promote``):
polymq must find the new primary by itself, and after a kill -9 and restart of polymq every
message a client saw acknowledged must be consumed. The times from the kill to the first
acknowledgement on the new primary are printed (they are the figures in docs/storage.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import psycopg
import pytest
from pgserver import HOST, PASSWORD, USER, PgServer, pg_bindir
from test_store_postgres_broker import (
    _kafka_producer,
    _pika_publisher,
    _restart_and_check_all_consumed,
)


@pytest.fixture
def replicated_pg():
    """(primary, standby): a synchronous streaming pair, the standby named ``standby1``."""
    roots = [tempfile.mkdtemp(prefix="polymq-pg-"), tempfile.mkdtemp(prefix="polymq-pg-")]
    primary = PgServer(pg_bindir(), roots[0])
    standby = PgServer(pg_bindir(), roots[1])
    try:
        primary.start()
        primary.sql('CREATE DATABASE "polymq"')
        standby.start_standby_of(primary, "standby1")
        # set after the base backup: a promoted standby with this setting and no standby of
        # its own would wait for one at every commit
        primary.reload_with(synchronous_standby_names="standby1", synchronous_commit="on")
        deadline = time.monotonic() + 30
        while True:
            rows = primary.sql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'"
            )
            if rows and rows[0][0] == "sync":
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"standby not synchronous: {rows}\n{standby.log_tail()}")
            time.sleep(0.1)
        yield primary, standby
    finally:
        for server in (standby, primary):
            try:
                server.stop()
            except (RuntimeError, OSError, subprocess.SubprocessError):
                pass
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def test_primary_killed_standby_promoted_nothing_acknowledged_lost(replicated_pg, broker_factory):
    primary, standby = replicated_pg
    dsn = (
        f"postgresql://{USER}:{PASSWORD}@{HOST}:{primary.port},{HOST}:{standby.port}/polymq"
        "?target_session_attrs=read-write&connect_timeout=2"
    )
    broker = broker_factory(
        adapters=["amqp", "kafka"], store="postgres", log_level="info",
        settings={"store.dsn": dsn, "store.reconnect_timeout_s": 60.0},
    )  # fmt: skip
    bootstrap = f"{broker.host}:{broker.port('kafka')}"
    topic = "failover-topic"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    stop = threading.Event()
    a_ok, a_nack, a_err, k_ok, k_nack, k_err = [], [], [], [], [], []
    k_sent = [0]
    threads = [
        threading.Thread(
            target=_pika_publisher,
            args=(broker.host, broker.port("amqp"), "failover-q", stop, a_ok, a_nack, a_err),
        ),
        threading.Thread(
            target=_kafka_producer, args=(bootstrap, topic, stop, k_ok, k_nack, k_err, k_sent)
        ),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        # ids sent after the kill: their acknowledgements come from the new primary
        after_kill = (len(a_ok) + len(a_nack) + 1, k_sent[0])
        first: list = [None, None]
        watching = threading.Event()

        def watch() -> None:  # notes when each client sees its first post-kill ack
            scanned = [0, 0]
            while not watching.is_set() and None in first:
                for i, acked in enumerate((a_ok, k_ok)):
                    n = len(acked)
                    if first[i] is None and any(x >= after_kill[i] for x in acked[scanned[i] : n]):
                        first[i] = time.monotonic()
                    scanned[i] = n
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        killed = time.monotonic()
        os.kill(primary.postmaster_pid(), signal.SIGKILL)
        time.sleep(0.5)  # a failover manager would notice the loss about now
        standby.promote()
        promoted = time.monotonic()
        watcher.join(60)
        watching.set()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    assert None not in first, f"polymq did not carry on after the promotion: {first}"
    print(
        f"\npromote done {promoted - killed:.2f} s after the kill; first acknowledgements on"
        f" the new primary {first[0] - killed:.2f} s (AMQP) and {first[1] - killed:.2f} s"
        f" (Kafka) after the kill; amqp acked {len(a_ok)} nacked {len(a_nack)}, kafka acked"
        f" {len(k_ok)} nacked {len(k_nack)}"
    )
    assert not a_err and not k_err, (a_err, k_err[:3])
    log = broker.log_text()
    assert "reconnected" in log
    # polymq writes to the promoted standby now
    with psycopg.connect(standby.dsn("polymq")) as con:
        assert con.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        apps = con.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'polymq'"
        ).fetchone()[0]
        assert apps == 1
    _restart_and_check_all_consumed(broker, "failover-q", topic, a_ok, k_ok)
