"""STOMP destination names: how ``/queue/``, ``/topic/``, ``queue://`` and reply-to headers map
to core names and addresses (the table is in the session module's docstring)."""

from __future__ import annotations

from typing import Any


def topic_binding(key: str) -> str:
    """A /topic/ name as an ``amq.topic`` binding key: ActiveMQ's ``>`` (one or more words)
    becomes ``*.#``; AMQP's ``*`` and ``#`` stay."""
    if ">" not in key:
        return key
    return ".".join("*.#" if w == ">" else w for w in key.split("."))


def after_prefix(destination: str) -> str:
    """The name in ``/queue/NAME`` or ``queue://NAME`` (and the topic forms)."""
    if destination[0] == "/":
        return destination.split("/", 2)[2]
    return destination.split("://", 1)[1]


def reply_to_core(value: str) -> str:
    """A STOMP reply-to destination as a core address (docs/mapping.md, reply-to)."""
    for prefix, core in (
        ("/queue/", "queue://"),
        ("/amq/queue/", "queue://"),
        ("/topic/", "topic://"),
        ("/temp-queue/", "temp-queue://"),
        ("/temp-topic/", "temp-topic://"),
    ):
        if value.startswith(prefix):
            return core + value[len(prefix) :]
    return value


def reply_to_stomp(value: str) -> str:
    for prefix, stomp in (
        ("queue://", "/queue/"),
        ("topic://", "/topic/"),
        ("temp-queue://", "/temp-queue/"),
        ("temp-topic://", "/temp-topic/"),
    ):
        if value.startswith(prefix):
            return stomp + value[len(prefix) :]
    if value.startswith("/"):
        return value
    return "/queue/" + value


def header_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
