"""The broker: virtual hosts over a store, plus what adapters share (auth, limits, formats)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
from twisted.internet import defer
from twisted.logger import Logger

from .alarms import (
    DEFAULT_CHECK_MS,
    DEFAULT_DISK_FREE_LIMIT,
    DEFAULT_MEMORY_HIGH_WATERMARK,
    ResourceAlarm,
)
from .errors import AccessRefused, NotFound
from .queue import DEFAULT_IN_MEMORY_BYTES, DEFAULT_IN_MEMORY_LENGTH, Queue
from .scheduler import DEFAULT_MAX_IN_MEMORY, Scheduler
from .store.interfaces import IStore, StoreSnapshot
from .store.memory import MemoryStore
from .stream import Stream, StreamFormat
from .vhost import VirtualHost

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
DEFAULT_STREAM_MEMORY_BYTES = 4 * 1024 * 1024

log = Logger()


class Broker:
    """Owns the virtual hosts and the store.

    ``config`` is the whole effective configuration (see docs/config.md); the broker reads
    ``limits`` and ``broker`` from it. ``clock`` is the reactor (or a test clock) for timers.
    """

    def __init__(
        self,
        store: IStore | None = None,
        plugins: Any = None,
        config: dict | None = None,
        clock: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.store: IStore = store if store is not None else MemoryStore()
        self.plugins = plugins
        self.config = config or {}
        limits = self.config.get("limits", {})
        broker_cfg = self.config.get("broker", {})
        self.max_message_size: int = limits.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
        self.default_delivery_limit: int | None = broker_cfg.get("max_deliveries") or None
        self.default_vhost: str = broker_cfg.get("default_vhost", "/")
        store_cfg = self.config.get("store", {})
        self.queue_max_in_memory_length: int = int(
            store_cfg.get("queue_max_in_memory_length") or DEFAULT_IN_MEMORY_LENGTH
        )
        self.queue_max_in_memory_bytes: int = int(
            store_cfg.get("queue_max_in_memory_bytes") or DEFAULT_IN_MEMORY_BYTES
        )
        self.stream_max_in_memory_bytes: int = int(
            store_cfg.get("stream_max_in_memory_bytes") or DEFAULT_STREAM_MEMORY_BYTES
        )
        rb, rms = store_cfg.get("retention_bytes", -1), store_cfg.get("retention_ms", -1)
        self.stream_retention_bytes: int | None = rb if rb is not None and rb >= 0 else None
        self.stream_retention_ms: int | None = rms if rms is not None and rms >= 0 else None
        self.retention_check_s: float = max(
            0.05, float(store_cfg.get("retention_check_ms", 10000)) / 1000.0
        )
        self._retention_loop: Any = None
        # one memory and disk alarm for every protocol; adapters observe it
        self.alarm = ResourceAlarm(
            clock,
            memory_high_watermark=float(
                limits.get("memory_high_watermark", DEFAULT_MEMORY_HIGH_WATERMARK)
            ),
            disk_free_limit=int(limits.get("disk_free_limit", DEFAULT_DISK_FREE_LIMIT)),
            data_dir=getattr(self.store, "data_dir", None),
            check_ms=float(limits.get("alarm_check_ms", DEFAULT_CHECK_MS)),
        )
        self.stream_formats: dict[str, StreamFormat] = {}
        self.vhosts: dict[str, VirtualHost] = {}
        self._kv: dict[str, dict[str, bytes]] = {}
        self.started = False
        # scheduled and delayed delivery for every protocol (one timer, jobs in the store)
        self.scheduler = Scheduler(
            self, int(broker_cfg.get("scheduled_max_in_memory") or DEFAULT_MAX_IN_MEMORY)
        )
        self.add_vhost(self.default_vhost)
        for name in broker_cfg.get("vhosts") or ():
            self.add_vhost(str(name))

    def now(self) -> int:
        """Milliseconds since the epoch by the broker's clock (TTLs, expiry, retention)."""
        return int(self.clock.seconds() * 1000)

    # -- lifecycle --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        """Open the store and rebuild every durable entity from it."""
        snapshot = yield self.store.open()
        preloading = self._restore(snapshot)
        if preloading:
            # the head of every paged backlog is in memory before the listeners open (a
            # basic.get right after start finds it); bounded per queue, whatever the backlog
            yield defer.DeferredList(preloading)
        self.started = True
        self.scheduler.start()
        self.alarm.start()
        if getattr(self.store, "pages", False):
            from twisted.internet.task import LoopingCall

            self._retention_loop = LoopingCall(self.apply_retention)
            self._retention_loop.clock = self.clock
            self._retention_loop.start(self.retention_check_s, now=False)

    @defer.inlineCallbacks
    def stop(self):
        """Close the store once every queued write is durable."""
        self.started = False
        self.scheduler.stop()
        self.alarm.stop()
        if self._retention_loop is not None and self._retention_loop.running:
            self._retention_loop.stop()
        self._retention_loop = None
        yield self.store.close()

    def _restore(self, snap: StoreSnapshot) -> list[defer.Deferred]:
        kv_vhosts = snap.kv.get("vhosts", {})
        for name in kv_vhosts:
            self.add_vhost(name)
        for vhost, name, rec in snap.exchanges:
            vh = self.add_vhost(vhost)
            if name not in vh.exchanges:
                vh.declare_exchange(
                    name,
                    rec["type"],
                    durable=True,
                    auto_delete=rec.get("auto_delete", False),
                    internal=rec.get("internal", False),
                    arguments=rec.get("arguments") or {},
                )
        for vhost, name, rec in snap.queues:
            vh = self.add_vhost(vhost)
            args = rec.get("arguments") or {}
            if rec.get("type") == "stream":
                s = Stream(
                    vh, name, durable=True, partitions=rec.get("partitions", 1), arguments=args
                )
                s.config = rec.get("config") or {}
                vh.queues[name] = s
            else:
                vh.queues[name] = Queue(
                    vh,
                    name,
                    durable=True,
                    auto_delete=rec.get("auto_delete", False),
                    arguments=args,
                )
        for vhost, source, kind, dest, key, args in snap.bindings:
            vh = self.vhosts.get(vhost)
            if vh is None:
                continue
            ex = vh.exchanges.get(source)
            target = vh.exchanges.get(dest) if kind == "exchange" else vh.queues.get(dest)
            if ex is None or target is None:
                continue
            if ex.bind(target, key, args) and kind == "exchange":
                vh._e2e += 1
        for (vhost, queue), rows in snap.messages.items():
            q = self.vhosts.get(vhost, None) and self.vhosts[vhost].queues.get(queue)
            if isinstance(q, Queue):
                for seq, data, count in rows:
                    q.restore(seq, data, count)
        paged = 0
        preloading: list[defer.Deferred] = []
        for (vhost, queue), levels in snap.queue_levels.items():
            q = self.vhosts.get(vhost, None) and self.vhosts[vhost].queues.get(queue)
            if isinstance(q, Queue):
                for level, count, size, top in levels:
                    q.restore_level(level, count, size, top)
                    paged += count
                d: defer.Deferred = defer.Deferred()
                q.preload(lambda d=d: d.callback(None))
                preloading.append(d)
        for (vhost, stream, part), (start, end, size) in snap.stream_partitions.items():
            s = self.vhosts.get(vhost, None) and self.vhosts[vhost].queues.get(stream)
            if isinstance(s, Stream):
                if part >= len(s.partitions):
                    s.add_partitions(part + 1)
                s.partitions[part].restore_extent(start, end, size)
        for (vhost, stream, part), rows in snap.stream_entries.items():
            s = self.vhosts.get(vhost, None) and self.vhosts[vhost].queues.get(stream)
            if isinstance(s, Stream):
                if part >= len(s.partitions):
                    s.add_partitions(part + 1)
                p = s.partitions[part]
                for offset, count, ts, fmt, data in rows:
                    p.restore(offset, count, ts, fmt, data)
        self._kv = {ns: dict(v) for ns, v in snap.kv.items()}
        self.scheduler.restore(snap)
        log.info(
            "restored {queues} queues/streams, {messages} messages ({paged} left in the store)",
            queues=len(snap.queues),
            messages=sum(len(r) for r in snap.messages.values()) + paged,
            paged=paged,
        )
        return preloading

    def apply_retention(self) -> None:
        """Stream retention by whole segments (a store that pages), on a timer."""
        for vh in self.vhosts.values():
            for q in list(vh.queues.values()):
                if isinstance(q, Stream) and q.durable:
                    q.apply_retention()

    # -- virtual hosts ----------------------------------------------------------------------

    def add_vhost(self, name: str) -> VirtualHost:
        vh = self.vhosts.get(name)
        if vh is None:
            vh = self.vhosts[name] = VirtualHost(self, name)
            if name != self.default_vhost:
                self.kv_put("vhosts", name, b"")
        return vh

    def delete_vhost(self, name: str) -> None:
        """Delete vhost ``name`` as RabbitMQ does: its connections are closed, its queues,
        streams and exchanges go (durable ones from the store too). The default vhost stays."""
        if name == self.default_vhost:
            raise AccessRefused(f"the default vhost '{name}' cannot be deleted")
        vh = self.vhosts.get(name)
        if vh is None:
            raise NotFound(f"no vhost '{name}'")
        registry = getattr(self, "connections", None)
        for info in list(registry or ()):
            if info.vhost == name:
                info.close(f"vhost '{name}' was deleted")
        for queue in list(vh.queues):
            vh.delete_queue(queue)
        for exchange in list(vh.exchanges):
            if exchange and not exchange.startswith("amq."):
                vh.delete_exchange(exchange)
        del self.vhosts[name]
        self.kv_delete("vhosts", name)
        log.info("vhost {name} deleted", name=name)

    def vhost(self, name: str | None = None) -> VirtualHost:
        vh = self.vhosts.get(self.default_vhost if name is None else name)
        if vh is None:
            raise NotFound(f"no vhost '{name}'")
        return vh

    # -- durability -------------------------------------------------------------------------

    def when_durable(
        self,
        callback: Callable[[], None],
        failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run ``callback`` once everything written so far is on disk (group commit).

        ``failed(exc)`` runs instead when the store could not make those writes durable and
        keeps serving (a database away for longer than the store waits): the caller sends its
        protocol's negative answer. Stores that stop the broker on a write failure, and stores
        of plugins that predate it, never call it."""
        if failed is not None and getattr(self.store, "reports_write_failures", False):
            self.store.after_durable(callback, failed)
        else:
            self.store.after_durable(callback)

    # -- adapter-owned records (MQTT sessions, retained messages, Kafka offsets) --------------

    def kv(self, namespace: str) -> dict[str, bytes]:
        """The records of a namespace as loaded at start and updated since (read-only view)."""
        return self._kv.setdefault(namespace, {})

    def kv_put(self, namespace: str, key: str, value: bytes) -> None:
        self._kv.setdefault(namespace, {})[key] = value
        self.store.put_kv(namespace, key, value)

    def kv_delete(self, namespace: str, key: str) -> None:
        ns = self._kv.get(namespace)
        if ns is not None and ns.pop(key, None) is not None:
            self.store.delete_kv(namespace, key)

    def kv_put_obj(self, namespace: str, key: str, value: Any) -> None:
        self.kv_put(namespace, key, msgpack.packb(value, use_bin_type=True))

    def kv_get_obj(self, namespace: str, key: str) -> Any:
        data = self.kv(namespace).get(key)
        if data is None:
            return None
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    # -- authentication ---------------------------------------------------------------------

    def authenticate(
        self, protocol: str, username: str | None, password: str | bytes | None, peer: Any
    ) -> Any:
        """Ask the auth plugins; returns an Identity, or a Refusal (or None if nobody answered),
        or a Deferred of one of those when a plugin answers later (a password hash in a thread).

        Called once per connection, never per message.
        """
        from .auth import Identity, Refusal, authenticate

        if self.plugins is None:
            return Identity(user=username or "anonymous", protocol=protocol)
        try:
            return authenticate(self.plugins, protocol, username, password, peer, self)
        except Exception as e:  # a broken auth plugin refuses, it does not crash a connection
            log.failure("auth plugin failed")
            return Refusal(reason=f"authentication error: {e}")
