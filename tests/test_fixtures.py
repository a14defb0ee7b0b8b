"""The shared broker fixtures of tests/conftest.py: each per-protocol fixture is a running broker
with only its own adapter listening, and ``module_broker`` stops the broker it started however
the block ends."""

from __future__ import annotations

import socket

import pytest
from conftest import module_broker

PROTOCOLS = ["amqp", "mqtt", "openwire", "kafka", "stomp", "rocketmq"]


@pytest.mark.parametrize("adapter", PROTOCOLS)
def test_default_fixture_serves_its_protocol_only(request, adapter: str):
    broker = request.getfixturevalue(f"{adapter}_broker")
    assert broker.running
    assert (broker.adapters, broker.store, broker.log_level) == ([adapter], "sqlite", "info")
    assert adapter in broker.ports
    assert not set(broker.ports) & (set(PROTOCOLS) - {adapter}), broker.ports
    with socket.create_connection((broker.host, broker.port(adapter)), timeout=5):
        pass


def test_kbroker_is_the_modules_kafka_broker(kbroker, kafka_broker):
    assert kbroker is kafka_broker


def test_module_broker_stops_its_broker_when_the_block_raises(tmp_path_factory):
    with pytest.raises(RuntimeError, match="test body failed"):
        with module_broker(tmp_path_factory, "raises", ["mqtt"], store="memory") as broker:
            assert broker.running
            raise RuntimeError("test body failed")
    assert not broker.running
    assert broker.returncode == 0  # stopped by SIGTERM (a clean shutdown), not killed
