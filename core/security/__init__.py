"""Users, permissions and TLS: the security every adapter shares (see docs/security.md)."""

from __future__ import annotations

import os
from typing import Any

from .authorizer import Authorizer
from .manager import SECURITY_DEFAULTS, CertificateCredential, SecurityManager, is_loopback

__all__ = [
    "SECURITY_DEFAULTS",
    "Authorizer",
    "CertificateCredential",
    "SecurityManager",
    "is_loopback",
    "security_of",
]


def security_of(broker: Any) -> SecurityManager:
    """The broker's :class:`SecurityManager`, built from its config on first use; it is also
    installed as ``broker.authorizer``, the check point of ``conn.authorize``."""
    manager = getattr(broker, "security", None)
    if manager is None:
        config = getattr(broker, "config", None) or {}
        data_dir = os.path.abspath((config.get("store") or {}).get("data_dir", "./polymq-data"))
        manager = SecurityManager(
            config.get("security") or {},
            data_dir=data_dir,
            default_vhost=getattr(broker, "default_vhost", "/"),
        )
        broker.security = manager
        broker.authorizer = manager.authorizer
        manager.on_reload.append(lambda old, new: close_revoked(broker, old, new))
    return manager


def close_revoked(broker: Any, old: dict, new: dict) -> int:
    """Close the live connections, of every protocol, of users that were deleted or whose
    password changed in a reload (as RabbitMQ closes a deleted user's connections). Returns how
    many were closed."""
    revoked = {
        name
        for name, user in old.items()
        if name not in new or new[name].password_hash != user.password_hash
    }
    registry = getattr(broker, "connections", None)
    if not revoked or registry is None:
        return 0
    closed = 0
    for info in registry:
        if info.user in revoked:
            info.close(f"user '{info.user}' was deleted or its password changed")
            closed += 1
    return closed
