"""Authentication results shared by the broker, the adapters and auth plugins.

An auth plugin implements ``polymq_authenticate`` and returns an :class:`Identity` (let the client
in as this user), a :class:`Refusal` (keep it out, with a reason the adapter may show) or ``None``
(no opinion; the next plugin decides). When every plugin says ``None`` the client is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Identity:
    """An authenticated principal. ``protocol`` is the adapter name it came in through."""

    user: str
    protocol: str


@dataclass(frozen=True)
class Refusal:
    """A refused login; ``reason`` is a short human-readable text."""

    reason: str


def authenticate(
    plugins, protocol: str, username: str | None, password, peer, broker=None
) -> Identity | Refusal:
    """Ask every ``polymq_authenticate`` hook in turn; no answer at all means refusal."""
    result = plugins.hook.polymq_authenticate(
        protocol=protocol, username=username, password=password, peer=peer, broker=broker
    )
    if result is None:
        return Refusal("no authentication plugin accepted the credentials")
    return result
