"""Login and authorization of a connection, whatever its protocol.

:class:`ConnectionLogin` is a part of :class:`~polymq.core.connection.ProtocolConnection` (a
mixin): authentication through the broker's auth plugins (``authenticate``, or ``login`` when the
answer may come from a thread, holding the frames received meanwhile), the per-user connection
limit (``accept_identity``) and the authorization check point (``authorize``, ``may_enter``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .auth import Identity, Refusal
from .errors import BrokerError, ProtocolError

__all__ = ["ConnectionLogin"]

log = Logger(namespace="polymq.connection")


class ConnectionLogin:
    """The login and authorization methods of :class:`~polymq.core.connection.
    ProtocolConnection`; it supplies the state they use (``broker``, ``factory``, ``info``,
    ``identity``, ``closing`` ...)."""

    def authenticate(self, username: str | None, password: Any) -> Identity | Refusal | Deferred:
        """Ask the broker's auth plugins; the result's user is recorded on success. The answer
        may be a Deferred (a password hash is verified in a thread): sessions use :meth:`login`,
        which handles both.

        On a TLS listener with ``[tls] cert_login`` set, a verified client certificate names the
        user (whatever user name the client sent) and the password is a
        :class:`~polymq.core.security.CertificateCredential`."""
        cert_login = getattr(self.factory, "cert_login", "")
        if cert_login:
            from .security.manager import CertificateCredential
            from .security.tls import certificate_user

            found = certificate_user(self.transport, cert_login)
            if found is not None:
                username, password = found[0], CertificateCredential(found[1])
        result = self.broker.authenticate(
            self.factory.protocol_name, username, password, self.transport.getPeer()
        )
        if isinstance(result, Deferred):
            return result.addErrback(self._auth_failed).addCallback(self._identified)
        return self._identified(result)

    def _identified(self, result: Any) -> Identity | Refusal:
        if result is None:
            return Refusal("not authorized")
        if isinstance(result, Identity):
            if self.closing:
                return Refusal("connection closed")
            refusal = self.accept_identity(result)
            if refusal is not None:
                return refusal
        return result

    def _auth_failed(self, failure: Any) -> Refusal:
        log.failure("auth plugin failed", failure)
        return Refusal(f"authentication error: {failure.getErrorMessage()}")

    def login(
        self, username: str | None, password: Any, then: Callable[[Identity | Refusal], None]
    ) -> bool:
        """Authenticate and call ``then(Identity or Refusal)``: at once (returns True) or, when
        the answer needs a password hash verified in a thread, later (returns False).

        While the answer is pending the connection stops reading, and frames already received
        wait: the session hands the frames of the current read that follow the login frame to
        :meth:`hold_frames` and returns. Once ``then`` has run, the waiting frames (possibly
        none) go to ``session.frames_received`` as one read, and reading resumes."""
        result = self.authenticate(username, password)
        if not isinstance(result, Deferred):
            then(result)
            return True
        self.logging_in = True
        self._login_held: list = []
        self.pause_reading()
        result.addCallback(self._login_answered, then)
        result.addErrback(lambda f: log.failure("login completion failed", f))
        return False

    def hold_frames(self, frames: list, after: Any = None) -> None:
        """Keep the frames of the current read that follow the frame ``after`` (all of
        ``frames`` when None) until the pending login is answered (see :meth:`login`)."""
        if after is not None:
            for i, frame in enumerate(frames):
                if frame is after:
                    frames = frames[i + 1 :]
                    break
        self._login_held.extend(frames)

    def _login_answered(self, result: Identity | Refusal, then: Callable) -> None:
        self.logging_in = False
        held, self._login_held = self._login_held, []
        if self.closing:
            return
        self._in_read = True
        try:
            then(result)
            if not self.closing and not self.logging_in:
                self.session.frames_received(held)
            elif self.logging_in:
                self._login_held[:0] = held
        except (ProtocolError, BrokerError) as e:
            self._fail(e)
        except Exception as e:
            self._crash(e)
        finally:
            self._in_read = False
            if self._durable_open is not None:
                self._register_durable()
        if not self.closing:
            self.resume_reading()

    def accept_identity(self, identity: Identity) -> Refusal | None:
        """Make ``identity`` this connection's user, within the per-user connection limit
        (``security.max_connections_per_user``, or the user's own ``max_connections``).
        :meth:`authenticate` calls it; an adapter that proved a login itself (a SASL
        exchange) calls it directly. A Refusal says the user holds enough connections."""
        security = getattr(self.broker, "security", None)
        if security is not None and self._counted_user != identity.user:
            reason = security.hold_connection(identity.user)
            if reason is not None:
                return Refusal(reason)
            if self._counted_user is not None:
                security.release_connection(self._counted_user)
            self._counted_user = identity.user
        self.identity = identity
        if self.info is not None:
            self.info.user = identity.user
        return None

    def authorize(self, action: str, kind: str, name: str, vhost: str | None = None) -> bool:
        """The authorization check point: may this connection's user do ``action``
        (``configure``, ``write``, ``read``) on the resource ``kind`` (``exchange``,
        ``queue``, ``topic``, ``group`` ...) called ``name``? Every adapter asks here before
        it declares, publishes or consumes; the answer comes from the broker's authorizer
        (everything is allowed while none is configured): ``authorizer(identity, vhost,
        action, kind, name)``, plus the connection's client id as a sixth argument when the
        authorizer has ``wants_client_id = True`` (the built-in one, for ``%c`` patterns)."""
        authorizer = getattr(self.broker, "authorizer", None)
        if authorizer is None:
            return True
        info = self.info
        vhost = vhost if vhost is not None else info.vhost
        if getattr(authorizer, "wants_client_id", False):
            return authorizer(self.identity, vhost, action, kind, name, info.client_id)
        return authorizer(self.identity, vhost, action, kind, name)

    def may_enter(self, vhost: str) -> bool:
        """May this connection's user use ``vhost`` at all (a permission entry for it)? True
        when no authorizer is configured, or one that does not say (no ``may_enter``)."""
        check = getattr(getattr(self.broker, "authorizer", None), "may_enter", None)
        return True if check is None else bool(check(self.identity, vhost))
