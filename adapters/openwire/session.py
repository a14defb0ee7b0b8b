"""The OpenWire session: one client connection's state machine on the adapter contract.

:meth:`OpenWireSession.frames_received` gets the frames of each read from the connection's
length-prefixed framer. The first must be the client's WireFormatInfo (the handshake: version,
marshalling cache, inactivity interval); every later frame is a command, decoded and handled
here (connections, sessions, producers, publishing, transactions), in
:class:`.consumers.ConsumerHandling` (consumers, dispatch, acknowledgements) or in
:class:`.destinations.DestinationHandling` (queues made on first use, scheduled sends, temp
destinations, durable subscription removal). No sockets here:
output goes through the :class:`~polymq.core.connection.ProtocolConnection`.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from polymq.core.auth import Refusal
from polymq.core.connection import ProtocolConnection, SessionBase
from polymq.core.errors import BrokerError, IdleTimeout, ProtocolError
from polymq.core.message import Message
from polymq.core.tx import Transaction

from . import codec as c
from .codec import Obj
from .consumers import ConsumerHandling, ConsumerState
from .destinations import SCHEDULE_PROPERTIES, DestinationHandling, error_class
from .mapping import (
    ADVISORY_PREFIX,
    _id_prefix,
    is_topic,
    jms_to_core,
    key_of,
    split_dest,
)

if TYPE_CHECKING:
    from .hub import OpenWireHub

log = Logger(namespace="polymq.openwire")

PROTOCOL_VERSION = 12
NOT_DURABLE_TEXT = "polymq: the store could not make this durable (database away); not accepted"
MIN_VERSION = 9
_WF_TYPES = {
    "MaxInactivityDuration": "long",
    "MaxInactivityDurationInitalDelay": "long",
    "MaxFrameSize": "long",
}

TX_BEGIN, TX_PREPARE, TX_COMMIT_ONE, TX_COMMIT_TWO, TX_ROLLBACK = 0, 1, 2, 3, 4
TX_RECOVER, TX_FORGET, TX_END = 5, 6, 7
XA_OK = 0
XA_EXCEPTION = "javax.transaction.xa.XAException"

_BEFORE_CONNECTION = frozenset(
    (
        c.CONNECTION_INFO,
        c.KEEP_ALIVE_INFO,
        c.SHUTDOWN_INFO,
        c.RESPONSE,
        c.EXCEPTION_RESPONSE,
        c.CONNECTION_ERROR,
        c.CONNECTION_CONTROL,
        c.CONSUMER_CONTROL,
        c.CONTROL_COMMAND,
        c.FLUSH_COMMAND,
    )
)
_ACK, _WIREFORMAT, _MESSAGE_TYPES = c.MESSAGE_ACK, c.WIREFORMAT_INFO, c.MESSAGE_TYPES


def xid_record(tid: Obj) -> list:
    """An XATransactionId as a storable value: [format id, global id, branch qualifier]."""
    # (a client may leave either id out: the empty id then)
    gtrid, bqual = tid.global_transaction_id or b"", tid.branch_qualifier or b""
    return [tid.format_id, bytes(gtrid), bytes(bqual)]


def xid_key(tid: Obj) -> str:
    fmt, gtrid, bqual = xid_record(tid)
    return f"{fmt}:{gtrid.hex()}:{bqual.hex()}"


class OpenWireSession(ConsumerHandling, DestinationHandling, SessionBase):
    """One OpenWire client connection."""

    def __init__(self, conn: ProtocolConnection, hub: OpenWireHub, settings: dict) -> None:
        super().__init__(conn)
        self.hub = hub
        self.broker = hub.broker
        self.vhost = hub.broker.vhost()
        self.write = conn.write
        self.encoded = hub.encoded  # (per dispatch)
        self.reply = conn.reply
        self.settings = settings
        self.max_size = hub.broker.max_message_size
        self.negotiated = False
        self.connection_id: Obj | None = None
        self.conn_key = uuid.uuid4().hex
        self.client_id: str | None = None
        self.consumers: dict[tuple, ConsumerState] = {}
        self.transactions: dict[tuple, tuple[Transaction, list]] = {}
        self.temp_dests: list[Obj] = []
        self.windowed_producers: set[tuple] = set()  # producers with a producerWindowSize
        self.paused = False
        self.closed = False
        self._resend_logged = False  # a resend after a failover is logged once per connection
        self.ucache: list | None = None  # the unmarshalling cache, when negotiated
        self.cached = False
        self.cache_size = 0
        self._slots_used = 0
        self._ack_cid: Obj | None = None  # the consumer id of the last ack, and its consumer
        self._ack_cs: ConsumerState | None = None
        self._liveness_start: Any = None  # the inactivity monitor's initial delay
        # destinations this connection was allowed to publish to (asked once each)
        self._may_write: set[tuple[int, str]] = set()
        # the broker-wide resource alarm: publishers' reading paused, ProducerAcks held
        self.blocked = False
        self._held_acks: list[bytes] = []
        self.publishing = False  # a producer or a message seen: a publisher to hold back
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
        hub.sessions.add(self)

    # -- the contract ------------------------------------------------------------------------

    def connection_made(self) -> None:
        """Send our WireFormatInfo at once: the client waits for it before anything else."""
        s = self.settings
        props = {
            "TightEncodingEnabled": False,
            "CacheEnabled": s["cache_size"] > 0,
            "StackTraceEnabled": False,
            "TcpNoDelayEnabled": True,
            "SizePrefixDisabled": False,
            "CacheSize": s["cache_size"],
            "MaxInactivityDuration": s["max_inactivity_ms"],
            "MaxInactivityDurationInitalDelay": s["initial_delay_ms"],
            "MaxFrameSize": s["max_frame_size"],
        }
        self.write(c.encode_wireformat(PROTOCOL_VERSION, props, _WF_TYPES))

    def frames_received(self, frames: list) -> None:
        # the per-frame dispatch, inlined: this loop runs for every frame
        uc = self.ucache
        handle, decode = self.handle, c.decode_command
        on_message = self.on_message
        conn = self.conn
        for i, frame in enumerate(frames):
            if not self.negotiated:
                self._hello(frame)
                uc = self.ucache
                continue
            t = frame[0]
            if t == _ACK and uc is not None:
                # the common ack is settled from a few fields, without decoding it
                fields = c.ack_fields(frame, uc)
                if fields is None or not self.standard_ack(fields):
                    handle(decode(frame, uc))
            elif t in _MESSAGE_TYPES:
                on_message(decode(frame, uc))
                if self.blocked:  # the alarm holds this publisher: the rest of the read waits
                    conn.hold_publisher(frames[i + 1 :])
                    return
            elif t != _WIREFORMAT:  # a repeated WireFormatInfo changes nothing
                handle(decode(frame, uc))
                if conn.logging_in:  # ConnectionInfo waits for its login: the rest waits too
                    conn.hold_frames(frames, after=frame)
                    return
            if conn.closing:
                return

    def protocol_error(self, error: Exception) -> None:
        # an idle peer is just closed (as ActiveMQ does); before the handshake there is no
        # negotiated format to answer in
        if isinstance(error, IdleTimeout) or not self.negotiated:
            return
        self._connection_error("java.io.IOException", str(error))

    def internal_error(self, error: BaseException) -> None:
        if self.negotiated:
            self._connection_error("java.io.IOException", "internal broker error")

    def connection_lost(self) -> None:
        t = self._liveness_start
        if t is not None and t.active():
            t.cancel()
        self._liveness_start = None
        self.connection_closed()

    def keepalive(self) -> None:
        self.send(Obj(c.KEEP_ALIVE_INFO))

    def publishing_blocked(self, blocked: bool, reason: str) -> None:
        """The resource alarm: a publisher's reading stops (its sends wait in the socket) and
        the ProducerAcks that give back producer windows are held until it clears."""
        self.blocked = blocked
        if blocked:
            if self.publishing:
                self.conn.hold_publisher([])
            return
        # reading resumes in core (release_publisher) once this returns
        held, self._held_acks = self._held_acks, []
        for data in held:
            self.write(data)

    # -- the handshake -----------------------------------------------------------------------

    def _hello(self, frame: bytes) -> None:
        version, props = c.decode_wireformat(frame, 64)
        if version < MIN_VERSION:
            raise ProtocolError(f"OpenWire version {version} is not supported")
        self.negotiated = True
        self.conn.handshake_done()
        # the marshalling cache: on when both sides enable it, of the smaller size
        ours_cache = self.settings["cache_size"]
        theirs_cache = props.get("CacheSize")
        if (
            ours_cache > 0
            and props.get("CacheEnabled") is True
            and isinstance(theirs_cache, int)
            and theirs_cache > 0
        ):
            self.enable_cache(min(theirs_cache, ours_cache))
        else:
            self.hub.plain_sessions += 1
        self.send(self.broker_info())
        theirs = props.get("MaxInactivityDuration", 0)
        ours = self.settings["max_inactivity_ms"]
        if not isinstance(theirs, int):
            theirs = 0
        interval = min(theirs, ours) if theirs > 0 and ours > 0 else 0
        if interval > 0:
            # both sides use the smaller initial delay (as they do the smaller period); then
            # a silent peer is closed after one interval, and we write at a third of it
            delay = self.settings["initial_delay_ms"]
            theirs_delay = props.get("MaxInactivityDurationInitalDelay")
            if isinstance(theirs_delay, int) and 0 <= theirs_delay < delay:
                delay = theirs_delay
            self._liveness_start = self.broker.clock.callLater(
                delay / 1000.0, self._start_liveness, interval / 1000.0
            )

    def _start_liveness(self, interval: float) -> None:
        self._liveness_start = None
        self.conn.set_liveness(interval, interval / 3)

    # -- output helpers ------------------------------------------------------------------

    def send(self, obj: Obj) -> None:
        """A frame that answers no request (BrokerInfo, a dispatch, a keep-alive)."""
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
            self.reply(c.encode_response(cmd.command_id))

    def _respond_id(self, command_id: int) -> None:
        self.reply(c.encode_response(command_id))

    def respond_error(self, cmd: Obj, cls: str, text: str) -> None:
        if cmd.response_required:
            self.reply(
                c.encode_frame(
                    Obj(c.EXCEPTION_RESPONSE, correlation_id=cmd.command_id, exception=(cls, text)),
                    self.cached,
                )
            )

    def _not_durable(self, command_id: int) -> bytes:
        """The answer to a request whose writes the store could not make durable: the client's
        send (or commit) throws, as with ActiveMQ's store IOException."""
        return c.encode_frame(
            Obj(
                c.EXCEPTION_RESPONSE,
                correlation_id=command_id,
                exception=("java.io.IOException", NOT_DURABLE_TEXT),
            ),
            self.cached,
        )

    def broker_info(self) -> Obj:
        # the address clients are told (ha.advertised_host sets advertised_host in HA setups)
        cfg = self.hub.config
        host = cfg.get("advertised_host") or cfg.get("host") or "polymq"
        port = self.conn.info.local_port or cfg.get("port") or 61616
        return Obj(
            c.BROKER_INFO,
            broker_id=Obj(c.BROKER_ID, value=self.hub.broker_id),
            broker_url=f"tcp://{host}:{port}",
            broker_name="polymq",
        )

    def _connection_error(self, cls: str, text: str) -> None:
        self.send(Obj(c.CONNECTION_ERROR, exception=(cls, text), connection_id=self.connection_id))

    def close_transport(self) -> None:
        self.conn.close()

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, cmd: Obj) -> None:
        """Act on one decoded command. The codec has checked the type of every nested object;
        a required one that is missing is answered here."""
        t = cmd.type
        if t in _MESSAGE_TYPES:
            return self.on_message(cmd)
        h = self._handlers.get(t)
        if h is None:
            self.respond_error(cmd, "javax.jms.JMSException", f"unsupported command {cmd.name}")
            return
        if self.connection_id is None and t not in _BEFORE_CONNECTION:
            raise ProtocolError(f"{cmd.name} before ConnectionInfo")
        try:
            h(cmd)
        except BrokerError as e:
            self.respond_error(cmd, error_class(e), e.text)

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
        if cmd.connection_id is None:
            raise ProtocolError("ConnectionInfo without a connection id")
        # a password hash may be verified in a thread: the commands after this one wait
        self.conn.login(
            cmd.user_name, cmd.password, lambda result: self._connection_info_answered(cmd, result)
        )

    def _connection_info_answered(self, cmd: Obj, result: Any) -> None:
        if self.closed:
            return
        if isinstance(result, Refusal):
            self.respond_error(cmd, "java.lang.SecurityException", result.reason)
            log.info(
                "openwire: login refused for {user} from {peer}: {reason}",
                user=cmd.user_name,
                peer=self.conn.peer,
                reason=result.reason,
            )
            self.broker.clock.callLater(0.1, self.close_transport)
            return
        if cmd.client_id:
            other = self.hub.client_ids.get(cmd.client_id)
            if other is not None and other is not self and not other.closed:
                if not cmd.failover_reconnect:
                    self.respond_error(
                        cmd,
                        "javax.jms.InvalidClientIDException",
                        f"client id {cmd.client_id} is already in use",
                    )
                    return
                # a failover client back before its old connection timed out: the new
                # connection takes the client id over
                log.info(
                    "openwire: client {cid} reconnected; closing its old connection",
                    cid=cmd.client_id,
                )
                other.connection_closed()
                other.close_transport()
            self.hub.client_ids[cmd.client_id] = self
        self.connection_id = cmd.connection_id
        self.client_id = cmd.client_id
        self.conn.handshake_done(user=result.user, client_id=cmd.client_id, vhost=self.vhost.name)
        self.respond(cmd)
        control = self.hub.cluster_control()
        if control is not None:
            self.send(control)

    def on_session_info(self, cmd: Obj) -> None:
        self.respond(cmd)

    def on_producer_info(self, cmd: Obj) -> None:
        self.publishing = True
        if self.blocked:
            self.conn.hold_publisher([])
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
        self.hub.sessions.discard(self)
        if self.negotiated and not self.cached:
            self.hub.plain_sessions -= 1
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
        self.conn.info.messages_in += 1
        if self.blocked:
            self.publishing = True
        dest = m.destination
        if dest is None:
            self.respond_error(m, "javax.jms.InvalidDestinationException", "no destination")
            return
        try:
            # the sending connection is recorded only while some consumer is noLocal
            msg = jms_to_core(
                m, self.max_size, self.conn_key if self.hub.no_local_consumers else None
            )
        except c.DecodeError as e:  # a body or properties that do not decode: this message
            self.respond_error(m, "javax.jms.MessageFormatException", str(e))
            return
        if len(msg.body) > self.max_size:
            self.respond_error(m, "javax.jms.JMSException", "message exceeds the maximum size")
            return
        if self.hub.audit is not None and m.persistent and m.transaction_id is None:
            mid = m.message_id
            if mid is not None and mid.producer_id is not None:
                if self.hub.resent(_id_prefix(mid.producer_id), mid.producer_sequence_id):
                    self._resent(m, msg)
                    return
        name = dest.physical_name
        if msg.headers and not SCHEDULE_PROPERTIES.isdisjoint(msg.headers):
            self._schedule(m, msg, dest)
            return
        if m.transaction_id is None and name and "," not in name:
            # the common case, one destination outside a transaction
            t = dest.type
            vhost = self.vhost
            try:
                if (t, name) not in self._may_write:
                    self._check_write(t, name)
                if m.data_structure is None:
                    self.hub.prime(msg, m)
                if t == c.TOPIC or t == c.TEMP_TOPIC:
                    if not name.startswith(ADVISORY_PREFIX):
                        vhost.publish("amq.topic", name, msg)
                else:
                    if t == c.QUEUE and name not in vhost.queues:
                        self._ensure_queue(name)
                    vhost.publish("", name, msg)
            except BrokerError as e:
                self.respond_error(m, error_class(e), e.text)
                return
            if m.response_required or self.windowed_producers:  # (else nothing to answer)
                self._after_publish(m, msg, False)
            return
        tx = None
        if m.transaction_id is not None:
            entry = self.transactions.get(key_of(m.transaction_id))
            if entry is None:
                entry = self._begin(m.transaction_id)
            tx = entry[0]
        if name and "," not in name:
            parts = [(dest.type, name)]
        else:
            parts = split_dest(dest)
            if not parts or not all(name for _, name in parts):
                self.respond_error(
                    m, "javax.jms.InvalidDestinationException", "empty destination name"
                )
                return
        try:
            for t, name in parts:
                if (t, name) not in self._may_write:
                    self._check_write(t, name)
            if len(parts) == 1 and tx is None and m.data_structure is None:
                self.hub.prime(msg, m)
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
            self.respond_error(m, error_class(e), e.text)
            return
        self._after_publish(m, msg, tx is not None)

    def _resent(self, m: Obj, msg: Message) -> None:
        """A persistent message stored before (a failover client's resend): answered as
        ActiveMQ's producer audit does, not enqueued again."""
        if not self._resend_logged:
            self._resend_logged = True
            log.info(
                "openwire: {peer} sent message {mid} again (stored before a failover or a"
                " reconnect); answered, not enqueued twice",
                peer=self.conn.peer,
                mid=msg.message_id,
            )
        self._after_publish(m, msg, False)

    def _after_publish(self, m: Obj, msg: Message, in_tx: bool) -> None:
        """The producer window given back, or the response (once durable, for a persistent
        message outside a transaction)."""
        if (
            not m.response_required
            and self.windowed_producers
            and key_of(m.producer_id) in self.windowed_producers
        ):
            # async send under a producer window: give the window back (the client counts a
            # message as 1024 bytes plus its content and marshalled properties)
            size = 1024 + len(m.content or b"") + len(m.marshalled_properties or b"")
            ack = c.encode_frame(
                Obj(c.PRODUCER_ACK, producer_id=m.producer_id, size=size), self.cached
            )
            if self.blocked:
                self._held_acks.append(ack)  # the window stays used while the alarm lasts
            else:
                self.write(ack)
        if m.response_required:
            if msg.durable and not in_tx:
                self.conn.reply_after_durable(
                    c.encode_response(m.command_id), partial(self._not_durable, m.command_id)
                )
            else:
                self.reply(c.encode_response(m.command_id))

    # -- transactions -----------------------------------------------------------------------

    def _begin(self, tid: Obj) -> tuple[Transaction, list]:
        entry = (Transaction(self.vhost), [])
        self.transactions[key_of(tid)] = entry
        return entry

    def _rollback(self, entry: tuple[Transaction, list]) -> None:
        """Discard a transaction. Its acknowledged deliveries stay with their consumer (the
        JMS client redelivers them itself); those of a consumer closed meanwhile go back to
        their queue."""
        entry[0].rollback()  # (the consumers' ledgers apply that rule)

    def _commit(self, entry: tuple[Transaction, list], cmd: Obj) -> None:
        tx, settled = entry
        self._settled_for_good(settled)
        tx.commit()
        if cmd.response_required:  # once the transaction's writes are on disk
            self.conn.reply_after_durable(
                c.encode_response(cmd.command_id), partial(self._not_durable, cmd.command_id)
            )
        for cs in {x[0] for x in settled}:
            cs.credit_back()

    @staticmethod
    def _settled_for_good(settled: list) -> None:
        for cs, s, _ in settled:
            cs.in_tx.discard(s)
            if cs.dispatched.pop(s, None) is not None:
                cs.delivered.discard(s)

    def on_transaction(self, cmd: Obj) -> None:
        tid = cmd.transaction_id
        t = cmd.tx_type
        if tid is None:
            if t == TX_RECOVER:
                self._xa_recover(cmd)
            else:
                self.respond(cmd)
            return
        if tid.type == c.XA_TRANSACTION_ID:
            self._on_xa(cmd, tid, t)
            return
        k = key_of(tid)
        if t == TX_BEGIN:
            if k not in self.transactions:
                self._begin(tid)
            self.respond(cmd)
        elif t in (TX_COMMIT_ONE, TX_COMMIT_TWO):
            entry = self.transactions.pop(k, None)
            if entry is None:
                self.respond(cmd)
                return
            self._commit(entry, cmd)
        elif t == TX_ROLLBACK:
            entry = self.transactions.pop(k, None)
            if entry is not None:
                self._rollback(entry)
            self.respond(cmd)
        else:
            # prepare, recover, forget exist only for XA branches
            self.respond_error(
                cmd, "javax.jms.JMSException", "two-phase commit needs an XA transaction"
            )

    # -- XA ---------------------------------------------------------------------------------

    def _on_xa(self, cmd: Obj, tid: Obj, t: int) -> None:
        """An XA branch runs as a local transaction until PREPARE makes it durable
        (core/xa.py); COMMIT / ROLLBACK of a prepared branch may come from any connection,
        also after a restart."""
        k = key_of(tid)
        xkey = xid_key(tid)
        prepared = self.hub.prepared
        if t == TX_BEGIN:
            if k not in self.transactions:
                self._begin(tid)
            self.respond(cmd)
        elif t == TX_END or t == TX_FORGET:
            self.respond(cmd)
        elif t == TX_PREPARE:
            entry = self.transactions.pop(k, None)
            if entry is None:
                self.respond_error(cmd, XA_EXCEPTION, f"no active XA branch {xkey} to prepare")
                return
            if xkey in prepared.branches:
                self._rollback(entry)
                self.respond_error(cmd, XA_EXCEPTION, f"XA branch {xkey} is already prepared")
                return
            tx, settled = entry
            command_id, wanted = cmd.command_id, cmd.response_required

            def answer() -> None:
                if wanted and not self.closed:
                    self.reply(
                        c.encode_frame(
                            Obj(c.INTEGER_RESPONSE, correlation_id=command_id, result=XA_OK),
                            self.cached,
                        )
                    )

            prepared.prepare(xkey, xid_record(tid), tx, settled, answer)
        elif t in (TX_COMMIT_ONE, TX_COMMIT_TWO):
            entry = self.transactions.pop(k, None)
            if entry is not None:  # one-phase commit of a branch that was never prepared
                self._commit(entry, cmd)
                return
            b = prepared.take(xkey)
            if b is None:
                self.respond_error(cmd, XA_EXCEPTION, f"no prepared XA branch {xkey}")
                return
            self._settled_for_good(b.settled)
            prepared.commit(b)
            if cmd.response_required:
                self.conn.reply_after_durable(
                    c.encode_response(cmd.command_id), partial(self._not_durable, cmd.command_id)
                )
            for cs in {x[0] for x in b.settled}:
                cs.credit_back()
        elif t == TX_ROLLBACK:
            entry = self.transactions.pop(k, None)
            if entry is not None:
                self._rollback(entry)
                self.respond(cmd)
                return
            b = prepared.take(xkey)
            if b is None:
                self.respond_error(cmd, XA_EXCEPTION, f"no XA branch {xkey}")
                return
            deliveries = prepared.rollback(b)  # (the consumers' ledgers apply JMS's rule)
            prepared.keep_unsettled(deliveries)
            if cmd.response_required:
                self.conn.reply_after_durable(c.encode_response(cmd.command_id))
        else:
            self.respond(cmd)

    def _xa_recover(self, cmd: Obj) -> None:
        """The prepared branches of this connection's virtual host (any connection's, and
        those restored after a restart)."""
        if not cmd.response_required:
            return
        xids = [
            Obj(
                c.XA_TRANSACTION_ID,
                format_id=fmt,
                global_transaction_id=gtrid,
                branch_qualifier=bqual,
            )
            for fmt, gtrid, bqual in self.hub.prepared.xids(self.vhost.name)
        ]
        self.reply(
            c.encode_frame(
                Obj(c.DATA_ARRAY_RESPONSE, correlation_id=cmd.command_id, data=xids),
                self.cached,
            )
        )
