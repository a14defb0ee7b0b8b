"""State shared by every OpenWire connection of one broker: temp destinations and their
advisories, client ids, and the encodings of messages kept for dispatch."""

from __future__ import annotations

import itertools
import sys
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from polymq.core.message import Message
from polymq.core.redelivery import RedeliveryPolicy
from polymq.core.xa import PreparedBranches

from . import codec as c
from .codec import Obj
from .mapping import core_to_jms

log = Logger(namespace="polymq.openwire")

if TYPE_CHECKING:
    from .consumers import ConsumerState
    from .session import OpenWireSession

# the largest body whose message keeps its dispatch encoding (a second copy of the body)
CACHE_MAX_BODY = 64 * 1024
# producers the HA producer audit remembers (ActiveMQ's keeps a bounded number too)
AUDIT_PRODUCERS = 65536

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

    __slots__ = (
        "type",
        "raw",
        "mark",
        "cmark",
        "producer_id",
        "destination",
        "transaction_id",
        "original_destination",
        "message_id",
        "original_transaction_id",
        "target_consumer_id",
        "data_structure",
    )

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
        self.advisory_consumers: list[tuple[OpenWireSession, ConsumerState]] = []
        # consumers of a wildcard queue (queue://a.>): they also read queues made later
        self.wildcard_consumers: list[tuple[OpenWireSession, ConsumerState]] = []
        self.sessions: set[OpenWireSession] = set()
        self.client_ids: dict[str, OpenWireSession] = {}
        self._ids = itertools.count(1)

        # the producer id of messages that did not come from a JMS producer
        self.synthetic_pid = Obj(c.PRODUCER_ID, connection_id=self.broker_id, value=0, session_id=0)
        self.no_local_consumers = 0
        # connections that negotiated no marshalling cache (the plain form): while there
        # are any, prime keeps what re-encodes a message in either form
        self.plain_sessions = 0
        self._watched_vhosts: set[str] = set()
        self.redelivery = RedeliveryPolicy.from_config(config)
        strategy = config.get("dead_letter_strategy", "shared")
        if strategy not in ("shared", "individual"):
            log.warn(
                "openwire: dead_letter_strategy {s!r} is neither 'shared' nor 'individual';"
                " using 'shared'",
                s=strategy,
            )
        self.dlq_individual = strategy == "individual"
        self.dlq_shared = config.get("dead_letter_queue") or "ActiveMQ.DLQ"
        self.dlq_queue_prefix = config.get("dead_letter_queue_prefix") or "ActiveMQ.DLQ.Queue."
        self.dlq_topic_prefix = config.get("dead_letter_topic_prefix") or "ActiveMQ.DLQ.Topic."
        # shared-store HA: the active node names every live node to its clients, as ActiveMQ's
        # updateClusterClients does, so a failover: URL naming one node learns the others
        self.ha = getattr(broker, "ha", None)
        # ActiveMQ's producer audit, for HA: the highest sequence id stored per producer
        # (``ID:connection:session:producer:``), so that a persistent message a failover
        # client sends again after the node that stored it died is answered, not enqueued
        # twice. Rebuilt from the store's messages when the node takes over.
        self.audit: OrderedDict[str, int] | None = None
        if self.ha is not None:
            self.ha.cluster_listeners.append(self._cluster_changed)
            self.audit = self._stored_producer_sequences()

    def _stored_producer_sequences(self) -> OrderedDict[str, int]:
        """Producer prefix -> highest sequence id among the stored messages of every queue."""
        audit: OrderedDict[str, int] = OrderedDict()
        for vhost in self.broker.vhosts.values():
            for q in list(vhost.queues.values()):
                browse = getattr(q, "browse", None)
                if browse is None:
                    continue
                for d in browse(sys.maxsize):
                    mid = d.message.message_id
                    if not mid or not mid.startswith("ID:"):
                        continue
                    prefix, _, seq = mid.rpartition(":")
                    if seq.isdigit():
                        key = prefix + ":"
                        if int(seq) > audit.get(key, -1):
                            audit[key] = int(seq)
        if audit:
            log.info("openwire: producer audit rebuilt for {n} producer(s)", n=len(audit))
        return audit

    def resent(self, producer: str, seq: int) -> bool:
        """True when ``producer``'s message ``seq`` was stored already (a resend); otherwise
        records it. Sequence ids of one producer only grow (ActiveMQ's client)."""
        audit = self.audit
        last = audit.get(producer)
        if last is not None:
            if seq <= last:
                return True
        elif len(audit) >= AUDIT_PRODUCERS:
            audit.popitem(last=False)  # the producer seen first goes (bounded memory)
        audit[producer] = seq
        return False

    def cluster_control(self) -> Obj | None:
        """The ConnectionControl naming every live HA node; None outside HA."""
        if self.ha is None or not self.ha.openwire_urls:
            return None
        return Obj(
            c.CONNECTION_CONTROL,
            connected_brokers=",".join(self.ha.openwire_urls),
            rebalance_connection=False,
        )

    def _cluster_changed(self, urls: list[str]) -> None:
        control = self.cluster_control()
        if control is None:
            return
        for session in list(self.sessions):
            if session.connection_id is not None and not session.closed:
                session.send(control)

    def add_wildcard_consumer(self, session: OpenWireSession, cs: ConsumerState) -> None:
        """Also give ``cs`` the matching queues its virtual host creates from now on (by
        any protocol)."""
        self.wildcard_consumers.append((session, cs))
        vhost = session.vhost
        if vhost.name not in self._watched_vhosts:
            self._watched_vhosts.add(vhost.name)
            vhost.queue_created.append(self._queue_created)

    def _queue_created(self, q: Any) -> None:
        for session, cs in list(self.wildcard_consumers):
            if session.vhost is q.vhost and cs.wildcard(q.name):
                session.attach_wildcard(cs, q)

    @property
    def prepared(self) -> PreparedBranches:
        """The broker's prepared XA branches (shared by every OpenWire listener)."""
        return PreparedBranches.of(self.broker)

    def dead_letter_queue(self, queue: str, topic: str | None = None) -> str | None:
        """The dead-letter queue of a queue (or of a durable subscription's queue on
        ``topic``); None for a dead-letter queue itself (a dead letter there stays dropped)."""
        if queue == self.dlq_shared or queue.startswith(
            (self.dlq_queue_prefix, self.dlq_topic_prefix)
        ):
            return None
        if not self.dlq_individual:
            return self.dlq_shared
        if topic is not None:
            return self.dlq_topic_prefix + topic
        return self.dlq_queue_prefix + queue

    def next_id(self) -> int:
        return next(self._ids)

    def prime(self, msg: Message, m: Obj) -> None:
        """Remember the frame of a message that came from a JMS producer: JMS -> JMS dispatch
        then takes its encoding from that frame (ids patched, in the form each consumer's
        connection negotiated) instead of converting and encoding it again."""
        if len(msg.body) > CACHE_MAX_BODY or m.message_id is None:
            return
        seq = next(self._ids)
        if m.mark is None and not self.plain_sessions and m.data_structure is None:
            # a frame in the cached form while every connection uses that form: its
            # dispatch encoding now, while the frame is in the CPU's cache, and only that
            # kept (not the frame too: a backlog holds one per message, and its size shows
            # in the time per message)
            data = c.reencode_message(m, seq, True)
            if data is not None:
                msg.encoded = (self, seq, None, None, data)
                return
        # only what reencode_message reads is kept (not the decoded frame's thirty fields)
        msg.encoded = (self, seq, _Frame(m), None, None)

    def encoded(self, msg: Message, cached: bool = False) -> tuple[int, bytes]:
        """The OpenWire encoding of a core message (plain or cached form) and its broker
        sequence id, shared by every consumer it is dispatched to (topic fan-out encodes
        once). The sequence id identifies the message in acknowledgements; the redelivery
        counter travels in MessageDispatch.

        Kept on the message (``Message.encoded``: this hub, the sequence id, what re-encodes
        it from its frame, the plain form, the cached form), so it goes with the message:
        nothing to forget on the ack, and what it holds is bounded by what the queues hold.
        Bodies over ``CACHE_MAX_BODY`` are encoded per dispatch instead (not kept twice)."""
        e = msg.encoded
        if e is not None and e[0] is self:
            data = e[4] if cached else e[3]
            if data is None:
                if e[2] is not None:
                    data = c.reencode_message(e[2], e[1], cached)
                if data is None:
                    data = c.encode_message(core_to_jms(msg, self.synthetic_pid, e[1]), cached)
                msg.encoded = (
                    (self, e[1], e[2], e[3], data) if cached else (self, e[1], e[2], data, e[4])
                )
            return e[1], data
        seq = next(self._ids)
        data = c.encode_message(core_to_jms(msg, self.synthetic_pid, seq), cached)
        if len(msg.body) <= CACHE_MAX_BODY:
            msg.encoded = (self, seq, None, None, data) if cached else (self, seq, None, data, None)
        return seq, data

    def add_temp(self, info: Obj) -> None:
        k = (info.destination.type, info.destination.physical_name)
        self.temp_dests[k] = info
        self._advise(info)

    def remove_temp(self, dest: Obj, conn_id: Obj | None) -> None:
        k = (dest.type, dest.physical_name)
        if self.temp_dests.pop(k, None) is None:
            return
        info = Obj(c.DESTINATION_INFO, connection_id=conn_id, destination=dest, operation_type=1)
        self._advise(info)

    def _advise(self, info: Obj) -> None:
        for conn, cs in list(self.advisory_consumers):
            if cs.wants_advisory(info.destination.type):
                conn.dispatch_advisory(cs, info)

    def add_advisory_consumer(self, conn: OpenWireSession, cs: ConsumerState) -> None:
        self.advisory_consumers.append((conn, cs))
        for info in list(self.temp_dests.values()):
            if cs.wants_advisory(info.destination.type):
                conn.dispatch_advisory(cs, info)

    def remove_advisory_consumer(self, cs: ConsumerState) -> None:
        self.advisory_consumers = [x for x in self.advisory_consumers if x[1] is not cs]
