"""Kafka transactions: the transaction coordinator, per-partition transaction state (the last
stable offset and the aborted transactions a ``read_committed`` reader skips) and the request
handlers (InitProducerId with a transactional id, AddPartitionsToTxn, AddOffsetsToTxn,
TxnOffsetCommit, EndTxn).

A transaction's state and every aborted transaction are kept in the broker's key-value records
(``kafka.txn`` and ``kafka.txn.aborted``), which the store writes in order with the records, so
a Produce answer or an EndTxn answer (both sent once the store is durable) never gets ahead of
the state that explains it. EndTxn writes a control batch (commit or abort marker) into every
partition the transaction wrote to. A new InitProducerId for the same transactional id aborts
what is open and bumps the epoch, which fences the older producer (INVALID_PRODUCER_EPOCH); so
does the transaction timeout.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from polymq.core.message import now_ms

from . import codec as C
from .records import encode_batch, with_base_offset

if TYPE_CHECKING:
    from .server import KafkaServer
    from .session import KafkaSession

log = Logger(namespace="polymq.kafka.txn")

TXN_NS = "kafka.txn"
ABORTED_NS = "kafka.txn.aborted"
EMPTY = "Empty"
ONGOING = "Ongoing"
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
MAX_EPOCH = 32767
DEFAULT_TIMEOUT_MS = 60000


class PartitionTxns:
    """The open and aborted transactions of one partition."""

    __slots__ = ("ongoing", "aborted")

    def __init__(self) -> None:
        self.ongoing: dict[int, int] = {}  # producer id -> first offset of its open transaction
        self.aborted: list[tuple[int, int, int]] = []  # (producer id, first, marker offset)

    def last_stable(self, high_watermark: int) -> int:
        """The first offset a read_committed reader may not see yet."""
        return min(self.ongoing.values(), default=high_watermark)

    def aborted_between(self, start: int, end: int) -> list[tuple[int, int]]:
        """(producer id, first offset) of the aborted transactions overlapping [start, end)."""
        return [(pid, first) for pid, first, last in self.aborted if first < end and last >= start]


class Txn:
    __slots__ = ("id", "pid", "epoch", "state", "timeout_ms", "partitions", "offsets", "timer")

    def __init__(self, txn_id: str, pid: int, epoch: int, timeout_ms: int) -> None:
        self.id = txn_id
        self.pid = pid
        self.epoch = epoch
        self.state = EMPTY
        self.timeout_ms = timeout_ms
        # (topic, partition) -> first offset written in this transaction (None: nothing yet)
        self.partitions: dict[tuple[str, int], int | None] = {}
        # (group, topic, partition) -> (offset, metadata), committed with the transaction
        self.offsets: dict[tuple[str, str, int], tuple[int, str | None]] = {}
        self.timer: Any = None

    def record(self) -> dict:
        return {
            "pid": self.pid,
            "epoch": self.epoch,
            "state": self.state,
            "timeout": self.timeout_ms,
            "parts": [[t, p, f] for (t, p), f in self.partitions.items()],
            "offsets": [[g, t, p, o, m] for (g, t, p), (o, m) in self.offsets.items()],
        }


class TxnCoordinator:
    def __init__(self, server: KafkaServer) -> None:
        self.server = server
        self.broker = server.broker
        self.txns: dict[str, Txn] = {}
        self.by_pid: dict[int, Txn] = {}
        self.partitions: dict[tuple[str, int], PartitionTxns] = {}
        kv = self.broker.kv_get_obj
        for key in list(self.broker.kv(ABORTED_NS)):
            try:
                t, p, pid, first = json.loads(key)
                last = int(kv(ABORTED_NS, key))
                self.partition(t, int(p)).aborted.append((int(pid), int(first), last))
            except Exception:
                log.warn("ignoring unreadable aborted-transaction record {key!r}", key=key)
        for pt in self.partitions.values():
            pt.aborted.sort(key=lambda a: a[1])
        for key in list(self.broker.kv(TXN_NS)):
            try:
                rec = kv(TXN_NS, key)
                txn = Txn(key, int(rec["pid"]), int(rec["epoch"]), int(rec["timeout"]))
                txn.state = rec["state"]
                txn.partitions = {(t, int(p)): f for t, p, f in rec["parts"]}
                txn.offsets = {(g, t, int(p)): (int(o), m) for g, t, p, o, m in rec["offsets"]}
            except Exception:
                log.warn("ignoring unreadable transaction record {key!r}", key=key)
                continue
            self.txns[key] = txn
            self.by_pid[txn.pid] = txn
            if txn.state == ONGOING:
                for (t, p), first in txn.partitions.items():
                    if first is not None:
                        self.partition(t, p).ongoing[txn.pid] = first
                self._arm(txn)

    def partition(self, topic: str, index: int) -> PartitionTxns:
        pt = self.partitions.get((topic, index))
        if pt is None:
            pt = self.partitions[(topic, index)] = PartitionTxns()
        return pt

    def _save(self, txn: Txn) -> None:
        self.broker.kv_put_obj(TXN_NS, txn.id, txn.record())

    def _arm(self, txn: Txn) -> None:
        if txn.timer is None:
            clock = self.broker.clock
            txn.timer = clock.callLater(txn.timeout_ms / 1000.0, self._expired, txn, txn.epoch)

    def _disarm(self, txn: Txn) -> None:
        if txn.timer is not None:
            if txn.timer.active():
                txn.timer.cancel()
            txn.timer = None

    def _expired(self, txn: Txn, epoch: int) -> None:
        txn.timer = None
        if txn.state != ONGOING or txn.epoch != epoch:
            return
        log.info("transaction {t} timed out: aborted", t=txn.id)
        self._end(txn, commit=False)
        self._bump(txn)  # the producer that let it time out is fenced
        self._save(txn)

    def _bump(self, txn: Txn) -> None:
        del self.by_pid[txn.pid]
        if txn.epoch + 1 >= MAX_EPOCH:
            txn.pid, txn.epoch = self.server.next_producer_id(), 0
        else:
            txn.epoch += 1
        self.by_pid[txn.pid] = txn

    # -- requests ---------------------------------------------------------------------------

    def init_producer(self, txn_id: str, timeout_ms: int) -> tuple[int, int]:
        """(producer id, epoch) for a transactional producer; what its predecessor left open
        is aborted and the predecessor fenced."""
        txn = self.txns.get(txn_id)
        timeout = timeout_ms if timeout_ms > 0 else DEFAULT_TIMEOUT_MS
        if txn is None:
            txn = self.txns[txn_id] = Txn(txn_id, self.server.next_producer_id(), 0, timeout)
            self.by_pid[txn.pid] = txn
        else:
            if txn.state == ONGOING:
                log.info("transaction {t} aborted: its producer started again", t=txn_id)
                self._end(txn, commit=False)
            self._bump(txn)
            txn.timeout_ms = timeout
        self._save(txn)
        return txn.pid, txn.epoch

    def _check(self, txn_id: str, pid: int, epoch: int) -> tuple[Txn | None, int]:
        txn = self.txns.get(txn_id)
        if txn is None or txn.pid != pid:
            return None, C.INVALID_PRODUCER_ID_MAPPING
        if epoch != txn.epoch:
            return None, C.INVALID_PRODUCER_EPOCH
        return txn, 0

    def _begin(self, txn: Txn) -> None:
        if txn.state != ONGOING:
            txn.state = ONGOING
            self._arm(txn)

    def add_partitions(
        self, txn_id: str, pid: int, epoch: int, parts: list[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        txn, code = self._check(txn_id, pid, epoch)
        out: dict[tuple[str, int], int] = {}
        for t, p in parts:
            if code:
                out[(t, p)] = code
                continue
            s = self.server.topic(t)
            out[(t, p)] = (
                0 if s is not None and 0 <= p < len(s.partitions) else C.UNKNOWN_TOPIC_OR_PARTITION
            )
        if txn is not None and not any(out.values()):
            self._begin(txn)
            for key in out:
                txn.partitions.setdefault(key, None)
            self._save(txn)
        return out

    def add_offsets(self, txn_id: str, pid: int, epoch: int, group: str) -> int:
        txn, code = self._check(txn_id, pid, epoch)
        if txn is None:
            return code
        self._begin(txn)
        self._save(txn)
        return 0

    def commit_offsets(
        self, txn_id: str, group: str, pid: int, epoch: int, entries: list[tuple]
    ) -> int:
        txn, code = self._check(txn_id, pid, epoch)
        if txn is None:
            return code
        if txn.state != ONGOING:
            return C.INVALID_TXN_STATE
        for t, p, off, md in entries:
            txn.offsets[(group, t, p)] = (off, md)
        self._save(txn)
        return 0

    def end(self, txn_id: str, pid: int, epoch: int, commit: bool) -> int:
        txn, code = self._check(txn_id, pid, epoch)
        if txn is None:
            return code
        if txn.state != ONGOING:
            return C.INVALID_TXN_STATE
        self._end(txn, commit)
        self._save(txn)
        return 0

    def produced(self, pid: int, epoch: int, topic: str, index: int, offset: int) -> int:
        """A transactional batch is about to be appended at ``offset``: 0, or the error that
        refuses it."""
        txn = self.by_pid.get(pid)
        if txn is None:
            return C.INVALID_PRODUCER_ID_MAPPING
        if epoch != txn.epoch:
            return C.INVALID_PRODUCER_EPOCH
        key = (topic, index)
        if txn.state != ONGOING or key not in txn.partitions:
            return C.INVALID_TXN_STATE
        if txn.partitions[key] is None:
            txn.partitions[key] = offset
            self.partition(topic, index).ongoing[pid] = offset
            self._save(txn)
        return 0

    # -- completion -------------------------------------------------------------------------

    def _end(self, txn: Txn, commit: bool) -> None:
        self._disarm(txn)
        srv = self.server
        ts = now_ms()
        marker = encode_batch(
            [(struct.pack(">hh", 0, 1 if commit else 0), struct.pack(">hi", 0, 0), [], ts)],
            producer_id=txn.pid,
            producer_epoch=txn.epoch,
            attributes=ATTR_TRANSACTIONAL | ATTR_CONTROL,
        )
        for (t, index), first in txn.partitions.items():
            if first is None:
                continue
            s = srv.topic(t)
            pt = self.partition(t, index)
            pt.ongoing.pop(txn.pid, None)
            if s is None or index >= len(s.partitions):
                continue  # the topic was deleted meanwhile
            p = s.partitions[index]
            at = p.next_offset
            p.append_batch(srv.FORMAT, with_base_offset(marker, at), 1, ts)
            if commit:
                srv.route_committed(s, t, p, first, at, txn.pid)
            else:
                pt.aborted.append((txn.pid, first, at))
                self.broker.kv_put_obj(ABORTED_NS, json.dumps([t, index, txn.pid, first]), at)
        if commit:
            co = srv.coordinator
            for (g, t, p), (off, md) in txn.offsets.items():
                co.commit(g, t, p, off, md)
        log.info(
            "transaction {t} {what}: {n} partitions, {o} offsets",
            t=txn.id,
            what="committed" if commit else "aborted",
            n=len(txn.partitions),
            o=len(txn.offsets),
        )
        txn.partitions = {}
        txn.offsets = {}
        txn.state = EMPTY

    def forget_topic(self, topic: str) -> None:
        for t, p in [k for k in self.partitions if k[0] == topic]:
            pt = self.partitions.pop((t, p))
            for pid, first, _last in pt.aborted:
                self.broker.kv_delete(ABORTED_NS, json.dumps([t, p, pid, first]))

    def close(self) -> None:
        for txn in self.txns.values():
            self._disarm(txn)


# -- request handlers (methods of KafkaSession, see its HANDLERS) ---------------------------


def init_producer_id(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    srv = session.server
    if req.transactional_id:
        if not _may_use(session, req.transactional_id):
            return reply(
                {
                    "error_code": C.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    "producer_id": -1,
                    "producer_epoch": -1,
                }
            )
        pid, epoch = srv.txn.init_producer(req.transactional_id, req.transaction_timeout_ms)
    else:
        pid, epoch = srv.next_producer_id(), 0
    reply({"error_code": 0, "producer_id": pid, "producer_epoch": epoch}, durable=True)


def _may_use(session: KafkaSession, transactional_id: str) -> bool:
    """Kafka's ACL for every transactional request: Write on the TransactionalId."""
    return session.conn.authorize("write", "transactional-id", transactional_id)


def add_partitions_to_txn(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    parts = [(t.name, p) for t in req.topics for p in t.partitions]
    authorize = session.conn.authorize
    if not _may_use(session, req.transactional_id):
        codes = dict.fromkeys(parts, C.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    elif any(not authorize("write", "topic", t.name) for t in req.topics):
        # as Kafka: the refused topics say so, the others that they were not attempted
        codes = {
            (name, p): C.TOPIC_AUTHORIZATION_FAILED
            if not authorize("write", "topic", name)
            else C.OPERATION_NOT_ATTEMPTED
            for name, p in parts
        }
    else:
        codes = session.server.txn.add_partitions(
            req.transactional_id, req.producer_id, req.producer_epoch, parts
        )
    results = []
    for t in req.topics:
        results.append(
            {
                "name": t.name,
                "results": [
                    {"partition_index": p, "error_code": codes[(t.name, p)]} for p in t.partitions
                ],
            }
        )
    reply({"results": results}, durable=True)


def add_offsets_to_txn(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    if not _may_use(session, req.transactional_id):
        return reply({"error_code": C.TRANSACTIONAL_ID_AUTHORIZATION_FAILED})
    if not session.conn.authorize("read", "group", req.group_id):
        return reply({"error_code": C.GROUP_AUTHORIZATION_FAILED})
    code = session.server.txn.add_offsets(
        req.transactional_id, req.producer_id, req.producer_epoch, req.group_id
    )
    reply({"error_code": code}, durable=True)


def txn_offset_commit(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    entries = [
        (t.name, p.partition_index, p.committed_offset, p.committed_metadata)
        for t in req.topics
        for p in t.partitions
    ]
    if not _may_use(session, req.transactional_id):
        code = C.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    elif not session.conn.authorize("read", "group", req.group_id):
        code = C.GROUP_AUTHORIZATION_FAILED
    else:
        code = session.server.txn.commit_offsets(
            req.transactional_id, req.group_id, req.producer_id, req.producer_epoch, entries
        )
    topics = [
        {
            "name": t.name,
            "partitions": [
                {"partition_index": p.partition_index, "error_code": code} for p in t.partitions
            ],
        }
        for t in req.topics
    ]
    reply({"topics": topics}, durable=True)


def end_txn(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    if not _may_use(session, req.transactional_id):
        return reply({"error_code": C.TRANSACTIONAL_ID_AUTHORIZATION_FAILED})
    code = session.server.txn.end(
        req.transactional_id, req.producer_id, req.producer_epoch, bool(req.committed)
    )
    reply({"error_code": code}, durable=True)
