"""OpenWire destinations and messages mapped to the polymq core (see docs/openwire.md): destination
names and URIs, and the conversion of an ActiveMQ message to a core Message and back."""

from __future__ import annotations

import base64
import json
import re
import zlib
from collections.abc import Callable
from typing import Any

from polymq.core.address import headers_with_key, key_from_headers, queue_address, topic_address
from polymq.core.message import Message

from . import codec as c
from .codec import Obj

ADVISORY_PREFIX = "ActiveMQ.Advisory."
TEXT_CT = "text/plain; charset=utf-8"

JMS_TYPES = {
    c.MESSAGE: "Message",
    c.BYTES_MESSAGE: "Bytes",
    c.MAP_MESSAGE: "Map",
    c.OBJECT_MESSAGE: "Object",
    c.STREAM_MESSAGE: "Stream",
    c.TEXT_MESSAGE: "Text",
    c.BLOB_MESSAGE: "Bytes",
}
JMS_TYPE_IDS = {v: k for k, v in JMS_TYPES.items() if k != c.BLOB_MESSAGE}

DEST_PREFIX = {
    c.QUEUE: "queue://",
    c.TOPIC: "topic://",
    c.TEMP_QUEUE: "temp-queue://",
    c.TEMP_TOPIC: "temp-topic://",
}


# -- destinations ------------------------------------------------------------------------------


def dest_to_str(d: Obj | None) -> str | None:
    if d is None:
        return None
    return DEST_PREFIX.get(d.type, "queue://") + (d.physical_name or "")


_DEST_CACHE: dict[str, Obj] = {}


def str_to_dest(s: str | None) -> Obj | None:
    """A destination URI string as a destination object (shared: never mutate it)."""
    if not s:
        return None
    d = _DEST_CACHE.get(s)
    if d is not None:
        return d
    for t, prefix in DEST_PREFIX.items():
        if s.startswith(prefix):
            d = Obj(t, physical_name=s[len(prefix) :])
            break
    else:
        d = Obj(c.QUEUE, physical_name=s)
    if len(_DEST_CACHE) >= 4096:
        _DEST_CACHE.clear()
    _DEST_CACHE[s] = d
    return d


def split_dest(d: Obj) -> list[tuple[int, str]]:
    """A (possibly composite) destination as a list of (type, name)."""
    name = d.physical_name or ""
    if "," not in name:
        return [(d.type, name)]
    out = []
    for part in name.split(","):
        part = part.strip()
        if not part:
            continue
        t = d.type
        for pt, prefix in DEST_PREFIX.items():
            if part.startswith(prefix):
                t, part = pt, part[len(prefix) :]
                break
        out.append((t, part))
    return out


def is_topic(t: int) -> bool:
    return t in (c.TOPIC, c.TEMP_TOPIC)


def topic_pattern(name: str) -> str:
    """ActiveMQ wildcard (`*` one element, `>` one or more elements) as an amq.topic binding
    key: `>` becomes `*.#` (AMQP's `#` alone would also match zero elements)."""
    return ".".join("*.#" if w == ">" else w for w in name.split("."))


# queues created through OpenWire: up to JMSPriority 9 levels, made when first needed
JMS_QUEUE_ARGUMENTS = {"x-priority-on-demand": 9}

VIRTUAL_TOPIC_PREFIX = "VirtualTopic."


def virtual_topic_of(queue: str) -> str | None:
    """The topic a virtual-topic consumer queue reads, with ActiveMQ's default naming:
    ``Consumer.<consumer name>.VirtualTopic.<topic>`` reads topic ``VirtualTopic.<topic>``."""
    if not queue.startswith("Consumer."):
        return None
    parts = queue.split(".", 2)
    if len(parts) < 3 or not parts[1] or not parts[2].startswith(VIRTUAL_TOPIC_PREFIX):
        return None
    topic = parts[2]
    return topic if len(topic) > len(VIRTUAL_TOPIC_PREFIX) else None


def is_wildcard(name: str) -> bool:
    return "*" in name or ">" in name


def wildcard_matcher(name: str) -> Callable[[str], bool]:
    """Whether a queue name matches an ActiveMQ wildcard (``*`` one element, ``>`` one or
    more trailing elements; ``.`` separates)."""
    parts = []
    for w in name.split("."):
        if w == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
            break
        parts.append(r"[^.]+" if w == "*" else re.escape(w))
    return re.compile(r"\.".join(parts) + r"\Z").match  # type: ignore[return-value]


def key_of(obj: Obj | None) -> tuple:
    if obj is None:
        return ()
    return (obj.type,) + tuple(
        key_of(v) if isinstance(v, Obj) else v for v in obj.__dict__.values()
    )


# -- conversion ----------------------------------------------------------------------------------


def _id_prefix(p: Obj) -> str:
    """``ID:connection:session:producer:``, the message id of a producer's messages but for
    the sequence number; memoized on the producer id (decoded once per connection with the
    marshalling cache, and never changed)."""
    try:
        return p.idstr
    except AttributeError:
        pass
    prefix = f"{p.connection_id}:{p.session_id}:{p.value}:"
    if not prefix.startswith("ID:"):
        prefix = "ID:" + prefix
    p.idstr = prefix
    return prefix


_TEMP_TYPES = frozenset((c.TEMP_QUEUE, c.TEMP_TOPIC))


def jms_to_core(m: Obj, max_size: int, conn_key: str | None) -> Message:
    """An incoming ActiveMQ message as a core Message (see docs/openwire.md)."""
    t = m.type
    ann: dict[str, Any] = {"jms.type": JMS_TYPES[t]}
    content = m.content
    if content is not None and m.compressed:
        if t == c.BYTES_MESSAGE and len(content) >= 4:
            # int32 original length, then zlib data; the 5.17 client deflates the whole
            # backing array, so only the first ``length`` inflated bytes are the body
            length = int.from_bytes(content[:4], "big", signed=True)
            if length < 0 or length > max_size:
                raise c.DecodeError(f"compressed body length {length} out of range")
            content = _inflate_any(content[4:], max_size)[:length]
        else:
            content = _inflate_any(content, max_size)
    content_type = None
    if t == c.BYTES_MESSAGE:  # the common case first
        body = content or b""
    elif t == c.TEXT_MESSAGE:
        text = c.decode_text_body(content)
        body = b"" if text is None else text.encode("utf-8", "surrogatepass")
        content_type = TEXT_CT
        if text is None:
            ann["openwire.null_text"] = True
    elif t == c.MAP_MESSAGE:
        raw = content or b""
        if raw:
            mp = c.decode_primitive_map(c.Reader(raw), max_size)
        else:
            mp = {}
        body = json.dumps(_jsonable(mp), separators=(",", ":")).encode()
        content_type = "application/json"
        ann["openwire.map"] = raw
    elif t == c.OBJECT_MESSAGE:
        body = content or b""
        content_type = "application/x-java-serialized-object"
    else:
        body = content or b""
        if t == c.STREAM_MESSAGE:
            content_type = "application/x-activemq-stream"
    headers: dict[str, Any] | None = None
    key = None
    if m.marshalled_properties:
        ptypes: dict[str, str] = {}
        headers = c.decode_primitive_map(c.Reader(m.marshalled_properties), max_size, ptypes)
        if ptypes:
            ann["openwire.ptypes"] = ptypes
        if headers:
            key = key_from_headers(headers)
    if m.group_id is not None:
        ann["openwire.group_id"] = m.group_id
        ann["openwire.group_seq"] = m.group_sequence
    mid = m.message_id
    message_id = None
    if mid is not None:
        p = mid.producer_id
        if mid.text_view:
            message_id = mid.text_view
            if not message_id.startswith("ID:"):
                message_id = "ID:" + message_id
        elif p is not None:
            try:  # (_id_prefix, memoized on the producer id: inlined, once per message)
                message_id = p.idstr + str(mid.producer_sequence_id)
            except AttributeError:
                message_id = _id_prefix(p) + str(mid.producer_sequence_id)
        if p is not None:
            # (a tuple: one allocation, and no list for the collector to track)
            ann["openwire.pid"] = (p.connection_id, p.value, p.session_id, mid.producer_sequence_id)
    if conn_key is not None:
        ann["openwire.conn"] = conn_key
    dest = m.destination
    if dest is not None and dest.type in _TEMP_TYPES:
        ann["openwire.dest"] = dest_to_str(dest)
    reply_to = m.reply_to
    # (by position, in the order of Message's fields: keywords cost a dict per message)
    return Message(
        body,
        key,
        headers,
        content_type,
        None,  # content_encoding
        message_id,
        m.correlation_id,
        None if reply_to is None else dest_to_str(reply_to),
        m.user_id,
        m.jms_type,  # type
        m.timestamp or None,
        m.expiration or None,
        m.priority,
        bool(m.persistent),  # durable
        ann,
    )


def _inflate_any(data: bytes, limit: int) -> bytes:
    try:
        return c.inflate(data, limit)
    except c.DecodeError:
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(data, limit + 1)
        except zlib.error as e:
            raise c.DecodeError(f"bad compressed body: {e}") from None
        if len(out) > limit:
            raise c.DecodeError("decompressed body too large") from None
        return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _is_text(msg: Message) -> bool:
    ct = (msg.content_type or "").lower()
    if not (ct.startswith("text/") or "json" in ct or "xml" in ct):
        return False
    try:
        msg.body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _short(s: Any) -> str | None:
    """A header string that fits Java's writeUTF (65535 bytes of modified UTF-8)."""
    if s is None:
        return None
    if not isinstance(s, str):
        s = str(s)
    if len(s) <= 10922:  # at most 6 bytes per character
        return s
    b = c.encode_mutf8(s)
    while len(b) > 0xFFFF:
        s = s[: len(s) * 0xFFFF // len(b) - 1]
        b = c.encode_mutf8(s)
    return s


def _long(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        return 0
    return max(-(2**63), min(2**63 - 1, v))


def core_to_jms(msg: Message, synthetic_pid: Obj, seq: int) -> Obj:
    """A core Message as an ActiveMQ message command (for MessageDispatch)."""
    ann = msg.annotations or {}
    jtype = ann.get("jms.type")
    tid = JMS_TYPE_IDS.get(jtype) if jtype else None
    if tid is None:
        tid = c.TEXT_MESSAGE if _is_text(msg) else c.BYTES_MESSAGE
    body = msg.body
    if tid == c.TEXT_MESSAGE:
        if ann.get("openwire.null_text"):
            content = None
        else:
            content = c.encode_text_body(body.decode("utf-8", "surrogatepass"))
    elif tid == c.MAP_MESSAGE:
        content = ann.get("openwire.map")
        if content is None:
            try:
                mp = json.loads(body) if body else {}
            except ValueError:
                mp = {}
            content = c.encode_primitive_map(mp if isinstance(mp, dict) else {})
    elif tid == c.MESSAGE:
        content = None
    else:
        content = body
    pid_info = ann.get("openwire.pid")
    if pid_info:
        pid = Obj(
            c.PRODUCER_ID, connection_id=pid_info[0], value=pid_info[1], session_id=pid_info[2]
        )
        pseq = pid_info[3]
    else:
        pid, pseq = synthetic_pid, seq
    mid = Obj(
        c.MESSAGE_ID,
        text_view=_short(msg.message_id),
        producer_id=pid,
        producer_sequence_id=pseq,
        broker_sequence_id=seq,
    )
    props = None
    headers = headers_with_key(msg)  # the Kafka key as a property, as AMQP sees it
    if headers:
        props = c.encode_primitive_map(headers, ann.get("openwire.ptypes"))
    dest = ann.get("openwire.dest")
    if dest is None:
        if msg.exchange == "amq.topic":
            dest = topic_address(msg.routing_key)
        else:
            dest = queue_address(msg.routing_key)
    m = Obj(
        tid,
        producer_id=pid,
        destination=str_to_dest(dest),
        message_id=mid,
        correlation_id=_short(msg.correlation_id),
        persistent=bool(msg.durable),
        expiration=_long(msg.expiration),
        priority=4 if msg.priority is None else max(0, min(9, msg.priority)),
        reply_to=str_to_dest(_short(msg.reply_to)),
        timestamp=_long(msg.timestamp),
        content=content,
        marshalled_properties=props,
        user_id=_short(msg.user_id),
    )
    m.jms_type = _short(msg.type)
    if "openwire.group_id" in ann:
        m.group_id = ann["openwire.group_id"]
        m.group_sequence = ann.get("openwire.group_seq", 0)
    return m
