"""Declarations of the transaction requests."""

from __future__ import annotations

from .codec_apis import (
    ADD_OFFSETS_TO_TXN,
    ADD_PARTITIONS_TO_TXN,
    END_TXN,
    INIT_PRODUCER_ID,
    TXN_OFFSET_COMMIT,
)
from .codec_types import BOOL, I16, I32, I64, NSTR, STR, F, topics_of

TXN_SCHEMAS: dict[int, tuple[list, list]] = {
    INIT_PRODUCER_ID: (
        [F("transactional_id", NSTR), F("transaction_timeout_ms", I32)],
        [
            F("throttle_time_ms", I32),
            F("error_code", I16),
            F("producer_id", I64),
            F("producer_epoch", I16),
        ],
    ),
    ADD_PARTITIONS_TO_TXN: (
        [
            F("transactional_id", STR),
            F("producer_id", I64),
            F("producer_epoch", I16),
            F("topics", topics_of(I32)),
        ],
        [
            F("throttle_time_ms", I32),
            F(
                "results",
                topics_of([F("partition_index", I32), F("error_code", I16)], "results"),
            ),
        ],
    ),
    ADD_OFFSETS_TO_TXN: (
        [
            F("transactional_id", STR),
            F("producer_id", I64),
            F("producer_epoch", I16),
            F("group_id", STR),
        ],
        [F("throttle_time_ms", I32), F("error_code", I16)],
    ),
    END_TXN: (
        [
            F("transactional_id", STR),
            F("producer_id", I64),
            F("producer_epoch", I16),
            F("committed", BOOL),
        ],
        [F("throttle_time_ms", I32), F("error_code", I16)],
    ),
    TXN_OFFSET_COMMIT: (
        [
            F("transactional_id", STR),
            F("group_id", STR),
            F("producer_id", I64),
            F("producer_epoch", I16),
            F(
                "topics",
                topics_of(
                    [
                        F("partition_index", I32),
                        F("committed_offset", I64),
                        F("committed_leader_epoch", I32, 2),
                        F("committed_metadata", NSTR),
                    ]
                ),
            ),
        ],
        [
            F("throttle_time_ms", I32),
            F(
                "topics",
                topics_of([F("partition_index", I32), F("error_code", I16)]),
            ),
        ],
    ),
}
