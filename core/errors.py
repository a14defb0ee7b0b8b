"""Protocol-neutral broker errors.

Each carries the AMQP 0-9-1 reply code it corresponds to, because that protocol has the richest
vocabulary; other adapters translate the class into their own reason codes.
"""

from __future__ import annotations


class BrokerError(Exception):
    code = 541  # internal-error

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class AccessRefused(BrokerError):
    code = 403


class NotFound(BrokerError):
    code = 404


class ResourceLocked(BrokerError):
    code = 405


class PreconditionFailed(BrokerError):
    code = 406


class CommandInvalid(BrokerError):
    code = 503


class ResourceError(BrokerError):
    code = 506


class NotAllowed(BrokerError):
    code = 530


class ConnectionForced(BrokerError):
    """An operator (management, shutdown) closed the connection."""

    code = 320


class ProtocolError(Exception):
    """The client broke its protocol (bad framing, wrong order, an unknown version ...).

    Adapters raise it (or a subclass) from their framer or session; the connection contract
    answers it through the session in the protocol's own words and closes the connection.
    ``code`` is an optional protocol-specific reason code chosen by the adapter.
    """

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class FrameTooLarge(ProtocolError):
    """A frame announced a length over the listener's maximum."""


class IdleTimeout(ProtocolError):
    """Nothing arrived from the client within its liveness interval."""
