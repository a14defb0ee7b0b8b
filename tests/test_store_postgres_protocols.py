"""Restart and kill -9 tests of the protocol suites, run again on the postgres store.

The test functions are those of test_mqtt_persist.py (persistent sessions, QoS 1/2 state,
retained messages, session expiry, subscriptions), test_openwire_jms.py (durable subscriber
and persistent messages with the ActiveMQ JMS client) and test_kafka_confluent.py (committed
group offsets with librdkafka), unchanged: here a broker they ask for on the sqlite store gets
the postgres store on a fresh database instead.
"""

from __future__ import annotations

import pytest
from brokerproc import BrokerProcess
from test_mqtt_persist import (  # noqa: F401  (collected here, with broker_factory below)
    test_acknowledged_publishes_survive_kill9_and_retained_is_kept,
    test_persistent_session_100_across_restart,
    test_qos2_exactly_once_across_restart,
    test_session_expiry_counts_across_restart,
    test_subscription_acknowledged_is_kept_after_kill9,
)


def _on_postgres(pg_server, store, settings):
    if store == "sqlite":
        return "postgres", {"store.dsn": pg_server.create_database(), **(settings or {})}
    return store, settings


@pytest.fixture
def started(pg_server):
    """Brokers started by a test; afterwards each must have run on the postgres store."""
    brokers: list[BrokerProcess] = []
    yield brokers
    assert brokers
    for b in brokers:
        assert "store: postgres" in b.log_text(), b.log_tail()


@pytest.fixture
def broker_factory(broker_factory, pg_server, started):
    """conftest's broker_factory, with sqlite brokers on postgres."""

    def start(adapters=(), store="sqlite", settings=None, **kw):
        store, settings = _on_postgres(pg_server, store, settings)
        started.append(broker_factory(adapters=adapters, store=store, settings=settings, **kw))
        return started[-1]

    return start


@pytest.fixture
def pg_broker_process(pg_server, started):
    """A BrokerProcess stand-in: store "sqlite" becomes "postgres" on a new database."""

    def make(workdir, adapters=(), store="sqlite", settings=None, **kw):
        store, settings = _on_postgres(pg_server, store, settings)
        started.append(BrokerProcess(workdir, adapters, store=store, settings=settings, **kw))
        return started[-1]

    return make


def test_jms_durable_subscriber_and_persistent_messages_survive_kill9(
    monkeypatch, pg_broker_process, tmp_path
):
    jms = pytest.importorskip("test_openwire_jms")
    monkeypatch.setattr(jms, "BrokerProcess", pg_broker_process)
    jms.test_durable_subscriber_and_persistent_messages_survive_kill9(
        jms.jmsrun.classes_once(), tmp_path
    )


def test_kafka_commit_and_resume_after_consumer_and_broker_restart(
    monkeypatch, pg_broker_process, tmp_path
):
    kafka = pytest.importorskip("test_kafka_confluent")
    monkeypatch.setattr(kafka, "BrokerProcess", pg_broker_process)
    kafka.test_commit_and_resume_after_consumer_and_broker_restart(tmp_path)
