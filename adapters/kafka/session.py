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
from typing import Any

from polymq.core.auth import Identity
from polymq.core.connection import ProtocolConnection, SessionBase
from polymq.core.stream import Stream

from . import admin as A
from . import codec as C
from . import group_requests as G
from . import txn as T
from .fetch import FetchWait, fetch, list_offsets
from .produce import produce, release_held
from .sasl import sasl_authenticate, sasl_handshake, sasl_raw_token
from .server import CLUSTER_ID, NODE_ID, TOPIC_RE, KafkaServer, ProtocolViolation

# the name of the cluster resource in permissions (Kafka's name for it)
CLUSTER_RESOURCE = "kafka-cluster"


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
        self.held_paused = False
        self._socket_paused = False
        # topics this connection was allowed to write / read (asked once each)
        self.writable: set[str] = set()
        self.readable: set[str] = set()

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
                sasl_raw_token(self, bytes(frame))
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
            return produce(self, hdr, C.decode_produce(ver, frame[pos:]))
        body = C.decode_body(api, ver, frame[pos:])
        if api == C.FETCH:
            return fetch(self, hdr, body)
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
        :func:`.produce.release_held` sends them when it clears."""
        self.blocked = blocked
        if not blocked:
            release_held(self)

    # -- ApiVersions ------------------------------------------------------------------------

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

    # -- permissions ---------------------------------------------------------------------------

    def may_describe(self, kind: str, name: str) -> bool:
        """Kafka's Describe: implied by any of read, write, configure on the resource (as an
        Allow of Read/Write/Alter implies Describe in Kafka)."""
        authorize = self.conn.authorize
        return (
            authorize("read", kind, name)
            or authorize("write", kind, name)
            or authorize("configure", kind, name)
        )

    def may_configure_cluster(self) -> bool:
        """Cluster-level operations (broker configs, creating any topic): configure on the
        resource ``cluster`` named ``kafka-cluster``, Kafka's name for it."""
        return self.conn.authorize("configure", "cluster", CLUSTER_RESOURCE)

    # -- topics and Metadata -------------------------------------------------------------------

    def topic(self, name: str, create: bool) -> Stream | None:
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

    def broker_entry(self) -> dict:
        port = self.server.advertised_port or self.local_port
        return {"node_id": NODE_ID, "host": self.server.advertised_host, "port": port, "rack": None}

    def _metadata(self, ver: int, req: Any, reply: Callable) -> None:
        srv = self.server
        if req.topics is None or (ver == 0 and not req.topics):
            # all topics: those the client may not describe are left out, silently
            streams = srv.topics()
            names = [s.name for s in streams if self.may_describe("topic", s.name)]
        else:
            names = [t.name for t in req.topics]
        allow = req.allow_auto_topic_creation if ver >= 4 else True
        topics = []
        for name in names:
            s = self.topic(name, allow)
            if s is not None and not self.may_describe("topic", name):
                s = None  # refused below, the same whether it exists or not
            if s is None:
                code = (
                    C.INVALID_TOPIC_EXCEPTION
                    if not TOPIC_RE.match(name)
                    # an unknown topic the client may not create is not "unknown" but refused,
                    # as Kafka answers (a client would wait for it to appear otherwise)
                    else C.TOPIC_AUTHORIZATION_FAILED
                    if not self.may_describe("topic", name)
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
                "brokers": [self.broker_entry()],
                "cluster_id": CLUSTER_ID,
                "controller_id": NODE_ID,
                "topics": topics,
                "cluster_authorized_operations": -2147483648,
            }
        )

    HANDLERS: dict[int, Callable] = {
        C.METADATA: _metadata,
        C.FETCH: None,
        C.LIST_OFFSETS: list_offsets,
        C.CREATE_TOPICS: A.create_topics,
        C.DELETE_TOPICS: A.delete_topics,
        C.DESCRIBE_CONFIGS: A.describe_configs,
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
        C.FIND_COORDINATOR: G.find_coordinator,
        C.JOIN_GROUP: G.join_group,
        C.SYNC_GROUP: G.sync_group,
        C.HEARTBEAT: G.heartbeat,
        C.LEAVE_GROUP: G.leave_group,
        C.OFFSET_COMMIT: G.offset_commit,
        C.OFFSET_FETCH: G.offset_fetch,
        C.LIST_GROUPS: G.list_groups,
        C.DESCRIBE_GROUPS: G.describe_groups,
        C.SASL_HANDSHAKE: sasl_handshake,
        C.SASL_AUTHENTICATE: sasl_authenticate,
    }


def _fill(body: dict) -> dict:
    if "throttle_time_ms" not in body:
        body["throttle_time_ms"] = 0
    return body
