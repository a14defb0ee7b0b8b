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
    return manager
