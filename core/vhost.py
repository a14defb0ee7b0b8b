"""Virtual hosts: the namespace of exchanges, queues, streams and bindings.

This is the public API every adapter uses: declare, bind, publish, and find queues to consume.
Errors are ``polymq.core.errors`` exceptions carrying AMQP-style reply codes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import delayed  # noqa: F401 (registers the x-delayed-message exchange type)
from .errors import AccessRefused, CommandInvalid, NotFound, PreconditionFailed, ResourceLocked
from .message import Message
from .queue import Queue
from .routing import EXCHANGE_CLASSES, DirectExchange, Exchange
from .stream import Stream

if TYPE_CHECKING:
    from .broker import Broker
    from .queue import Consumer

STANDARD_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)

# queue arguments whose values must agree when a queue is declared again
_EQUIVALENT_ARGS = (
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
    "x-single-active-consumer",
)


class DefaultExchange(DirectExchange):
    """The nameless exchange: routing key K reaches queue K; nothing can be bound to it."""

    def match(self, routing_key: str, headers: dict) -> Iterable[Any]:
        q = self.vhost.queues.get(routing_key)
        return (q,) if q is not None else ()


class VirtualHost:
    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.store = broker.store
        self.clock = broker.clock
        self.default_delivery_limit: int | None = broker.default_delivery_limit
        self.queue_max_in_memory_length: int = broker.queue_max_in_memory_length
        self.queue_max_in_memory_bytes: int = broker.queue_max_in_memory_bytes
        self.stream_max_in_memory_bytes: int = broker.stream_max_in_memory_bytes
        self.stream_retention_bytes: int | None = broker.stream_retention_bytes
        self.stream_retention_ms: int | None = broker.stream_retention_ms
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue | Stream] = {}
        # called with every classic queue created (OpenWire wildcard queue consumers)
        self.queue_created: list[Callable[[Queue], None]] = []
        self._e2e = 0  # exchange-to-exchange bindings; zero keeps publish on the fast path
        self.now = broker.now
        self.exchanges[""] = DefaultExchange(self, "", durable=True)
        for name_, type_ in STANDARD_EXCHANGES:
            self.exchanges[name_] = EXCHANGE_CLASSES[type_](self, name_, durable=True)

    # -- exchanges --------------------------------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict | None = None,
        passive: bool = False,
    ) -> Exchange:
        ex = self.exchanges.get(name)
        if passive:
            if ex is None:
                raise NotFound(f"no exchange '{name}' in vhost '{self.name}'")
            return ex
        if ex is not None:
            if ex.type != type:
                raise PreconditionFailed(
                    f"inequivalent arg 'type' for exchange '{name}' in vhost '{self.name}': "
                    f"received '{type}' but current is '{ex.type}'"
                )
            if ex.durable != durable:
                raise PreconditionFailed(
                    f"inequivalent arg 'durable' for exchange '{name}' in vhost '{self.name}'"
                )
            return ex
        if name.startswith("amq."):
            raise AccessRefused(f"exchange name '{name}' contains reserved prefix 'amq.*'")
        cls = EXCHANGE_CLASSES.get(type)
        if cls is None:
            raise CommandInvalid(f"unknown exchange type '{type}'")
        ex = cls(
            self,
            name,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
        self.exchanges[name] = ex
        if durable:
            self.store.put_exchange(self.name, name, ex.record())
        return ex

    def get_exchange(self, name: str) -> Exchange:
        ex = self.exchanges.get(name)
        if ex is None:
            raise NotFound(f"no exchange '{name}' in vhost '{self.name}'")
        return ex

    def delete_exchange(self, name: str, if_unused: bool = False) -> None:
        if name == "" or name.startswith("amq."):
            raise AccessRefused(f"operation not permitted on exchange '{name}'")
        ex = self.exchanges.get(name)
        if ex is None:
            return
        if if_unused and ex.bindings:
            raise PreconditionFailed(f"exchange '{name}' in vhost '{self.name}' in use")
        for b in list(ex.bindings.values()):
            self._unbind(ex, b.destination, b.key, b.arguments)
        for other in list(self.exchanges.values()):
            for b in other.bindings_to(ex):
                self._unbind(other, ex, b.key, b.arguments)
        del self.exchanges[name]
        if ex.durable:
            self.store.delete_exchange(self.name, name)

    # -- queues and streams -----------------------------------------------------------------

    def declare_queue(
        self,
        name: str = "",
        *,
        durable: bool = False,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
        arguments: dict | None = None,
        passive: bool = False,
        name_prefix: str = "amq.gen-",
    ) -> Queue | Stream:
        """Declare (or find) a queue; ``x-queue-type: stream`` makes a stream.

        ``exclusive_owner`` is any object standing for the owning connection: the queue is
        usable only by it and deleted by :meth:`connection_closed`.
        """
        arguments = dict(arguments or {})
        q = self.queues.get(name) if name else None
        if passive:
            if q is None:
                raise NotFound(f"no queue '{name}' in vhost '{self.name}'")
            self._check_owner(q, exclusive_owner)
            return q
        if q is not None:
            self._check_owner(q, exclusive_owner)
            if q.durable != durable:
                raise PreconditionFailed(
                    f"inequivalent arg 'durable' for queue '{name}' in vhost '{self.name}'"
                )
            if (q.exclusive_owner is not None) != (exclusive_owner is not None):
                raise PreconditionFailed(
                    f"inequivalent arg 'exclusive' for queue '{name}' in vhost '{self.name}'"
                )
            for arg in _EQUIVALENT_ARGS:
                if _norm(q.arguments.get(arg)) != _norm(arguments.get(arg)):
                    if arg == "x-queue-type" and _norm(arguments.get(arg)) in (None, "classic"):
                        if q.kind == "queue" or arguments.get(arg) is None:
                            continue
                    raise PreconditionFailed(
                        f"inequivalent arg '{arg}' for queue '{name}' in vhost '{self.name}': "
                        f"received {arguments.get(arg)!r} but current is {q.arguments.get(arg)!r}"
                    )
            return q
        if not name:
            name = name_prefix + secrets.token_urlsafe(16)  # a server-named queue
        elif name.startswith("amq."):
            raise AccessRefused(f"queue name '{name}' contains reserved prefix 'amq.*'")
        qtype = _norm(arguments.get("x-queue-type")) or "classic"
        if qtype == "stream":
            if exclusive_owner is not None or auto_delete:
                raise PreconditionFailed("a stream can be neither exclusive nor auto-delete")
            partitions = arguments.get("x-partitions", 1)
            q = Stream(self, name, durable=durable, partitions=partitions, arguments=arguments)
        elif qtype in ("classic", "quorum"):
            q = Queue(
                self,
                name,
                durable=durable,
                exclusive_owner=exclusive_owner,
                auto_delete=auto_delete,
                arguments=arguments,
            )
        else:
            raise PreconditionFailed(f"invalid arg 'x-queue-type': {qtype!r}")
        self.queues[name] = q
        if durable:
            self.store.put_queue(self.name, name, q.record())
        if self.queue_created and isinstance(q, Queue):
            for created in list(self.queue_created):
                created(q)
        return q

    def declare_stream(
        self, name: str, *, partitions: int = 1, durable: bool = True, arguments: dict | None = None
    ) -> Stream:
        """Find or create a stream (what a Kafka topic is)."""
        q = self.queues.get(name)
        if q is not None:
            if q.kind != "stream":
                raise PreconditionFailed(
                    f"'{name}' in vhost '{self.name}' is a queue, not a stream"
                )
            return q
        args = dict(arguments or {})
        args["x-queue-type"] = "stream"
        args["x-partitions"] = partitions
        return self.declare_queue(name, durable=durable, arguments=args)

    def _check_owner(self, q: Queue | Stream, owner: Any) -> None:
        if q.exclusive_owner is not None and q.exclusive_owner is not owner:
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked queue '{q.name}' in vhost '{self.name}'"
            )

    def get_queue(self, name: str, owner: Any = None) -> Queue | Stream:
        q = self.queues.get(name)
        if q is None:
            raise NotFound(f"no queue '{name}' in vhost '{self.name}'")
        if owner is not None or q.exclusive_owner is not None:
            self._check_owner(q, owner)
        return q

    def delete_queue(
        self, name: str, if_unused: bool = False, if_empty: bool = False, owner: Any = None
    ) -> int:
        """Delete a queue or stream; returns the number of messages it held."""
        q = self.queues.get(name)
        if q is None:
            return 0
        if owner is not None:
            self._check_owner(q, owner)
        if if_unused and q.consumer_count:
            raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' in use")
        if if_empty and q.message_count:
            raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' not empty")
        count = q.message_count
        del self.queues[name]
        for ex in list(self.exchanges.values()):
            for b in ex.bindings_to(q):
                self._unbind(ex, q, b.key, b.arguments)
        consumers = list(q.consumers) + list(getattr(q, "standby", ()))  # (streams: none)
        q.consumers.clear()
        q.close()
        for c in consumers:
            c.queue = None
            if c.on_cancel is not None:
                c.on_cancel()
        if q.durable:
            self.store.delete_queue(self.name, name)
        return count

    def purge_queue(self, name: str, owner: Any = None) -> int:
        return self.get_queue(name, owner).purge()

    def connection_closed(self, owner: Any) -> None:
        """Delete the exclusive queues of a connection that went away."""
        for name, q in list(self.queues.items()):
            if q.exclusive_owner is owner:
                self.delete_queue(name)

    # -- bindings ---------------------------------------------------------------------------

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        key: str = "",
        arguments: dict | None = None,
        owner: Any = None,
    ) -> None:
        q = self.get_queue(queue, owner)
        ex = self._bindable(exchange)
        self._bind(ex, q, key, arguments or {})

    def unbind_queue(
        self,
        queue: str,
        exchange: str,
        key: str = "",
        arguments: dict | None = None,
        owner: Any = None,
    ) -> None:
        q = self.get_queue(queue, owner)
        ex = self._bindable(exchange)
        self._unbind(ex, q, key, arguments or {})

    def bind_exchange(
        self, destination: str, source: str, key: str = "", arguments: dict | None = None
    ) -> None:
        dest = self._bindable(destination)
        src = self._bindable(source)
        self._bind(src, dest, key, arguments or {})

    def unbind_exchange(
        self, destination: str, source: str, key: str = "", arguments: dict | None = None
    ) -> None:
        dest = self._bindable(destination)
        src = self._bindable(source)
        self._unbind(src, dest, key, arguments or {})

    def _bindable(self, name: str) -> Exchange:
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        return self.get_exchange(name)

    def _bind(self, ex: Exchange, dest: Any, key: str, arguments: dict) -> None:
        if ex.bind(dest, key, arguments):
            if dest.kind == "exchange":
                self._e2e += 1
            if ex.durable and dest.durable:
                self.store.put_binding(self.name, ex.name, dest.kind, dest.name, key, arguments)

    def _unbind(self, ex: Exchange, dest: Any, key: str, arguments: dict) -> None:
        if not ex.unbind(dest, key, arguments):
            return
        if dest.kind == "exchange":
            self._e2e -= 1
        if ex.durable and dest.durable:
            self.store.delete_binding(self.name, ex.name, dest.kind, dest.name, key, arguments)
        if ex.auto_delete and not ex.bindings and ex.name in self.exchanges:
            self.delete_exchange(ex.name)

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        message: Message,
        *,
        exclude: Any = None,
    ) -> tuple[int, int]:
        """Route ``message``; returns (destinations that took it, destinations that refused it).

        Zero and zero means unroutable (AMQP ``mandatory`` returns it). ``exclude`` is a
        destination that must not get the message (the stream a Kafka produce already went to).
        """
        ex = self.exchanges.get(exchange)
        if ex is None:
            raise NotFound(f"no exchange '{exchange}' in vhost '{self.name}'")
        message.exchange = exchange
        message.routing_key = routing_key
        if self._e2e:
            dests = self._resolve(ex, routing_key, message.headers)
        else:
            dests = ex.match(routing_key, message.headers)
            if not dests and ex.arguments:
                dests = self._resolve(ex, routing_key, message.headers)
        return self._enqueue(dests, message, exclude, 0)

    def publish_direct(
        self,
        exchange: str,
        routing_key: str,
        size: int,
        durable: bool,
        make_message: Callable[[Any], Message],
        direct: Callable[[Consumer, Any], bool],
        context: Any = None,
        *,
        exclude: Any = None,
    ) -> tuple[int, int]:
        """:meth:`publish` for an adapter's fast path: a message of ``size`` body bytes and
        no headers that may reach some consumers without ever becoming a core Message.

        For each destination whose queue would hand the message at once to its one consumer
        (``Queue.direct_consumer``), ``direct(consumer, context)`` is asked first: True means
        the adapter delivered it itself (the queue records nothing, as for a no-ack delivery),
        False that the queue takes it. A ``durable`` message is offered only to no-ack
        consumers: one that acknowledges must get it through the queue, which keeps it until
        then. ``make_message(context)`` is called at most once, when some destination needs a
        core Message; the rest are enqueued as :meth:`publish` does. With exchange-to-exchange
        bindings or an alternate exchange the whole publish takes :meth:`publish` (a delayed
        exchange's scheduler may be on the way). Returns (routed, refused) as :meth:`publish`.
        """
        ex = self.exchanges.get(exchange)
        if ex is None:
            raise NotFound(f"no exchange '{exchange}' in vhost '{self.name}'")
        if self._e2e or ex.arguments:
            return self.publish(exchange, routing_key, make_message(context), exclude=exclude)
        routed = 0
        rest = None  # the destinations that need a core Message
        for q in ex.match(routing_key, _NO_HEADERS):
            if q is exclude:
                continue
            consumer = q.direct_consumer(size)
            if (
                consumer is not None
                and (consumer.no_ack or not durable)
                and direct(consumer, context)
            ):
                routed += 1
            elif rest is None:
                rest = [q]
            else:
                rest.append(q)
        if rest is None:
            return routed, 0
        message = make_message(context)
        message.exchange = exchange
        message.routing_key = routing_key
        return self._enqueue(rest, message, None, routed)

    def reaches_beyond(self, exchange: str, routing_key: str, own: Any) -> bool:
        """Whether a headerless publish to ``exchange`` with ``routing_key`` could reach a
        destination other than ``own``: the cheap test an adapter that stores its messages
        itself (a Kafka or RocketMQ topic) makes before converting them for :meth:`publish`
        with ``exclude=own``. True whenever exchange-to-exchange bindings or an alternate
        exchange are in play (only :meth:`publish` can tell then)."""
        ex = self.exchanges.get(exchange)
        if ex is None:
            return False
        if self._e2e or ex.arguments:
            return True
        for d in ex.match(routing_key, _NO_HEADERS):
            if d is not own:
                return True
        return False

    def _enqueue(
        self, dests: Iterable[Any], message: Message, exclude: Any, routed: int
    ) -> tuple[int, int]:
        """Enqueue a routed message on its destinations (both publish paths); a persistent
        message is serialized once for all the durable queues. Returns (routed, refused),
        ``routed`` counting on from the given number."""
        refused = 0
        data = None
        for q in dests:
            if q is exclude:
                continue
            if data is None and message.durable and q.durable and q.kind == "queue":
                data = message.to_bytes()
            if q.enqueue(message, data):
                routed += 1
            else:
                refused += 1
        return routed, refused

    def _resolve(self, ex: Exchange, key: str, headers: dict) -> list[Any]:
        """Destinations through exchange-to-exchange bindings and alternate exchanges."""
        out: dict[int, Any] = {}
        seen: set[int] = set()
        todo = [ex]
        while todo:
            e = todo.pop()
            if id(e) in seen:
                continue
            seen.add(id(e))
            hit = False
            for d in e.match(key, headers):
                hit = True
                if d.kind == "exchange":
                    todo.append(d)
                else:
                    out[id(d)] = d
            if not hit:
                ae = e.alternate_exchange
                if isinstance(ae, bytes):
                    ae = ae.decode()
                alt = self.exchanges.get(ae) if ae else None
                if alt is not None:
                    todo.append(alt)
        return list(out.values())


_NO_HEADERS: dict = {}


def _norm(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v
