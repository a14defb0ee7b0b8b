"""The storage interface every backend implements.

Writes are fire-and-forget and ordered: a backend queues them and makes them durable in batches
(group commit). ``after_durable`` is the only way to learn that a write reached the disk, and it
takes a plain callable, not a Deferred, because it sits on the per-message path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zope.interface import Attribute, Interface


@dataclass
class StoreSnapshot:
    """Everything a backend holds, as read at open time.

    Records (exchange, queue, binding arguments) are msgpack-able dicts the core wrote itself.
    """

    exchanges: list[tuple[str, str, dict]] = field(default_factory=list)  # (vhost, name, record)
    queues: list[tuple[str, str, dict]] = field(default_factory=list)  # (vhost, name, record)
    # (vhost, source exchange, destination kind "queue"|"exchange", destination, key, arguments)
    bindings: list[tuple[str, str, str, str, str, dict]] = field(default_factory=list)
    # (vhost, queue) -> [(seq, message bytes, delivery_count)] in seq order
    messages: dict[tuple[str, str], list[tuple[int, bytes, int]]] = field(default_factory=dict)
    # (vhost, stream, partition) -> [(offset, count, timestamp, format, data)] in offset order
    stream_entries: dict[tuple[str, str, int], list[tuple[int, int, int, str, bytes]]] = field(
        default_factory=dict
    )
    # namespace -> {key: value}
    kv: dict[str, dict[str, bytes]] = field(default_factory=dict)


class IStore(Interface):
    """A place where durable broker state lives."""

    name = Attribute("The backend name used in config (``store.backend``).")

    def open():
        """Open or create the store; return a Deferred firing with a :class:`StoreSnapshot`."""

    def close():
        """Finish every queued write, close; return a Deferred."""

    def put_exchange(vhost: str, name: str, record: dict) -> None:
        """Create or replace a durable exchange."""

    def delete_exchange(vhost: str, name: str) -> None:
        """Forget an exchange and every binding whose source it is."""

    def put_queue(vhost: str, name: str, record: dict) -> None:
        """Create or replace a durable queue or stream."""

    def delete_queue(vhost: str, name: str) -> None:
        """Forget a queue or stream, its bindings, messages and stream entries."""

    def put_binding(
        vhost: str, source: str, kind: str, destination: str, key: str, arguments: dict
    ) -> None:
        """Record a binding (idempotent)."""

    def delete_binding(
        vhost: str, source: str, kind: str, destination: str, key: str, arguments: dict
    ) -> None:
        """Remove a binding."""

    def put_message(vhost: str, queue: str, seq: int, data: bytes, delivery_count: int) -> None:
        """Record a persistent message on a durable queue (or update its delivery count)."""

    def delete_message(vhost: str, queue: str, seq: int) -> None:
        """Remove an acknowledged (or dropped) message."""

    def append_stream(
        vhost: str,
        stream: str,
        partition: int,
        offset: int,
        count: int,
        timestamp: int,
        fmt: str,
        data: bytes,
    ) -> None:
        """Append one stream entry (a batch of ``count`` offsets starting at ``offset``)."""

    def trim_stream(vhost: str, stream: str, partition: int, before_offset: int) -> None:
        """Drop entries whose offset is below ``before_offset`` (retention)."""

    def put_kv(namespace: str, key: str, value: bytes) -> None:
        """Store a small adapter-owned record (MQTT session, retained message, group offset)."""

    def delete_kv(namespace: str, key: str) -> None:
        """Remove an adapter-owned record."""

    def after_durable(callback: Callable[[], None]) -> None:
        """Call ``callback`` on the reactor thread once every write issued before it is durable.

        Callbacks run in the order they were registered.
        """
