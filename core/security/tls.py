"""TLS listeners: Twisted's TLS over each adapter's own factory, certificates reloaded live.

Every adapter gets a TLS listener beside its plain one when ``[tls] certfile`` is set and the
adapter's ``tls_port`` is not 0. The adapter's factory is built a second time with
``section["tls"] = True`` (so the connection registry shows TLS) and wrapped in a
:class:`TLSListenerFactory`. Its connection creator hands out the *current* certificate's
context per new connection, so a reload (certificate files' modification time, checked on a
timer) affects new connections only.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

log = Logger(namespace="polymq.tls")

# the registered/customary TLS port of each built-in protocol
DEFAULT_TLS_PORTS = {"amqp": 5671, "mqtt": 8883, "kafka": 9093, "openwire": 61617}
VERIFY_CLIENT = ("none", "optional", "required")
CERT_LOGIN = ("", "common_name", "subject_alt_name", "distinguished_name")

TLS_DEFAULTS: dict[str, Any] = {
    # PEM files: the server certificate (followed by its intermediates) and its private key;
    # no certfile, no TLS listener
    "certfile": "",
    "keyfile": "",
    # PEM file of the CAs client certificates must chain to (needed for verify_client)
    "cafile": "",
    # "none", "optional" (verified if sent) or "required" (mutual TLS)
    "verify_client": "none",
    # take the user name from a verified client certificate: "" (never), "common_name",
    # "subject_alt_name" (the first DNS name, e-mail or URI) or "distinguished_name" (RFC 4514)
    "cert_login": "",
    # lowest protocol version accepted: "TLSv1.2" or "TLSv1.3"
    "min_version": "TLSv1.2",
    # seconds a client has to finish the TLS handshake
    "handshake_timeout": 5.0,
    # seconds between checks of the certificate files' modification times (0: never reload)
    "reload_interval": 5.0,
}


class TLSConfigError(Exception):
    """The [tls] settings or the files they name are unusable."""


def check_tls_section(section: dict) -> list[tuple[str, str]]:
    """(key, message) for every value of ``[tls]`` that cannot work."""
    problems = []
    if section["verify_client"] not in VERIFY_CLIENT:
        problems.append(("verify_client", f"must be one of {', '.join(VERIFY_CLIENT)}"))
    if section["cert_login"] not in CERT_LOGIN:
        problems.append(("cert_login", f"must be one of {', '.join(map(repr, CERT_LOGIN))}"))
    if section["min_version"] not in ("TLSv1.2", "TLSv1.3"):
        problems.append(("min_version", "must be TLSv1.2 or TLSv1.3"))
    if section["certfile"] and not section["keyfile"]:
        problems.append(("keyfile", "is required with certfile"))
    if section["verify_client"] != "none" and not section["cafile"]:
        problems.append(("cafile", f"is required with verify_client = {section['verify_client']}"))
    if section["cert_login"] and section["verify_client"] == "none":
        problems.append(("cert_login", "needs verify_client = optional or required"))
    return problems


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {path}: {exc.strerror}") from None


def build_options(section: dict) -> ssl.CertificateOptions:
    """Twisted CertificateOptions for the ``[tls]`` settings (reads the files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL import crypto

    try:
        chain = x509.load_pem_x509_certificates(_read(section["certfile"]))
        key = load_pem_private_key(_read(section["keyfile"]), password=None)
    except ValueError as exc:
        raise TLSConfigError(f"cannot load the certificate or key: {exc}") from None
    kwargs: dict[str, Any] = {
        "privateKey": crypto.PKey.from_cryptography_key(key),
        "certificate": crypto.X509.from_cryptography(chain[0]),
        "extraCertChain": [crypto.X509.from_cryptography(c) for c in chain[1:]],
        "raiseMinimumTo": ssl.TLSVersion.TLSv1_3
        if section["min_version"] == "TLSv1.3"
        else ssl.TLSVersion.TLSv1_2,
    }
    verify = section["verify_client"]
    if verify != "none":
        try:
            cas = x509.load_pem_x509_certificates(_read(section["cafile"]))
        except ValueError as exc:
            raise TLSConfigError(f"cannot load cafile: {exc}") from None
        kwargs.update(
            verify=True,
            caCerts=[crypto.X509.from_cryptography(c) for c in cas],
            requireCertificate=verify == "required",
        )
    try:
        options = ssl.CertificateOptions(**kwargs)
        options.getContext()  # a key that does not match the certificate fails here
    except (SSL.Error, ValueError) as exc:
        raise TLSConfigError(f"certificate and key do not fit together: {exc}") from None
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingServerCreator:
    """Hands every new TLS connection the current certificate's context; :meth:`reload_if_changed`
    swaps in new files without touching live connections."""

    def __init__(self, section: dict) -> None:
        self.section = dict(section)
        self.paths = [p for p in (section["certfile"], section["keyfile"], section["cafile"]) if p]
        self.options = build_options(self.section)
        self._stamp = self._stamps()
        self._timer: Any = None
        self._clock: Any = None

    def _stamps(self) -> tuple:
        out = []
        for p in self.paths:
            try:
                st = os.stat(p)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802
        return SSL.Connection(self.options.getContext(), None)

    def reload_if_changed(self) -> bool:
        """Load the certificate files again if any changed; True when new ones are in use. A
        pair that does not load leaves the current one serving (the log says why)."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.options = build_options(self.section)
        except TLSConfigError as exc:
            log.error("TLS certificate not reloaded, the previous one stays: {error}", error=exc)
            return False
        log.info("TLS certificate reloaded from {path}", path=self.section["certfile"])
        return True

    def start(self, clock: Any) -> None:
        self._clock = clock
        interval = float(self.section["reload_interval"])
        if interval > 0:
            self._timer = clock.callLater(interval, self._tick, interval)

    def _tick(self, interval: float) -> None:
        try:
            self.reload_if_changed()
        finally:
            self._timer = self._clock.callLater(interval, self._tick, interval)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _TimedTLSProtocol(BufferingTLSTransport):
    """A TLS connection that must finish its handshake in time and that does not wait forever
    for a silent peer's close_notify after ``loseConnection``."""

    _handshake_call: Any = None
    _abort_call: Any = None

    def makeConnection(self, transport: Any) -> None:
        f = self.factory
        if f.handshake_timeout > 0:
            self._handshake_call = f.clock.callLater(f.handshake_timeout, self._handshake_expired)
        super().makeConnection(transport)

    def _handshake_expired(self) -> None:
        self._handshake_call = None
        if not self._handshakeDone:
            peer = self.transport.getPeer()
            log.info(
                "TLS: closing {host}:{port}: no TLS handshake within {t:g} s",
                host=getattr(peer, "host", "?"),
                port=getattr(peer, "port", "?"),
                t=self.factory.handshake_timeout,
            )
            self.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        call = self._handshake_call
        if call is not None and self._handshakeDone:
            self._handshake_call = None
            if call.active():
                call.cancel()

    def loseConnection(self) -> None:
        super().loseConnection()
        if self._abort_call is None and self.connected:
            self._abort_call = self.factory.clock.callLater(2.0, self._abort_silent)

    def _abort_silent(self) -> None:
        self._abort_call = None
        if self.connected:
            self.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        for name in ("_handshake_call", "_abort_call"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
        super().connectionLost(reason)


class TLSListenerFactory(TLSMemoryBIOFactory):
    """TLS around one adapter's :class:`~polymq.core.connection.ConnectionFactory`."""

    protocol = _TimedTLSProtocol

    def __init__(self, creator: ReloadingServerCreator, wrapped: Any, clock: Any) -> None:
        super().__init__(creator, False, wrapped, clock)
        self.clock = clock
        self.creator = creator
        self.handshake_timeout = float(creator.section["handshake_timeout"])

    def shutting_down(self) -> None:
        inner = getattr(self.wrappedFactory, "shutting_down", None)
        if inner is not None:
            inner()


def certificate_user(transport: Any, mode: str) -> tuple[str, str] | None:
    """(user name, subject) from the verified client certificate of a TLS ``transport``, or
    None when there is none. ``mode`` is ``[tls] cert_login``."""
    get = getattr(transport, "getPeerCertificate", None)
    if not mode or get is None:
        return None
    cert = get()
    if cert is None:
        return None
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    c = cert.to_cryptography()
    subject = c.subject.rfc4514_string()
    if mode == "distinguished_name":
        return subject, subject
    if mode == "common_name":
        names = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return (str(names[0].value), subject) if names else None
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for kind in (x509.DNSName, x509.RFC822Name, x509.UniformResourceIdentifier):
        values = san.get_values_for_type(kind)
        if values:
            return str(values[0]), subject
    return None
