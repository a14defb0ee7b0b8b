"""The Kafka protocol state machine: one :class:`KafkaSession` per connection, no sockets.

``KafkaServer`` holds what connections share (topics live in the core's streams, the group
coordinator, producer-id state). A session is given whole frames (without the length prefix)
and hands lists of byte chunks to its ``send`` callable, in request order: every request that
gets a response takes a slot, and a slot is written only when all earlier ones are.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from polymq.core.errors import BrokerError
from polymq.core.message import now_ms
from polymq.core.stream import Partition, Stream, StreamEntry, StreamFormat

from . import codec as C
from .groups import Coordinator
from .records import BatchError, check_batches, decode_batch, decode_messages, encode_messages
from .records import with_base_offset as _with_base_offset

log = Logger(namespace="polymq.kafka")

FORMAT = "kafka"
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
NODE_ID = 1
CLUSTER_ID = "polymq"
RECENT_BATCHES = 5


class ProtocolViolation(Exception):
    """Close this connection (after logging one line)."""


class ProducerState:
    __slots__ = ("epoch", "next_seq", "recent")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.next_seq: int | None = None
        self.recent: deque[tuple[int, int, int]] = deque(maxlen=RECENT_BATCHES)


def kafka_bytes(p: Partition, e: StreamEntry) -> bytes:
    """An entry as a v2 record batch: stored Kafka batches verbatim, others encoded once."""
    if e.fmt == FORMAT:
        return e.data
    cache = e.cache
    if cache is not None:
        b = cache.get(FORMAT)
        if b is not None:
            return b
    else:
        cache = e.cache = {}
    b = encode_messages(p.messages(e), e.offset)
    cache[FORMAT] = b
    return b


class KafkaServer:
    """State shared by every connection of one Kafka listener."""

    def __init__(self, broker: Any, section: dict) -> None:
        self.broker = broker
        self.section = section
        self.vhost = broker.vhost(section.get("vhost") or None)
        self.advertised_host: str = section.get("advertised_host", "127.0.0.1")
        self.advertised_port: int = int(section.get("advertised_port", 0) or 0)
        self.auto_create: bool = bool(section.get("auto_create_topics", True))
        self.num_partitions: int = int(section.get("num_partitions", 1))
        self.sasl: bool = bool(section.get("sasl", False))
        self.max_request_size: int = int(
            section.get("max_request_size", 0) or (broker.max_message_size + 1024 * 1024)
        )
        self.coordinator = Coordinator(broker, int(section.get("group_initial_rebalance_delay_ms",
                                                                0)))
        self.producers: dict[tuple[int, str, int], ProducerState] = {}
        self.producer_epochs: dict[int, int] = {}
        self.transactional: dict[str, tuple[int, int]] = {}
        if FORMAT not in broker.stream_formats:
            broker.stream_formats[FORMAT] = StreamFormat(FORMAT, decode_messages,
                                                         encode_messages)

    # -- topics --------------------------------------------------------------------------------

    def topic(self, name: str, create: bool = False) -> Stream | None:
        q = self.vhost.queues.get(name)
        if q is not None:
            return q if q.kind == "stream" else None
        if not create or not self.auto_create or not TOPIC_RE.match(name):
            return None
        return self.create_topic(name, self.num_partitions)

    def create_topic(self, name: str, partitions: int, configs: dict | None = None) -> Stream:
        args: dict[str, Any] = {}
        configs = configs or {}
        try:
            if configs.get("retention.bytes") not in (None, "-1"):
                args["x-max-length-bytes"] = int(configs["retention.bytes"])
            if configs.get("retention.ms") not in (None, "-1"):
                args["x-max-age"] = int(configs["retention.ms"])
        except ValueError:
            pass
        s = self.vhost.declare_stream(name, partitions=partitions, arguments=args)
        if configs:
            s.set_config({k: v for k, v in configs.items() if v is not None})
        self.vhost.bind_queue(name, "amq.topic", name)
        log.info("kafka topic {t} created with {n} partitions", t=name, n=partitions)
        return s

    def topics(self) -> list[Stream]:
        return [q for q in self.vhost.queues.values() if q.kind == "stream"]

    def next_producer_id(self) -> int:
        cur = self.broker.kv_get_obj("kafka.meta", "next_producer_id") or 1000
        self.broker.kv_put_obj("kafka.meta", "next_producer_id", cur + 1)
        return cur


class KafkaSession:
    """One client connection."""

    def __init__(self, server: KafkaServer, send: Callable[[list[bytes]], None],
                 close: Callable[[], None], peer: str = "", local_port: int = 0) -> None:
        self.server = server
        self.broker = server.broker
        self.vhost = server.vhost
        self.send = send
        self._close = close
        self.peer = peer
        self.local_port = local_port
        self.pending: deque[list] = deque()
        self.closed = False
        self.authenticated = not server.sasl
        self.sasl_raw = False  # SaslHandshake v0: the next frame is a raw token
        self.sasl_mechanism: str | None = None
        self.fetches: list[FetchWait] = []
        self.client_id = ""
        self.identity: Any = None

    # -- response ordering -----------------------------------------------------------------

    def _slot(self) -> list:
        slot: list = [None]
        self.pending.append(slot)
        return slot

    def _complete(self, slot: list, chunks: list[bytes]) -> None:
        slot[0] = chunks
        pending = self.pending
        while pending and pending[0][0] is not None:
            out = pending.popleft()[0]
            if not self.closed:
                self.send(out)

    def _replier(self, hdr: C.RequestHeader) -> Callable[[dict], None]:
        slot = self._slot()
        api, ver, corr = hdr.api_key, hdr.api_version, hdr.correlation_id

        def reply(body: dict) -> None:
            if slot[0] is not None:
                return
            self._complete(slot, [C.encode_response(api, ver, corr, _fill(api, body))])

        return reply

    # -- input ----------------------------------------------------------------------------

    def handle_frame(self, frame: memoryview) -> None:
        """One request frame (without its length prefix)."""
        if self.closed:
            return
        try:
            if self.sasl_raw:
                self._sasl_raw_token(bytes(frame))
                return
            hdr, pos = C.decode_request_header(frame)
            self.client_id = hdr.client_id or ""
            self._dispatch(hdr, frame, pos)
        except (C.KafkaDecodeError, ProtocolViolation) as e:
            self.violation(str(e))
        except Exception:
            log.failure("kafka client {peer}: request failed", peer=self.peer)
            self.violation("internal error")

    def violation(self, text: str) -> None:
        if self.closed:
            return
        log.info("kafka client {peer} ({cid}): {text}; closing", peer=self.peer,
                 cid=self.client_id, text=text)
        self.close()
        self._close()

    def _dispatch(self, hdr: C.RequestHeader, frame: memoryview, pos: int) -> None:
        api, ver = hdr.api_key, hdr.api_version
        if api == C.API_VERSIONS:
            return self._api_versions(hdr, frame, pos)
        rng = C.API_RANGES.get(api)
        if rng is None:
            raise ProtocolViolation(f"unknown api key {api}")
        if not rng[0] <= ver <= rng[1] or ver in C.REFUSED_VERSIONS.get(api, ()):
            raise ProtocolViolation(f"unsupported version {ver} of api {api}")
        if not self.authenticated and api not in (C.SASL_HANDSHAKE, C.SASL_AUTHENTICATE):
            raise ProtocolViolation(f"api {api} before SASL authentication")
        if api == C.PRODUCE:
            return self._produce(hdr, C.decode_produce(ver, frame[pos:]))
        body = C.decode_body(api, ver, frame[pos:])
        handler = self.HANDLERS[api]
        if api == C.FETCH:
            return self._fetch(hdr, body)
        reply = self._replier(hdr)
        handler(self, ver, body, reply)

    # -- ApiVersions / SASL ------------------------------------------------------------------

    def _api_versions(self, hdr: C.RequestHeader, frame: memoryview, pos: int) -> None:
        ver = hdr.api_version
        keys = [{"api_key": k, "min_version": lo, "max_version": hi}
                for k, (lo, hi) in sorted(C.API_RANGES.items())
                if self.server.sasl or k not in (C.SASL_HANDSHAKE, C.SASL_AUTHENTICATE)]
        slot = self._slot()
        if ver > 3 or ver < 0:
            body = {"error_code": C.UNSUPPORTED_VERSION, "api_keys": keys}
            out = C.encode_response(C.API_VERSIONS, 0, hdr.correlation_id, body)
        else:
            C.decode_body(C.API_VERSIONS, ver, frame[pos:])
            body = {"error_code": 0, "api_keys": keys, "throttle_time_ms": 0}
            out = C.encode_response(C.API_VERSIONS, ver, hdr.correlation_id, body)
        self._complete(slot, [out])

    def _sasl_handshake(self, ver: int, req: Any, reply: Callable) -> None:
        if not self.server.sasl or self.authenticated:
            return reply({"error_code": C.ILLEGAL_SASL_STATE, "mechanisms": ["PLAIN"]})
        if req.mechanism != "PLAIN":
            return reply({"error_code": C.UNSUPPORTED_SASL_MECHANISM, "mechanisms": ["PLAIN"]})
        self.sasl_mechanism = "PLAIN"
        if ver == 0:
            self.sasl_raw = True
        reply({"error_code": 0, "mechanisms": ["PLAIN"]})

    def _plain(self, token: bytes) -> str | None:
        """Check a PLAIN token; returns an error text or None when authenticated."""
        from polymq.core.auth import Identity

        parts = token.split(b"\x00")
        if len(parts) != 3:
            return "malformed PLAIN token"
        user = parts[1].decode("utf-8", "replace")
        result = self.broker.authenticate("kafka", user, parts[2], self.peer)
        if isinstance(result, Identity):
            self.identity = result
            self.authenticated = True
            return None
        return getattr(result, "reason", "authentication failed")

    def _sasl_authenticate(self, ver: int, req: Any, reply: Callable) -> None:
        if self.sasl_mechanism != "PLAIN" or self.authenticated:
            return reply({"error_code": C.ILLEGAL_SASL_STATE, "error_message": "no handshake",
                          "auth_bytes": b"", "session_lifetime_ms": 0})
        err = self._plain(req.auth_bytes)
        if err is not None:
            reply({"error_code": C.SASL_AUTHENTICATION_FAILED, "error_message": err,
                   "auth_bytes": b"", "session_lifetime_ms": 0})
            log.info("kafka client {peer}: SASL refused: {e}", peer=self.peer, e=err)
            return
        reply({"error_code": 0, "error_message": None, "auth_bytes": b"",
               "session_lifetime_ms": 0})

    def _sasl_raw_token(self, token: bytes) -> None:
        self.sasl_raw = False
        err = self._plain(token)
        if err is not None:
            self.violation(f"SASL refused: {err}")
            return
        self._complete(self._slot(), [b"\x00\x00\x00\x00"])

    # -- Metadata ------------------------------------------------------------------------------

    def _broker_entry(self) -> dict:
        port = self.server.advertised_port or self.local_port
        return {"node_id": NODE_ID, "host": self.server.advertised_host, "port": port,
                "rack": None}

    def _metadata(self, ver: int, req: Any, reply: Callable) -> None:
        srv = self.server
        if req.topics is None or (ver == 0 and not req.topics):
            streams = srv.topics()
            names = [s.name for s in streams]
        else:
            names = [t.name for t in req.topics]
        allow = req.allow_auto_topic_creation if ver >= 4 else True
        topics = []
        for name in names:
            s = srv.topic(name, create=allow)
            if s is None:
                code = C.INVALID_TOPIC_EXCEPTION if not TOPIC_RE.match(name) else \
                    C.UNKNOWN_TOPIC_OR_PARTITION
                topics.append({"error_code": code, "name": name, "is_internal": False,
                               "partitions": [], "topic_authorized_operations": -2147483648})
                continue
            parts = [{"error_code": 0, "partition_index": i, "leader_id": NODE_ID,
                      "leader_epoch": -1, "replica_nodes": [NODE_ID], "isr_nodes": [NODE_ID],
                      "offline_replicas": []} for i in range(len(s.partitions))]
            topics.append({"error_code": 0, "name": name, "is_internal": False,
                           "partitions": parts, "topic_authorized_operations": -2147483648})
        reply({"brokers": [self._broker_entry()], "cluster_id": CLUSTER_ID,
               "controller_id": NODE_ID, "topics": topics,
               "cluster_authorized_operations": -2147483648})

    # -- Produce -------------------------------------------------------------------------------

    def _produce(self, hdr: C.RequestHeader, req: C.ProduceRequest) -> None:
        srv = self.server
        acks = req.acks
        results = []
        bad_acks = acks not in (0, 1, -1)
        limit = self.broker.max_message_size
        for name, parts in req.topics:
            s = None if bad_acks else srv.topic(name, create=True)
            presults = []
            for index, records in parts:
                if bad_acks:
                    presults.append((index, C.INVALID_REQUIRED_ACKS, -1))
                elif s is None:
                    code = C.INVALID_TOPIC_EXCEPTION if not TOPIC_RE.match(name) else \
                        C.UNKNOWN_TOPIC_OR_PARTITION
                    presults.append((index, code, -1))
                elif not 0 <= index < len(s.partitions):
                    presults.append((index, C.UNKNOWN_TOPIC_OR_PARTITION, -1))
                elif records is None:
                    presults.append((index, C.CORRUPT_MESSAGE, -1))
                elif len(records) > limit:
                    presults.append((index, C.MESSAGE_TOO_LARGE, -1))
                else:
                    presults.append(self._append(s, name, index, records))
            results.append((name, presults))
        if acks == 0:
            return
        slot = self._slot()
        ver, corr = hdr.api_version, hdr.correlation_id

        def respond() -> None:
            body = {"responses": [
                {"name": n, "partition_responses": [
                    {"index": i, "error_code": e, "base_offset": o, "log_append_time_ms": -1,
                     "log_start_offset": self._log_start(n, i)} for i, e, o in ps]}
                for n, ps in results], "throttle_time_ms": 0}
            self._complete(slot, [C.encode_response(C.PRODUCE, ver, corr, body)])

        self.broker.when_durable(respond)

    def _log_start(self, name: str, index: int) -> int:
        s = self.server.topic(name)
        if s is None or not 0 <= index < len(s.partitions):
            return -1
        return s.partitions[index].start_offset

    def _append(self, s: Stream, name: str, index: int, records: memoryview) -> tuple:
        try:
            batches = check_batches(records)
        except BatchError as e:
            log.info("kafka client {peer}: {t}-{p}: {e}", peer=self.peer, t=name, p=index, e=e)
            return (index, e.code, -1)
        p = s.partitions[index]
        srv = self.server
        base = None
        appended = []
        for b in batches:
            if b.producer_id >= 0 and b.base_sequence >= 0:
                key = (b.producer_id, name, index)
                st = srv.producers.get(key)
                last = b.base_sequence + b.count - 1
                if st is None or st.epoch != b.producer_epoch:
                    st = srv.producers[key] = ProducerState(b.producer_epoch)
                else:
                    dup = None
                    for first, lst, off in st.recent:
                        if first == b.base_sequence and lst == last:
                            dup = off
                            break
                    if dup is not None:
                        if base is None:
                            base = dup
                        continue
                    if st.next_seq is not None and b.base_sequence != st.next_seq:
                        return (index, C.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
                off = p.next_offset
                st.recent.append((b.base_sequence, last, off))
                st.next_seq = (last + 1) & 0x7FFFFFFF
            off = p.next_offset
            ts = b.max_timestamp if b.max_timestamp >= 0 else now_ms()
            data = _with_base_offset(b.data, off)
            p.append_batch(FORMAT, data, b.count, ts)
            appended.append(data)
            if base is None:
                base = off
        if appended:
            self._route(s, name, appended)
        return (index, 0, base)

    def _route(self, s: Stream, name: str, batches: list[bytes]) -> None:
        """Pass a produce on through amq.topic to subscribers other than the stream itself."""
        ex = self.vhost.exchanges.get("amq.topic")
        if ex is None:
            return
        dests = ex.match(name, {})
        for d in dests:
            if d is not s:
                break
        else:
            return
        try:
            for data in batches:
                for m in decode_messages(data):
                    self.vhost.publish("amq.topic", name, m, exclude=s)
        except (BatchError, BrokerError) as e:
            log.warn("kafka produce to {t} not routed to other protocols: {e}", t=name, e=e)

    # -- Fetch ---------------------------------------------------------------------------------

    def _fetch(self, hdr: C.RequestHeader, req: Any) -> None:
        slot = self._slot()
        w = FetchWait(self, hdr, req, slot)
        w.start()

    # -- ListOffsets ---------------------------------------------------------------------------

    def _list_offsets(self, ver: int, req: Any, reply: Callable) -> None:
        topics = []
        for t in req.topics:
            s = self.server.topic(t.name)
            parts = []
            for rp in t.partitions:
                out = {"partition_index": rp.partition_index, "error_code": 0,
                       "timestamp": -1, "offset": -1, "leader_epoch": -1,
                       "old_style_offsets": []}
                if s is None or not 0 <= rp.partition_index < len(s.partitions):
                    out["error_code"] = C.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    p = s.partitions[rp.partition_index]
                    if rp.timestamp == -1:
                        out["offset"] = p.next_offset
                    elif rp.timestamp == -2:
                        out["offset"] = p.start_offset
                    else:
                        out["offset"], out["timestamp"] = _offset_for_time(p, rp.timestamp)
                parts.append(out)
            topics.append({"name": t.name, "partitions": parts})
        reply({"topics": topics})

    # -- admin -----------------------------------------------------------------------------

    def _create_topics(self, ver: int, req: Any, reply: Callable) -> None:
        srv = self.server
        out = []
        for t in req.topics:
            r = {"name": t.name, "error_code": 0, "error_message": None}
            n = t.num_partitions
            if t.assignments:
                n = len(t.assignments)
            if n == -1:
                n = srv.num_partitions
            if not TOPIC_RE.match(t.name) or t.name in (".", ".."):
                r.update(error_code=C.INVALID_TOPIC_EXCEPTION, error_message="invalid name")
            elif t.name in self.vhost.queues:
                r.update(error_code=C.TOPIC_ALREADY_EXISTS,
                         error_message=f"Topic '{t.name}' already exists.")
            elif n <= 0 or n > 10000:
                r.update(error_code=C.INVALID_PARTITIONS, error_message="invalid partitions")
            elif t.replication_factor not in (-1, 1):
                r.update(error_code=C.INVALID_REPLICATION_FACTOR,
                         error_message="replication factor must be 1 (one broker)")
            elif any(c.name == "cleanup.policy" and "compact" in (c.value or "")
                     for c in t.configs):
                r.update(error_code=40,  # INVALID_CONFIG: compaction is not implemented
                         error_message="cleanup.policy=compact is not supported (delete only)")
            elif not (ver >= 1 and req.validate_only):
                try:
                    srv.create_topic(t.name, n, {c.name: c.value for c in t.configs})
                except BrokerError as e:
                    r.update(error_code=C.INVALID_REQUEST, error_message=e.text)
            out.append(r)
        reply({"topics": out})

    def _delete_topics(self, ver: int, req: Any, reply: Callable) -> None:
        out = []
        for name in req.topic_names:
            s = self.server.topic(name)
            if s is None:
                out.append({"name": name, "error_code": C.UNKNOWN_TOPIC_OR_PARTITION})
                continue
            try:
                self.vhost.delete_queue(name)
                self.server.coordinator.forget_topic(name)
                for key in [k for k in self.server.producers if k[1] == name]:
                    del self.server.producers[key]
                log.info("kafka topic {t} deleted", t=name)
                out.append({"name": name, "error_code": 0})
            except BrokerError:
                out.append({"name": name, "error_code": C.UNKNOWN_SERVER_ERROR})
        self.broker.when_durable(lambda: reply({"responses": out}))

    def _describe_configs(self, ver: int, req: Any, reply: Callable) -> None:
        results = []
        for r in req.resources:
            res = {"error_code": 0, "error_message": None, "resource_type": r.resource_type,
                   "resource_name": r.resource_name, "configs": []}
            if r.resource_type == 2:  # topic
                s = self.server.topic(r.resource_name)
                if s is None:
                    res.update(error_code=C.UNKNOWN_TOPIC_OR_PARTITION,
                               error_message="unknown topic")
                    results.append(res)
                    continue
                values = self._topic_configs(s)
            elif r.resource_type == 4:  # broker
                values = {"message.max.bytes": (str(self.broker.max_message_size), True),
                          "num.partitions": (str(self.server.num_partitions), True),
                          "auto.create.topics.enable": (
                              str(self.server.auto_create).lower(), True),
                          "broker.id": (str(NODE_ID), True)}
            else:
                res.update(error_code=C.INVALID_REQUEST, error_message="unsupported resource")
                results.append(res)
                continue
            keys = r.configuration_keys
            for name, (value, default) in values.items():
                if keys is not None and name not in keys:
                    continue
                res["configs"].append({"name": name, "value": value, "read_only": True,
                                       "is_default": default,
                                       "config_source": 5 if default else 1,
                                       "is_sensitive": False, "synonyms": []})
            results.append(res)
        reply({"results": results})

    def _topic_configs(self, s: Stream) -> dict[str, tuple[str, bool]]:
        values = {
            "cleanup.policy": ("delete", True),
            "retention.ms": (str(s.max_age_ms if s.max_age_ms is not None else -1),
                             s.max_age_ms is None),
            "retention.bytes": (str(s.max_bytes if s.max_bytes is not None else -1),
                                s.max_bytes is None),
            "max.message.bytes": (str(self.broker.max_message_size), True),
            "message.timestamp.type": ("CreateTime", True),
            "compression.type": ("producer", True),
        }
        for k, v in s.config.items():
            values[k] = (str(v), False)
        return values

    def _init_producer_id(self, ver: int, req: Any, reply: Callable) -> None:
        srv = self.server
        if req.transactional_id:
            pid, epoch = srv.transactional.get(req.transactional_id, (None, -1))
            if pid is None:
                pid = srv.next_producer_id()
            epoch = (epoch + 1) % 32767
            srv.transactional[req.transactional_id] = (pid, epoch)
        else:
            pid, epoch = srv.next_producer_id(), 0
        self.broker.when_durable(lambda: reply({"error_code": 0, "producer_id": pid,
                                                "producer_epoch": epoch}))

    # -- groups --------------------------------------------------------------------------------

    def _find_coordinator(self, ver: int, req: Any, reply: Callable) -> None:
        b = self._broker_entry()
        if ver >= 1 and req.key_type not in (0,):
            return reply({"error_code": C.COORDINATOR_NOT_AVAILABLE,
                          "error_message": "transactions are not supported",
                          "node_id": -1, "host": "", "port": -1})
        reply({"error_code": 0, "error_message": None, "node_id": NODE_ID, "host": b["host"],
               "port": b["port"]})

    def _join_group(self, ver: int, req: Any, reply: Callable) -> None:
        rebalance = req.rebalance_timeout_ms if ver >= 1 else req.session_timeout_ms
        self.server.coordinator.join(
            req.group_id, req.member_id, self.client_id, "/" + self.peer.rsplit(":", 1)[0],
            req.session_timeout_ms,
            rebalance, req.protocol_type, [(p.name, p.metadata) for p in req.protocols], reply)

    def _sync_group(self, ver: int, req: Any, reply: Callable) -> None:
        self.server.coordinator.sync(req.group_id, req.generation_id, req.member_id,
                                     [(a.member_id, a.assignment) for a in req.assignments],
                                     reply)

    def _heartbeat(self, ver: int, req: Any, reply: Callable) -> None:
        reply({"error_code": self.server.coordinator.heartbeat(
            req.group_id, req.generation_id, req.member_id)})

    def _leave_group(self, ver: int, req: Any, reply: Callable) -> None:
        reply({"error_code": self.server.coordinator.leave(req.group_id, req.member_id)})

    def _offset_commit(self, ver: int, req: Any, reply: Callable) -> None:
        co = self.server.coordinator
        code = co.check_commit(req.group_id, req.generation_id, req.member_id)
        topics = []
        for t in req.topics:
            parts = []
            for p in t.partitions:
                c = code
                if not c:
                    co.commit(req.group_id, t.name, p.partition_index, p.committed_offset,
                              p.committed_metadata)
                parts.append({"partition_index": p.partition_index, "error_code": c})
            topics.append({"name": t.name, "partitions": parts})
        self.broker.when_durable(lambda: reply({"topics": topics}))

    def _offset_fetch(self, ver: int, req: Any, reply: Callable) -> None:
        co = self.server.coordinator
        topics = []
        if req.topics is None:
            by_topic: dict[str, list] = {}
            for (t, p), (off, md) in sorted(co.committed_all(req.group_id).items()):
                by_topic.setdefault(t, []).append((p, off, md))
        else:
            by_topic = {t.name: [(p, *co.committed(req.group_id, t.name, p))
                                 for p in t.partition_indexes] for t in req.topics}
        for name, parts in by_topic.items():
            topics.append({"name": name, "partitions": [
                {"partition_index": p, "committed_offset": off, "committed_leader_epoch": -1,
                 "metadata": md if md is not None else "", "error_code": 0}
                for p, off, md in parts]})
        reply({"topics": topics, "error_code": 0})

    def _list_groups(self, ver: int, req: Any, reply: Callable) -> None:
        reply({"error_code": 0, "groups": [{"group_id": g, "protocol_type": t}
                                           for g, t in self.server.coordinator.list_groups()]})

    def _describe_groups(self, ver: int, req: Any, reply: Callable) -> None:
        reply({"groups": [self.server.coordinator.describe(g) for g in req.groups]})

    HANDLERS: dict[int, Callable] = {
        C.METADATA: _metadata,
        C.FETCH: None,
        C.LIST_OFFSETS: _list_offsets,
        C.CREATE_TOPICS: _create_topics,
        C.DELETE_TOPICS: _delete_topics,
        C.DESCRIBE_CONFIGS: _describe_configs,
        C.INIT_PRODUCER_ID: _init_producer_id,
        C.FIND_COORDINATOR: _find_coordinator,
        C.JOIN_GROUP: _join_group,
        C.SYNC_GROUP: _sync_group,
        C.HEARTBEAT: _heartbeat,
        C.LEAVE_GROUP: _leave_group,
        C.OFFSET_COMMIT: _offset_commit,
        C.OFFSET_FETCH: _offset_fetch,
        C.LIST_GROUPS: _list_groups,
        C.DESCRIBE_GROUPS: _describe_groups,
        C.SASL_HANDSHAKE: _sasl_handshake,
        C.SASL_AUTHENTICATE: _sasl_authenticate,
    }

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in list(self.fetches):
            w.cancel()
        self.fetches.clear()
        self.pending.clear()


def _offset_for_time(p: Partition, ts: int) -> tuple[int, int]:
    """The first offset whose record timestamp is >= ts, and that timestamp (or -1, -1)."""
    for e in p.entries:
        if e.timestamp < ts:
            continue
        try:
            if e.fmt == FORMAT:
                for r in decode_batch(e.data):
                    if r.timestamp >= ts:
                        return r.offset, r.timestamp
            else:
                for i, m in enumerate(p.messages(e)):
                    t = m.timestamp if m.timestamp is not None else e.timestamp
                    if t >= ts:
                        return e.offset + i, t
        except BatchError:
            return e.offset, e.timestamp
    return -1, -1


def _fill(api: int, body: dict) -> dict:
    if "throttle_time_ms" not in body:
        body["throttle_time_ms"] = 0
    return body


class FetchWait:
    """One Fetch request: answered at once when enough bytes are there, else long-polled."""

    def __init__(self, session: KafkaSession, hdr: C.RequestHeader, req: Any, slot: list):
        self.session = session
        self.hdr = hdr
        self.req = req
        self.slot = slot
        self.timer: Any = None
        self.partitions: list[Partition] = []
        self.scheduled: Any = None
        self.done = False

    def start(self) -> None:
        req = self.req
        topics, total, errors = self.build()
        if total >= max(req.min_bytes, 1) or req.max_wait_ms <= 0 or errors:
            return self.finish(topics)
        self.session.fetches.append(self)
        clock = self.session.broker.clock
        self.timer = clock.callLater(req.max_wait_ms / 1000.0, self.expired)
        self.arm()

    def arm(self) -> None:
        srv = self.session.server
        self.partitions = []
        for t in self.req.topics:
            s = srv.topic(t.topic)
            if s is None:
                continue
            for rp in t.partitions:
                if 0 <= rp.partition < len(s.partitions):
                    p = s.partitions[rp.partition]
                    p.waiters.append(self.wake)
                    self.partitions.append(p)

    def disarm(self) -> None:
        for p in self.partitions:
            try:
                p.waiters.remove(self.wake)
            except ValueError:
                pass
        self.partitions = []

    def wake(self) -> None:
        if self.done or self.scheduled is not None:
            return
        self.scheduled = self.session.broker.clock.callLater(0, self.recheck)

    def recheck(self) -> None:
        self.scheduled = None
        if self.done:
            return
        self.disarm()
        topics, total, errors = self.build()
        if total >= max(self.req.min_bytes, 1) or errors:
            self.finish(topics)
        else:
            self.arm()

    def expired(self) -> None:
        self.timer = None
        if not self.done:
            self.finish(self.build()[0])

    def cancel(self) -> None:
        self.done = True
        self.disarm()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.scheduled is not None and self.scheduled.active():
            self.scheduled.cancel()

    def finish(self, topics: list) -> None:
        s = self.session
        self.cancel()
        if self in s.fetches:
            s.fetches.remove(self)
        s._complete(self.slot, C.encode_fetch_response(self.hdr.api_version,
                                                       self.hdr.correlation_id, topics))

    def build(self) -> tuple[list, int, bool]:
        srv = self.session.server
        req = self.req
        max_bytes = req.max_bytes if req.max_bytes > 0 else 52428800
        total = 0
        errors = False
        out = []
        for t in req.topics:
            s = srv.topic(t.topic)
            parts = []
            for rp in t.partitions:
                if s is None or not 0 <= rp.partition < len(s.partitions):
                    parts.append(C.FetchPartition(rp.partition, C.UNKNOWN_TOPIC_OR_PARTITION,
                                                  -1, -1, []))
                    errors = True
                    continue
                p = s.partitions[rp.partition]
                off = rp.fetch_offset
                if off < p.start_offset or off > p.next_offset:
                    parts.append(C.FetchPartition(rp.partition, C.OFFSET_OUT_OF_RANGE,
                                                  p.next_offset, p.start_offset, []))
                    errors = True
                    continue
                batches: list[bytes] = []
                if off < p.next_offset and (total < max_bytes or total == 0):
                    budget = min(rp.partition_max_bytes, max_bytes - total)
                    size = 0
                    for e in p.read(off, max(budget, 1)):
                        b = kafka_bytes(p, e)
                        if batches and size + len(b) > budget:
                            break
                        batches.append(b)
                        size += len(b)
                    total += size
                parts.append(C.FetchPartition(rp.partition, 0, p.next_offset, p.start_offset,
                                              batches))
            out.append((t.topic, parts))
        return out, total, errors

