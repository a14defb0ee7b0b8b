"""The OpenWire connection state machine: JMS connections, sessions, producers, consumers,
acknowledgements and local transactions mapped onto the polymq core. No sockets here: the
transport hands decoded commands to :meth:`Connection.handle` and gives the connection a
``write(bytes)`` callable and a ``close()`` callable.
"""

from __future__ import annotations

import itertools
import json
import struct
import uuid
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.logger import Logger

from polymq.adapters import peer_text
from polymq.core.address import (
    headers_with_key,
    key_from_headers,
    queue_address,
    topic_address,
)
from polymq.core.auth import Refusal
from polymq.core.errors import BrokerError, NotFound
from polymq.core.message import Message, now_ms
from polymq.core.queue import Consumer, Delivery, Queue
from polymq.core.tx import Transaction

from . import codec as c
from .codec import Obj

log = Logger(namespace="polymq.openwire")

DLQ = "ActiveMQ.DLQ"
BROWSE_MAX = 400  # messages one queue browser sees (ActiveMQ's maxBrowsePageSize)
# encoded messages kept (oldest out first) for dispatch: bounded in bytes, and per message
CACHE_BYTES = 16 * 1024 * 1024
CACHE_MAX_BODY = 64 * 1024
ADVISORY_PREFIX = "ActiveMQ.Advisory."
TEXT_CT = "text/plain; charset=utf-8"

ACK_DELIVERED, ACK_POISON, ACK_STANDARD, ACK_REDELIVERED = 0, 1, 2, 3
ACK_INDIVIDUAL, ACK_UNMATCHED, ACK_EXPIRED = 4, 5, 6

TX_BEGIN, TX_PREPARE, TX_COMMIT_ONE, TX_COMMIT_TWO, TX_ROLLBACK = 0, 1, 2, 3, 4
TX_RECOVER, TX_FORGET, TX_END = 5, 6, 7

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

DEST_PREFIX = {c.QUEUE: "queue://", c.TOPIC: "topic://", c.TEMP_QUEUE: "temp-queue://",
               c.TEMP_TOPIC: "temp-topic://"}


class ProtocolError(Exception):
    """A violation that ends the connection."""


_BEFORE_CONNECTION = frozenset((
    c.CONNECTION_INFO, c.KEEP_ALIVE_INFO, c.SHUTDOWN_INFO, c.RESPONSE, c.EXCEPTION_RESPONSE,
    c.CONNECTION_ERROR, c.CONNECTION_CONTROL, c.CONSUMER_CONTROL, c.CONTROL_COMMAND,
    c.FLUSH_COMMAND,
))


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


def key_of(obj: Obj | None) -> tuple:
    if obj is None:
        return ()
    return (obj.type,) + tuple(
        key_of(v) if isinstance(v, Obj) else v for v in obj.__dict__.values()
    )


# -- the per-broker shared state ---------------------------------------------------------------


class _Mid:
    """The MessageId fields :func:`c.reencode_message` reads (smaller than a decoded one)."""

    __slots__ = ("text_view", "producer_id", "producer_sequence_id")

    def __init__(self, text_view: str | None, producer_id: Obj | None, seq: int) -> None:
        self.text_view = text_view
        self.producer_id = producer_id
        self.producer_sequence_id = seq


class _Frame:
    """What :func:`c.reencode_message` reads of a decoded message, kept for its dispatch
    instead of the decoded message itself (whose thirty fields a backlog would hold for every
    message: held bytes show in the time per message)."""

    __slots__ = ("type", "raw", "mark", "cmark", "producer_id", "destination",
                 "transaction_id", "original_destination", "message_id",
                 "original_transaction_id", "target_consumer_id", "data_structure")

    def __init__(self, m: Obj) -> None:
        self.type = m.type
        self.raw = m.raw
        self.mark = m.mark
        self.cmark = getattr(m, "cmark", None)
        self.producer_id = m.producer_id
        self.destination = m.destination
        self.transaction_id = m.transaction_id
        self.original_destination = m.original_destination
        mid = m.message_id
        self.message_id = _Mid(mid.text_view, mid.producer_id, mid.producer_sequence_id)
        self.original_transaction_id = m.original_transaction_id
        self.target_consumer_id = m.target_consumer_id
        self.data_structure = m.data_structure


class OpenWireHub:
    """State shared by every OpenWire connection of one broker: temp destinations and the
    consumers of their advisory topics (advisories are never stored)."""

    def __init__(self, broker: Any, config: dict) -> None:
        self.broker = broker
        self.config = config
        self.broker_id = "ID:polymq-" + uuid.uuid4().hex[:12]
        self.temp_dests: dict[tuple[int, str], Obj] = {}  # -> DestinationInfo
        self.advisory_consumers: list[tuple[Connection, ConsumerState]] = []
        self.connections: set[Connection] = set()
        self.client_ids: dict[str, Connection] = {}
        self._ids = itertools.count(1)

        # the producer id of messages that did not come from a JMS producer
        self.synthetic_pid = Obj(c.PRODUCER_ID, connection_id=self.broker_id, value=0,
                                 session_id=0)
        # oldest first; an OrderedDict because evicting from the front of a plain dict
        # leaves holes that make next(iter(d)) linear in what was evicted before
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._cache_bytes = 0
        self.no_local_consumers = 0

    def next_id(self) -> int:
        return next(self._ids)

    def prime(self, msg: Message, m: Obj) -> None:
        """Remember the frame of a message that came from a JMS producer: JMS -> JMS dispatch
        then takes its encoding from that frame (ids patched, in the form each consumer's
        connection negotiated) instead of converting and encoding it again."""
        if len(msg.body) > CACHE_MAX_BODY or m.message_id is None:
            return
        # only what reencode_message reads is kept (not the decoded frame's thirty fields):
        # a backlog holds one of these per message, and its size shows in the time per message
        self._remember([msg, next(self._ids), _Frame(m), None, None, 0], len(m.raw))

    def _remember(self, entry: list, size: int) -> None:
        """entry: [message, broker sequence id, decoded frame | None, plain encoding | None,
        cached encoding | None, bytes accounted]."""
        cache = self._cache
        msg = entry[0]
        # (never there already: an entry keeps its message alive, so no other has its id)
        entry[5] = size + len(msg.body)
        self._cache_bytes += entry[5]
        cache[id(msg)] = entry
        while self._cache_bytes > CACHE_BYTES:
            self._cache_bytes -= cache.popitem(last=False)[1][5]

    def encoded(self, msg: Message, cached: bool = False) -> tuple[int, bytes]:
        """The OpenWire encoding of a core message (plain or cached form) and its broker
        sequence id, shared by every consumer it is dispatched to (topic fan-out encodes
        once). The sequence id identifies the message in acknowledgements; the redelivery
        counter travels in MessageDispatch."""
        i = 4 if cached else 3
        e = self._cache.get(id(msg))
        if e is not None and e[0] is msg:
            data = e[i]
            if data is None:
                if e[2] is not None:
                    data = c.reencode_message(e[2], e[1], cached)
                if data is None:
                    data = c.encode_message(core_to_jms(msg, self.synthetic_pid, e[1]), cached)
                e[i] = data
                e[5] += len(data)
                self._cache_bytes += len(data)
            return e[1], data
        seq = next(self._ids)
        data = c.encode_message(core_to_jms(msg, self.synthetic_pid, seq), cached)
        if len(msg.body) <= CACHE_MAX_BODY:
            entry = [msg, seq, None, None, None, 0]
            entry[i] = data
            self._remember(entry, len(data))
        return seq, data

    def forget(self, msg: Message) -> None:
        """Drop the encodings of a message once a consumer settled it: most messages reach
        one consumer, and a cache of only live messages keeps few objects for the garbage
        collector to scan (a message still to be dispatched elsewhere is encoded again)."""
        e = self._cache.pop(id(msg), None)
        if e is not None:
            self._cache_bytes -= e[5]

    def add_temp(self, info: Obj) -> None:
        k = (info.destination.type, info.destination.physical_name)
        self.temp_dests[k] = info
        self._advise(info)

    def remove_temp(self, dest: Obj, conn_id: Obj | None) -> None:
        k = (dest.type, dest.physical_name)
        if self.temp_dests.pop(k, None) is None:
            return
        info = Obj(c.DESTINATION_INFO, connection_id=conn_id, destination=dest,
                   operation_type=1)
        self._advise(info)

    def _advise(self, info: Obj) -> None:
        for conn, cs in list(self.advisory_consumers):
            if cs.wants_advisory(info.destination.type):
                conn.dispatch_advisory(cs, info)

    def add_advisory_consumer(self, conn: Connection, cs: ConsumerState) -> None:
        self.advisory_consumers.append((conn, cs))
        for info in list(self.temp_dests.values()):
            if cs.wants_advisory(info.destination.type):
                conn.dispatch_advisory(cs, info)

    def remove_advisory_consumer(self, cs: ConsumerState) -> None:
        self.advisory_consumers = [x for x in self.advisory_consumers if x[1] is not cs]


# -- consumers ---------------------------------------------------------------------------------


class ConsumerState:
    """One JMS MessageConsumer: its core consumer (or advisory/browse role) and what it has
    been sent but not yet settled."""

    def __init__(self, info: Obj) -> None:
        self.info = info
        self.id = info.consumer_id
        self.key = key_of(info.consumer_id)
        self.session_key = (info.consumer_id.connection_id, info.consumer_id.session_id)
        self.destination = info.destination
        self.prefetch = info.prefetch_size
        self.core: Consumer | None = None
        self.queue: Queue | None = None
        self.temp_queue: str | None = None  # per-consumer subscription queue (topics)
        # dispatch seq -> delivery, in order; an OrderedDict because acks remove from the front,
        # and a plain dict would then scan the holes left there to find the oldest
        self.dispatched: OrderedDict[int, Delivery] = OrderedDict()
        self.delivered: set[int] = set()  # DELIVERED-acked, still unsettled
        self.in_tx: set[int] = set()
        self.advisory: set[str] | None = None
        self.pull_timer: Any = None
        self.pull_pending = False
        self.removed = False
        self.no_local = False
        self.head = c.dispatch_head(self.id, self.destination)
        self.head_later: bytes | None = None  # cached form: the head after the first dispatch

    def wants_advisory(self, dest_type: int) -> bool:
        if self.advisory is None:
            return False
        if dest_type == c.TEMP_QUEUE:
            return "TempQueue" in self.advisory
        return "TempTopic" in self.advisory

    def credit_back(self) -> None:
        """The window is prefetch + DELIVERED-acked messages still unsettled."""
        if self.core is not None and self.prefetch > 0:
            self.core.set_prefetch(self.prefetch + len(self.delivered))


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


def jms_to_core(m: Obj, max_size: int, conn_key: str | None) -> Message:
    """An incoming ActiveMQ message as a core Message (see docs/openwire.md)."""
    ann: dict[str, Any] = {}
    jtype = JMS_TYPES[m.type]
    ann["jms.type"] = jtype
    content = m.content
    if content is not None and m.compressed:
        if m.type == c.BYTES_MESSAGE and len(content) >= 4:
            # int32 original length, then zlib data; the 5.17 client deflates the whole
            # backing array, so only the first ``length`` inflated bytes are the body
            length = int.from_bytes(content[:4], "big", signed=True)
            if length < 0 or length > max_size:
                raise c.DecodeError(f"compressed body length {length} out of range")
            content = _inflate_any(content[4:], max_size)[:length]
        else:
            content = _inflate_any(content, max_size)
    content_type = None
    if m.type == c.TEXT_MESSAGE:
        text = c.decode_text_body(content)
        body = b"" if text is None else text.encode("utf-8", "surrogatepass")
        content_type = TEXT_CT
        if text is None:
            ann["openwire.null_text"] = True
    elif m.type == c.MAP_MESSAGE:
        raw = content or b""
        if raw:
            mp = c.decode_primitive_map(c.Reader(raw), max_size)
        else:
            mp = {}
        body = json.dumps(_jsonable(mp), separators=(",", ":")).encode()
        content_type = "application/json"
        ann["openwire.map"] = raw
    elif m.type == c.OBJECT_MESSAGE:
        body = content or b""
        content_type = "application/x-java-serialized-object"
    else:
        body = content or b""
        if m.type == c.STREAM_MESSAGE:
            content_type = "application/x-activemq-stream"
    headers: dict[str, Any] = {}
    if m.marshalled_properties:
        ptypes: dict[str, str] = {}
        headers = c.decode_primitive_map(
            c.Reader(m.marshalled_properties), max_size, ptypes
        )
        if ptypes:
            ann["openwire.ptypes"] = ptypes
    key = key_from_headers(headers) if headers else None
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
            message_id = _id_prefix(p) + str(mid.producer_sequence_id)
        if p is not None:
            ann["openwire.pid"] = [p.connection_id, p.value, p.session_id,
                                   mid.producer_sequence_id]
    if conn_key is not None:
        ann["openwire.conn"] = conn_key
    if m.destination is not None and m.destination.type in (c.TEMP_QUEUE, c.TEMP_TOPIC):
        ann["openwire.dest"] = dest_to_str(m.destination)
    return Message(
        body,
        key=key,
        headers=headers,
        content_type=content_type,
        message_id=message_id,
        correlation_id=m.correlation_id,
        reply_to=dest_to_str(m.reply_to),
        user_id=m.user_id,
        type=m.jms_type,
        timestamp=m.timestamp or None,
        expiration=m.expiration or None,
        priority=m.priority,
        durable=bool(m.persistent),
        annotations=ann,
    )


def _inflate_any(data: bytes, limit: int) -> bytes:
    try:
        return c.inflate(data, limit)
    except c.DecodeError:
        import zlib

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
        import base64

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
        pid = Obj(c.PRODUCER_ID, connection_id=pid_info[0], value=pid_info[1],
                  session_id=pid_info[2])
        pseq = pid_info[3]
    else:
        pid, pseq = synthetic_pid, seq
    mid = Obj(c.MESSAGE_ID, text_view=_short(msg.message_id), producer_id=pid,
              producer_sequence_id=pseq, broker_sequence_id=seq)
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


# -- the connection --------------------------------------------------------------------------


class Connection:
    """One OpenWire client connection (after WireFormatInfo negotiation)."""

    def __init__(
        self,
        hub: OpenWireHub,
        write: Callable[[bytes], None],
        close: Callable[[], None],
        peer: Any = None,
    ) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.vhost = hub.broker.vhost()
        self.write = write
        self.close_transport = close
        self.peer = peer
        self.max_size = hub.broker.max_message_size
        self.identity: Any = None
        self.connection_id: Obj | None = None
        self.conn_key = uuid.uuid4().hex
        self.client_id: str | None = None
        self.consumers: dict[tuple, ConsumerState] = {}
        self.transactions: dict[tuple, tuple[Transaction, list]] = {}
        self.temp_dests: list[Obj] = []
        self.windowed_producers: set[tuple] = set()  # producers with a producerWindowSize
        self.paused = False
        self.closed = False
        self.ucache: list | None = None  # the unmarshalling cache, when negotiated
        self.cached = False
        self.cache_size = 0
        self._slots_used = 0
        self._ack_cid: Obj | None = None  # the consumer id of the last ack, and its consumer
        self._ack_cs: ConsumerState | None = None
        self._handlers = {
            c.CONNECTION_INFO: self.on_connection_info,
            c.SESSION_INFO: self.on_session_info,
            c.PRODUCER_INFO: self.on_producer_info,
            c.CONSUMER_INFO: self.on_consumer_info,
            c.REMOVE_INFO: self.on_remove_info,
            c.MESSAGE_ACK: self.on_ack,
            c.MESSAGE_PULL: self.on_pull,
            c.TRANSACTION_INFO: self.on_transaction,
            c.DESTINATION_INFO: self.on_destination_info,
            c.REMOVE_SUBSCRIPTION_INFO: self.on_remove_subscription,
            c.KEEP_ALIVE_INFO: self.on_keepalive,
            c.SHUTDOWN_INFO: self.on_shutdown,
            c.FLUSH_COMMAND: self.on_ok,
            c.CONSUMER_CONTROL: self.on_ok,
            c.CONNECTION_CONTROL: self.on_ok,
            c.CONTROL_COMMAND: self.on_ok,
            c.PRODUCER_ACK: self.on_ok,
            c.CONNECTION_ERROR: self.on_shutdown,
            c.RESPONSE: self.on_ignore,
            c.EXCEPTION_RESPONSE: self.on_ignore,
        }
        hub.connections.add(self)

    # -- output helpers ------------------------------------------------------------------

    def send(self, obj: Obj) -> None:
        if not self.closed:
            self.write(c.encode_frame(obj, self.cached))

    def enable_cache(self, size: int) -> None:
        """The marshalling cache was negotiated (``size`` entries each way): commands arrive,
        and are sent, in the cached form."""
        self.ucache = [None] * size
        self.cached = True
        self.cache_size = size

    def _cache_slots(self) -> tuple[int, int] | None:
        """Two fresh slots of the client's unmarshalling cache (never reused), or None."""
        n = self._slots_used
        if n + 2 > self.cache_size:
            return None
        self._slots_used = n + 2
        return n, n + 1

    def respond(self, cmd: Obj) -> None:
        if cmd.response_required:
            self._respond_id(cmd.command_id)

    def _respond_id(self, command_id: int) -> None:
        if not self.closed:
            self.write(c.encode_response(command_id))

    def respond_error(self, cmd: Obj, cls: str, text: str) -> None:
        if cmd.response_required:
            self.send(Obj(c.EXCEPTION_RESPONSE, correlation_id=cmd.command_id,
                          exception=(cls, text)))

    def broker_info(self) -> Obj:
        return Obj(c.BROKER_INFO, broker_id=Obj(c.BROKER_ID, value=self.hub.broker_id),
                   broker_url="tcp://polymq", broker_name="polymq")

    def fatal(self, cls: str, text: str) -> None:
        """ConnectionError, then close."""
        self.send(Obj(c.CONNECTION_ERROR, exception=(cls, text),
                      connection_id=self.connection_id))
        self.close_transport()

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, cmd: Obj) -> None:
        """Act on one command. A command whose fields have the wrong shape (a nested object of
        the wrong type, a missing id) is a protocol violation: :class:`ProtocolError`."""
        t = cmd.type
        try:
            if t in c.MESSAGE_TYPES:
                return self.on_message(cmd)
            h = self._handlers.get(t)
            if h is None:
                self.respond_error(cmd, "javax.jms.JMSException",
                                   f"unsupported command {cmd.name}")
                return
            if self.connection_id is None and t not in _BEFORE_CONNECTION:
                raise ProtocolError(f"{cmd.name} before ConnectionInfo")
            try:
                h(cmd)
            except BrokerError as e:
                cls = ("javax.jms.InvalidDestinationException" if isinstance(e, NotFound)
                       else "javax.jms.JMSException")
                self.respond_error(cmd, cls, e.text)
        except (AttributeError, TypeError, KeyError, ValueError, IndexError,
                OverflowError) as e:
            raise ProtocolError(f"malformed {cmd.name} ({type(e).__name__}: {e})") from None

    def on_ok(self, cmd: Obj) -> None:
        self.respond(cmd)

    def on_ignore(self, cmd: Obj) -> None:
        pass

    def on_keepalive(self, cmd: Obj) -> None:
        if cmd.response_required:
            self.send(Obj(c.KEEP_ALIVE_INFO))

    def on_shutdown(self, cmd: Obj) -> None:
        self.connection_closed()
        self.close_transport()

    # -- connection, sessions ----------------------------------------------------------------

    def on_connection_info(self, cmd: Obj) -> None:
        if self.connection_id is not None:
            self.respond(cmd)
            return
        result = self.broker.authenticate("openwire", cmd.user_name, cmd.password, self.peer)
        if result is None or isinstance(result, Refusal):
            reason = getattr(result, "reason", "not authorized")
            self.respond_error(cmd, "java.lang.SecurityException", reason)
            log.info("openwire: login refused for {user} from {peer}: {reason}",
                     user=cmd.user_name, peer=peer_text(self.peer), reason=reason)
            self.broker.clock.callLater(0.1, self.close_transport)
            return
        if cmd.client_id:
            other = self.hub.client_ids.get(cmd.client_id)
            if other is not None and other is not self and not other.closed:
                if not cmd.failover_reconnect:
                    self.respond_error(cmd, "javax.jms.InvalidClientIDException",
                                       f"client id {cmd.client_id} is already in use")
                    return
                # a failover client back before its old connection timed out: the new
                # connection takes the client id over
                log.info("openwire: client {cid} reconnected; closing its old connection",
                         cid=cmd.client_id)
                other.connection_closed()
                other.close_transport()
            self.hub.client_ids[cmd.client_id] = self
        self.identity = result
        self.connection_id = cmd.connection_id
        self.client_id = cmd.client_id
        self.respond(cmd)

    def on_session_info(self, cmd: Obj) -> None:
        self.respond(cmd)

    def on_producer_info(self, cmd: Obj) -> None:
        if cmd.window_size > 0 and cmd.producer_id is not None:
            self.windowed_producers.add(key_of(cmd.producer_id))
        self.respond(cmd)

    def on_remove_info(self, cmd: Obj) -> None:
        oid = cmd.object_id
        if oid is None:
            self.respond(cmd)
            return
        last = cmd.last_delivered_sequence_id
        if oid.type == c.PRODUCER_ID:
            self.windowed_producers.discard(key_of(oid))
        elif oid.type == c.CONSUMER_ID:
            cs = self.consumers.pop(key_of(oid), None)
            if cs is not None:
                self.remove_consumer(cs, last)
        elif oid.type == c.SESSION_ID:
            for k, cs in list(self.consumers.items()):
                if cs.session_key == (oid.connection_id, oid.value):
                    del self.consumers[k]
                    self.remove_consumer(cs, last)
        elif oid.type == c.CONNECTION_ID:
            self.respond(cmd)
            self.connection_closed()
            return
        self.respond(cmd)

    def connection_closed(self) -> None:
        """Release everything: consumers (their unsettled deliveries go back), transactions,
        temp destinations, exclusive queues."""
        if self.closed:
            return
        self.closed = True
        self.hub.connections.discard(self)
        if self.client_id and self.hub.client_ids.get(self.client_id) is self:
            del self.hub.client_ids[self.client_id]
        for entry in list(self.transactions.values()):
            self._rollback(entry)
        self.transactions.clear()
        for cs in list(self.consumers.values()):
            self.remove_consumer(cs)
        self.consumers.clear()
        for d in self.temp_dests:
            self._drop_temp(d)
        self.temp_dests.clear()
        self.vhost.connection_closed(self)

    # -- producing ---------------------------------------------------------------------------

    def on_message(self, m: Obj) -> None:
        if self.connection_id is None:
            raise ProtocolError("message before ConnectionInfo")
        if m.destination is None:
            self.respond_error(m, "javax.jms.InvalidDestinationException", "no destination")
            return
        try:
            # the sending connection is recorded only while some consumer is noLocal
            msg = jms_to_core(m, self.max_size,
                              self.conn_key if self.hub.no_local_consumers else None)
        except c.DecodeError as e:
            self.respond_error(m, "javax.jms.MessageFormatException", str(e))
            return
        if len(msg.body) > self.max_size:
            self.respond_error(m, "javax.jms.JMSException", "message exceeds the maximum size")
            return
        dest = m.destination
        name = dest.physical_name
        if m.transaction_id is None and name and "," not in name:
            # the common case, one destination outside a transaction
            if m.data_structure is None:
                self.hub.prime(msg, m)
            t = dest.type
            vhost = self.vhost
            try:
                if t == c.TOPIC or t == c.TEMP_TOPIC:
                    if not name.startswith(ADVISORY_PREFIX):
                        vhost.publish("amq.topic", name, msg)
                else:
                    if t == c.QUEUE and name not in vhost.queues:
                        self._ensure_queue(name)
                    vhost.publish("", name, msg)
            except BrokerError as e:
                self.respond_error(m, "javax.jms.JMSException", e.text)
                return
            self._after_publish(m, msg, False)
            return
        tx = None
        if m.transaction_id is not None:
            entry = self.transactions.get(key_of(m.transaction_id))
            if entry is None:
                entry = self._begin(m.transaction_id)
            tx = entry[0]
        dest = m.destination
        name = dest.physical_name
        if name and "," not in name:
            parts = [(dest.type, name)]
        else:
            parts = split_dest(dest)
            if not parts or not all(name for _, name in parts):
                self.respond_error(m, "javax.jms.InvalidDestinationException",
                                   "empty destination name")
                return
        if len(parts) == 1 and tx is None and m.data_structure is None:
            self.hub.prime(msg, m)
        try:
            for t, name in parts:
                if is_topic(t):
                    if name.startswith(ADVISORY_PREFIX):
                        continue
                    exchange, key = "amq.topic", name
                else:
                    exchange, key = "", name
                    if t == c.QUEUE:
                        self._ensure_queue(name)
                if tx is not None:
                    tx.publish(exchange, key, msg)
                else:
                    self.vhost.publish(exchange, key, msg)
        except BrokerError as e:
            self.respond_error(m, "javax.jms.JMSException", e.text)
            return
        self._after_publish(m, msg, tx is not None)

    def _after_publish(self, m: Obj, msg: Message, in_tx: bool) -> None:
        """The producer window given back, or the response (once durable, for a persistent
        message outside a transaction)."""
        if (not m.response_required and self.windowed_producers
                and key_of(m.producer_id) in self.windowed_producers):
            # async send under a producer window: give the window back (the client counts a
            # message as 1024 bytes plus its content and marshalled properties)
            size = 1024 + len(m.content or b"") + len(m.marshalled_properties or b"")
            self.send(Obj(c.PRODUCER_ACK, producer_id=m.producer_id, size=size))
        if m.response_required:
            if msg.durable and not in_tx:
                self.broker.when_durable(partial(self._respond_id, m.command_id))
            else:
                self._respond_id(m.command_id)

    def _ensure_queue(self, name: str) -> Queue:
        q = self.vhost.queues.get(name)
        if q is None:
            q = self.vhost.declare_queue(name, durable=True)
        return q

    # -- consumers ---------------------------------------------------------------------------

    def on_consumer_info(self, cmd: Obj) -> None:
        dest = cmd.destination
        if dest is None or cmd.consumer_id is None:
            self.respond_error(cmd, "javax.jms.InvalidDestinationException", "no destination")
            return
        cs = ConsumerState(cmd)
        parts = split_dest(dest)
        if not parts or not all(name for _, name in parts):
            self.respond_error(cmd, "javax.jms.InvalidDestinationException",
                               "empty destination name")
            return
        if all(is_topic(t) and n.startswith(ADVISORY_PREFIX) for t, n in parts):
            cs.advisory = {n[len(ADVISORY_PREFIX) :] for _, n in parts}
            self.consumers[cs.key] = cs
            self.respond(cmd)
            self.hub.add_advisory_consumer(self, cs)
            return
        if len(parts) != 1:
            self.respond_error(cmd, "javax.jms.InvalidDestinationException",
                               "composite destinations are not supported for consumers")
            return
        selector = None
        if cmd.selector:
            try:
                from polymq.core.selector import InvalidSelector, compile_selector
            except ImportError:  # pragma: no cover
                compile_selector = None
            if compile_selector is not None:
                try:
                    selector = compile_selector(cmd.selector)
                except InvalidSelector as e:
                    self.respond_error(cmd, "javax.jms.InvalidSelectorException", str(e))
                    return
        if cmd.no_local:
            self.hub.no_local_consumers += 1
            cs.no_local = True
            mine = self.conn_key
            base = selector

            def selector(msg: Message, base=base, mine=mine) -> bool:
                if msg.annotations.get("openwire.conn") == mine:
                    return False
                return base is None or base(msg)

        t, name = parts[0]
        if cmd.browser:
            self.consumers[cs.key] = cs
            self.respond(cmd)
            self._browse(cs, name, selector)
            return
        if is_topic(t):
            pattern = topic_pattern(name)
            if cmd.subscription_name:
                qname = f"{self.client_id or cmd.client_id}.{cmd.subscription_name}"
                q = self.vhost.queues.get(qname)
                if q is None:
                    q = self.vhost.declare_queue(qname, durable=True)
                ex = self.vhost.get_exchange("amq.topic")
                stale = [b for b in ex.bindings_to(q) if b.key != pattern]
                for b in stale:
                    self.vhost.unbind_queue(qname, "amq.topic", b.key)
                    q.purge()
                self.vhost.bind_queue(qname, "amq.topic", pattern)
            else:
                q = self.vhost.declare_queue("", exclusive_owner=self, auto_delete=True)
                self.vhost.bind_queue(q.name, "amq.topic", pattern, owner=self)
                cs.temp_queue = q.name
        else:
            if t == c.TEMP_QUEUE:
                q = self.vhost.queues.get(name)
                if q is None:
                    self.respond_error(cmd, "javax.jms.InvalidDestinationException",
                                       f"temporary queue {name} does not exist")
                    return
            else:
                q = self._ensure_queue(name)
        if not isinstance(q, Queue):
            self.respond_error(cmd, "javax.jms.InvalidDestinationException",
                               f"{name} is a stream")
            return
        prefetch = cmd.prefetch_size
        core = Consumer(
            f"ow-{cs.key}", lambda d, cs=cs: self._deliver(cs, d),
            prefetch=max(prefetch, 0), selector=selector, owner=self,
            credit=0 if prefetch <= 0 else None, exclusive=bool(cmd.exclusive),
        )
        cs.core = core
        cs.queue = q
        if self.paused:
            core.paused = True
        self.consumers[cs.key] = cs
        if self.cached:
            cs.head, cs.head_later = c.dispatch_heads_cached(cs.id, cs.destination,
                                                             self._cache_slots())
        self.respond(cmd)
        q.add_consumer(core)

    def remove_consumer(self, cs: ConsumerState, last_delivered: int = -1) -> None:
        """Detach a consumer; what it was sent and did not settle goes back to its queue.

        ``last_delivered`` (RemoveInfo.lastDeliveredSequenceId) is the dispatch sequence of the
        last message the application saw: the ones after it were only prefetched, so going back
        does not count as a delivery (the core's requeue adds one; take it off first).
        """
        if cs.advisory is not None:
            cs.removed = True
            self.hub.remove_advisory_consumer(cs)
            return
        if cs.pull_timer is not None and cs.pull_timer.active():
            cs.pull_timer.cancel()
        cs.removed = True
        if cs.no_local:
            cs.no_local = False
            self.hub.no_local_consumers -= 1
        if cs.core is not None:
            # deliveries acknowledged inside an open transaction stay with the transaction:
            # settled by its commit, requeued by its rollback (see _rollback)
            for seq in cs.in_tx:
                d = cs.dispatched.get(seq)
                if d is not None:
                    cs.core.detach(d)
        if last_delivered >= 0 and cs.core is not None and cs.queue is not None:
            # dispatch order: what follows the last delivered message was only prefetched,
            # so it goes back without counting as a delivery
            cs.core.pause()
            undelivered = last_delivered not in cs.dispatched
            prefetched = []
            for seq, d in cs.dispatched.items():
                if undelivered and seq not in cs.in_tx:
                    prefetched.append(d)
                elif seq == last_delivered:
                    undelivered = True
            cs.queue.requeue(prefetched, count=False)
        if cs.core is not None and cs.queue is not None:
            cs.queue.remove_consumer(cs.core, requeue=True)
        cs.dispatched.clear()
        if cs.temp_queue is not None:
            q = self.vhost.queues.get(cs.temp_queue)
            if q is not None and not q.consumers:
                self.vhost.delete_queue(cs.temp_queue)

    def _deliver(self, cs: ConsumerState, d: Delivery) -> None:
        try:
            seq, data = self.hub.encoded(d.message, self.cached)
        except (ValueError, TypeError, OverflowError, struct.error) as e:
            # never let one odd message from another protocol break the queue's dispatch
            log.info("openwire: delivering the body only of a message that does not convert: "
                     "{err}", err=e)
            seq = self.hub.next_id()
            data = c.encode_message(core_to_jms(Message(d.message.body), self.hub.synthetic_pid,
                                                seq), self.cached)
        if seq in cs.dispatched:  # the same message twice on one consumer: a fresh id
            seq = self.hub.next_id()
            data = c.encode_message(core_to_jms(d.message, self.hub.synthetic_pid, seq),
                                    self.cached)
        cs.dispatched[seq] = d
        cs.pull_pending = False
        if not self.closed:
            self.write(c.encode_dispatch_raw(cs.head, data, d.delivery_count))
            if cs.head_later is not None:
                cs.head = cs.head_later
                cs.head_later = None

    def dispatch_advisory(self, cs: ConsumerState, info: Obj) -> None:
        seq = self.hub.next_id()
        topic = ADVISORY_PREFIX + ("TempQueue" if info.destination.type == c.TEMP_QUEUE
                                   else "TempTopic")
        dest = Obj(c.TOPIC, physical_name=topic)
        mid = Obj(c.MESSAGE_ID, producer_id=self.hub.synthetic_pid, producer_sequence_id=seq,
                  broker_sequence_id=seq)
        m = Obj(c.MESSAGE, producer_id=self.hub.synthetic_pid, destination=dest, message_id=mid,
                priority=4, timestamp=now_ms(), data_structure=info)
        self.send(Obj(c.MESSAGE_DISPATCH, consumer_id=cs.id, destination=cs.destination,
                      message=m))

    def _browse(self, cs: ConsumerState, name: str, selector: Any) -> None:
        q = self.vhost.queues.get(name)
        if isinstance(q, Queue):
            # like ActiveMQ (maxBrowsePageSize) a browser sees at most BROWSE_MAX messages
            for d in q.browse(BROWSE_MAX, selector):
                seq = self.hub.next_id()
                m = core_to_jms(d.message, self.hub.synthetic_pid, seq)
                self.send(Obj(c.MESSAGE_DISPATCH, consumer_id=cs.id, destination=cs.destination,
                              message=m, redelivery_counter=d.delivery_count))
        self.send(Obj(c.MESSAGE_DISPATCH, consumer_id=cs.id, destination=cs.destination))

    def pause(self) -> None:
        self.paused = True
        for cs in self.consumers.values():
            if cs.core is not None:
                cs.core.pause()

    def resume(self) -> None:
        self.paused = False
        for cs in list(self.consumers.values()):
            if cs.core is not None:
                cs.core.resume()

    # -- pull ------------------------------------------------------------------------------

    def on_pull(self, cmd: Obj) -> None:
        cs = self.consumers.get(key_of(cmd.consumer_id))
        if cs is None or cs.core is None:
            return
        if cs.prefetch > 0:
            return
        if cs.pull_timer is not None and cs.pull_timer.active():
            cs.pull_timer.cancel()
            cs.pull_timer = None
        if not cs.pull_pending:
            cs.pull_pending = True
            cs.core.add_credit(1)
        if not cs.pull_pending:
            return  # answered synchronously
        if cmd.timeout == -1 or cmd.timeout < 0:
            self._pull_expired(cs)
        elif cmd.timeout > 0:
            cs.pull_timer = self.broker.clock.callLater(
                cmd.timeout / 1000.0, self._pull_expired, cs
            )

    def _pull_expired(self, cs: ConsumerState) -> None:
        cs.pull_timer = None
        if not cs.pull_pending or cs.core is None:
            return
        cs.pull_pending = False
        cs.core.set_credit(0)
        self.send(Obj(c.MESSAGE_DISPATCH, consumer_id=cs.id, destination=cs.destination))

    # -- acknowledgements ---------------------------------------------------------------------

    def standard_ack(self, fields: tuple) -> bool:
        """The common ack (:func:`c.ack_fields`): a standard ack, outside a transaction, of
        the oldest message in flight. Settled here without decoding the frame; False (nothing
        done) for anything else, which then goes through :meth:`on_ack`."""
        command_id, response_required, cid, tid, kind, last = fields
        if kind != ACK_STANDARD or tid is not None or self.connection_id is None:
            return False
        cs = self._ack_cs
        if cid is not self._ack_cid or cs is None or cs.removed:
            return False
        if not self._settle_if_oldest(cs, last):
            return False
        if response_required:
            self._respond_id(command_id)
        return True

    def _settle_if_oldest(self, cs: ConsumerState, last: int) -> bool:
        """A standard ack outside a transaction: when ``last`` is the oldest message in
        flight (AUTO_ACKNOWLEDGE acks each on its own, oldest first), settle it, forget its
        encoding, recompute the window only while DELIVERED acks are outstanding, and say so."""
        dispatched = cs.dispatched
        if cs.in_tx or not dispatched or next(iter(dispatched)) != last:
            return False
        d = dispatched.pop(last)
        d.queue.ack(d)
        self.hub.forget(d.message)
        if cs.delivered:
            cs.delivered.discard(last)
            cs.credit_back()
        return True

    def on_ack(self, ack: Obj) -> None:
        cid = ack.consumer_id
        cs = self._ack_cs
        if cid is not self._ack_cid or cs is None or cs.removed:
            # (with the marshalling cache every ack carries the very same consumer id object)
            cs = self.consumers.get(key_of(cid))
            self._ack_cid, self._ack_cs = cid, cs
        if cs is None or cs.advisory is not None or cs.core is None:
            self.respond(ack)
            return
        last = ack.last_message_id.broker_sequence_id if ack.last_message_id else None
        if last is None:
            self.respond(ack)
            return
        kind = ack.ack_type
        if (kind == ACK_STANDARD and ack.transaction_id is None
                and self._settle_if_oldest(cs, last)):
            self.respond(ack)
            return
        if last not in cs.dispatched:
            seqs = []
        elif kind in (ACK_INDIVIDUAL, ACK_UNMATCHED, ACK_EXPIRED):
            seqs = [last]
        else:
            # everything dispatched up to ``last``, in dispatch order (for POISON from ``first``)
            first = None
            if kind == ACK_POISON and ack.first_message_id is not None:
                first = ack.first_message_id.broker_sequence_id
                if first not in cs.dispatched:
                    first = None
            seqs = []
            collecting = first is None
            for s in cs.dispatched:
                if not collecting and s == first:
                    collecting = True
                if collecting:
                    seqs.append(s)
                if s == last:
                    break
        if kind in (ACK_DELIVERED, ACK_REDELIVERED):
            before = len(cs.delivered)
            cs.delivered.update(seqs)
            if len(cs.delivered) != before:
                cs.credit_back()
            self.respond(ack)
            return
        if kind == ACK_POISON:
            cause = ack.poison_cause[1] if ack.poison_cause else None
            for s in seqs:
                d = cs.dispatched.pop(s)
                cs.delivered.discard(s)
                self._dead_letter(d, cause)
            cs.credit_back()
            self.respond(ack)
            return
        if ack.transaction_id is not None:
            entry = self.transactions.get(key_of(ack.transaction_id))
            if entry is None:
                entry = self._begin(ack.transaction_id)
            tx, settled = entry
            for s in seqs:
                if s in cs.in_tx:
                    continue
                cs.in_tx.add(s)
                d = cs.dispatched[s]
                tx.ack(d)
                settled.append((cs, s, d))
            self.respond(ack)
            return
        forget = self.hub.forget
        for s in seqs:
            if s in cs.in_tx:
                continue
            d = cs.dispatched.pop(s)
            cs.delivered.discard(s)
            d.queue.ack(d)
            forget(d.message)
        cs.credit_back()
        self.respond(ack)

    def _dead_letter(self, d: Delivery, cause: str | None) -> None:
        msg = d.message
        headers = dict(msg.headers)
        if cause:
            headers["dlqDeliveryFailureCause"] = cause
        dead = msg.copy(headers=headers, expiration=None)
        self._ensure_queue(DLQ)
        self.vhost.publish("", DLQ, dead)
        d.queue.ack(d)

    # -- transactions -----------------------------------------------------------------------

    def _begin(self, tid: Obj) -> tuple[Transaction, list]:
        entry = (Transaction(self.vhost), [])
        self.transactions[key_of(tid)] = entry
        return entry

    def _rollback(self, entry: tuple[Transaction, list]) -> None:
        """Discard a transaction. Its acknowledged deliveries stay with their consumer (the
        JMS client redelivers them itself); those of a consumer closed meanwhile go back to
        their queue."""
        tx, settled = entry
        tx.rollback()
        for cs, s, d in settled:
            cs.in_tx.discard(s)
            if cs.removed:
                d.queue.requeue([d])

    def on_transaction(self, cmd: Obj) -> None:
        tid = cmd.transaction_id
        if tid is None:
            self.respond(cmd)
            return
        k = key_of(tid)
        t = cmd.tx_type
        if t == TX_BEGIN:
            if k not in self.transactions:
                self._begin(tid)
            self.respond(cmd)
        elif t in (TX_COMMIT_ONE, TX_COMMIT_TWO):
            entry = self.transactions.pop(k, None)
            if entry is None:
                self.respond(cmd)
                return
            tx, settled = entry
            for cs, s, _ in settled:
                cs.in_tx.discard(s)
                if cs.dispatched.pop(s, None) is not None:
                    cs.delivered.discard(s)
            cid, rr = cmd.command_id, cmd.response_required
            tx.commit(on_durable=(lambda: self.send(Obj(c.RESPONSE, correlation_id=cid)))
                      if rr else None)
            for cs in {x[0] for x in settled}:
                cs.credit_back()
        elif t == TX_ROLLBACK:
            entry = self.transactions.pop(k, None)
            if entry is not None:
                self._rollback(entry)
            self.respond(cmd)
        elif t == TX_RECOVER:
            if cmd.response_required:
                self.send(Obj(c.DATA_ARRAY_RESPONSE, correlation_id=cmd.command_id, data=[]))
        elif t == TX_PREPARE:
            if cmd.response_required:
                self.send(Obj(c.INTEGER_RESPONSE, correlation_id=cmd.command_id, result=3))
        else:
            self.respond(cmd)

    # -- temp destinations ---------------------------------------------------------------------

    def on_destination_info(self, cmd: Obj) -> None:
        dest = cmd.destination
        if dest is None or not dest.physical_name:
            self.respond_error(cmd, "javax.jms.InvalidDestinationException",
                               "empty destination name")
            return
        if cmd.operation_type == 0:
            if dest.type == c.TEMP_QUEUE:
                if dest.physical_name not in self.vhost.queues:
                    self.vhost.declare_queue(dest.physical_name, exclusive_owner=self)
            if dest.type in (c.TEMP_QUEUE, c.TEMP_TOPIC):
                self.temp_dests.append(dest)
                self.hub.add_temp(Obj(c.DESTINATION_INFO, connection_id=cmd.connection_id,
                                      destination=dest, operation_type=0))
            elif dest.type == c.QUEUE:
                self._ensure_queue(dest.physical_name)
        elif cmd.operation_type == 1:
            if dest.type in (c.TEMP_QUEUE, c.TEMP_TOPIC):
                self.temp_dests = [d for d in self.temp_dests if key_of(d) != key_of(dest)]
                self._drop_temp(dest)
        self.respond(cmd)

    def _drop_temp(self, dest: Obj) -> None:
        if dest.type == c.TEMP_QUEUE:
            q = self.vhost.queues.get(dest.physical_name)
            if q is not None and q.exclusive_owner is self:
                self.vhost.delete_queue(dest.physical_name)
        self.hub.remove_temp(dest, self.connection_id)

    # -- durable subscriptions -------------------------------------------------------------

    def on_remove_subscription(self, cmd: Obj) -> None:
        qname = f"{cmd.client_id or self.client_id}.{cmd.subscription_name}"
        q = self.vhost.queues.get(qname)
        if q is not None:
            if q.consumers:
                self.respond_error(cmd, "javax.jms.JMSException",
                                   f"durable subscription {cmd.subscription_name} is in use")
                return
            self.vhost.delete_queue(qname)
        self.respond(cmd)
