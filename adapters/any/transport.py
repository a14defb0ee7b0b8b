"""The any-protocol listener: it reads a connection's first bytes, asks each adapter's
``looks_like`` which protocol they start, and hands the connection to that adapter's listener
(the one the service built, so that state such as MQTT sessions and Kafka groups is shared; an
adapter whose own port is off gets a listener built for the purpose)."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from polymq.core.connection import (
    ConnectionFactory,
    IFramer,
    ProtocolConnection,
    SessionBase,
)
from polymq.core.errors import ProtocolError
from polymq.core.plugins import adapter_specs

# enough for every built-in signature (MQTT CONNECT's header and protocol name is the longest)
HEAD_BYTES = 16


@implementer(IFramer)
class ProtocolSniffer:
    """The framer of a connection whose protocol is not known yet: it keeps the first bytes
    until an adapter recognises them, then switches the connection to that adapter and returns
    what that adapter's framer makes of them."""

    max_length = HEAD_BYTES
    error = None

    def __init__(self, conn: ProtocolConnection, factory: AnyFactory) -> None:
        self.conn = conn
        self.factory = factory
        self.head = b""

    @property
    def buffered(self) -> int:
        return len(self.head)

    def feed(self, data: bytes) -> list:
        head = self.head + bytes(data)
        registry = self.factory.registry
        name = registry.identify(head[:HEAD_BYTES])
        if name is None or name == self.factory.protocol_name:
            undecided = any(
                look(head[:HEAD_BYTES]) is None
                for n, look in registry.looks_like.items()
                if n != self.factory.protocol_name
            )
            if undecided and len(head) < HEAD_BYTES:
                self.head = head
                return []
            raise ProtocolError(f"no adapter recognises the first bytes {head[:HEAD_BYTES]!r}")
        self.head = b""
        conn = self.conn
        conn.switch_protocol(self.factory.listener_for(name))
        return conn.framer.feed(head)


class _Undecided(SessionBase):
    """The session before the protocol is known: it never gets frames."""

    def frames_received(self, frames: list) -> None:  # pragma: no cover - see ProtocolSniffer
        raise ProtocolError("frames before the protocol was recognised")


class AnyFactory(ConnectionFactory):
    """``[adapters.any]``: one port for every enabled protocol, as Artemis's default acceptor."""

    protocol_name = "any"

    def build_framer(self, conn: ProtocolConnection) -> ProtocolSniffer:
        return ProtocolSniffer(conn, self)

    def build_session(self, conn: ProtocolConnection) -> _Undecided:
        return _Undecided(conn)

    def listener_for(self, name: str) -> Any:
        """The listener of adapter ``name`` that this port hands connections to: the one on its
        own port (same state), with this port's limits; built once if that port is off."""
        factories = self.registry.factories
        plain = factories.get(name)
        if plain is None:
            spec = adapter_specs(self.broker.plugins)[name]
            section = dict(self.broker.config["adapters"][name])
            plain = factories[name] = spec.build_factory(self.broker, section)
        key = f"{name}@any"
        twin = factories.get(key)
        if twin is None:
            twin = factories[key] = plain.sibling({"listener_name": self.listener_name})
        return twin
