"""Writing topics: the Produce request, a hot path (each batch is validated and stored as the
bytes the producer sent, with its offsets filled in), and the answers the resource alarm holds
back."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from twisted.logger import Logger

from polymq.core.message import now_ms
from polymq.core.stream import Stream

from . import codec as C
from . import txn as T
from .records import BatchError, check_batches, with_base_offset
from .server import FORMAT, TOPIC_RE, ProducerState

if TYPE_CHECKING:
    from .session import KafkaSession

log = Logger(namespace="polymq.kafka")

# throttle_time_ms is a number of milliseconds in an int32
_MAX_THROTTLE_MS = 2**31 - 1


def produce(session: KafkaSession, hdr: C.RequestHeader, req: C.ProduceRequest) -> None:
    """Append each partition's batches and answer once they are durable (acks 1/-1)."""
    acks = req.acks
    results = []
    bad_acks = acks not in (0, 1, -1)
    limit = session.broker.max_message_size
    writable = session.writable
    for name, parts in req.topics:
        denied = False
        if name not in writable and not bad_acks:
            if session.conn.authorize("write", "topic", name):
                writable.add(name)
            else:
                denied = True
        s = None if bad_acks or denied else session.topic(name, True)
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
                presults.append(_append(session, s, name, index, records))
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
                        "log_start_offset": _log_start(session, n, i),
                    }
                    for i, e, o in ps
                ],
            }
            for n, ps in results
        ],
        "throttle_time_ms": 0,
    }
    ver, corr = hdr.api_version, hdr.correlation_id
    if session.blocked:
        _hold(session, ver, corr, body)
        return
    session.conn.reply_after_durable(
        C.encode_response(C.PRODUCE, ver, corr, body), partial(not_durable, ver, corr, body)
    )


def _hold(session: KafkaSession, ver: int, corr: int, body: dict) -> None:
    """Keep a Produce answer until the resource alarm clears (see publishing_blocked)."""
    session.held.append(
        (session.conn.reply_later(), ver, corr, body, session.broker.clock.seconds())
    )
    if not session.held_paused:
        session.held_paused = True
        session.conn.pause_reading()


def _log_start(session: KafkaSession, name: str, index: int) -> int:
    s = session.server.topic(name)
    if s is None or not 0 <= index < len(s.partitions):
        return -1
    return s.partitions[index].start_offset


def _append(session: KafkaSession, s: Stream, name: str, index: int, records: memoryview) -> tuple:
    try:
        batches = check_batches(records)
    except BatchError as e:
        log.info("kafka client {peer}: {t}-{p}: {e}", peer=session.peer, t=name, p=index, e=e)
        return (index, e.code, -1)
    p = s.partitions[index]
    srv = session.server
    base = None
    appended = []
    info = session.conn.info
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
        data = with_base_offset(b.data, off)
        p.append_batch(FORMAT, data, b.count, ts)
        appended.append(data)
        info.messages_in += b.count
        if base is None:
            base = off
    if appended and routed:
        srv.route(s, name, appended)
    return (index, 0, base)


def release_held(session: KafkaSession) -> None:
    """The resource alarm cleared: reading resumes and the held answers go out once what they
    acknowledge is durable, saying in ``throttle_time_ms`` how long they were held for Produce
    v0-5, where that field reports a delay the broker applied; from v6 on a client takes the
    field as a wait still to come, and the wait is served already, so it stays 0."""
    held, session.held = session.held, []
    if session.held_paused:
        session.held_paused = False
        session.conn.resume_reading()
    if not held:
        return
    now = session.broker.clock.seconds()

    def release() -> None:
        for ready, ver, corr, body, since in held:
            if ver < 6:
                body["throttle_time_ms"] = min(int((now - since) * 1000), _MAX_THROTTLE_MS)
            ready(C.encode_response(C.PRODUCE, ver, corr, body))

    def failed(exc: BaseException) -> None:
        for ready, ver, corr, body, _ in held:
            ready(not_durable(ver, corr, body))

    session.broker.when_durable(release, failed)


def not_durable(ver: int, corr: int, body: dict) -> bytes:
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
