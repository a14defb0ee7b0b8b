"""Declarations of the admin requests: topics, records, configs, groups, the cluster."""

from __future__ import annotations

from .codec_apis import (
    ALTER_CONFIGS,
    CREATE_PARTITIONS,
    CREATE_TOPICS,
    DELETE_GROUPS,
    DELETE_RECORDS,
    DELETE_TOPICS,
    DESCRIBE_CLUSTER,
    DESCRIBE_CONFIGS,
    INCREMENTAL_ALTER_CONFIGS,
    OFFSET_DELETE,
)
from .codec_types import BOOL, I8, I16, I32, I64, NSTR, STR, Arr, F, topics_of

# AlterConfigs and IncrementalAlterConfigs answer alike: one result per resource
_ALTER_CONFIGS_RESPONSE = [
    F("throttle_time_ms", I32),
    F(
        "responses",
        Arr(
            [
                F("error_code", I16),
                F("error_message", NSTR),
                F("resource_type", I8),
                F("resource_name", STR),
            ]
        ),
    ),
]

ADMIN_SCHEMAS: dict[int, tuple[list, list]] = {
    CREATE_TOPICS: (
        [
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F("num_partitions", I32),
                        F("replication_factor", I16),
                        F(
                            "assignments",
                            Arr([F("partition_index", I32), F("broker_ids", Arr(I32))]),
                        ),
                        F("configs", Arr([F("name", STR), F("value", NSTR)])),
                    ]
                ),
            ),
            F("timeout_ms", I32),
            F("validate_only", BOOL, 1),
        ],
        [
            F("throttle_time_ms", I32, 2),
            F("topics", Arr([F("name", STR), F("error_code", I16), F("error_message", NSTR, 1)])),
        ],
    ),
    DELETE_TOPICS: (
        [F("topic_names", Arr(STR)), F("timeout_ms", I32)],
        [
            F("throttle_time_ms", I32, 1),
            F("responses", Arr([F("name", STR), F("error_code", I16)])),
        ],
    ),
    DELETE_RECORDS: (
        [
            F(
                "topics",
                topics_of([F("partition_index", I32), F("offset", I64)]),
            ),
            F("timeout_ms", I32),
        ],
        [
            F("throttle_time_ms", I32),
            F(
                "topics",
                topics_of(
                    [
                        F("partition_index", I32),
                        F("low_watermark", I64),
                        F("error_code", I16),
                    ]
                ),
            ),
        ],
    ),
    ALTER_CONFIGS: (
        [
            F(
                "resources",
                Arr(
                    [
                        F("resource_type", I8),
                        F("resource_name", STR),
                        F("configs", Arr([F("name", STR), F("value", NSTR)])),
                    ]
                ),
            ),
            F("validate_only", BOOL),
        ],
        _ALTER_CONFIGS_RESPONSE,
    ),
    INCREMENTAL_ALTER_CONFIGS: (
        [
            F(
                "resources",
                Arr(
                    [
                        F("resource_type", I8),
                        F("resource_name", STR),
                        F(
                            "configs",
                            Arr(
                                [
                                    F("name", STR),
                                    F("config_operation", I8),
                                    F("value", NSTR),
                                ]
                            ),
                        ),
                    ]
                ),
            ),
            F("validate_only", BOOL),
        ],
        _ALTER_CONFIGS_RESPONSE,
    ),
    CREATE_PARTITIONS: (
        [
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F("count", I32),
                        F("assignments", Arr([F("broker_ids", Arr(I32))], nullable=True)),
                    ]
                ),
            ),
            F("timeout_ms", I32),
            F("validate_only", BOOL),
        ],
        [
            F("throttle_time_ms", I32),
            F(
                "results",
                Arr([F("name", STR), F("error_code", I16), F("error_message", NSTR)]),
            ),
        ],
    ),
    DELETE_GROUPS: (
        [F("groups_names", Arr(STR))],
        [
            F("throttle_time_ms", I32),
            F("results", Arr([F("group_id", STR), F("error_code", I16)])),
        ],
    ),
    OFFSET_DELETE: (
        [
            F("group_id", STR),
            F("topics", topics_of([F("partition_index", I32)])),
        ],
        [
            F("error_code", I16),
            F("throttle_time_ms", I32),
            F(
                "topics",
                topics_of([F("partition_index", I32), F("error_code", I16)]),
            ),
        ],
    ),
    DESCRIBE_CLUSTER: (
        [F("include_cluster_authorized_operations", BOOL), F("endpoint_type", I8, 1)],
        [
            F("throttle_time_ms", I32),
            F("error_code", I16),
            F("error_message", NSTR),
            F("endpoint_type", I8, 1),
            F("cluster_id", STR),
            F("controller_id", I32),
            F(
                "brokers",
                Arr([F("broker_id", I32), F("host", STR), F("port", I32), F("rack", NSTR)]),
            ),
            F("cluster_authorized_operations", I32),
        ],
    ),
    DESCRIBE_CONFIGS: (
        [
            F(
                "resources",
                Arr(
                    [
                        F("resource_type", I8),
                        F("resource_name", STR),
                        F("configuration_keys", Arr(STR, nullable=True)),
                    ]
                ),
            ),
            F("include_synonyms", BOOL, 1),
        ],
        [
            F("throttle_time_ms", I32),
            F(
                "results",
                Arr(
                    [
                        F("error_code", I16),
                        F("error_message", NSTR),
                        F("resource_type", I8),
                        F("resource_name", STR),
                        F(
                            "configs",
                            Arr(
                                [
                                    F("name", STR),
                                    F("value", NSTR),
                                    F("read_only", BOOL),
                                    F("is_default", BOOL, 0, 0),
                                    F("config_source", I8, 1),
                                    F("is_sensitive", BOOL),
                                    F(
                                        "synonyms",
                                        Arr([F("name", STR), F("value", NSTR), F("source", I8)]),
                                        1,
                                    ),
                                ]
                            ),
                        ),
                    ]
                ),
            ),
        ],
    ),
}
