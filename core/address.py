"""Addresses that cross protocols: reply-to values and the header carrying a record key.

A core ``reply_to`` is one of
- ``Q`` or ``queue://Q`` or ``temp-queue://Q``: the queue Q (default exchange, key Q);
- ``topic://K`` or ``temp-topic://K``: routing key K on ``amq.topic``.
Each adapter turns these into its own form on the way out and back on the way in
(docs/mapping.md), so a request from one protocol can be answered from another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .message import Message

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


def key_from_headers(headers: dict[str, Any]) -> bytes | None:
    """The record key a keyless protocol carried in ``KEY_HEADER`` (text or bytes)."""
    k = headers.get(KEY_HEADER)
    if isinstance(k, str):
        return k.encode("utf-8")
    if isinstance(k, bytes | bytearray):
        return bytes(k)
    return None


def headers_with_key(message: Message) -> dict[str, Any]:
    """The message's headers, plus ``KEY_HEADER`` (text when UTF-8, else bytes) when it has a
    key the headers do not carry yet. The message's own dict is returned when nothing is added.
    """
    headers = message.headers
    key = message.key
    if key is None or KEY_HEADER in headers:
        return headers
    headers = dict(headers)
    try:
        headers[KEY_HEADER] = key.decode("utf-8")
    except UnicodeDecodeError:
        headers[KEY_HEADER] = bytes(key)
    return headers
