"""The ``memory`` store: nothing is kept, everything is "durable" at once."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from zope.interface import implementer

from .interfaces import IStore, StoreSnapshot


@implementer(IStore)
class MemoryStore:
    name = "memory"
    pages = False  # nothing on disk: queues and streams keep every body in memory

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

    def put_queued(
        self, vhost, queue, seq, data, delivery_count, priority, expires_at, size, transient
    ) -> None:
        pass

    def purge_messages(self, vhost, queue, priority, after_seq) -> None:
        pass

    # The reads below are only for stores that page; this one never asks the core to page.

    def read_messages(self, vhost, queue, priority, after_seq, limit, callback) -> None:
        callback([])

    def read_stream(self, vhost, stream, partition, offset, max_bytes, callback) -> None:
        callback([])

    def retain_stream(self, vhost, stream, partition, max_bytes, min_timestamp, callback) -> None:
        callback(0, 0)

    def append_stream(self, vhost, stream, partition, offset, count, timestamp, fmt, data) -> None:
        pass

    def trim_stream(self, vhost, stream, partition, before_offset) -> None:
        pass

    def put_kv(self, namespace: str, key: str, value: bytes) -> None:
        pass

    def delete_kv(self, namespace: str, key: str) -> None:
        pass

    def put_scheduled(self, job_id: int, due: int, record: bytes) -> None:
        pass

    def delete_scheduled(self, job_id: int) -> None:
        pass

    def read_scheduled(self, after_due, after_id, limit, callback) -> None:
        callback([])

    def after_durable(self, callback: Callable[[], None]) -> None:
        callback()
