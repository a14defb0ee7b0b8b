"""The built-in authentication plugin: users from the users file, guest only from loopback.

The decisions are the broker's :class:`~polymq.core.security.SecurityManager`'s (see
docs/security.md): a user of the users file logs in with its password (or, on a TLS listener that
verifies client certificates, with its certificate); ``guest`` only from a loopback address; a
client without a user name is logged in as ``security.anonymous_user`` (guest) from loopback, and
from elsewhere only when ``security.allow_anonymous`` is true. Third-party ``polymq_authenticate``
plugins are asked before this one; the first answer wins.
"""

from __future__ import annotations

from polymq.core.hookspecs import hookimpl
from polymq.core.security import security_of
from polymq.core.security.manager import BAD_CREDENTIALS

__all__ = ["BAD_CREDENTIALS", "polymq_authenticate"]


@hookimpl(trylast=True)
def polymq_authenticate(protocol, username, password, peer, broker):
    return security_of(broker).authenticate(protocol, username, password, peer)
