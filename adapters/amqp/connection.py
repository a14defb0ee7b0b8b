"""The AMQP 0-9-1 connection class (channel 0): the handshake (start, start-ok, tune, tune-ok,
open), the client's close, and what may arrive on channel 0 once the connection is open.

Authentication, the handshake timeout and liveness are the connection contract's
(:class:`~polymq.core.connection.ProtocolConnection`); the functions here ask it and record what
was negotiated on the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polymq.core import __version__
from polymq.core.auth import Identity
from polymq.core.errors import NotFound

from . import codec as C

if TYPE_CHECKING:
    from .session import AMQPSession

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "per_consumer_qos": True,
    "authentication_failure_close": True,
    "consumer_priorities": True,
    "direct_reply_to": True,
}


def send_start(session: AMQPSession) -> None:
    """The client's protocol header arrived: offer connection.start."""
    session.state = "start-ok"
    props = {
        "product": "polymq",
        "version": __version__,
        "platform": "Python/Twisted",
        "copyright": "polymq authors",
        "information": f"polymq {__version__}: one broker for AMQP 0-9-1, MQTT, Kafka and "
        "OpenWire clients; licensed under Apache-2.0",
        "cluster_name": "polymq",
        "capabilities": dict(SERVER_CAPABILITIES),
    }
    session.send_method(
        0,
        "connection.start",
        version_major=0,
        version_minor=9,
        server_properties=props,
        # EXTERNAL: the verified TLS client certificate names the user ([tls] cert_login)
        mechanisms=b"PLAIN AMQPLAIN EXTERNAL"
        if session.conn.factory.cert_login
        else b"PLAIN AMQPLAIN",
        locales=b"en_US",
    )


def connection_method(session: AMQPSession, spec: C.MethodSpec, args: dict) -> None:
    """A method of the connection class, in whatever state the connection is."""
    name = spec.name
    state = session.state
    if state == "closing":
        # after our connection.close only close-ok / close count (spec 2.2.4)
        if name == "connection.close-ok":
            session.close_transport()
        elif name == "connection.close":
            session.write(C.method_frame(0, "connection.close-ok"))
            session.close_transport()
        return
    if name == "connection.close":
        session.teardown()
        session.write(C.method_frame(0, "connection.close-ok"))
        session.close_transport()
        return
    if name == "connection.start-ok" and state == "start-ok":
        _start_ok(session, args)
    elif name == "connection.secure-ok" and state == "secure-ok":
        raise C.FrameError(C.NOT_IMPLEMENTED, "no challenge was sent", 10, 21)
    elif name == "connection.tune-ok" and state == "tune-ok":
        _tune_ok(session, args)
    elif name == "connection.open" and state == "open":
        _open(session, args)
    elif name == "connection.update-secret" and state == "opened":
        session.send_method(0, "connection.update-secret-ok")
    elif name in ("connection.blocked", "connection.unblocked") and state == "opened":
        pass
    else:
        raise C.FrameError(
            C.COMMAND_INVALID,
            f"unexpected {name} in state {state}",
            spec.class_id,
            spec.method_id,
        )


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _start_ok(session: AMQPSession, args: dict) -> None:
    session.client_properties = props = args.get("client_properties") or {}
    caps = props.get("capabilities") or {}
    session.cancel_notify = bool(isinstance(caps, dict) and caps.get("consumer_cancel_notify"))
    session.blocked_notify = bool(isinstance(caps, dict) and caps.get("connection.blocked"))
    mechanism = args["mechanism"]
    response = bytes(args["response"])
    if mechanism == "PLAIN":
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise C.FrameError(C.ACCESS_REFUSED, "malformed PLAIN response", 10, 11)
        user, password = parts[1], parts[2]
    elif mechanism == "AMQPLAIN":
        table = C.decode_table_body(response)
        user, password = table.get("LOGIN"), table.get("PASSWORD")
    elif mechanism == "EXTERNAL" and session.conn.factory.cert_login:
        from polymq.core.security.tls import certificate_user

        if certificate_user(session.conn.transport, session.conn.factory.cert_login) is None:
            raise C.FrameError(
                C.ACCESS_REFUSED,
                "Login was refused using authentication mechanism EXTERNAL: "
                "no verified client certificate naming a user",
                10,
                11,
            )
        user = password = None  # conn.authenticate takes the user from the certificate
    else:
        raise C.FrameError(
            C.ACCESS_REFUSED, f"unsupported authentication mechanism {mechanism!r}", 10, 11
        )
    # a password hash may be verified in a thread: the frames after start-ok wait for it
    if not session.conn.login(
        _text(user), _text(password), lambda result: _authenticated(session, mechanism, result)
    ):
        session._stop = True


def _authenticated(session: AMQPSession, mechanism: str, result: Any) -> None:
    if session.state != "start-ok":
        return
    if not isinstance(result, Identity):
        raise C.FrameError(
            C.ACCESS_REFUSED,
            f"Login was refused using authentication mechanism {mechanism}: {result.reason}",
            10,
            11,
        )
    session.identity = result
    session.state = "tune-ok"
    session.send_method(
        0,
        "connection.tune",
        channel_max=session.server_channel_max,
        frame_max=session.server_frame_max,
        heartbeat=session.server_heartbeat,
    )


def _tune_ok(session: AMQPSession, args: dict) -> None:
    fm = args["frame_max"]
    if fm > session.server_frame_max:
        raise C.FrameError(
            C.NOT_ALLOWED,
            f"frame_max {fm} above the maximum {session.server_frame_max}",
            10,
            31,
        )
    if fm == 0:
        fm = session.server_frame_max
    if fm < C.FRAME_MIN_SIZE:
        raise C.FrameError(C.NOT_ALLOWED, f"frame_max {fm} below {C.FRAME_MIN_SIZE}", 10, 31)
    session.set_frame_max(fm)
    cm = args["channel_max"]
    session.channel_max = (
        session.server_channel_max if cm == 0 else min(cm, session.server_channel_max)
    )
    session.heartbeat = heartbeat = args["heartbeat"]
    session.state = "open"
    if heartbeat:
        # a heartbeat when nothing was written for half an interval; silence for two
        # intervals closes the connection (as RabbitMQ)
        session.conn.set_liveness(2.0 * heartbeat, heartbeat / 2.0)


def _open(session: AMQPSession, args: dict) -> None:
    # an empty vhost means the broker's default one (broker.default_vhost)
    name = _text(args["virtual_host"]) or session.broker.default_vhost
    try:
        vhost = session.broker.vhost(name)
    except NotFound:
        raise C.FrameError(C.NOT_ALLOWED, f"vhost '{name}' not found", 10, 40) from None
    if not session.conn.may_enter(name):
        # RabbitMQ's words: a user needs some permission entry for the vhost to open it
        user = session.identity.user if session.identity is not None else ""
        raise C.FrameError(
            C.NOT_ALLOWED, f"access to vhost '{name}' refused for user '{user}'", 10, 40
        )
    session.vhost = vhost
    session.state = "opened"
    identity = session.identity
    session.conn.handshake_done(
        user=identity.user if identity is not None else None,
        client_id=_text(session.client_properties.get("connection_name")),
        vhost=name,
    )
    session.send_method(0, "connection.open-ok")
    if session.blocked and session.blocked_notify:
        session.send_method(0, "connection.blocked", reason=session.blocked_reason[:255])
