"""The one message type that crosses every adapter.

Standard fields are the intersection the four protocols agree on (see docs/mapping.md);
anything protocol-specific travels in ``annotations`` under a ``<protocol>.`` prefix so that a
message leaving by the protocol it came in by is unchanged.
"""

from __future__ import annotations

import threading
import time
from operator import attrgetter
from typing import Any

import msgpack

# Field order of the persisted form. Append only: stored messages are decoded by position.
_FIELDS = (
    "body",
    "key",
    "headers",
    "content_type",
    "content_encoding",
    "message_id",
    "correlation_id",
    "reply_to",
    "user_id",
    "type",
    "timestamp",
    "expiration",
    "priority",
    "durable",
    "annotations",
    "exchange",
    "routing_key",
)


# Annotation keys that hold another encoding of the standard fields (an adapter's encoded
# property list, kept so that a message leaves by its own protocol unchanged). A copy that
# changes any standard field drops them, so they never go stale. Adapters add their keys.
DERIVED_ANNOTATIONS: set[str] = set()

# Fields a derived annotation may encode: everything but routing and the annotations.
_PROPERTY_FIELDS = frozenset(_FIELDS) - {"exchange", "routing_key", "annotations"}


_field_values = attrgetter(*_FIELDS)
_local = threading.local()


def now_ms() -> int:
    return int(time.time() * 1000)


class Message:
    """An immutable-by-convention message.

    ``exchange``/``routing_key`` record where it was published (AMQP deliver needs them).
    ``timestamp`` and ``expiration`` are epoch milliseconds; ``priority`` is 0–9.
    """

    # ``encoded``: what one adapter keeps to dispatch this message again without converting
    # it (its own encoded form, in a tuple whose first item is that adapter's); it lives and
    # dies with the message, and is neither persisted nor copied
    __slots__ = _FIELDS + ("encoded",)

    # The fields may be given by position, in ``_FIELDS`` order: calling a class with
    # keywords builds a dict of them per call (several µs), which a per-message path avoids.
    def __init__(
        self,
        body: bytes = b"",
        key: bytes | None = None,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        user_id: str | None = None,
        type: str | None = None,
        timestamp: int | None = None,
        expiration: int | None = None,
        priority: int | None = None,
        durable: bool = False,
        annotations: dict[str, Any] | None = None,
        exchange: str = "",
        routing_key: str = "",
    ) -> None:
        self.body = body
        self.key = key
        self.headers = headers if headers is not None else {}
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.user_id = user_id
        self.type = type
        self.timestamp = timestamp
        self.expiration = expiration
        self.priority = priority
        self.durable = durable
        self.annotations = annotations if annotations is not None else {}
        self.exchange = exchange
        self.routing_key = routing_key
        self.encoded = None

    @property
    def size(self) -> int:
        """Body size in bytes, what max-length-bytes and retention count."""
        return len(self.body)

    def is_expired(self, now: int) -> bool:
        return self.expiration is not None and self.expiration <= now

    def copy(self, **changes: Any) -> Message:
        """A shallow copy with some fields replaced (headers/annotations dicts copied).

        Change fields of a message only through this: a change of a standard field drops the
        derived annotations (``DERIVED_ANNOTATIONS``) that would otherwise contradict it.
        """
        m = Message.__new__(Message)
        for f in _FIELDS:
            setattr(m, f, getattr(self, f))
        m.headers = dict(self.headers)
        m.annotations = dict(self.annotations)
        m.encoded = None
        for k, v in changes.items():
            setattr(m, k, v)
        if DERIVED_ANNOTATIONS and not _PROPERTY_FIELDS.isdisjoint(changes):
            for k in DERIVED_ANNOTATIONS:
                m.annotations.pop(k, None)
        return m

    def to_bytes(self) -> bytes:
        """The persisted form (msgpack of the fields in ``_FIELDS`` order)."""
        # one Packer per thread, reused (packb builds one per call: a third of the cost)
        try:
            packer = _local.packer
        except AttributeError:
            packer = _local.packer = msgpack.Packer(use_bin_type=True)
        return packer.pack(_field_values(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> Message:
        values = msgpack.unpackb(data, raw=False, strict_map_key=False)
        m = cls.__new__(cls)
        for f, v in zip(_FIELDS, values, strict=False):
            setattr(m, f, v)
        for f in _FIELDS[len(values) :]:
            setattr(m, f, None)
        m.encoded = None
        return m

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _FIELDS)

    def __repr__(self) -> str:
        return (
            f"Message(body={self.body[:32]!r}{'...' if len(self.body) > 32 else ''}, "
            f"exchange={self.exchange!r}, routing_key={self.routing_key!r})"
        )
