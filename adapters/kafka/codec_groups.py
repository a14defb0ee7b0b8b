"""Declarations of the consumer-group requests (coordinator, membership, committed offsets)."""

from __future__ import annotations

from .codec_apis import (
    DESCRIBE_GROUPS,
    FIND_COORDINATOR,
    HEARTBEAT,
    JOIN_GROUP,
    LEAVE_GROUP,
    LIST_GROUPS,
    OFFSET_COMMIT,
    OFFSET_FETCH,
    SYNC_GROUP,
)
from .codec_types import BOOL, BYTES, I8, I16, I32, I64, NSTR, STR, Arr, F, topics_of

GROUP_SCHEMAS: dict[int, tuple[list, list]] = {
    OFFSET_COMMIT: (
        [
            F("group_id", STR),
            F("generation_id", I32, 1),
            F("member_id", STR, 1),
            F("group_instance_id", NSTR, 7),
            F("retention_time_ms", I64, 2, 4),
            F(
                "topics",
                topics_of(
                    [
                        F("partition_index", I32),
                        F("committed_offset", I64),
                        F("committed_leader_epoch", I32, 6),
                        F("commit_timestamp", I64, 1, 1),
                        F("committed_metadata", NSTR),
                    ]
                ),
            ),
        ],
        [
            F("throttle_time_ms", I32, 3),
            F(
                "topics",
                topics_of([F("partition_index", I32), F("error_code", I16)]),
            ),
        ],
    ),
    OFFSET_FETCH: (
        [
            F("group_id", STR),
            F("topics", topics_of(I32, "partition_indexes"), 0, 1),
            F("topics", Arr([F("name", STR), F("partition_indexes", Arr(I32))], nullable=True), 2),
        ],
        [
            F("throttle_time_ms", I32, 3),
            F(
                "topics",
                topics_of(
                    [
                        F("partition_index", I32),
                        F("committed_offset", I64),
                        F("committed_leader_epoch", I32, 5),
                        F("metadata", NSTR),
                        F("error_code", I16),
                    ]
                ),
            ),
            F("error_code", I16, 2),
        ],
    ),
    FIND_COORDINATOR: (
        [F("key", STR), F("key_type", I8, 1)],
        [
            F("throttle_time_ms", I32, 1),
            F("error_code", I16),
            F("error_message", NSTR, 1),
            F("node_id", I32),
            F("host", STR),
            F("port", I32),
        ],
    ),
    JOIN_GROUP: (
        [
            F("group_id", STR),
            F("session_timeout_ms", I32),
            F("rebalance_timeout_ms", I32, 1),
            F("member_id", STR),
            F("group_instance_id", NSTR, 5),
            F("protocol_type", STR),
            F("protocols", Arr([F("name", STR), F("metadata", BYTES)])),
        ],
        [
            F("throttle_time_ms", I32, 2),
            F("error_code", I16),
            F("generation_id", I32),
            F("protocol_name", STR),
            F("leader", STR),
            F("member_id", STR),
            F(
                "members",
                Arr([F("member_id", STR), F("group_instance_id", NSTR, 5), F("metadata", BYTES)]),
            ),
        ],
    ),
    HEARTBEAT: (
        [
            F("group_id", STR),
            F("generation_id", I32),
            F("member_id", STR),
            F("group_instance_id", NSTR, 3),
        ],
        [F("throttle_time_ms", I32, 1), F("error_code", I16)],
    ),
    LEAVE_GROUP: (
        [F("group_id", STR), F("member_id", STR)],
        [F("throttle_time_ms", I32, 1), F("error_code", I16)],
    ),
    SYNC_GROUP: (
        [
            F("group_id", STR),
            F("generation_id", I32),
            F("member_id", STR),
            F("group_instance_id", NSTR, 3),
            F("assignments", Arr([F("member_id", STR), F("assignment", BYTES)])),
        ],
        [F("throttle_time_ms", I32, 1), F("error_code", I16), F("assignment", BYTES)],
    ),
    DESCRIBE_GROUPS: (
        [F("groups", Arr(STR)), F("include_authorized_operations", BOOL, 3)],
        [
            F("throttle_time_ms", I32, 1),
            F(
                "groups",
                Arr(
                    [
                        F("error_code", I16),
                        F("group_id", STR),
                        F("group_state", STR),
                        F("protocol_type", STR),
                        F("protocol_data", STR),
                        F(
                            "members",
                            Arr(
                                [
                                    F("member_id", STR),
                                    F("client_id", STR),
                                    F("client_host", STR),
                                    F("member_metadata", BYTES),
                                    F("member_assignment", BYTES),
                                ]
                            ),
                        ),
                        F("authorized_operations", I32, 3),
                    ]
                ),
            ),
        ],
    ),
    LIST_GROUPS: (
        [],
        [
            F("throttle_time_ms", I32, 1),
            F("error_code", I16),
            F("groups", Arr([F("group_id", STR), F("protocol_type", STR)])),
        ],
    ),
}
