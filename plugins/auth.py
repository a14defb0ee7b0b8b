"""The default authentication plugin: a development broker's policy.

``guest``/``guest`` and anonymous clients (no user name, or an empty one) are let in; every other
user name is refused, with the same text whether the user exists or not. A real deployment
replaces this with a plugin that knows its users (a third-party ``polymq_authenticate`` is asked
before this one, and the first answer wins).
"""

from __future__ import annotations

from polymq.core.auth import ANONYMOUS, Identity, Refusal
from polymq.core.hookspecs import hookimpl

GUEST_USER = "guest"
GUEST_PASSWORD = "guest"
# One text for an unknown user and a wrong password, so a client cannot probe for user names.
BAD_CREDENTIALS = "bad user name or password"


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


@hookimpl(trylast=True)
def polymq_authenticate(protocol, username, password, peer):
    user = _text(username)
    if not user:
        return Identity(user=ANONYMOUS, protocol=protocol)
    if user == GUEST_USER and _text(password) == GUEST_PASSWORD:
        return Identity(user=GUEST_USER, protocol=protocol)
    return Refusal(BAD_CREDENTIALS)
