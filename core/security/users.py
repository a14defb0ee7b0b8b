"""The users file: users, password verifiers, tags and per-vhost permissions (TOML).

Layout (``polymq users ...`` writes it; hand edits are fine and picked up while running)::

    [users.alice]
    password = "pbkdf2-sha256$600000$...$..."
    tags = ["monitoring"]
    scram_sha_256 = { salt = "...", iterations = 4096, stored_key = "...", server_key = "..." }
    [users.alice.permissions."/"]
    configure = "^alice\\."
    write = ".*"
    read = ".*"

A broker whose users file does not exist has one user, ``guest`` (password ``guest``, tag
``administrator``, every permission on every vhost: ``permissions."*"``), much as a fresh
RabbitMQ node has; the
first ``polymq users`` change writes the file with that guest in it, so deleting guest sticks.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .passwords import (
    SCRAM_ITERATIONS,
    SCRAM_MECHANISMS,
    ScramSecret,
    check_hash,
    hash_password,
    scram_secret,
)

KNOWN_TAGS = ("administrator", "monitoring", "management", "policymaker")
ACTIONS = ("configure", "write", "read")
GUEST = "guest"
# a permissions key that stands for every vhost the user has no entry of its own for
ANY_VHOST = "*"
_SCRAM_KEYS = {m: m.lower().replace("-", "_") for m in SCRAM_MECHANISMS}  # scram_sha_256 ...


class UsersFileError(Exception):
    """The users file cannot be read or holds something invalid (the message says where)."""


@dataclass(frozen=True)
class Permission:
    """One user's three regular expressions on one vhost (RabbitMQ's model). ``""`` or ``^$``
    grants nothing. ``%u``/``{username}``, ``%c``/``{client_id}`` and ``{vhost}`` are replaced
    by the connection's values (regex-escaped) before matching."""

    configure: str = ""
    write: str = ""
    read: str = ""

    def pattern(self, action: str) -> str:
        return getattr(self, action)

    def as_dict(self) -> dict[str, str]:
        return {"configure": self.configure, "write": self.write, "read": self.read}


@dataclass
class User:
    name: str
    password_hash: str | None = None
    tags: list[str] = field(default_factory=list)
    scram: dict[str, ScramSecret] = field(default_factory=dict)
    permissions: dict[str, Permission] = field(default_factory=dict)
    # connections this user may hold at once (None: security.max_connections_per_user)
    max_connections: int | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.password_hash:
            data["password"] = self.password_hash
        data["tags"] = list(self.tags)
        if self.max_connections is not None:
            data["max_connections"] = self.max_connections
        for mech, secret in sorted(self.scram.items()):
            data[_SCRAM_KEYS[mech]] = secret.as_dict()
        data["permissions"] = {v: p.as_dict() for v, p in sorted(self.permissions.items())}
        return data


def default_guest(vhost: str = "/") -> User:
    """The user a broker without a users file has: everything on every vhost (it may log in
    from loopback only)."""
    user = User(
        GUEST, tags=["administrator"], permissions={ANY_VHOST: Permission(".*", ".*", ".*")}
    )
    # guest's password is public: a slow hash of it would protect nothing and cost every
    # broker start a fraction of a second
    set_password(user, "guest", scram_iterations=SCRAM_ITERATIONS, iterations=1000)
    return user


def set_password(
    user: User,
    password: str,
    scram: bool = True,
    scram_iterations: int = SCRAM_ITERATIONS,
    iterations: int | None = None,
) -> None:
    """Replace the user's verifiers: the login hash and (unless ``scram`` is false) SCRAM."""
    user.password_hash = (
        hash_password(password) if iterations is None else hash_password(password, iterations)
    )
    user.scram = (
        {m: scram_secret(m, password, scram_iterations) for m in SCRAM_MECHANISMS} if scram else {}
    )


def check_pattern(text: str) -> None:
    """Raise UsersFileError unless ``text`` compiles once substitutions are made."""
    probe = substitute(text, "u", "c", "v")
    try:
        re.compile(probe)
    except re.error as exc:
        raise UsersFileError(f"bad regular expression {text!r}: {exc}") from None


def substitute(pattern: str, user: str, client_id: str | None, vhost: str) -> str:
    """Fill in ``%u``/``{username}``, ``%c``/``{client_id}`` and ``{vhost}``."""
    if "%" not in pattern and "{" not in pattern:
        return pattern
    u = re.escape(user)
    # a connection without a client id must not match a per-client pattern
    c = re.escape(client_id) if client_id else "(?!)"
    v = re.escape(vhost)
    return (
        pattern.replace("%u", u)
        .replace("{username}", u)
        .replace("%c", c)
        .replace("{client_id}", c)
        .replace("{vhost}", v)
    )


def parse_users(data: dict, where: str) -> dict[str, User]:
    """Users from a parsed TOML document; UsersFileError names the bad entry."""
    users: dict[str, User] = {}
    table = data.get("users", {})
    if not isinstance(table, dict):
        raise UsersFileError(f"{where}: [users] must be a table")
    for name, entry in table.items():
        at = f"{where}: users.{name}"
        if not isinstance(entry, dict):
            raise UsersFileError(f"{at}: must be a table")
        user = User(name)
        pw = entry.get("password")
        if pw is not None:
            try:
                check_hash(str(pw))
            except ValueError as exc:
                raise UsersFileError(f"{at}.password: {exc}") from None
            user.password_hash = str(pw)
        tags = entry.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise UsersFileError(f"{at}.tags: must be a list of strings")
        user.tags = list(tags)
        limit = entry.get("max_connections")
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise UsersFileError(f"{at}.max_connections: must be an integer >= 0")
            user.max_connections = limit
        for mech, key in _SCRAM_KEYS.items():
            if key in entry:
                try:
                    user.scram[mech] = ScramSecret.from_dict(entry[key])
                except (KeyError, TypeError, ValueError) as exc:
                    raise UsersFileError(f"{at}.{key}: {exc!r}") from None
        perms = entry.get("permissions", {})
        if not isinstance(perms, dict):
            raise UsersFileError(f"{at}.permissions: must be a table of vhosts")
        for vhost, p in perms.items():
            if not isinstance(p, dict) or set(p) - set(ACTIONS):
                raise UsersFileError(
                    f"{at}.permissions.{vhost!r}: must hold only configure, write, read"
                )
            perm = Permission(**{a: str(p.get(a, "")) for a in ACTIONS})
            for a in ACTIONS:
                try:
                    check_pattern(perm.pattern(a))
                except UsersFileError as exc:
                    raise UsersFileError(f"{at}.permissions.{vhost!r}.{a}: {exc}") from None
            user.permissions[vhost] = perm
        users[name] = user
    return users


def read_users(path: str, default_vhost: str = "/") -> dict[str, User]:
    """The users of ``path``; a missing file means the default guest only."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {GUEST: default_guest(default_vhost)}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsersFileError(f"{path}: {exc}") from None
    return parse_users(data, path)


def write_users(path: str, users: dict[str, User]) -> None:
    """Write ``users`` to ``path`` atomically, readable by its owner only (it holds secrets)."""
    import tomli_w

    doc = {"users": {name: users[name].as_dict() for name in sorted(users)}}
    text = (
        "# polymq users file: managed by `polymq users`; the broker reloads it on change.\n"
        + tomli_w.dumps(doc)
    )
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
