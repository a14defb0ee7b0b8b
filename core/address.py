"""Addresses that cross protocols: reply-to values and the header carrying a record key.

A core ``reply_to`` is one of
- ``Q`` or ``queue://Q`` or ``temp-queue://Q``: the queue Q (default exchange, key Q);
- ``topic://K`` or ``temp-topic://K``: routing key K on ``amq.topic``.
Each adapter turns these into its own form on the way out and back on the way in
(docs/mapping.md), so a request from one protocol can be answered from another.
"""

from __future__ import annotations

QUEUE_PREFIXES = ("queue://", "temp-queue://")
TOPIC_PREFIXES = ("topic://", "temp-topic://")

# Protocols without a record-key field carry Message.key in this header (property, user
# property), so a key survives a trip through them.
KEY_HEADER = "x-kafka-key"


def parse_address(address: str) -> tuple[str, str]:
    """``("queue", name)`` or ``("topic", routing key)`` for a core address."""
    for prefix in QUEUE_PREFIXES:
        if address.startswith(prefix):
            return "queue", address[len(prefix) :]
    for prefix in TOPIC_PREFIXES:
        if address.startswith(prefix):
            return "topic", address[len(prefix) :]
    return "queue", address


def topic_address(key: str) -> str:
    return "topic://" + key


def queue_address(name: str) -> str:
    return "queue://" + name
