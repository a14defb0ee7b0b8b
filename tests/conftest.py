"""Shared fixtures.

``broker_factory`` starts real broker subprocesses (see ``tests/brokerproc.py``)::

    def test_something(broker_factory):
        broker = broker_factory(adapters=["mqtt"])               # sqlite store, debug log
        broker = broker_factory(adapters=["amqp"], store="memory",
                                settings={"limits.max_message_size": 1024})
        sock = socket.create_connection((broker.host, broker.port("mqtt")))

Every broker it started is stopped (SIGTERM, then SIGKILL if needed) at teardown.

One broker per test module, for modules whose tests share it: a fixture per protocol, each
with only that adapter listening, the sqlite store, default settings and an info log:

    ``amqp_broker``, ``mqtt_broker``, ``openwire_broker``, ``kafka_broker`` (also ``kbroker``),
    ``stomp_broker``, ``rocketmq_broker`` (installs the ali-ons npm client first, see
    ``tests/rocketmq_helpers.py``, so that its tests can drive the broker with it).

A module that uses the default of its protocol passes it on under the name its tests use::

    @pytest.fixture(scope="module")
    def broker(amqp_broker):
        return amqp_broker

A module that needs other settings, several adapters or the memory store builds its own
module-scoped fixture with :func:`module_broker`, which starts the broker in a fresh directory
and always stops it (SIGTERM, then SIGKILL in a ``finally``)::

    from conftest import module_broker

    @pytest.fixture(scope="module")
    def broker(tmp_path_factory):
        with module_broker(tmp_path_factory, "xproto", ["mqtt", "amqp"], store="memory") as b:
            yield b

:func:`running_broker` does the same in a directory the caller made (e.g. one holding a users
file written before the broker starts); :func:`stopping` gives the same end to a broker started
some other way (e.g. by ``start_broker`` of ``tests/test_management_support.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
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


@contextlib.contextmanager
def stopping(broker: BrokerProcess) -> Iterator[BrokerProcess]:
    """``broker`` (already started), stopped on exit (SIGTERM) and then SIGKILLed even if the
    block or the stop failed, so that no broker outlives its test module."""
    try:
        yield broker
    finally:
        try:
            broker.stop()
        finally:
            broker.kill9()


@contextlib.contextmanager
def running_broker(
    workdir: str | os.PathLike, adapters: Iterable[str], **kwargs: object
) -> Iterator[BrokerProcess]:
    """A started :class:`BrokerProcess` in ``workdir`` (keyword arguments as its own: ``store``,
    ``settings``, ``log_level`` ...), stopped on exit and then SIGKILLed whatever happened."""
    with stopping(BrokerProcess(workdir, adapters=adapters, **kwargs).start()) as broker:
        yield broker


@contextlib.contextmanager
def module_broker(
    tmp_path_factory: pytest.TempPathFactory, name: str, adapters: Iterable[str], **kwargs: object
) -> Iterator[BrokerProcess]:
    """:func:`running_broker` in a fresh directory ``tmp_path_factory.mktemp(name)``."""
    with running_broker(tmp_path_factory.mktemp(name), adapters, **kwargs) as broker:
        yield broker


def _default_broker_fixture(adapter: str, prepare: Callable[[], object] | None = None):
    """The module-scoped fixture ``<adapter>_broker``: only that adapter, sqlite, info log;
    ``prepare`` runs first (e.g. installs the client the module's tests drive it with)."""

    @pytest.fixture(scope="module", name=f"{adapter}_broker")
    def default_broker(tmp_path_factory):
        if prepare is not None:
            prepare()
        with module_broker(tmp_path_factory, adapter, [adapter], log_level="info") as broker:
            yield broker

    return default_broker


def _ensure_ali_ons() -> None:
    from rocketmq_helpers import ensure_ali_ons

    ensure_ali_ons()


amqp_broker = _default_broker_fixture("amqp")
mqtt_broker = _default_broker_fixture("mqtt")
openwire_broker = _default_broker_fixture("openwire")
kafka_broker = _default_broker_fixture("kafka")
stomp_broker = _default_broker_fixture("stomp")
rocketmq_broker = _default_broker_fixture("rocketmq", prepare=_ensure_ali_ons)


@pytest.fixture(scope="module")
def kbroker(kafka_broker):
    """The module's ``kafka_broker`` under the name the Kafka client tests use."""
    return kafka_broker
