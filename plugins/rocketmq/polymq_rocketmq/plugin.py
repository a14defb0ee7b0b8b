"""The module named by the ``polymq`` entry point: contributes the RocketMQ adapter."""

from __future__ import annotations

from typing import Any

from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec

DEFAULT_CONFIG: dict[str, Any] = {
    "enabled": False,
    # the address route answers give as the broker of every topic (0: the listener's port)
    "advertised_host": "127.0.0.1",
    "advertised_port": 0,
    "broker_name": "polymq",
    "cluster_name": "polymq",
    # queues (stream partitions) of a topic created on first use
    "queue_nums": 4,
    "auto_create_topics": True,
    # deliveries of a message before CONSUMER_SEND_MSG_BACK moves it to %DLQ%<group>, when
    # the client does not say (RocketMQ's default)
    "max_reconsume_times": 16,
    # the delay of each DELAY level, 1 first (RocketMQ's messageDelayLevel and its default)
    "delay_levels": "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h",
    # the longest a PULL_MESSAGE is held open waiting for a message (long polling)
    "max_suspend_ms": 30000,
    # the largest remoting frame accepted (0: limits.max_message_size + 1 MiB)
    "max_frame_size": 0,
    "vhost": "",
    # RocketMQ clients heartbeat every 30 s; a silent connection goes after this long
    "idle_timeout": 180.0,
}


def build_factory(broker: Any, section: dict) -> Any:
    from .transport import RocketFactory

    return RocketFactory(broker, section)


def looks_like(head: bytes) -> bool | None:
    """A remoting frame: a sensible total length, then serialize type 0 with a JSON header
    (``{"``) or type 1 with a binary one."""
    if len(head) < 10:
        return None
    size = int.from_bytes(head[:4], "big", signed=True)
    stype = head[4]
    if not 4 <= size <= 1 << 30:
        return False
    if stype == 0:
        return head[8:10] == b'{"'
    return False


@hookimpl
def polymq_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            name="rocketmq",
            default_port=9876,
            build_factory=build_factory,
            default_config=dict(DEFAULT_CONFIG),
            description="RocketMQ 4.x remoting (name server and broker in one listener)",
            looks_like=looks_like,
        )
    ]
