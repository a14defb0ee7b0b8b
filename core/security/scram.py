"""The server side of SCRAM-SHA-256/512 (RFC 5802, RFC 7677), sans-I/O, for Kafka SASL/SCRAM.

    server = ScramServer("SCRAM-SHA-256", lookup)     # lookup(user, mechanism) -> ScramSecret|None
    reply = server.first(client_first)                # b"r=...,s=...,i=4096"
    reply = server.final(client_final)                # b"v=..."; server.user is then proven

Any failure raises :class:`ScramError` with a fixed text (no hint whether the user exists); an
unknown user gets a made-up salt so the exchange looks the same up to the proof check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable

from .passwords import SCRAM_ITERATIONS, SCRAM_MECHANISMS, ScramSecret

FAILED = "authentication failed: bad user name or password"


class ScramError(Exception):
    """The SCRAM exchange failed; ``str()`` is safe to show the client."""


def _attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError("malformed SCRAM message")
        out.setdefault(part[0], part[2:])
    return out


def _saslname(text: str) -> str:
    # RFC 5802: "=2C" is "," and "=3D" is "="; any other "=" is an error
    if "=" in text.replace("=2C", "").replace("=3D", ""):
        raise ScramError("malformed user name")
    return text.replace("=2C", ",").replace("=3D", "=")


class ScramServer:
    """One SCRAM exchange of one connection."""

    def __init__(self, mechanism: str, lookup: Callable[[str, str], ScramSecret | None]) -> None:
        self.mechanism = mechanism
        self.algo = SCRAM_MECHANISMS[mechanism]
        self.lookup = lookup
        self.user: str | None = None  # set once the proof checked out
        self._secret: ScramSecret | None = None
        self._claimed = ""
        self._first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._known = False

    def first(self, client_first: bytes) -> bytes:
        text = client_first.decode("utf-8", "strict")
        if not text.startswith(("n,", "y,")):
            raise ScramError("channel binding is not supported")  # "p=..." or junk
        gs2, _, bare = text.partition(",")[2].partition(",")
        if gs2 and not gs2.startswith("a="):
            raise ScramError("malformed SCRAM message")
        attrs = _attributes(bare)
        if "n" not in attrs or "r" not in attrs or not attrs["r"]:
            raise ScramError("malformed SCRAM message")
        self._claimed = _saslname(attrs["n"])
        self._first_bare = bare
        secret = self.lookup(self._claimed, self.mechanism)
        self._known = secret is not None
        if secret is None:
            # a stable made-up salt per name: probing twice does not reveal the user is unknown
            salt = hashlib.sha256(b"polymq-scram" + self._claimed.encode()).digest()[:24]
            secret = ScramSecret(salt, SCRAM_ITERATIONS, b"", b"")
        self._secret = secret
        self._nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode("ascii")
        salt = base64.b64encode(secret.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={secret.iterations}"
        return self._server_first.encode("ascii")

    def final(self, client_final: bytes) -> bytes:
        secret = self._secret
        if secret is None:
            raise ScramError("SCRAM client-final before client-first")
        text = client_final.decode("utf-8", "strict")
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed SCRAM message")
        attrs = _attributes(without_proof)
        if attrs.get("r") != self._nonce:
            raise ScramError("SCRAM nonce mismatch")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise ScramError("malformed SCRAM message") from None
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        algo = self.algo
        signature = hmac.new(secret.stored_key, auth_message, algo).digest()
        if not self._known or len(proof) != len(signature):
            raise ScramError(FAILED)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(algo, client_key).digest(), secret.stored_key):
            raise ScramError(FAILED)
        self.user = self._claimed
        server_signature = hmac.new(secret.server_key, auth_message, algo).digest()
        return b"v=" + base64.b64encode(server_signature)
