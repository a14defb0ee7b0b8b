"""The permission engine every adapter reaches through ``conn.authorize``.

RabbitMQ's model: per (user, vhost) three regular expressions (searched anywhere in the name,
so anchor them with ``^...$``), ``configure`` (declare, delete),
``write`` (publish, bind to a destination) and ``read`` (consume, bind from a source). A user
without an entry for a vhost may do nothing there. Decisions are cached per
(user, client id, vhost, action, kind, name), so a publish check is one dict look-up; the cache is
dropped whenever the users file changes.
"""

from __future__ import annotations

import re
from typing import Any

from .users import ANY_VHOST, Permission, User, substitute

# Names checked in place of others, as RabbitMQ does: the default exchange is "amq.default".
_ALIASES = {("exchange", ""): "amq.default"}
_CACHE_LIMIT = 100_000


class Authorizer:
    """``authorizer(identity, vhost, action, kind, name, client_id=None) -> bool``.

    ``users`` is a callable returning the current users by name (so reloads are seen);
    ``unrestricted`` names identities allowed everything (anonymous access when the operator
    allowed it without giving the anonymous user permissions of its own).
    """

    # conn.authorize passes the connection's client id too (for %c patterns)
    wants_client_id = True

    def __init__(
        self, users: Any, unrestricted: frozenset[str] = frozenset(), default_vhost: str = "/"
    ) -> None:
        self._users = users
        self.default_vhost = default_vhost
        self.unrestricted = unrestricted
        self._cache: dict[tuple, bool] = {}
        self._compiled: dict[str, re.Pattern] = {}
        self.refused = 0  # refusals since start (decisions, not cache hits)

    def clear(self) -> None:
        """Forget every decision (the users or their permissions changed)."""
        self._cache.clear()
        self._compiled.clear()

    def may_enter(self, identity: Any, vhost: str) -> bool:
        """May this identity use ``vhost`` at all? Only with a permission entry for it (or for
        every vhost), as RabbitMQ requires at connection.open."""
        user = getattr(identity, "user", None)
        if user is None:
            return False
        record: User | None = self._users().get(user)
        if record is None:
            return user in self.unrestricted
        return vhost in record.permissions or ANY_VHOST in record.permissions

    def __call__(
        self,
        identity: Any,
        vhost: str | None,
        action: str,
        kind: str,
        name: str,
        client_id: str | None = None,
    ) -> bool:
        user = getattr(identity, "user", None)
        key = (user, client_id, vhost, action, kind, name)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        allowed = self._decide(user, vhost or self.default_vhost, action, kind, name, client_id)
        if not allowed:
            self.refused += 1
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = allowed
        return allowed

    def _decide(
        self, user: str | None, vhost: str, action: str, kind: str, name: str, client_id: str | None
    ) -> bool:
        if user is None:
            return False
        record: User | None = self._users().get(user)
        if record is None:
            return user in self.unrestricted
        perms = record.permissions
        perm: Permission | None = perms.get(vhost) or perms.get(ANY_VHOST)
        if perm is None:
            return False
        pattern = perm.pattern(action) if action in ("configure", "write", "read") else ""
        if not pattern or pattern == "^$":
            return False
        text = substitute(pattern, user, client_id, vhost)
        compiled = self._compiled.get(text)
        if compiled is None:
            compiled = self._compiled[text] = re.compile(text)
        return compiled.search(_ALIASES.get((kind, name), name)) is not None
