"""SASL on a Kafka connection: SaslHandshake (v0: raw tokens follow; v1: SaslAuthenticate
requests carry them) with SCRAM-SHA-256/512, and PLAIN over TLS or where the config allows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from polymq.core.auth import Identity

from . import codec as C
from .server import ProtocolViolation

if TYPE_CHECKING:
    from .session import KafkaSession

log = Logger(namespace="polymq.kafka")


def _mechanisms(session: KafkaSession) -> list[str]:
    """SCRAM always; PLAIN (a clear password) over TLS, or where the config allows it."""
    from polymq.core.security import security_of

    if session.conn.factory.tls or security_of(session.broker).sasl_plain_without_tls:
        return ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
    return ["SCRAM-SHA-256", "SCRAM-SHA-512"]


def sasl_handshake(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    mechanisms = _mechanisms(session)
    if not session.server.sasl or session.authenticated or session.sasl_mechanism is not None:
        return reply({"error_code": C.ILLEGAL_SASL_STATE, "mechanisms": mechanisms})
    if req.mechanism not in mechanisms:
        return reply({"error_code": C.UNSUPPORTED_SASL_MECHANISM, "mechanisms": mechanisms})
    session.sasl_mechanism = req.mechanism
    if req.mechanism != "PLAIN":
        from polymq.core.security import security_of
        from polymq.core.security.scram import ScramServer

        session.scram = ScramServer(req.mechanism, security_of(session.broker).scram_secret)
    if ver == 0:
        session.sasl_raw = True
    reply({"error_code": 0, "mechanisms": mechanisms})


def _sasl_token(
    session: KafkaSession, token: bytes, done: Callable[[bytes | None, str | None], None]
) -> None:
    """One SASL token in; ``done(token out or None when authenticated, error text or
    None)`` is called now, or later when a PLAIN password is verified in a thread."""
    if session.sasl_mechanism == "PLAIN":
        return _plain(session, token, done)
    from polymq.core.security import security_of
    from polymq.core.security.scram import ScramError

    scram = session.scram
    try:
        if scram._secret is None:
            return done(scram.first(token), None)
        final = scram.final(token)
    except (ScramError, UnicodeDecodeError) as e:
        return done(None, str(e) if isinstance(e, ScramError) else "malformed SCRAM message")
    result = security_of(session.broker).proven(
        "kafka", scram.user, session.conn.transport.getPeer()
    )
    if isinstance(result, Identity):
        result = session.conn.accept_identity(result) or result
    if not isinstance(result, Identity):
        return done(None, result.reason)
    _logged_in(session, result)
    done(final, None)


def _logged_in(session: KafkaSession, result: Identity) -> None:
    session.identity = result
    session.authenticated = True
    session.started = True
    session.conn.handshake_done(
        user=result.user, client_id=session.client_id, vhost=session.vhost.name
    )


def _plain(
    session: KafkaSession, token: bytes, done: Callable[[bytes | None, str | None], None]
) -> None:
    """Check a PLAIN token (RFC 4616: authzid NUL authcid NUL password)."""
    parts = token.split(b"\x00")
    if len(parts) != 3:
        return done(None, "malformed PLAIN token")
    user = parts[1].decode("utf-8", "replace")

    def answered(result: Any) -> None:
        if isinstance(result, Identity):
            _logged_in(session, result)
            return done(None, None)
        done(None, getattr(result, "reason", "authentication failed"))

    session.conn.login(user, parts[2], answered)


def sasl_authenticate(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    def answer(code: int, message: str | None, out: bytes = b"") -> None:
        reply(
            {
                "error_code": code,
                "error_message": message,
                "auth_bytes": out,
                "session_lifetime_ms": 0,
            }
        )

    if session.sasl_mechanism is None or session.authenticated or session.sasl_raw:
        return answer(C.ILLEGAL_SASL_STATE, "no handshake")

    def done(out: bytes | None, err: str | None) -> None:
        if err is not None:
            answer(C.SASL_AUTHENTICATION_FAILED, err)
            log.info("kafka client {peer}: SASL refused: {e}", peer=session.peer, e=err)
            return
        answer(0, None, out or b"")

    _sasl_token(session, bytes(req.auth_bytes), done)


def sasl_raw_token(session: KafkaSession, token: bytes) -> None:
    # SaslHandshake v0: tokens travel length-prefixed without Kafka headers until done
    def done(out: bytes | None, err: str | None) -> None:
        if err is not None:
            raise ProtocolViolation(f"SASL refused: {err}")
        session.sasl_raw = not session.authenticated
        out = out or b""
        session.conn.reply(len(out).to_bytes(4, "big") + out)

    _sasl_token(session, token, done)
