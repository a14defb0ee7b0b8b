"""Core ``Message`` <-> AMQP 0-9-1 content properties (see docs/amqp.md for the table).

An AMQP-published message keeps its encoded property list in ``annotations["amqp.props"]`` so
that an AMQP consumer gets exactly the bytes the publisher sent, without re-encoding. When the
message has an expiration (the remaining time is sent) or comes from a stream (x-stream-offset
header added) the cached list is decoded, amended and encoded again, which keeps typed headers
(decimals, timestamps) intact. The key is a derived annotation: a copy that changes a standard
field (dead-lettering adds x-death, another adapter rewrites a field) drops it, and such a message
is encoded from the core fields.
"""

from __future__ import annotations

import decimal
from typing import Any

from polymq.core.address import headers_with_key, key_from_headers, parse_address
from polymq.core.message import DERIVED_ANNOTATIONS, Message

from . import codec as C

PROPS_KEY = "amqp.props"
DERIVED_ANNOTATIONS.add(PROPS_KEY)


def _clean(value: Any, depth: int = 0) -> Any:
    """Header values the core can persist (decimals become strings)."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if depth < C.MAX_TABLE_DEPTH:
        if isinstance(value, dict):
            return {k: _clean(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [_clean(v, depth + 1) for v in value]
    return value


def _has_decimal(value: Any, depth: int = 0) -> bool:
    if isinstance(value, decimal.Decimal):
        return True
    if depth < C.MAX_TABLE_DEPTH:
        if isinstance(value, dict):
            return any(_has_decimal(v, depth + 1) for v in value.values())
        if isinstance(value, list):
            return any(_has_decimal(v, depth + 1) for v in value)
    return False


def message_from_properties(
    body: bytes, props: dict | None, raw: bytes | None, broker: Any
) -> Message:
    """A core message from a body, decoded content properties and their raw encoding.

    Raises ValueError for an invalid expiration.
    """
    if not props:
        return Message(body, annotations={PROPS_KEY: raw} if raw is not None else None)
    get = props.get
    annotations: dict[str, Any] = {}
    headers = get("headers")
    key = None
    if headers:
        if _has_decimal(headers):
            headers = _clean(headers)
        key = key_from_headers(headers)
    expiration = None
    exp = get("expiration")
    if exp is not None:
        try:
            ms = int(exp)
        except ValueError:
            raise ValueError(f"invalid expiration {exp!r}") from None
        if ms < 0:
            raise ValueError(f"invalid expiration {exp!r}")
        expiration = broker.now() + ms
    if raw is not None:
        annotations[PROPS_KEY] = raw
    dm = get("delivery_mode")
    if dm is not None and dm != 2:
        annotations["amqp.delivery_mode"] = dm
    v = get("app_id")
    if v is not None:
        annotations["amqp.app_id"] = v
    v = get("cluster_id")
    if v is not None:
        annotations["amqp.cluster_id"] = v
    ts = get("timestamp")
    return Message(
        body,
        key=key,
        headers=headers,
        content_type=get("content_type"),
        content_encoding=get("content_encoding"),
        message_id=get("message_id"),
        correlation_id=get("correlation_id"),
        reply_to=get("reply_to"),
        user_id=get("user_id"),
        type=get("type"),
        timestamp=ts * 1000 if ts is not None else None,
        expiration=expiration,
        priority=get("priority"),
        durable=dm == 2,
        annotations=annotations,
    )


def _text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _sanitize(value: Any, depth: int = 0) -> Any:
    """Make any header value encodable (unknown types become their text)."""
    if value is None or isinstance(value, bool | str | bytes | float | decimal.Decimal):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if depth < C.MAX_TABLE_DEPTH:
        if isinstance(value, dict):
            return {str(k): _sanitize(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [_sanitize(v, depth + 1) for v in value]
    return str(value)


def reply_to_amqp(reply_to: str | None) -> str | None:
    """A core reply-to address for an AMQP consumer: a queue address (``queue://Q``,
    ``temp-queue://Q``) becomes the plain queue name Q, the routing key a responder publishes to
    through the default exchange; ``topic://K`` stays as it is (publish to amq.topic, key K)."""
    if reply_to is not None:
        kind, name = parse_address(reply_to)
        if kind == "queue":
            return name
    return reply_to


def properties_dict(m: Message, offset: int | None, now: int) -> dict:
    """The AMQP content properties of a core message (as a dict)."""
    headers = headers_with_key(m)
    if offset is not None:
        headers = dict(headers)
        headers["x-stream-offset"] = offset
    ann = m.annotations or {}
    props: dict[str, Any] = {
        "content_type": _text(m.content_type),
        "content_encoding": _text(m.content_encoding),
        "headers": headers or None,
        "delivery_mode": 2 if m.durable else ann.get("amqp.delivery_mode"),
        "priority": m.priority if m.priority is None else max(0, min(255, int(m.priority))),
        "correlation_id": _text(m.correlation_id),
        "reply_to": reply_to_amqp(_text(m.reply_to)),
        "message_id": _text(m.message_id),
        "timestamp": m.timestamp // 1000 if m.timestamp is not None else None,
        "type": _text(m.type),
        "user_id": _text(m.user_id),
        "app_id": ann.get("amqp.app_id"),
        "cluster_id": ann.get("amqp.cluster_id"),
    }
    if m.expiration is not None:
        props["expiration"] = str(max(0, m.expiration - now))
    return props


def properties_for(m: Message, offset: int | None, broker: Any) -> bytes:
    """Encoded property flags and list for a delivery of ``m``."""
    raw = m.annotations.get(PROPS_KEY) if m.annotations else None
    if raw is not None:
        if m.expiration is None and offset is None:
            return raw
        # the publisher's own properties (typed headers intact), with what changed
        props = C.decode_properties(raw)
        if m.expiration is not None:
            props["expiration"] = str(max(0, m.expiration - broker.now()))
        if offset is not None:
            headers = dict(props.get("headers") or {})
            headers["x-stream-offset"] = offset
            props["headers"] = headers
        return C.encode_properties(props)
    props = properties_dict(m, offset, broker.now() if m.expiration is not None else 0)
    try:
        return C.encode_properties(props)
    except (ValueError, TypeError, struct_error):
        if props["headers"]:
            props["headers"] = _sanitize(props["headers"])
        return C.encode_properties(props)


try:
    from struct import error as struct_error
except ImportError:  # pragma: no cover
    struct_error = ValueError
