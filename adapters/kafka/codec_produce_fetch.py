"""Produce, Fetch and ListOffsets: their declarations and, beside them, the hand-written fast
paths of the two hot frames (the Produce request decoder, the Fetch response encoder), which
tests check against the declarations.
"""

from __future__ import annotations

import struct

from .codec_apis import FETCH, LIST_OFFSETS, PRODUCE
from .codec_types import I8, I16, I32, I64, NBYTES, NSTR, STR, Arr, F, KafkaDecodeError, topics_of

PRODUCE_FETCH_SCHEMAS: dict[int, tuple[list, list]] = {
    PRODUCE: (
        [
            F("transactional_id", NSTR, 3),
            F("acks", I16),
            F("timeout_ms", I32),
            F(
                "topic_data",
                topics_of([F("index", I32), F("records", NBYTES)], "partition_data"),
            ),
        ],
        [
            F(
                "responses",
                topics_of(
                    [
                        F("index", I32),
                        F("error_code", I16),
                        F("base_offset", I64),
                        F("log_append_time_ms", I64, 2),
                        F("log_start_offset", I64, 5),
                    ],
                    "partition_responses",
                ),
            ),
            F("throttle_time_ms", I32, 1),
        ],
    ),
    FETCH: (
        [
            F("replica_id", I32),
            F("max_wait_ms", I32),
            F("min_bytes", I32),
            F("max_bytes", I32, 3),
            F("isolation_level", I8, 4),
            F("session_id", I32, 7),
            F("session_epoch", I32, 7),
            F(
                "topics",
                topics_of(
                    [
                        F("partition", I32),
                        F("current_leader_epoch", I32, 9),
                        F("fetch_offset", I64),
                        F("log_start_offset", I64, 5),
                        F("partition_max_bytes", I32),
                    ],
                    name="topic",
                ),
            ),
            F("forgotten_topics_data", topics_of(I32, name="topic"), 7),
            F("rack_id", STR, 11),
        ],
        [
            F("throttle_time_ms", I32, 1),
            F("error_code", I16, 7),
            F("session_id", I32, 7),
            F(
                "responses",
                topics_of(
                    [
                        F("partition_index", I32),
                        F("error_code", I16),
                        F("high_watermark", I64),
                        F("last_stable_offset", I64, 4),
                        F("log_start_offset", I64, 5),
                        F(
                            "aborted_transactions",
                            Arr(
                                [F("producer_id", I64), F("first_offset", I64)],
                                nullable=True,
                            ),
                            4,
                        ),
                        F("preferred_read_replica", I32, 11),
                        F("records", NBYTES),
                    ],
                    name="topic",
                ),
            ),
        ],
    ),
    LIST_OFFSETS: (
        [
            F("replica_id", I32),
            F("isolation_level", I8, 2),
            F(
                "topics",
                topics_of(
                    [
                        F("partition_index", I32),
                        F("current_leader_epoch", I32, 4),
                        F("timestamp", I64),
                        F("max_num_offsets", I32, 0, 0),
                    ]
                ),
            ),
        ],
        [
            F("throttle_time_ms", I32, 2),
            F(
                "topics",
                topics_of(
                    [
                        F("partition_index", I32),
                        F("error_code", I16),
                        F("old_style_offsets", Arr(I64), 0, 0),
                        F("timestamp", I64, 1),
                        F("offset", I64, 1),
                        F("leader_epoch", I32, 4),
                    ]
                ),
            ),
        ],
    ),
}


# --------------------------------------------------------------------------------------------
# fast path: Produce request

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class ProduceRequest:
    __slots__ = ("transactional_id", "acks", "timeout_ms", "topics")

    def __init__(
        self,
        transactional_id: str | None,
        acks: int,
        timeout_ms: int,
        topics: list[tuple[str, list[tuple[int, memoryview | None]]]],
    ) -> None:
        self.transactional_id = transactional_id
        self.acks = acks
        self.timeout_ms = timeout_ms
        self.topics = topics


def decode_produce(version: int, body: memoryview) -> ProduceRequest:
    """Hand-written decoder of the Produce body (v3-8); records stay memoryview slices."""
    end = len(body)
    pos = 0

    def need(n: int) -> None:
        if n < 0 or pos + n > end:
            raise KafkaDecodeError("produce request truncated")

    def string(nullable: bool) -> str | None:
        nonlocal pos
        need(2)
        (n,) = _I16.unpack_from(body, pos)
        pos += 2
        if n == -1 and nullable:
            return None
        if n < 0:
            raise KafkaDecodeError("negative string length")
        need(n)
        s = bytes(body[pos : pos + n]).decode("utf-8")
        pos += n
        return s

    def count(min_size: int) -> int:
        nonlocal pos
        need(4)
        (n,) = _I32.unpack_from(body, pos)
        pos += 4
        if n < 0 or n * min_size > end - pos:
            raise KafkaDecodeError("bad array length")
        return n

    try:
        txn = string(True) if version >= 3 else None
        need(6)
        acks, timeout = struct.unpack_from(">hi", body, pos)
        pos += 6
        topics = []
        for _ in range(count(6)):
            name = string(False)
            parts = []
            for _ in range(count(8)):
                need(8)
                index, n = struct.unpack_from(">ii", body, pos)
                pos += 8
                if n == -1:
                    parts.append((index, None))
                    continue
                need(n)
                parts.append((index, body[pos : pos + n]))
                pos += n
            topics.append((name, parts))
    except UnicodeDecodeError as e:
        raise KafkaDecodeError("invalid utf-8") from e
    if pos != end:
        raise KafkaDecodeError("trailing bytes after produce body")
    return ProduceRequest(txn, acks, timeout, topics)


# --------------------------------------------------------------------------------------------
# fast path: Fetch response


class FetchPartition:
    __slots__ = ("index", "error", "hw", "log_start", "batches", "size", "lso", "aborted")

    def __init__(
        self,
        index: int,
        error: int,
        hw: int,
        log_start: int,
        batches: list[bytes],
        lso: int | None = None,
        aborted: list[tuple[int, int]] | None = None,
    ) -> None:
        self.index = index
        self.error = error
        self.hw = hw
        self.log_start = log_start
        self.batches = batches
        self.size = sum(len(b) for b in batches)
        self.lso = hw if lso is None else lso  # last stable offset (read_committed)
        self.aborted = aborted  # (producer id, first offset) of aborted transactions


def encode_fetch_response(
    version: int, correlation_id: int, topics: list[tuple[str, list[FetchPartition]]]
) -> list[bytes]:
    """The Fetch response (v4-11) as a list of chunks for ``writeSequence``.

    Stored batches are passed through as they are (no copy, no per-record work).
    """
    chunks: list[bytes] = []
    head = bytearray()
    head += _I32.pack(0)  # throttle_time_ms (v1+)
    if version >= 7:
        head += struct.pack(">hi", 0, 0)  # error_code, session_id
    head += _I32.pack(len(topics))
    total = 0
    for name, parts in topics:
        nb = name.encode("utf-8")
        head += _I16.pack(len(nb)) + nb + _I32.pack(len(parts))
        for p in parts:
            head += struct.pack(">ihq", p.index, p.error, p.hw)
            head += _I64.pack(p.lso)  # last_stable_offset (v4+)
            if version >= 5:
                head += _I64.pack(p.log_start)
            if p.aborted is None:
                head += _I32.pack(-1)  # aborted_transactions: null
            else:
                head += _I32.pack(len(p.aborted))
                for pid, first in p.aborted:
                    head += struct.pack(">qq", pid, first)
            if version >= 11:
                head += _I32.pack(-1)  # preferred_read_replica
            head += _I32.pack(p.size)
            if p.batches:
                chunks.append(bytes(head))
                total += len(head)
                head = bytearray()
                chunks.extend(p.batches)
                total += p.size
    if head:
        chunks.append(bytes(head))
        total += len(head)
    chunks.insert(0, struct.pack(">ii", total + 4, correlation_id))
    return chunks
