"""The broker-wide registry of connections of every protocol (``broker.connections``).

What the broker knows of each connection (:class:`ConnectionInfo`: protocol, peer, user,
vhost, client id, byte and message counters) is kept here for management and limits; the
connection contract (core/connection.py) adds and removes the entries. The registry also holds
the limits checked before a session exists, the descriptor budget that pauses accepting, the
broker-wide publishing alarm, and what the service knows of each adapter (its ``looks_like``,
port and listener factory).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from twisted.logger import Logger

__all__ = [
    "ConnectionInfo",
    "ConnectionRegistry",
    "descriptor_limits",
    "format_peer",
    "peer_of",
    "registry_of",
]

log = Logger(namespace="polymq.connection")


class ConnectionInfo:
    """What the broker knows of one connection: the registry entry management reads.

    The counters are plain attributes that the adapter's hot path may add to
    (``conn.info.messages_in += n``); they are never reset.
    """

    __slots__ = (
        "id",
        "protocol",
        "listener",
        "peer_host",
        "peer_port",
        "local_port",
        "user",
        "vhost",
        "client_id",
        "tls",
        "connected_at",
        "bytes_in",
        "bytes_out",
        "messages_in",
        "messages_out",
        "conn",
    )

    def __init__(
        self,
        conn_id: int,
        protocol: str,
        peer_host: str | None,
        peer_port: int | None,
        local_port: int | None,
        connected_at: float,
        conn: Any = None,
    ) -> None:
        self.id = conn_id
        self.protocol = protocol
        self.listener = protocol
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.local_port = local_port
        self.user: str | None = None
        self.vhost: str | None = None
        self.client_id: str | None = None
        self.tls = False
        self.connected_at = connected_at
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0
        self.messages_out = 0
        self.conn = conn

    @property
    def peer(self) -> str:
        """``host:port`` of the client (``[v6]:port`` for IPv6)."""
        return format_peer(self.peer_host, self.peer_port)

    @property
    def name(self) -> str:
        """A stable, readable name: ``protocol peer -> local port``."""
        return f"{self.protocol} {self.peer} -> {self.local_port}"

    def close(self, reason: str = "closed by the broker") -> None:
        """Close the connection (management's "close connection")."""
        if self.conn is not None:
            self.conn.close_with_reason(reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "protocol": self.protocol,
            "peer": self.peer,
            "peer_host": self.peer_host,
            "peer_port": self.peer_port,
            "local_port": self.local_port,
            "user": self.user,
            "vhost": self.vhost,
            "client_id": self.client_id,
            "tls": self.tls,
            "connected_at": self.connected_at,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
        }


def format_peer(host: str | None, port: int | None) -> str:
    """``host:port`` as every log line and the registry show a peer."""
    if host is None:
        return "?"
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def peer_of(address: Any) -> tuple[str | None, int | None]:
    """(host, port) of a Twisted address (or a tuple, or None)."""
    if address is None:
        return None, None
    if isinstance(address, tuple):
        return (str(address[0]), int(address[1])) if len(address) >= 2 else (None, None)
    return getattr(address, "host", None), getattr(address, "port", None)


class ConnectionRegistry:
    """Every live connection of the broker, of every protocol (``broker.connections``).

    Limits are checked here before a session exists; counts per protocol and per source
    address are kept so that the checks cost a dict look-up.
    """

    def __init__(self, max_connections: int = 0, max_partial_bytes: int = 0) -> None:
        self.max_connections = max_connections
        self._by_id: dict[int, ConnectionInfo] = {}
        self._per_listener: dict[str, int] = {}
        self._per_host: dict[tuple[str, str | None], int] = {}
        self._ids = itertools.count(1)
        self.refused = 0  # connections refused by a limit, since start
        self.opened = 0  # connections accepted, since start
        self.blocked = False
        self.blocked_reason = ""
        self._block_sources: dict[str, str] = {}
        # what the service knows of every adapter: its ``looks_like`` (AdapterSpec), the port it
        # listens on, and its listener's factory (the any-protocol listener hands over to it)
        self.looks_like: dict[str, Callable[[bytes], bool | None]] = {}
        self.ports: dict[str, int] = {}
        self.factories: dict[str, Any] = {}
        # bytes held in partial frames by every connection together, and the bound past which
        # the connection that asks for more is closed (0: no bound)
        self.partial_bytes = 0
        self.max_partial_bytes = max_partial_bytes
        # connections the process's descriptor limit leaves room for, after a reserve kept for
        # the store and the listeners (0: not checked; set by the service at start)
        self.descriptor_budget = 0
        self._listeners: list[Any] = []
        self.accept_paused = False

    def __iter__(self) -> Iterator[ConnectionInfo]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, conn_id: int) -> ConnectionInfo | None:
        return self._by_id.get(conn_id)

    def count(self, protocol: str | None = None) -> int:
        """Connections of ``protocol`` on whichever listener they came in by (its own port,
        its TLS port, the any-protocol port), or of every protocol. Not on a hot path: the
        limits are checked per listener, from counts kept as connections come and go."""
        if protocol is None:
            return len(self._by_id)
        return sum(1 for info in self._by_id.values() if info.protocol == protocol)

    def admit(self, listener: str, host: str | None, limit: int, per_host: int) -> str | None:
        """None when one more connection from ``host`` on ``listener`` is within the limits,
        otherwise the reason it is refused."""
        if self.descriptor_budget and len(self._by_id) >= self.descriptor_budget:
            reason = (
                f"file descriptors nearly exhausted ({len(self._by_id)} connections); "
                "new connections wait until some close"
            )
            self._pause_accepting()
        elif self.max_connections and len(self._by_id) >= self.max_connections:
            reason = f"the broker's connection limit ({self.max_connections}) is reached"
        elif limit and self._per_listener.get(listener, 0) >= limit:
            reason = f"the {listener} listener's connection limit ({limit}) is reached"
        elif per_host and self._per_host.get((listener, host), 0) >= per_host:
            reason = f"{host} already holds {per_host} {listener} connections (the limit)"
        else:
            return None
        self.refused += 1
        return reason

    def add(self, info: ConnectionInfo) -> None:
        info.id = next(self._ids)
        self._by_id[info.id] = info
        key = info.listener
        self._per_listener[key] = self._per_listener.get(key, 0) + 1
        hkey = (key, info.peer_host)
        self._per_host[hkey] = self._per_host.get(hkey, 0) + 1
        self.opened += 1

    def remove(self, info: ConnectionInfo) -> None:
        if self._by_id.pop(info.id, None) is None:
            return
        key = info.listener
        n = self._per_listener.get(key, 1) - 1
        if n > 0:
            self._per_listener[key] = n
        else:
            self._per_listener.pop(key, None)
        hkey = (key, info.peer_host)
        n = self._per_host.get(hkey, 1) - 1
        if n > 0:
            self._per_host[hkey] = n
        else:
            self._per_host.pop(hkey, None)
        if self.accept_paused and len(self._by_id) < self.descriptor_budget * 0.9:
            self._resume_accepting()

    # -- the descriptor budget: accept stops near the limit and resumes below it ------------

    def watch_listener(self, port: Any) -> None:
        """A listening port whose accepting stops while the descriptor budget is spent."""
        self._listeners.append(port)
        if self.accept_paused:
            port.stopReading()

    def _pause_accepting(self) -> None:
        if self.accept_paused:
            return
        self.accept_paused = True
        log.warn(
            "{n} connections: file descriptors nearly exhausted, not accepting new "
            "connections until some close (they wait in the listen backlog)",
            n=len(self._by_id),
        )
        for port in self._listeners:
            port.stopReading()

    def _resume_accepting(self) -> None:
        self.accept_paused = False
        log.info("{n} connections: accepting new connections again", n=len(self._by_id))
        for port in self._listeners:
            if getattr(port, "connected", True):
                port.startReading()

    def identify(self, head: bytes) -> str | None:
        """The adapter whose ``looks_like`` recognises these first bytes; None when none does
        (yet). Adapters are asked in name order; the first that says yes wins."""
        for name in sorted(self.looks_like):
            if self.looks_like[name](head):
                return name
        return None

    def set_publishing_blocked(
        self, blocked: bool, reason: str = "", source: str = "alarm"
    ) -> None:
        """The broker-wide publishing alarm: every connection's session holds its publishers
        back (or lets them go) in its protocol's way; new connections learn it on arrival.
        Several sources (the resource alarm, a listener's own watermark) may raise it; it
        clears when none holds it any more."""
        sources = self._block_sources
        if blocked:
            sources[source] = reason
        else:
            sources.pop(source, None)
        now = bool(sources)
        now_reason = ", ".join(r for r in sources.values() if r)
        if now == self.blocked and now_reason == self.blocked_reason:
            return
        self.blocked = now
        self.blocked_reason = now_reason
        for info in list(self._by_id.values()):
            conn = info.conn
            if conn is not None and conn.session is not None:
                conn.call_session(conn.session.publishing_blocked, now, now_reason)
                if not now:
                    conn.release_publisher()


def descriptor_limits(reserve_fraction: float = 0.1, reserve_min: int = 64) -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft before, soft now, budget):
    the budget is how many connections leave ``reserve`` descriptors for the store, listeners
    and log files."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new = target
        except (ValueError, OSError):
            pass
    reserve = max(reserve_min, int(new * reserve_fraction))
    return soft, new, max(new - reserve, 1)


def registry_of(broker: Any) -> ConnectionRegistry:
    """The broker's connection registry (created on first use for brokers built without one)."""
    reg = getattr(broker, "connections", None)
    if reg is None:
        limits = (getattr(broker, "config", None) or {}).get("limits", {})
        reg = ConnectionRegistry(
            int(limits.get("max_connections", 0) or 0),
            int(limits.get("max_partial_frame_bytes", 0) or 0),
        )
        broker.connections = reg
    return reg
