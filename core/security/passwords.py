"""Password verifiers: a slow salted hash for every login, SCRAM secrets for Kafka SCRAM.

The login hash is PBKDF2-HMAC-SHA256 with 600,000 iterations (OWASP's figure), written as
``pbkdf2-sha256$<iterations>$<b64 salt>$<b64 hash>``. SCRAM-SHA-256/512 (RFC 5802, 7677) needs its
own verifier: the salt, the iteration count every client recomputes per login (4096 by default,
as Kafka) and the StoredKey/ServerKey derived from the password. A users file is therefore only as
hard to brute-force as its weakest verifier: users who never log in with SCRAM can be stored
without SCRAM secrets (``polymq users add --no-scram``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

PBKDF2_ITERATIONS = 600_000
SCRAM_ITERATIONS = 4096
SCRAM_MECHANISMS = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_SCHEME = "pbkdf2-sha256"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A new salted hash of ``password`` in the users file's format."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{_SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def check_hash(encoded: str) -> None:
    """Raise ValueError unless ``encoded`` is a hash this module can verify."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != _SCHEME:
        raise ValueError(f"not a {_SCHEME} hash")
    if int(parts[1]) < 1:
        raise ValueError("iteration count must be positive")
    _unb64(parts[2])
    _unb64(parts[3])


def verify_password(password: str | bytes, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (constant-time comparison)."""
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return False
        expected = _unb64(digest)
        pw = password if isinstance(password, bytes) else password.encode("utf-8")
        got = hashlib.pbkdf2_hmac("sha256", pw, _unb64(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# A hash of nothing anyone knows: an unknown user costs the same work as a known one.
DUMMY_HASH = f"{_SCHEME}${PBKDF2_ITERATIONS}${_b64(b'polymq-dummy-salt')}${_b64(bytes(32))}"


@dataclass(frozen=True)
class ScramSecret:
    """What the server keeps for one SCRAM mechanism (RFC 5802 section 3)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def as_dict(self) -> dict:
        return {
            "salt": _b64(self.salt),
            "iterations": self.iterations,
            "stored_key": _b64(self.stored_key),
            "server_key": _b64(self.server_key),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ScramSecret:
        return cls(
            _unb64(data["salt"]),
            int(data["iterations"]),
            _unb64(data["stored_key"]),
            _unb64(data["server_key"]),
        )


def scram_secret(
    mechanism: str, password: str, iterations: int = SCRAM_ITERATIONS, salt: bytes | None = None
) -> ScramSecret:
    """Derive the SCRAM verifier of ``password`` for ``mechanism`` (SCRAM-SHA-256 or -512)."""
    algo = SCRAM_MECHANISMS[mechanism]
    salt = os.urandom(24) if salt is None else salt
    salted = hashlib.pbkdf2_hmac(algo, password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", algo).digest()
    stored_key = hashlib.new(algo, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", algo).digest()
    return ScramSecret(salt, iterations, stored_key, server_key)
