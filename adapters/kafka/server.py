"""What every connection of one Kafka listener shares: topics (the core's streams), producer-id
and idempotence state, the group coordinator."""

from __future__ import annotations

import re
import struct
from collections import deque
from typing import Any

from twisted.logger import Logger

from polymq.core.errors import BrokerError, ProtocolError
from polymq.core.stream import Partition, Stream, StreamEntry, StreamFormat

from .groups import Coordinator
from .records import _HDR, HEADER_SIZE, BatchError, decode_messages, encode_messages
from .txn import ATTR_TRANSACTIONAL, TxnCoordinator

log = Logger(namespace="polymq.kafka")

FORMAT = "kafka"
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
NODE_ID = 1
CLUSTER_ID = "polymq"
RECENT_BATCHES = 5
_PID = struct.Struct(">q")
# how far back from a partition's end a producer's last batches are looked for after a restart
# or a failover (see KafkaServer.producer_state)
PRODUCER_SCAN_ENTRIES = 5000


class ProtocolViolation(ProtocolError):
    """A request Kafka does not allow here: the connection closes (Kafka has no error frame
    for a request it cannot parse or does not support)."""


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
        self.coordinator = Coordinator(
            broker, int(section.get("group_initial_rebalance_delay_ms", 0))
        )
        self.producers: dict[tuple[int, str, int], ProducerState] = {}
        self.producer_epochs: dict[int, int] = {}
        if FORMAT not in broker.stream_formats:
            broker.stream_formats[FORMAT] = StreamFormat(FORMAT, decode_messages, encode_messages)
        self.txn = TxnCoordinator(self)

    FORMAT = FORMAT

    # -- routing to other protocols -------------------------------------------------------------

    def route(self, s: Stream, name: str, batches: list[bytes]) -> None:
        """Pass produced batches on through amq.topic to subscribers other than the stream."""
        if not self.vhost.reaches_beyond("amq.topic", name, s):
            return
        try:
            for data in batches:
                for m in decode_messages(data):
                    self.vhost.publish("amq.topic", name, m, exclude=s)
        except (BatchError, BrokerError) as e:
            log.warn("kafka produce to {t} not routed to other protocols: {e}", t=name, e=e)

    def route_committed(
        self, s: Stream, name: str, p: Partition, first: int, end: int, pid: int
    ) -> None:
        """Route a committed transaction's batches in [first, end) of one partition (they were
        held back from other protocols until the commit)."""
        batches = []
        for e in p.read(first, 1 << 62):
            if e.offset >= end:
                break
            if e.fmt != FORMAT or len(e.data) < 61:
                continue
            attrs, batch_pid = (
                struct.unpack_from(">h", e.data, 21)[0],
                _PID.unpack_from(e.data, 43)[0],
            )
            if batch_pid == pid and attrs & ATTR_TRANSACTIONAL:
                batches.append(e.data)
        if batches:
            self.route(s, name, batches)

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

    def producer_state(self, key: tuple[int, str, int], p: Partition) -> ProducerState | None:
        """The idempotence state of (producer id, topic, partition), rebuilt from the log when
        this process has not seen the producer yet (a restart, or a failover to this node).

        The stored batches keep their headers (producer id, epoch, base sequence), committed
        in the same transaction as the records: a retry of a batch the previous node appended,
        but could not answer, is then recognised. Called once per producer and partition.
        """
        st = self.producers.get(key)
        if st is not None:
            return st
        pid = key[0]
        found: list[tuple[int, int, int]] = []
        epoch = None
        entries = p.entries
        for e in reversed(entries[-PRODUCER_SCAN_ENTRIES:]):
            if e.fmt != FORMAT or len(e.data) < HEADER_SIZE:
                continue
            h = _HDR.unpack_from(e.data, 0)
            if h[9] != pid or h[11] < 0:
                continue
            if epoch is None:
                epoch = h[10]
            elif h[10] != epoch:
                break
            found.append((h[11], h[11] + h[6], e.offset))
            if len(found) == RECENT_BATCHES:
                break
        if epoch is None:
            return None
        st = self.producers[key] = ProducerState(epoch)
        st.recent.extend(reversed(found))
        st.next_seq = (found[0][1] + 1) & 0x7FFFFFFF
        return st

    def next_producer_id(self) -> int:
        cur = self.broker.kv_get_obj("kafka.meta", "next_producer_id") or 1000
        self.broker.kv_put_obj("kafka.meta", "next_producer_id", cur + 1)
        return cur
