"""Shared fixtures.

``broker_factory`` starts real broker subprocesses (see ``tests/brokerproc.py``)::

    def test_something(broker_factory):
        broker = broker_factory(adapters=["mqtt"])               # sqlite store, debug log
        broker = broker_factory(adapters=["amqp"], store="memory",
                                settings={"limits.max_message_size": 1024})
        sock = socket.create_connection((broker.host, broker.port("mqtt")))

Every broker it started is stopped (SIGTERM, then SIGKILL if needed) at teardown.

``kbroker`` is one Kafka-only broker per test module (sqlite store, info log), for modules of
Kafka client tests that share it; a module may define its own ``kbroker`` with other settings.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brokerproc import BrokerProcess  # noqa: E402

_counter = itertools.count(1)


@pytest.fixture
def broker_factory(tmp_path):
    started: list[BrokerProcess] = []

    def start(adapters=(), store="sqlite", settings=None, **kwargs) -> BrokerProcess:
        workdir = kwargs.pop("workdir", None) or tmp_path / f"broker{next(_counter)}"
        broker = BrokerProcess(workdir, adapters=adapters, store=store, settings=settings, **kwargs)
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        try:
            broker.stop()
        except Exception:
            pass
        finally:
            broker.kill9()


from pgserver import pg_dsn, pg_server  # noqa: E402,F401  (a private PostgreSQL; see pgserver.py)


@pytest.fixture(scope="module")
def kbroker(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("kafka"), adapters=["kafka"], log_level="info")
    b.start()
    yield b
    try:
        b.stop()
    finally:
        b.kill9()
