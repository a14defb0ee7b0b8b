"""The Kafka protocol state machine: one :class:`KafkaSession` per connection, no sockets.

The session is the adapter's :class:`~polymq.core.connection.IProtocolSession`: the connection
contract gives it whole request frames (without the length prefix) and it answers through its
:class:`~polymq.core.connection.ProtocolConnection`. Kafka clients match responses to requests
in FIFO order, so every answer goes through the contract's ordered replies: ``conn.reply`` for
answers ready at once, ``conn.reply_after_durable`` for those that wait for the store (Produce
with acks 1/-1, OffsetCommit ...), ``conn.reply_later`` for those that wait on something else
(a long-polling Fetch, JoinGroup and SyncGroup waiting for the group). What the listener's
connections share lives in :class:`~.server.KafkaServer`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.logger import Logger

from polymq.core.auth import Identity
from polymq.core.connection import ProtocolConnection, SessionBase
from polymq.core.errors import BrokerError, ProtocolError
from polymq.core.message import now_ms
from polymq.core.stream import Stream

from . import admin as A
from . import codec as C
from . import txn as T
from .fetch import FetchWait, offset_for_time
from .records import BatchError, check_batches
from .records import with_base_offset as _with_base_offset
from .server import CLUSTER_ID, FORMAT, NODE_ID, TOPIC_RE, KafkaServer, ProducerState

# the name of the cluster resource in permissions (Kafka's name for it)
CLUSTER_RESOURCE = "kafka-cluster"

log = Logger(namespace="polymq.kafka")

# throttle_time_ms is a number of milliseconds in an int32
_MAX_THROTTLE_MS = 2**31 - 1


class ProtocolViolation(ProtocolError):
    """A request Kafka does not allow here: the connection closes (Kafka has no error frame
    for a request it cannot parse or does not support)."""


class KafkaSession(SessionBase):
    """One client connection."""

    def __init__(self, conn: ProtocolConnection, server: KafkaServer) -> None:
        super().__init__(conn)
        self.server = server
        self.broker = server.broker
        self.vhost = server.vhost
        self.peer = conn.peer
        self.local_port = conn.info.local_port or 0
        self.started = False  # the handshake (first request, or SASL) is done
        self.authenticated = not server.sasl
        self.sasl_raw = False  # SaslHandshake v0: the next frame is a raw token
        self.sasl_mechanism: str | None = None
        self.scram: Any = None  # the ScramServer of a SCRAM login in progress
        self.fetches: list[FetchWait] = []
        self.client_id = ""
        self.identity: Identity | None = None
        # the broker-wide resource alarm: produce answers held, and since when
        self.blocked = False
        self.held: list[tuple[Callable[..., None], int, int, dict, float]] = []
        self._held_paused = False
        self._socket_paused = False
        # topics this connection was allowed to write / read (asked once each)
        self._writable: set[str] = set()
        self._readable: set[str] = set()

    # -- answers ------------------------------------------------------------------------------

    def _replier(self, hdr: C.RequestHeader) -> Callable[..., None]:
        """``reply(body, durable=False)`` for one request, in its place among the answers."""
        conn = self.conn
        api, ver, corr = hdr.api_key, hdr.api_version, hdr.correlation_id

        def reply(body: dict, durable: bool = False) -> None:
            data = C.encode_response(api, ver, corr, _fill(body))
            if durable:
                conn.reply_after_durable(data)
            else:
                conn.reply(data)

        return reply

    def _waiting_replier(self, hdr: C.RequestHeader) -> Callable[[dict], None]:
        """A reply whose place is reserved now and filled whenever the answer is ready (the
        group coordinator answers JoinGroup and SyncGroup when the group is); only the first
        answer counts."""
        ready = self.conn.reply_later()
        api, ver, corr = hdr.api_key, hdr.api_version, hdr.correlation_id

        def reply(body: dict) -> None:
            ready(C.encode_response(api, ver, corr, _fill(body)))

        return reply

    # -- input (IProtocolSession) -------------------------------------------------------------

    def frames_received(self, frames: list) -> None:
        conn = self.conn
        for i, frame in enumerate(frames):
            if self.sasl_raw:
                self._sasl_raw_token(bytes(frame))
                if conn.logging_in:  # a PLAIN password is being checked: the rest waits
                    conn.hold_frames(frames[i + 1 :])
                    return
                continue
            hdr, pos = C.decode_request_header(frame)
            self.client_id = hdr.client_id or ""
            if not self.started and self.authenticated:
                self.started = True
                if self.server.sasl:
                    conn.handshake_done(client_id=self.client_id, vhost=self.vhost.name)
                elif not conn.login(None, None, self._anonymous_login):
                    # no SASL: a client without a user name, as the login policy treats it
                    # (guest from loopback; elsewhere only with security.allow_anonymous);
                    # this request and the rest wait for the answer
                    conn.hold_frames(frames[i:])
                    return
            self._dispatch(hdr, frame, pos)
            if conn.closing:
                return
            if conn.logging_in:  # SaslAuthenticate with PLAIN: the rest waits for its answer
                conn.hold_frames(frames[i + 1 :])
                return

    def _anonymous_login(self, result: Any) -> None:
        if not isinstance(result, Identity):
            raise ProtocolViolation(f"login refused: {result.reason}")
        self.identity = result
        self.conn.handshake_done(user=result.user, client_id=self.client_id, vhost=self.vhost.name)

    def _dispatch(self, hdr: C.RequestHeader, frame: memoryview, pos: int) -> None:
        api, ver = hdr.api_key, hdr.api_version
        if api == C.API_VERSIONS:
            return self._api_versions(hdr, frame, pos)
        rng = C.API_RANGES.get(api)
        if rng is None:
            raise ProtocolViolation(f"{C.api_name(api)} is not supported")
        if not rng[0] <= ver <= rng[1] or ver in C.REFUSED_VERSIONS.get(api, ()):
            raise ProtocolViolation(
                f"{C.api_name(api)} version {ver} is not supported (supported: {rng[0]}-{rng[1]})"
            )
        if not self.authenticated and api not in (C.SASL_HANDSHAKE, C.SASL_AUTHENTICATE):
            raise ProtocolViolation(f"{C.api_name(api)} before SASL authentication")
        if api == C.PRODUCE:
            return self._produce(hdr, C.decode_produce(ver, frame[pos:]))
        body = C.decode_body(api, ver, frame[pos:])
        if api == C.FETCH:
            return self._fetch(hdr, body)
        if api == C.JOIN_GROUP or api == C.SYNC_GROUP or api == C.LIST_OFFSETS:
            reply = self._waiting_replier(hdr)
        else:
            reply = self._replier(hdr)
        self.HANDLERS[api](self, ver, body, reply)

    # -- the rest of the contract -------------------------------------------------------------

    def protocol_error(self, error: Exception) -> None:
        """Kafka has no frame for a request the broker cannot take: the connection closes
        (the contract logs why)."""

    def internal_error(self, error: BaseException) -> None:
        """Nor for a broker fault: the client sees the connection close and reconnects."""

    def connection_lost(self) -> None:
        for w in list(self.fetches):
            w.cancel()
        self.fetches.clear()
        self.held = []

    def pause(self) -> None:
        # the client does not take our answers: read no more requests until it does
        if not self._socket_paused:
            self._socket_paused = True
            self.conn.pause_reading()

    def resume(self) -> None:
        if self._socket_paused:
            self._socket_paused = False
            self.conn.resume_reading()

    def publishing_blocked(self, blocked: bool, reason: str) -> None:
        """The resource alarm: Produce answers are held (and reading stops once one is) until
        it clears; a client has a bounded number of requests in flight, so it stops producing.
        The answers then say how long they were held in ``throttle_time_ms`` for Produce v0-5,
        where that field reports a delay the broker applied; from v6 on a client takes the
        field as a wait still to come, and the wait is served already, so it stays 0."""
        self.blocked = blocked
        if blocked:
            return
        held, self.held = self.held, []
        if self._held_paused:
            self._held_paused = False
            self.conn.resume_reading()
        if not held:
            return
        now = self.broker.clock.seconds()

        def release() -> None:
            for ready, ver, corr, body, since in held:
                if ver < 6:
                    body["throttle_time_ms"] = min(int((now - since) * 1000), _MAX_THROTTLE_MS)
                ready(C.encode_response(C.PRODUCE, ver, corr, body))

        def failed(exc: BaseException) -> None:
            for ready, ver, corr, body, _ in held:
                ready(_not_durable(ver, corr, body))

        self.broker.when_durable(release, failed)

    # -- ApiVersions / SASL ------------------------------------------------------------------

    def _api_versions(self, hdr: C.RequestHeader, frame: memoryview, pos: int) -> None:
        ver = hdr.api_version
        keys = [
            {"api_key": k, "min_version": lo, "max_version": hi}
            for k, (lo, hi) in sorted(C.API_RANGES.items())
            if self.server.sasl or k not in (C.SASL_HANDSHAKE, C.SASL_AUTHENTICATE)
        ]
        if ver > 3 or ver < 0:
            body = {"error_code": C.UNSUPPORTED_VERSION, "api_keys": keys}
            out = C.encode_response(C.API_VERSIONS, 0, hdr.correlation_id, body)
        else:
            C.decode_body(C.API_VERSIONS, ver, frame[pos:])
            body = {"error_code": 0, "api_keys": keys, "throttle_time_ms": 0}
            out = C.encode_response(C.API_VERSIONS, ver, hdr.correlation_id, body)
        self.conn.reply(out)

    def _mechanisms(self) -> list[str]:
        """SCRAM always; PLAIN (a clear password) over TLS, or where the config allows it."""
        from polymq.core.security import security_of

        if self.conn.factory.tls or security_of(self.broker).sasl_plain_without_tls:
            return ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
        return ["SCRAM-SHA-256", "SCRAM-SHA-512"]

    def _sasl_handshake(self, ver: int, req: Any, reply: Callable) -> None:
        mechanisms = self._mechanisms()
        if not self.server.sasl or self.authenticated or self.sasl_mechanism is not None:
            return reply({"error_code": C.ILLEGAL_SASL_STATE, "mechanisms": mechanisms})
        if req.mechanism not in mechanisms:
            return reply({"error_code": C.UNSUPPORTED_SASL_MECHANISM, "mechanisms": mechanisms})
        self.sasl_mechanism = req.mechanism
        if req.mechanism != "PLAIN":
            from polymq.core.security import security_of
            from polymq.core.security.scram import ScramServer

            self.scram = ScramServer(req.mechanism, security_of(self.broker).scram_secret)
        if ver == 0:
            self.sasl_raw = True
        reply({"error_code": 0, "mechanisms": mechanisms})

    def _sasl_token(self, token: bytes, done: Callable[[bytes | None, str | None], None]) -> None:
        """One SASL token in; ``done(token out or None when authenticated, error text or
        None)`` is called now, or later when a PLAIN password is verified in a thread."""
        if self.sasl_mechanism == "PLAIN":
            return self._plain(token, done)
        from polymq.core.security import security_of
        from polymq.core.security.scram import ScramError

        scram = self.scram
        try:
            if scram._secret is None:
                return done(scram.first(token), None)
            final = scram.final(token)
        except (ScramError, UnicodeDecodeError) as e:
            return done(None, str(e) if isinstance(e, ScramError) else "malformed SCRAM message")
        result = security_of(self.broker).proven("kafka", scram.user, self.conn.transport.getPeer())
        if isinstance(result, Identity):
            result = self.conn.accept_identity(result) or result
        if not isinstance(result, Identity):
            return done(None, result.reason)
        self._logged_in(result)
        done(final, None)

    def _logged_in(self, result: Identity) -> None:
        self.identity = result
        self.authenticated = True
        self.started = True
        self.conn.handshake_done(user=result.user, client_id=self.client_id, vhost=self.vhost.name)

    def _plain(self, token: bytes, done: Callable[[bytes | None, str | None], None]) -> None:
        """Check a PLAIN token (RFC 4616: authzid NUL authcid NUL password)."""
        parts = token.split(b"\x00")
        if len(parts) != 3:
            return done(None, "malformed PLAIN token")
        user = parts[1].decode("utf-8", "replace")

        def answered(result: Any) -> None:
            if isinstance(result, Identity):
                self._logged_in(result)
                return done(None, None)
            done(None, getattr(result, "reason", "authentication failed"))

        self.conn.login(user, parts[2], answered)

    def _sasl_authenticate(self, ver: int, req: Any, reply: Callable) -> None:
        if self.sasl_mechanism is None or self.authenticated or self.sasl_raw:
            return reply(
                {
                    "error_code": C.ILLEGAL_SASL_STATE,
                    "error_message": "no handshake",
                    "auth_bytes": b"",
                    "session_lifetime_ms": 0,
                }
            )

        def done(out: bytes | None, err: str | None) -> None:
            if err is not None:
                reply(
                    {
                        "error_code": C.SASL_AUTHENTICATION_FAILED,
                        "error_message": err,
                        "auth_bytes": b"",
                        "session_lifetime_ms": 0,
                    }
                )
                log.info("kafka client {peer}: SASL refused: {e}", peer=self.peer, e=err)
                return
            reply(
                {
                    "error_code": 0,
                    "error_message": None,
                    "auth_bytes": out or b"",
                    "session_lifetime_ms": 0,
                }
            )

        self._sasl_token(bytes(req.auth_bytes), done)

    def _sasl_raw_token(self, token: bytes) -> None:
        # SaslHandshake v0: tokens travel length-prefixed without Kafka headers until done
        def done(out: bytes | None, err: str | None) -> None:
            if err is not None:
                raise ProtocolViolation(f"SASL refused: {err}")
            self.sasl_raw = not self.authenticated
            out = out or b""
            self.conn.reply(len(out).to_bytes(4, "big") + out)

        self._sasl_token(token, done)

    # -- permissions ---------------------------------------------------------------------------

    def _may_describe(self, kind: str, name: str) -> bool:
        """Kafka's Describe: implied by any of read, write, configure on the resource (as an
        Allow of Read/Write/Alter implies Describe in Kafka)."""
        authorize = self.conn.authorize
        return (
            authorize("read", kind, name)
            or authorize("write", kind, name)
            or authorize("configure", kind, name)
        )

    def _may_configure_cluster(self) -> bool:
        """Cluster-level operations (broker configs, creating any topic): configure on the
        resource ``cluster`` named ``kafka-cluster``, Kafka's name for it."""
        return self.conn.authorize("configure", "cluster", CLUSTER_RESOURCE)

    # -- Metadata ------------------------------------------------------------------------------

    def _topic(self, name: str, create: bool) -> Stream | None:
        """Topic ``name``; created when asked, allowed by the config and by the authorizer."""
        srv = self.server
        s = srv.topic(name)
        if (
            s is None
            and create
            and srv.auto_create
            and TOPIC_RE.match(name)
            and name not in self.vhost.queues
            and self.conn.authorize("configure", "topic", name)
        ):
            s = srv.topic(name, create=True)
        return s

    def _broker_entry(self) -> dict:
        port = self.server.advertised_port or self.local_port
        return {"node_id": NODE_ID, "host": self.server.advertised_host, "port": port, "rack": None}

    def _metadata(self, ver: int, req: Any, reply: Callable) -> None:
        srv = self.server
        if req.topics is None or (ver == 0 and not req.topics):
            # all topics: those the client may not describe are left out, silently
            streams = srv.topics()
            names = [s.name for s in streams if self._may_describe("topic", s.name)]
        else:
            names = [t.name for t in req.topics]
        allow = req.allow_auto_topic_creation if ver >= 4 else True
        topics = []
        for name in names:
            s = self._topic(name, allow)
            if s is not None and not self._may_describe("topic", name):
                s = None  # refused below, the same whether it exists or not
            if s is None:
                code = (
                    C.INVALID_TOPIC_EXCEPTION
                    if not TOPIC_RE.match(name)
                    # an unknown topic the client may not create is not "unknown" but refused,
                    # as Kafka answers (a client would wait for it to appear otherwise)
                    else C.TOPIC_AUTHORIZATION_FAILED
                    if not self._may_describe("topic", name)
                    or (
                        allow
                        and srv.auto_create
                        and not self.conn.authorize("configure", "topic", name)
                    )
                    else C.UNKNOWN_TOPIC_OR_PARTITION
                )
                topics.append(
                    {
                        "error_code": code,
                        "name": name,
                        "is_internal": False,
                        "partitions": [],
                        "topic_authorized_operations": -2147483648,
                    }
                )
                continue
            parts = [
                {
                    "error_code": 0,
                    "partition_index": i,
                    "leader_id": NODE_ID,
                    "leader_epoch": -1,
                    "replica_nodes": [NODE_ID],
                    "isr_nodes": [NODE_ID],
                    "offline_replicas": [],
                }
                for i in range(len(s.partitions))
            ]
            topics.append(
                {
                    "error_code": 0,
                    "name": name,
                    "is_internal": False,
                    "partitions": parts,
                    "topic_authorized_operations": -2147483648,
                }
            )
        reply(
            {
                "brokers": [self._broker_entry()],
                "cluster_id": CLUSTER_ID,
                "controller_id": NODE_ID,
                "topics": topics,
                "cluster_authorized_operations": -2147483648,
            }
        )

    # -- Produce -------------------------------------------------------------------------------

    # -- Produce -------------------------------------------------------------------------------

    def _produce(self, hdr: C.RequestHeader, req: C.ProduceRequest) -> None:
        acks = req.acks
        results = []
        bad_acks = acks not in (0, 1, -1)
        limit = self.broker.max_message_size
        writable = self._writable
        for name, parts in req.topics:
            denied = False
            if name not in writable and not bad_acks:
                if self.conn.authorize("write", "topic", name):
                    writable.add(name)
                else:
                    denied = True
            s = None if bad_acks or denied else self._topic(name, True)
            presults = []
            for index, records in parts:
                if bad_acks:
                    presults.append((index, C.INVALID_REQUIRED_ACKS, -1))
                elif denied:
                    presults.append((index, C.TOPIC_AUTHORIZATION_FAILED, -1))
                elif s is None:
                    code = (
                        C.INVALID_TOPIC_EXCEPTION
                        if not TOPIC_RE.match(name)
                        else C.UNKNOWN_TOPIC_OR_PARTITION
                    )
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
        body = {
            "responses": [
                {
                    "name": n,
                    "partition_responses": [
                        {
                            "index": i,
                            "error_code": e,
                            "base_offset": o,
                            "log_append_time_ms": -1,
                            "log_start_offset": self._log_start(n, i),
                        }
                        for i, e, o in ps
                    ],
                }
                for n, ps in results
            ],
            "throttle_time_ms": 0,
        }
        ver, corr = hdr.api_version, hdr.correlation_id
        if self.blocked:
            self._hold(ver, corr, body)
            return
        self.conn.reply_after_durable(
            C.encode_response(C.PRODUCE, ver, corr, body), partial(_not_durable, ver, corr, body)
        )

    def _hold(self, ver: int, corr: int, body: dict) -> None:
        """Keep a Produce answer until the resource alarm clears (see publishing_blocked)."""
        self.held.append((self.conn.reply_later(), ver, corr, body, self.broker.clock.seconds()))
        if not self._held_paused:
            self._held_paused = True
            self.conn.pause_reading()

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
        info = self.conn.info
        routed = True
        for b in batches:
            if b.attributes & T.ATTR_TRANSACTIONAL:
                # held back from other protocols until the transaction commits
                routed = False
                code = srv.txn.produced(b.producer_id, b.producer_epoch, name, index, p.next_offset)
                if code:
                    return (index, code, -1)
            if b.producer_id >= 0 and b.base_sequence >= 0:
                key = (b.producer_id, name, index)
                st = srv.producers.get(key) or srv.producer_state(key, p)
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
            info.messages_in += b.count
            if base is None:
                base = off
        if appended and routed:
            srv.route(s, name, appended)
        return (index, 0, base)

    # -- Fetch ---------------------------------------------------------------------------------

    def _fetch(self, hdr: C.RequestHeader, req: Any) -> None:
        readable = self._readable
        denied = None
        for t in req.topics:
            name = t.topic
            if name not in readable:
                if self.conn.authorize("read", "topic", name):
                    readable.add(name)
                else:
                    denied = denied or set()
                    denied.add(name)
        FetchWait(self, hdr, req, denied).start()

    # -- ListOffsets ---------------------------------------------------------------------------

    def _list_offsets(self, ver: int, req: Any, reply: Callable) -> None:
        topics = []
        # lookups by time may read the disk (a paged partition): the answer waits for them
        waiting = [1]

        def one_done() -> None:
            waiting[0] -= 1
            if not waiting[0]:
                reply({"topics": topics})

        def by_time(p: Any, out: dict, ts: int) -> None:
            def found(entries: list) -> None:
                out["offset"], out["timestamp"] = offset_for_time(p, entries, ts)
                one_done()

            waiting[0] += 1
            p.find_timestamp(ts, found)

        for t in req.topics:
            s = self.server.topic(t.name)
            described = self._may_describe("topic", t.name)
            parts = []
            for rp in t.partitions:
                out = {
                    "partition_index": rp.partition_index,
                    "error_code": 0,
                    "timestamp": -1,
                    "offset": -1,
                    "leader_epoch": -1,
                    "old_style_offsets": [],
                }
                if not described:
                    out["error_code"] = C.TOPIC_AUTHORIZATION_FAILED
                elif s is None or not 0 <= rp.partition_index < len(s.partitions):
                    out["error_code"] = C.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    p = s.partitions[rp.partition_index]
                    if rp.timestamp == -1:
                        out["offset"] = p.next_offset
                        if ver >= 2 and req.isolation_level == 1:
                            pt = self.server.txn.partitions.get((t.name, rp.partition_index))
                            if pt is not None:
                                out["offset"] = pt.last_stable(p.next_offset)
                    elif rp.timestamp == -2:
                        out["offset"] = p.start_offset
                    else:
                        by_time(p, out, rp.timestamp)
                parts.append(out)
            topics.append({"name": t.name, "partitions": parts})
        one_done()

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
                r.update(
                    error_code=C.TOPIC_ALREADY_EXISTS,
                    error_message=f"Topic '{t.name}' already exists.",
                )
            elif n <= 0 or n > 10000:
                r.update(error_code=C.INVALID_PARTITIONS, error_message="invalid partitions")
            elif t.replication_factor not in (-1, 1):
                r.update(
                    error_code=C.INVALID_REPLICATION_FACTOR,
                    error_message="replication factor must be 1 (one broker)",
                )
            elif any(
                c.name == "cleanup.policy" and "compact" in (c.value or "") for c in t.configs
            ):
                r.update(
                    error_code=40,  # INVALID_CONFIG: compaction is not implemented
                    error_message="cleanup.policy=compact is not supported (delete only)",
                )
            elif not (
                self._may_configure_cluster() or self.conn.authorize("configure", "topic", t.name)
            ):
                # Kafka: Create on the cluster, else Create on the topic
                r.update(error_code=C.TOPIC_AUTHORIZATION_FAILED, error_message="not authorized")
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
            if not self.conn.authorize("configure", "topic", name):
                out.append({"name": name, "error_code": C.TOPIC_AUTHORIZATION_FAILED})
                continue
            try:
                self.vhost.delete_queue(name)
                self.server.coordinator.forget_topic(name)
                self.server.txn.forget_topic(name)
                for key in [k for k in self.server.producers if k[1] == name]:
                    del self.server.producers[key]
                log.info("kafka topic {t} deleted", t=name)
                out.append({"name": name, "error_code": 0})
            except BrokerError:
                out.append({"name": name, "error_code": C.UNKNOWN_SERVER_ERROR})
        reply({"responses": out}, durable=True)

    def _describe_configs(self, ver: int, req: Any, reply: Callable) -> None:
        results = []
        for r in req.resources:
            res = {
                "error_code": 0,
                "error_message": None,
                "resource_type": r.resource_type,
                "resource_name": r.resource_name,
                "configs": [],
            }
            if r.resource_type == 2:  # topic
                s = self.server.topic(r.resource_name)
                if not self.conn.authorize("configure", "topic", r.resource_name):
                    res.update(
                        error_code=C.TOPIC_AUTHORIZATION_FAILED, error_message="not authorized"
                    )
                    results.append(res)
                    continue
                if s is None:
                    res.update(
                        error_code=C.UNKNOWN_TOPIC_OR_PARTITION, error_message="unknown topic"
                    )
                    results.append(res)
                    continue
                values = self._topic_configs(s)
            elif r.resource_type == 4:  # broker
                if not self._may_configure_cluster():
                    res.update(
                        error_code=C.CLUSTER_AUTHORIZATION_FAILED,
                        error_message="not authorized to describe the cluster's configuration",
                    )
                    results.append(res)
                    continue
                values = {
                    "message.max.bytes": (str(self.broker.max_message_size), True),
                    "num.partitions": (str(self.server.num_partitions), True),
                    "auto.create.topics.enable": (str(self.server.auto_create).lower(), True),
                    "broker.id": (str(NODE_ID), True),
                }
            else:
                res.update(error_code=C.INVALID_REQUEST, error_message="unsupported resource")
                results.append(res)
                continue
            keys = r.configuration_keys
            for name, (value, default) in values.items():
                if keys is not None and name not in keys:
                    continue
                res["configs"].append(
                    {
                        "name": name,
                        "value": value,
                        "read_only": True,
                        "is_default": default,
                        "config_source": 5 if default else 1,
                        "is_sensitive": False,
                        "synonyms": [],
                    }
                )
            results.append(res)
        reply({"results": results})

    def _topic_configs(self, s: Stream) -> dict[str, tuple[str, bool]]:
        values = {
            "cleanup.policy": ("delete", True),
            "retention.ms": (
                str(s.max_age_ms if s.max_age_ms is not None else -1),
                s.max_age_ms is None,
            ),
            "retention.bytes": (
                str(s.max_bytes if s.max_bytes is not None else -1),
                s.max_bytes is None,
            ),
            "max.message.bytes": (str(self.broker.max_message_size), True),
            "message.timestamp.type": ("CreateTime", True),
            "compression.type": ("producer", True),
        }
        for k, v in s.config.items():
            values[k] = (str(v), False)
        return values

    # -- groups --------------------------------------------------------------------------------

    def _find_coordinator(self, ver: int, req: Any, reply: Callable) -> None:
        b = self._broker_entry()
        key_type = req.key_type if ver >= 1 else 0
        if key_type == 0 and not self._may_describe("group", req.key):
            return reply(
                {
                    "error_code": C.GROUP_AUTHORIZATION_FAILED,
                    "error_message": "not authorized",
                    "node_id": -1,
                    "host": "",
                    "port": -1,
                }
            )
        if key_type not in (0, 1):  # 0 group, 1 transaction
            return reply(
                {
                    "error_code": C.INVALID_REQUEST,
                    "error_message": f"unknown coordinator key type {key_type}",
                    "node_id": -1,
                    "host": "",
                    "port": -1,
                }
            )
        reply(
            {
                "error_code": 0,
                "error_message": None,
                "node_id": NODE_ID,
                "host": b["host"],
                "port": b["port"],
            }
        )

    def _join_group(self, ver: int, req: Any, reply: Callable) -> None:
        if not self.conn.authorize("read", "group", req.group_id):
            return reply(
                {
                    "error_code": C.GROUP_AUTHORIZATION_FAILED,
                    "generation_id": -1,
                    "protocol_name": "",
                    "leader": "",
                    "member_id": req.member_id,
                    "members": [],
                }
            )
        rebalance = req.rebalance_timeout_ms if ver >= 1 else req.session_timeout_ms
        self.server.coordinator.join(
            req.group_id,
            req.member_id,
            self.client_id,
            "/" + (self.conn.info.peer_host or "?"),
            req.session_timeout_ms,
            rebalance,
            req.protocol_type,
            [(p.name, p.metadata) for p in req.protocols],
            reply,
            req.group_instance_id if ver >= 5 else None,
        )

    def _sync_group(self, ver: int, req: Any, reply: Callable) -> None:
        if not self.conn.authorize("read", "group", req.group_id):
            return reply({"error_code": C.GROUP_AUTHORIZATION_FAILED, "assignment": b""})
        self.server.coordinator.sync(
            req.group_id,
            req.generation_id,
            req.member_id,
            [(a.member_id, a.assignment) for a in req.assignments],
            reply,
        )

    def _heartbeat(self, ver: int, req: Any, reply: Callable) -> None:
        if not self.conn.authorize("read", "group", req.group_id):
            return reply({"error_code": C.GROUP_AUTHORIZATION_FAILED})
        reply(
            {
                "error_code": self.server.coordinator.heartbeat(
                    req.group_id, req.generation_id, req.member_id
                )
            }
        )

    def _leave_group(self, ver: int, req: Any, reply: Callable) -> None:
        if not self.conn.authorize("read", "group", req.group_id):
            return reply({"error_code": C.GROUP_AUTHORIZATION_FAILED})
        reply({"error_code": self.server.coordinator.leave(req.group_id, req.member_id)})

    def _offset_commit(self, ver: int, req: Any, reply: Callable) -> None:
        co = self.server.coordinator
        if not self.conn.authorize("read", "group", req.group_id):
            code = C.GROUP_AUTHORIZATION_FAILED
        else:
            code = co.check_commit(req.group_id, req.generation_id, req.member_id)
        topics = []
        for t in req.topics:
            parts = []
            topic_code = (
                code
                if code or self.conn.authorize("read", "topic", t.name)
                else C.TOPIC_AUTHORIZATION_FAILED
            )
            for p in t.partitions:
                c = topic_code
                if not c:
                    co.commit(
                        req.group_id,
                        t.name,
                        p.partition_index,
                        p.committed_offset,
                        p.committed_metadata,
                    )
                parts.append({"partition_index": p.partition_index, "error_code": c})
            topics.append({"name": t.name, "partitions": parts})
        reply({"topics": topics}, durable=True)

    def _offset_fetch(self, ver: int, req: Any, reply: Callable) -> None:
        co = self.server.coordinator
        topics = []
        if not self._may_describe("group", req.group_id):
            return reply({"topics": [], "error_code": C.GROUP_AUTHORIZATION_FAILED})
        if req.topics is None:
            by_topic: dict[str, list] = {}
            for (t, p), (off, md) in sorted(co.committed_all(req.group_id).items()):
                by_topic.setdefault(t, []).append((p, off, md))
        else:
            by_topic = {
                t.name: [(p, *co.committed(req.group_id, t.name, p)) for p in t.partition_indexes]
                for t in req.topics
            }
        for name, parts in by_topic.items():
            code = 0 if self._may_describe("topic", name) else C.TOPIC_AUTHORIZATION_FAILED
            if code and req.topics is None:
                continue  # all of the group's offsets: topics it may not describe left out
            topics.append(
                {
                    "name": name,
                    "partitions": [
                        {
                            "partition_index": p,
                            "committed_offset": off,
                            "committed_leader_epoch": -1,
                            "metadata": md if md is not None else "",
                            "error_code": code,
                        }
                        for p, off, md in parts
                    ],
                }
            )
        reply({"topics": topics, "error_code": 0})

    def _list_groups(self, ver: int, req: Any, reply: Callable) -> None:
        reply(
            {
                "error_code": 0,
                "groups": [
                    # Kafka: Describe on the cluster lists all; otherwise per group, silently
                    {"group_id": g, "protocol_type": t}
                    for g, t in self.server.coordinator.list_groups()
                    if self._may_configure_cluster() or self._may_describe("group", g)
                ],
            }
        )

    def _describe_groups(self, ver: int, req: Any, reply: Callable) -> None:
        groups = []
        for g in req.groups:
            if self._may_describe("group", g):
                groups.append(self.server.coordinator.describe(g))
                continue
            groups.append(
                {
                    "error_code": C.GROUP_AUTHORIZATION_FAILED,
                    "group_id": g,
                    "group_state": "",
                    "protocol_type": "",
                    "protocol_data": "",
                    "members": [],
                    "authorized_operations": -2147483648,
                }
            )
        reply({"groups": groups})

    HANDLERS: dict[int, Callable] = {
        C.METADATA: _metadata,
        C.FETCH: None,
        C.LIST_OFFSETS: _list_offsets,
        C.CREATE_TOPICS: _create_topics,
        C.DELETE_TOPICS: _delete_topics,
        C.DESCRIBE_CONFIGS: _describe_configs,
        C.INIT_PRODUCER_ID: T.init_producer_id,
        C.ADD_PARTITIONS_TO_TXN: T.add_partitions_to_txn,
        C.ADD_OFFSETS_TO_TXN: T.add_offsets_to_txn,
        C.END_TXN: T.end_txn,
        C.TXN_OFFSET_COMMIT: T.txn_offset_commit,
        C.CREATE_PARTITIONS: A.create_partitions,
        C.DELETE_RECORDS: A.delete_records,
        C.ALTER_CONFIGS: A.alter_configs,
        C.INCREMENTAL_ALTER_CONFIGS: A.incremental_alter_configs,
        C.DELETE_GROUPS: A.delete_groups,
        C.OFFSET_DELETE: A.offset_delete,
        C.DESCRIBE_CLUSTER: A.describe_cluster,
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


def _not_durable(ver: int, corr: int, body: dict) -> bytes:
    """A Produce answer for writes the store could not make durable (its database is away):
    every partition that was appended to answers KAFKA_STORAGE_ERROR, which clients retry."""
    failed = {
        "responses": [
            {
                "name": t["name"],
                "partition_responses": [
                    {**p, "error_code": C.KAFKA_STORAGE_ERROR, "base_offset": -1}
                    if p["error_code"] == C.NONE
                    else p
                    for p in t["partition_responses"]
                ],
            }
            for t in body["responses"]
        ],
        "throttle_time_ms": body.get("throttle_time_ms", 0),
    }
    return C.encode_response(C.PRODUCE, ver, corr, failed)


def _fill(body: dict) -> dict:
    if "throttle_time_ms" not in body:
        body["throttle_time_ms"] = 0
    return body
