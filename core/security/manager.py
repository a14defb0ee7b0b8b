"""The broker's security state: the users file, the login policy and the authorizer.

One :class:`SecurityManager` per broker (``broker.security``), built from the ``[security]``
config table. The built-in auth plugin asks it for every login; ``broker.authorizer`` is its
:class:`~polymq.core.security.authorizer.Authorizer`. The users file is re-read when its
modification time changes (checked on a timer, never on a login or a message).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from typing import Any

from twisted.logger import Logger

from ..auth import ANONYMOUS, Identity, Refusal
from .authorizer import Authorizer
from .hashing import HashPool
from .passwords import DUMMY_HASH, verify_password
from .users import User, UsersFileError, read_users

log = Logger(namespace="polymq.security")

# One text for an unknown user and a wrong password, so a client cannot probe for user names.
BAD_CREDENTIALS = "bad user name or password"
LOGIN_FLOOD = "too many logins in progress; try again later"
# Failed logins one source address may have in FAILURE_WINDOW seconds before further attempts
# are refused without spending a password hash on them (a login flood must not stall the reactor).
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0

SECURITY_DEFAULTS: dict[str, Any] = {
    # the users file; empty: users.toml in the store's data_dir
    "users_file": "",
    # users that may log in only from a loopback address (127.0.0.0/8, ::1)
    "loopback_users": ["guest"],
    # a client that sends no user name is logged in as this user (subject to loopback_users);
    # empty: such clients are refused unless allow_anonymous is true
    "anonymous_user": "guest",
    # let clients without a user name in from every address, as user "anonymous" (with the
    # permissions of a user of that name in the users file, or every permission if none)
    "allow_anonymous": False,
    # seconds between checks of the users file's modification time (0: never reload)
    "reload_interval": 2.0,
    # offer Kafka SASL/PLAIN (a clear password) on listeners without TLS; SCRAM is always offered
    "sasl_plain_without_tls": False,
    # connections one user may hold at once, every protocol together (0: no limit); a user's
    # own max_connections in the users file takes precedence
    "max_connections_per_user": 0,
    # threads that verify password hashes (off the reactor thread), and logins that may wait
    # for one of them; a login beyond both is refused ("too many logins in progress")
    "hash_threads": 2,
    "max_waiting_logins": 64,
}


class CertificateCredential:
    """The ``password`` passed for a login proven by a verified client certificate: the user
    name came from the certificate, no password was sent."""

    __slots__ = ("subject",)

    def __init__(self, subject: str) -> None:
        self.subject = subject

    def __repr__(self) -> str:
        return f"CertificateCredential({self.subject!r})"


def peer_host(peer: Any) -> str | None:
    """The host of a peer given as a Twisted address, a (host, port) tuple or ``host:port``."""
    if peer is None:
        return None
    host = getattr(peer, "host", None)
    if host is not None:
        return str(host)
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    if isinstance(peer, str):
        if peer.startswith("["):
            return peer[1:].split("]", 1)[0]
        return peer.rsplit(":", 1)[0] if peer.count(":") == 1 else peer
    return None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class SecurityManager:
    """Users, login decisions and the authorizer of one broker."""

    def __init__(self, section: dict, data_dir: str = ".", default_vhost: str = "/") -> None:
        cfg = dict(SECURITY_DEFAULTS, **(section or {}))
        self.path = cfg["users_file"] or os.path.join(data_dir, "users.toml")
        self.loopback_users = frozenset(cfg["loopback_users"])
        self.anonymous_user = cfg["anonymous_user"]
        self.allow_anonymous = bool(cfg["allow_anonymous"])
        self.reload_interval = float(cfg["reload_interval"])
        self.sasl_plain_without_tls = bool(cfg["sasl_plain_without_tls"])
        self.max_connections_per_user = int(cfg["max_connections_per_user"])
        self.hash_threads = int(cfg["hash_threads"])
        self.max_waiting_logins = int(cfg["max_waiting_logins"])
        # None until start(): without a reactor (tools, unit tests) hashes run inline
        self.hasher: HashPool | None = None
        self.user_connections: dict[str, int] = {}
        self.default_vhost = default_vhost
        self.users: dict[str, User] = read_users(self.path, default_vhost)
        self._stamp = self._file_stamp()
        self.authorizer = Authorizer(
            lambda: self.users,
            frozenset({ANONYMOUS}) if self.allow_anonymous else frozenset(),
            default_vhost,
        )
        # verified (user, keyed digest of the password) -> the hash it was checked against
        self._verified: dict[tuple[str, bytes], str] = {}
        self._cache_key = os.urandom(32)
        self._failures: dict[str, list[float]] = {}
        self.hashes_started = 0  # password verifications begun (inline or in the hash pool)
        self._timer: Any = None
        self._clock: Any = None
        self.on_reload: list[Any] = []  # callables(old_users, new_users) after a reload

    # -- the users file ---------------------------------------------------------------------

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def start(self, clock: Any) -> None:
        """Check the users file for changes every ``reload_interval`` seconds."""
        self._clock = clock
        if self.hasher is None and hasattr(clock, "callFromThread"):
            self.hasher = HashPool(clock, self.hash_threads, self.max_waiting_logins)
        if self.reload_interval > 0:
            self._timer = clock.callLater(self.reload_interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.hasher is not None:
            self.hasher.stop()
            self.hasher = None

    def _tick(self) -> None:
        self._timer = None
        try:
            self.reload_if_changed()
        finally:
            if self._clock is not None and self.reload_interval > 0:
                self._timer = self._clock.callLater(self.reload_interval, self._tick)

    def reload_if_changed(self) -> bool:
        """Re-read the users file if it changed; True when new users were installed. A file
        that does not parse leaves the current users in place (and says why in the log)."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            users = read_users(self.path, self.default_vhost)
        except UsersFileError as exc:
            log.error("users file not reloaded, the previous users stay: {error}", error=exc)
            return False
        old, self.users = self.users, users
        self.authorizer.clear()
        self._verified.clear()
        log.info("users file reloaded: {n} users ({path})", n=len(users), path=self.path)
        for callback in self.on_reload:
            try:
                callback(old, users)
            except Exception:
                log.failure("a users-reload callback failed")
        return True

    # -- per-user connection limits --------------------------------------------------------

    def hold_connection(self, user: str) -> str | None:
        """Count one more connection of ``user``; the refusal text when over its limit."""
        record = self.users.get(user)
        own = record.max_connections if record is not None else None
        limit = own if own is not None else self.max_connections_per_user
        held = self.user_connections.get(user, 0)
        if limit and held >= limit:
            return f"user '{user}' already holds {held} connections (its limit)"
        self.user_connections[user] = held + 1
        return None

    def release_connection(self, user: str) -> None:
        n = self.user_connections.get(user, 0) - 1
        if n > 0:
            self.user_connections[user] = n
        else:
            self.user_connections.pop(user, None)

    # -- logins -----------------------------------------------------------------------------

    def authenticate(self, protocol: str, username: Any, password: Any, peer: Any) -> Any:
        """Identity or Refusal for one login (the built-in policy), or a Deferred of one when
        a password hash has to be verified (that runs in :attr:`hasher`'s threads)."""
        user = _text(username)
        host = peer_host(peer)
        if not user:
            return self._anonymous(protocol, host)
        record = self.users.get(user)
        if isinstance(password, CertificateCredential):
            # the TLS layer verified the certificate; the user must exist
            if record is None:
                return Refusal(f"certificate identity {user!r} is not a known user")
            return self._admit(record, protocol, host)
        secret = password if isinstance(password, bytes) else (_text(password) or "")
        raw, key = self._cache_entry(user, secret)
        if record is not None and self._known_good(record, key):
            # a password verified before costs no hashing: no throttling needed either, so a
            # misbehaving client cannot lock out others on its host that log in correctly
            return self._admit(record, protocol, host)
        if self._throttled(host):
            return Refusal("too many failed logins from this address; try again later")
        # an unknown user costs the same work as a known one (no timing probe for names)
        encoded = record.password_hash if record is not None else None
        checked = encoded or DUMMY_HASH

        def verified(ok: bool) -> Identity | Refusal:
            if not ok or record is None or not encoded:
                self._failed(host)
                return Refusal(BAD_CREDENTIALS)
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[key] = encoded
            return self._admit(record, protocol, host)

        self.hashes_started += 1
        if self.hasher is None:
            return verified(verify_password(raw, checked))
        pending = self.hasher.run(verify_password, raw, checked)
        if pending is None:
            log.warn(
                "login refused: {n} password checks already under way ({protocol}, {host})",
                n=self.hasher.busy + self.hasher.waiting,
                protocol=protocol,
                host=host,
            )
            return Refusal(LOGIN_FLOOD)
        return pending.addCallback(verified)

    def scram_secret(self, user: str, mechanism: str) -> Any:
        """The stored SCRAM verifier of ``user`` for ``mechanism``, or None."""
        record = self.users.get(user)
        return None if record is None else record.scram.get(mechanism)

    def proven(self, protocol: str, user: str, peer: Any) -> Identity | Refusal:
        """The login of a user whose credentials a SASL exchange (SCRAM) already proved."""
        record = self.users.get(user)
        if record is None:
            return Refusal(BAD_CREDENTIALS)
        return self._admit(record, protocol, peer_host(peer))

    def _admit(self, record: User, protocol: str, host: str | None) -> Identity | Refusal:
        if record.name in self.loopback_users and not is_loopback(host):
            return Refusal(f"user '{record.name}' can only connect via localhost")
        return Identity(user=record.name, protocol=protocol)

    def _anonymous(self, protocol: str, host: str | None) -> Identity | Refusal:
        if self.allow_anonymous:
            return Identity(user=ANONYMOUS, protocol=protocol)
        record = self.users.get(self.anonymous_user) if self.anonymous_user else None
        if record is None or not is_loopback(host):
            # from elsewhere a user name is required unless the operator allowed anonymous
            return Refusal("a user name and password are required")
        return Identity(user=record.name, protocol=protocol)

    def _cache_entry(self, user: str, secret: str | bytes) -> tuple[bytes, tuple[str, bytes]]:
        raw = secret if isinstance(secret, bytes) else secret.encode("utf-8")
        return raw, (user, hmac.new(self._cache_key, raw, hashlib.sha256).digest())

    def _known_good(self, record: User, key: tuple[str, bytes]) -> bool:
        """True when this password was verified for this user's current hash already."""
        return record.password_hash is not None and self._verified.get(key) == record.password_hash

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock.seconds()
        import time

        return time.monotonic()

    def _throttled(self, host: str | None) -> bool:
        if is_loopback(host):
            return False  # local processes can exhaust the machine anyway; tools retry freely
        times = self._failures.get(host or "?")
        if not times:
            return False
        now = self._now()
        while times and now - times[0] > FAILURE_WINDOW:
            times.pop(0)
        return len(times) >= MAX_FAILURES

    def _failed(self, host: str | None) -> None:
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures.setdefault(host or "?", []).append(self._now())
