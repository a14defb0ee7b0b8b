"""The ``memory`` store: nothing is kept, everything is "durable" at once."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from zope.interface import implementer

from .interfaces import IStore, StoreSnapshot


@implementer(IStore)
class MemoryStore:
    name = "memory"

    def __init__(self, config: dict | None = None) -> None:
        self.config = config or {}

    def open(self) -> defer.Deferred:
        return defer.succeed(StoreSnapshot())

    def close(self) -> defer.Deferred:
        return defer.succeed(None)

    def put_exchange(self, vhost: str, name: str, record: dict) -> None:
        pass

    def delete_exchange(self, vhost: str, name: str) -> None:
        pass

    def put_queue(self, vhost: str, name: str, record: dict) -> None:
        pass

    def delete_queue(self, vhost: str, name: str) -> None:
        pass

    def put_binding(self, vhost, source, kind, destination, key, arguments) -> None:
        pass

    def delete_binding(self, vhost, source, kind, destination, key, arguments) -> None:
        pass

    def put_message(self, vhost, queue, seq, data, delivery_count) -> None:
        pass

    def delete_message(self, vhost, queue, seq) -> None:
        pass

    def append_stream(self, vhost, stream, partition, offset, count, timestamp, fmt, data) -> None:
        pass

    def trim_stream(self, vhost, stream, partition, before_offset) -> None:
        pass

    def put_kv(self, namespace: str, key: str, value: bytes) -> None:
        pass

    def delete_kv(self, namespace: str, key: str) -> None:
        pass

    def after_durable(self, callback: Callable[[], None]) -> None:
        callback()
