"""Kafka wire codec (sans-I/O).

The request and response bodies are declared once, as version-annotated field lists, and turned
into ``construct`` structs per (api, version, direction): those structs are the single source of
truth for the wire format. Two hand-written fast paths exist for the hot frames (the Produce
request decoder and the Fetch response encoder); tests check them against the declarations.

Every length read from the wire is checked against what remains of the frame before anything is
allocated (arrays additionally against a minimum element size), so an inflated length fails with
a :class:`KafkaDecodeError` instead of allocating.
"""

from __future__ import annotations

import io
import struct
from functools import cache
from typing import Any

import construct as cs

from polymq.core.errors import ProtocolError

from ..varint import encode_uvarint

# --------------------------------------------------------------------------------------------
# errors and constants

NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_FETCH_SIZE = 4
LEADER_NOT_AVAILABLE = 5
NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7
MESSAGE_TOO_LARGE = 10
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
INVALID_TOPIC_EXCEPTION = 17
RECORD_LIST_TOO_LARGE = 18
INVALID_REQUIRED_ACKS = 21
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30
CLUSTER_AUTHORIZATION_FAILED = 31
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_REQUEST = 42
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_PRODUCER_ID_MAPPING = 49
CONCURRENT_TRANSACTIONS = 51
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
OPERATION_NOT_ATTEMPTED = 55
KAFKA_STORAGE_ERROR = 56  # retriable: the client sends the batch again
SASL_AUTHENTICATION_FAILED = 58
UNKNOWN_SERVER_ERROR = -1
GROUP_ID_NOT_FOUND = 69
INVALID_CONFIG = 40
NON_EMPTY_GROUP = 68
FENCED_INSTANCE_ID = 82
GROUP_SUBSCRIBED_TO_TOPIC = 86

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
SASL_HANDSHAKE = 17
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
INIT_PRODUCER_ID = 22
ADD_PARTITIONS_TO_TXN = 24
ADD_OFFSETS_TO_TXN = 25
END_TXN = 26
TXN_OFFSET_COMMIT = 28
DELETE_RECORDS = 21
ALTER_CONFIGS = 33
CREATE_PARTITIONS = 37
DELETE_GROUPS = 42
INCREMENTAL_ALTER_CONFIGS = 44
OFFSET_DELETE = 47
DESCRIBE_CLUSTER = 60
DESCRIBE_CONFIGS = 32
SASL_AUTHENTICATE = 36

# advertised (min, max): the versions the clients in docs/kafka.md negotiate
API_RANGES: dict[int, tuple[int, int]] = {
    PRODUCE: (0, 7),
    FETCH: (4, 11),
    LIST_OFFSETS: (1, 5),
    METADATA: (0, 8),
    OFFSET_COMMIT: (2, 7),
    OFFSET_FETCH: (1, 5),
    FIND_COORDINATOR: (0, 2),
    JOIN_GROUP: (0, 5),
    HEARTBEAT: (0, 3),
    LEAVE_GROUP: (0, 1),
    SYNC_GROUP: (0, 3),
    DESCRIBE_GROUPS: (0, 3),
    LIST_GROUPS: (0, 2),
    SASL_HANDSHAKE: (0, 1),
    API_VERSIONS: (0, 3),
    CREATE_TOPICS: (0, 4),
    DELETE_TOPICS: (0, 3),
    INIT_PRODUCER_ID: (0, 1),
    ADD_PARTITIONS_TO_TXN: (0, 1),
    ADD_OFFSETS_TO_TXN: (0, 1),
    END_TXN: (0, 1),
    TXN_OFFSET_COMMIT: (0, 2),
    DESCRIBE_CONFIGS: (0, 2),
    SASL_AUTHENTICATE: (0, 1),
    DELETE_RECORDS: (0, 1),
    ALTER_CONFIGS: (0, 1),
    CREATE_PARTITIONS: (0, 1),
    DELETE_GROUPS: (0, 1),
    INCREMENTAL_ALTER_CONFIGS: (0, 0),
    OFFSET_DELETE: (0, 0),
    DESCRIBE_CLUSTER: (0, 1),
}
# the names Kafka's own protocol guide gives the API keys, for log lines and errors
API_NAMES: dict[int, str] = {
    PRODUCE: "Produce",
    FETCH: "Fetch",
    LIST_OFFSETS: "ListOffsets",
    METADATA: "Metadata",
    OFFSET_COMMIT: "OffsetCommit",
    OFFSET_FETCH: "OffsetFetch",
    FIND_COORDINATOR: "FindCoordinator",
    JOIN_GROUP: "JoinGroup",
    HEARTBEAT: "Heartbeat",
    LEAVE_GROUP: "LeaveGroup",
    SYNC_GROUP: "SyncGroup",
    DESCRIBE_GROUPS: "DescribeGroups",
    LIST_GROUPS: "ListGroups",
    SASL_HANDSHAKE: "SaslHandshake",
    API_VERSIONS: "ApiVersions",
    CREATE_TOPICS: "CreateTopics",
    DELETE_TOPICS: "DeleteTopics",
    INIT_PRODUCER_ID: "InitProducerId",
    ADD_PARTITIONS_TO_TXN: "AddPartitionsToTxn",
    ADD_OFFSETS_TO_TXN: "AddOffsetsToTxn",
    END_TXN: "EndTxn",
    TXN_OFFSET_COMMIT: "TxnOffsetCommit",
    DELETE_RECORDS: "DeleteRecords",
    ALTER_CONFIGS: "AlterConfigs",
    CREATE_PARTITIONS: "CreatePartitions",
    DELETE_GROUPS: "DeleteGroups",
    INCREMENTAL_ALTER_CONFIGS: "IncrementalAlterConfigs",
    OFFSET_DELETE: "OffsetDelete",
    DESCRIBE_CLUSTER: "DescribeCluster",
    DESCRIBE_CONFIGS: "DescribeConfigs",
    SASL_AUTHENTICATE: "SaslAuthenticate",
}


def api_name(api_key: int) -> str:
    """``Metadata`` for 3; an API key polymq does not know is told by number."""
    return API_NAMES.get(api_key) or f"unknown API key {api_key}"


# versions listed but refused when used (old librdkafka checks they are listed)
REFUSED_VERSIONS = {PRODUCE: (0, 1, 2)}
# first flexible version per API (only ApiVersions reaches it within the advertised ranges)
FLEXIBLE_SINCE: dict[int, int] = {
    PRODUCE: 9,
    FETCH: 12,
    LIST_OFFSETS: 6,
    METADATA: 9,
    OFFSET_COMMIT: 8,
    OFFSET_FETCH: 6,
    FIND_COORDINATOR: 3,
    JOIN_GROUP: 6,
    HEARTBEAT: 4,
    LEAVE_GROUP: 4,
    SYNC_GROUP: 4,
    DESCRIBE_GROUPS: 5,
    LIST_GROUPS: 3,
    SASL_HANDSHAKE: 99,
    API_VERSIONS: 3,
    CREATE_TOPICS: 5,
    DELETE_TOPICS: 4,
    INIT_PRODUCER_ID: 2,
    ADD_PARTITIONS_TO_TXN: 3,
    ADD_OFFSETS_TO_TXN: 3,
    END_TXN: 3,
    TXN_OFFSET_COMMIT: 3,
    DELETE_RECORDS: 2,
    ALTER_CONFIGS: 2,
    CREATE_PARTITIONS: 2,
    DELETE_GROUPS: 2,
    INCREMENTAL_ALTER_CONFIGS: 1,
    OFFSET_DELETE: 99,
    DESCRIBE_CLUSTER: 0,
    DESCRIBE_CONFIGS: 4,
    SASL_AUTHENTICATE: 2,
}


class KafkaDecodeError(ProtocolError):
    """A frame that cannot be decoded (truncated, inflated length, bad varint ...)."""


def is_flexible(api_key: int, version: int) -> bool:
    return version >= FLEXIBLE_SINCE.get(api_key, 99)


# --------------------------------------------------------------------------------------------
# primitive constructs


def _remaining(stream: Any) -> int:
    pos = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(pos)
    return end - pos


def _read(stream: Any, n: int, path: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise cs.StreamError(f"truncated: needed {n} bytes", path=path)
    return data


class UVarint(cs.Construct):
    """Unsigned LEB128 varint (at most 5 bytes: fits an unsigned 32-bit value)."""

    def _parse(self, stream, context, path):
        result = 0
        for i in range(5):
            b = _read(stream, 1, path)[0]
            result |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return result
        raise cs.ExplicitError("varint too long", path=path)

    def _build(self, obj, stream, context, path):
        stream.write(encode_uvarint(obj))
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


class KString(cs.Construct):
    """Kafka STRING / NULLABLE_STRING (int16 length, -1 null) or the COMPACT_ forms."""

    def __init__(self, nullable: bool = False, compact: bool = False, raw: bool = False):
        super().__init__()
        self.nullable = nullable
        self.compact = compact
        self.raw = raw  # bytes instead of str (BYTES / COMPACT_BYTES)
        self._uv = UVarint()

    def _parse(self, stream, context, path):
        if self.compact:
            n = self._uv._parse(stream, context, path) - 1
        elif self.raw:
            n = struct.unpack(">i", _read(stream, 4, path))[0]
        else:
            n = struct.unpack(">h", _read(stream, 2, path))[0]
        if n < 0:
            if n == -1 and self.nullable:
                return None
            raise cs.ExplicitError("negative length", path=path)
        if n > _remaining(stream):
            raise cs.ExplicitError("length beyond frame", path=path)
        data = _read(stream, n, path)
        if self.raw:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise cs.ExplicitError("invalid utf-8", path=path) from e

    def _build(self, obj, stream, context, path):
        if obj is None:
            if not self.nullable:
                raise cs.ExplicitError("null in non-nullable field", path=path)
            if self.compact:
                stream.write(b"\x00")
            elif self.raw:
                stream.write(b"\xff\xff\xff\xff")
            else:
                stream.write(b"\xff\xff")
            return obj
        data = obj if self.raw else obj.encode("utf-8")
        if self.compact:
            stream.write(encode_uvarint(len(data) + 1))
        elif self.raw:
            stream.write(struct.pack(">i", len(data)))
        else:
            stream.write(struct.pack(">h", len(data)))
        stream.write(data)
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


class KArray(cs.Construct):
    """Kafka ARRAY (int32 count, -1 null) or COMPACT_ARRAY (uvarint count+1, 0 null).

    The count is checked against the bytes left in the frame (each element takes at least
    ``min_size`` bytes) before any element is parsed.
    """

    def __init__(
        self, subcon: cs.Construct, min_size: int, nullable: bool = False, compact: bool = False
    ):
        super().__init__()
        self.subcon = subcon
        self.min_size = max(1, min_size)
        self.nullable = nullable
        self.compact = compact
        self._uv = UVarint()

    def _parse(self, stream, context, path):
        if self.compact:
            n = self._uv._parse(stream, context, path) - 1
        else:
            n = struct.unpack(">i", _read(stream, 4, path))[0]
        if n < 0:
            if n == -1 and self.nullable:
                return None
            raise cs.ExplicitError("negative array length", path=path)
        if n * self.min_size > _remaining(stream):
            raise cs.ExplicitError("array length beyond frame", path=path)
        return cs.ListContainer(self.subcon._parsereport(stream, context, path) for _ in range(n))

    def _build(self, obj, stream, context, path):
        if obj is None:
            if not self.nullable:
                raise cs.ExplicitError("null in non-nullable array", path=path)
            stream.write(b"\x00" if self.compact else b"\xff\xff\xff\xff")
            return obj
        if self.compact:
            stream.write(encode_uvarint(len(obj) + 1))
        else:
            stream.write(struct.pack(">i", len(obj)))
        for item in obj:
            self.subcon._build(item, stream, context, path)
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


class TaggedFields(cs.Construct):
    """The tagged-field block of flexible versions: parsed (and skipped), built empty."""

    def __init__(self):
        super().__init__()
        self._uv = UVarint()

    def _parse(self, stream, context, path):
        n = self._uv._parse(stream, context, path)
        if n * 2 > _remaining(stream):
            raise cs.ExplicitError("tagged field count beyond frame", path=path)
        tags = {}
        for _ in range(n):
            tag = self._uv._parse(stream, context, path)
            size = self._uv._parse(stream, context, path)
            if size > _remaining(stream):
                raise cs.ExplicitError("tagged field beyond frame", path=path)
            tags[tag] = _read(stream, size, path)
        return tags

    def _build(self, obj, stream, context, path):
        stream.write(b"\x00")
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


# --------------------------------------------------------------------------------------------
# the schema language: fields with version ranges, turned into construct structs

I8, I16, I32, I64, BOOL = "int8", "int16", "int32", "int64", "bool"
STR, NSTR, BYTES, NBYTES = "string", "nullable_string", "bytes", "nullable_bytes"


class Arr:
    """An array of structs (``fields``) or of a primitive (``fields`` is a type name)."""

    def __init__(self, fields: Any, nullable: bool = False):
        self.fields = fields
        self.nullable = nullable


def F(name: str, typ: Any, since: int = 0, until: int = 99) -> tuple:
    return (name, typ, since, until)


_PRIM = {
    I8: (cs.Int8sb, 1),
    I16: (cs.Int16sb, 2),
    I32: (cs.Int32sb, 4),
    I64: (cs.Int64sb, 8),
    BOOL: (cs.Flag, 1),
}


def _type_construct(typ: Any, version: int, flexible: bool) -> tuple[cs.Construct, int]:
    if isinstance(typ, Arr):
        if isinstance(typ.fields, str):
            sub, size = _type_construct(typ.fields, version, flexible)
        else:
            sub, size = _struct(typ.fields, version, flexible)
        return KArray(sub, size, nullable=typ.nullable, compact=flexible), 1 if flexible else 4
    if typ in _PRIM:
        return _PRIM[typ]
    if typ == STR:
        return KString(compact=flexible), 1 if flexible else 2
    if typ == NSTR:
        return KString(nullable=True, compact=flexible), 1 if flexible else 2
    if typ == BYTES:
        return KString(raw=True, compact=flexible), 1 if flexible else 4
    if typ == NBYTES:
        return KString(raw=True, nullable=True, compact=flexible), 1 if flexible else 4
    raise ValueError(typ)


def _struct(fields: list, version: int, flexible: bool) -> tuple[cs.Construct, int]:
    subs = []
    size = 0
    for name, typ, since, until in fields:
        if since <= version <= until:
            c, n = _type_construct(typ, version, flexible)
            subs.append(name / c)
            size += n
    if flexible:
        subs.append("_tagged" / cs.Default(TaggedFields(), {}))
        size += 1
    return cs.Struct(*subs), size


# ---- request header

REQUEST_HEADER_V1 = cs.Struct(
    "api_key" / cs.Int16sb,
    "api_version" / cs.Int16sb,
    "correlation_id" / cs.Int32sb,
    "client_id" / KString(nullable=True),
)
REQUEST_HEADER_V2 = cs.Struct(
    "api_key" / cs.Int16sb,
    "api_version" / cs.Int16sb,
    "correlation_id" / cs.Int32sb,
    "client_id" / KString(nullable=True),  # never compact
    "_tagged" / cs.Default(TaggedFields(), {}),
)
RESPONSE_HEADER_V0 = cs.Struct("correlation_id" / cs.Int32sb)
RESPONSE_HEADER_V1 = cs.Struct(
    "correlation_id" / cs.Int32sb, "_tagged" / cs.Default(TaggedFields(), {})
)

# ---- bodies: (request fields, response fields) per API

_PARTITION_FIELDS_META = [
    F("error_code", I16),
    F("partition_index", I32),
    F("leader_id", I32),
    F("leader_epoch", I32, 7),
    F("replica_nodes", Arr(I32)),
    F("isr_nodes", Arr(I32)),
    F("offline_replicas", Arr(I32), 5),
]

SCHEMAS: dict[int, tuple[list, list]] = {
    API_VERSIONS: (
        [F("client_software_name", STR, 3), F("client_software_version", STR, 3)],
        [
            F("error_code", I16),
            F("api_keys", Arr([F("api_key", I16), F("min_version", I16), F("max_version", I16)])),
            F("throttle_time_ms", I32, 1),
        ],
    ),
    METADATA: (
        [
            F("topics", Arr([F("name", STR)]), 0, 0),
            F("topics", Arr([F("name", STR)], nullable=True), 1),
            F("allow_auto_topic_creation", BOOL, 4),
            F("include_cluster_authorized_operations", BOOL, 8),
            F("include_topic_authorized_operations", BOOL, 8),
        ],
        [
            F("throttle_time_ms", I32, 3),
            F(
                "brokers",
                Arr([F("node_id", I32), F("host", STR), F("port", I32), F("rack", NSTR, 1)]),
            ),
            F("cluster_id", NSTR, 2),
            F("controller_id", I32, 1),
            F(
                "topics",
                Arr(
                    [
                        F("error_code", I16),
                        F("name", STR),
                        F("is_internal", BOOL, 1),
                        F("partitions", Arr(_PARTITION_FIELDS_META)),
                        F("topic_authorized_operations", I32, 8),
                    ]
                ),
            ),
            F("cluster_authorized_operations", I32, 8),
        ],
    ),
    PRODUCE: (
        [
            F("transactional_id", NSTR, 3),
            F("acks", I16),
            F("timeout_ms", I32),
            F(
                "topic_data",
                Arr(
                    [
                        F("name", STR),
                        F("partition_data", Arr([F("index", I32), F("records", NBYTES)])),
                    ]
                ),
            ),
        ],
        [
            F(
                "responses",
                Arr(
                    [
                        F("name", STR),
                        F(
                            "partition_responses",
                            Arr(
                                [
                                    F("index", I32),
                                    F("error_code", I16),
                                    F("base_offset", I64),
                                    F("log_append_time_ms", I64, 2),
                                    F("log_start_offset", I64, 5),
                                ]
                            ),
                        ),
                    ]
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
                Arr(
                    [
                        F("topic", STR),
                        F(
                            "partitions",
                            Arr(
                                [
                                    F("partition", I32),
                                    F("current_leader_epoch", I32, 9),
                                    F("fetch_offset", I64),
                                    F("log_start_offset", I64, 5),
                                    F("partition_max_bytes", I32),
                                ]
                            ),
                        ),
                    ]
                ),
            ),
            F("forgotten_topics_data", Arr([F("topic", STR), F("partitions", Arr(I32))]), 7),
            F("rack_id", STR, 11),
        ],
        [
            F("throttle_time_ms", I32, 1),
            F("error_code", I16, 7),
            F("session_id", I32, 7),
            F(
                "responses",
                Arr(
                    [
                        F("topic", STR),
                        F(
                            "partitions",
                            Arr(
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
                                ]
                            ),
                        ),
                    ]
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
                Arr(
                    [
                        F("name", STR),
                        F(
                            "partitions",
                            Arr(
                                [
                                    F("partition_index", I32),
                                    F("current_leader_epoch", I32, 4),
                                    F("timestamp", I64),
                                    F("max_num_offsets", I32, 0, 0),
                                ]
                            ),
                        ),
                    ]
                ),
            ),
        ],
        [
            F("throttle_time_ms", I32, 2),
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F(
                            "partitions",
                            Arr(
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
                    ]
                ),
            ),
        ],
    ),
    OFFSET_COMMIT: (
        [
            F("group_id", STR),
            F("generation_id", I32, 1),
            F("member_id", STR, 1),
            F("group_instance_id", NSTR, 7),
            F("retention_time_ms", I64, 2, 4),
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F(
                            "partitions",
                            Arr(
                                [
                                    F("partition_index", I32),
                                    F("committed_offset", I64),
                                    F("committed_leader_epoch", I32, 6),
                                    F("commit_timestamp", I64, 1, 1),
                                    F("committed_metadata", NSTR),
                                ]
                            ),
                        ),
                    ]
                ),
            ),
        ],
        [
            F("throttle_time_ms", I32, 3),
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F("partitions", Arr([F("partition_index", I32), F("error_code", I16)])),
                    ]
                ),
            ),
        ],
    ),
    OFFSET_FETCH: (
        [
            F("group_id", STR),
            F("topics", Arr([F("name", STR), F("partition_indexes", Arr(I32))]), 0, 1),
            F("topics", Arr([F("name", STR), F("partition_indexes", Arr(I32))], nullable=True), 2),
        ],
        [
            F("throttle_time_ms", I32, 3),
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F(
                            "partitions",
                            Arr(
                                [
                                    F("partition_index", I32),
                                    F("committed_offset", I64),
                                    F("committed_leader_epoch", I32, 5),
                                    F("metadata", NSTR),
                                    F("error_code", I16),
                                ]
                            ),
                        ),
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
    SASL_HANDSHAKE: (
        [F("mechanism", STR)],
        [F("error_code", I16), F("mechanisms", Arr(STR))],
    ),
    SASL_AUTHENTICATE: (
        [F("auth_bytes", BYTES)],
        [
            F("error_code", I16),
            F("error_message", NSTR),
            F("auth_bytes", BYTES),
            F("session_lifetime_ms", I64, 1),
        ],
    ),
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
            F("topics", Arr([F("name", STR), F("partitions", Arr(I32))])),
        ],
        [
            F("throttle_time_ms", I32),
            F(
                "results",
                Arr(
                    [
                        F("name", STR),
                        F("results", Arr([F("partition_index", I32), F("error_code", I16)])),
                    ]
                ),
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
                Arr(
                    [
                        F("name", STR),
                        F(
                            "partitions",
                            Arr(
                                [
                                    F("partition_index", I32),
                                    F("committed_offset", I64),
                                    F("committed_leader_epoch", I32, 2),
                                    F("committed_metadata", NSTR),
                                ]
                            ),
                        ),
                    ]
                ),
            ),
        ],
        [
            F("throttle_time_ms", I32),
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F("partitions", Arr([F("partition_index", I32), F("error_code", I16)])),
                    ]
                ),
            ),
        ],
    ),
    DELETE_RECORDS: (
        [
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F("partitions", Arr([F("partition_index", I32), F("offset", I64)])),
                    ]
                ),
            ),
            F("timeout_ms", I32),
        ],
        [
            F("throttle_time_ms", I32),
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F(
                            "partitions",
                            Arr(
                                [
                                    F("partition_index", I32),
                                    F("low_watermark", I64),
                                    F("error_code", I16),
                                ]
                            ),
                        ),
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
        [
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
        ],
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
        [
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
        ],
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
            F("topics", Arr([F("name", STR), F("partitions", Arr([F("partition_index", I32)]))])),
        ],
        [
            F("error_code", I16),
            F("throttle_time_ms", I32),
            F(
                "topics",
                Arr(
                    [
                        F("name", STR),
                        F(
                            "partitions",
                            Arr([F("partition_index", I32), F("error_code", I16)]),
                        ),
                    ]
                ),
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


@cache
def request_struct(api_key: int, version: int) -> cs.Construct:
    return _struct(SCHEMAS[api_key][0], version, is_flexible(api_key, version))[0]


@cache
def response_struct(api_key: int, version: int) -> cs.Construct:
    return _struct(SCHEMAS[api_key][1], version, is_flexible(api_key, version))[0]


def response_header_version(api_key: int, version: int) -> int:
    if api_key == API_VERSIONS:
        return 0  # always v0, even for a flexible body
    return 1 if is_flexible(api_key, version) else 0


# --------------------------------------------------------------------------------------------
# frames


class RequestHeader:
    __slots__ = ("api_key", "api_version", "correlation_id", "client_id")

    def __init__(
        self, api_key: int, api_version: int, correlation_id: int, client_id: str | None
    ) -> None:
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id
        self.client_id = client_id


_HDR = struct.Struct(">hhih")


def decode_request_header(frame: bytes | memoryview) -> tuple[RequestHeader, int]:
    """Parse the request header; returns it and the offset of the body.

    The header is decoded by hand (it is on every request); ``REQUEST_HEADER_V1``/``V2`` are its
    declarations and a test checks the two agree.
    """
    if len(frame) < 10:
        raise KafkaDecodeError("truncated request header")
    api_key, version, corr, n = _HDR.unpack_from(frame, 0)
    pos = 10
    client_id = None
    if n >= 0:
        if pos + n > len(frame):
            raise KafkaDecodeError("client_id beyond frame")
        client_id = bytes(frame[pos : pos + n]).decode("utf-8", "replace")
        pos += n
    elif n != -1:
        raise KafkaDecodeError("negative client_id length")
    if api_key in SCHEMAS and is_flexible(api_key, version) and version <= API_RANGES[api_key][1]:
        try:
            st = io.BytesIO(bytes(frame[pos:]))
            TaggedFields().parse_stream(st)
            pos += st.tell()
        except (cs.ConstructError, IndexError) as e:
            raise KafkaDecodeError(f"bad header tagged fields: {e}") from e
    return RequestHeader(api_key, version, corr, client_id), pos


def decode_body(api_key: int, version: int, data: bytes | memoryview) -> Any:
    """Parse a request body with its declaration; trailing bytes are an error."""
    st = request_struct(api_key, version)
    raw = bytes(data)
    try:
        stream = io.BytesIO(raw)
        obj = st.parse_stream(stream)
    except (cs.ConstructError, struct.error, OverflowError, ValueError) as e:
        raise KafkaDecodeError(f"bad {api_key} v{version} body: {e}") from e
    if stream.tell() != len(raw):
        raise KafkaDecodeError("trailing bytes after body")
    return obj


def decode_request(frame: bytes | memoryview) -> tuple[RequestHeader, Any]:
    """Header and body of a known API at a supported version (KafkaDecodeError otherwise)."""
    header, pos = decode_request_header(frame)
    if header.api_key not in SCHEMAS:
        raise KafkaDecodeError(f"unknown api key {header.api_key}")
    lo, hi = API_RANGES[header.api_key]
    if not lo <= header.api_version <= hi:
        raise KafkaDecodeError(f"unsupported version {header.api_version}")
    return header, decode_body(header.api_key, header.api_version, memoryview(frame)[pos:])


def encode_request(
    api_key: int, version: int, correlation_id: int, client_id: str | None, body: dict
) -> bytes:
    """A whole request frame (length prefix included); used by tests and tools."""
    hdr = {
        "api_key": api_key,
        "api_version": version,
        "correlation_id": correlation_id,
        "client_id": client_id,
    }
    hs = REQUEST_HEADER_V2 if is_flexible(api_key, version) else REQUEST_HEADER_V1
    payload = hs.build(hdr) + request_struct(api_key, version).build(body)
    return struct.pack(">i", len(payload)) + payload


def encode_response(api_key: int, version: int, correlation_id: int, body: dict) -> bytes:
    """A whole response frame (length prefix included)."""
    if response_header_version(api_key, version):
        hdr = RESPONSE_HEADER_V1.build({"correlation_id": correlation_id})
    else:
        hdr = struct.pack(">i", correlation_id)
    payload = response_struct(api_key, version).build(body)
    return struct.pack(">i", len(hdr) + len(payload)) + hdr + payload


def decode_response(api_key: int, version: int, frame: bytes) -> tuple[int, Any]:
    """Parse a response frame without its length prefix (tests)."""
    if response_header_version(api_key, version):
        h = RESPONSE_HEADER_V1.parse(frame)
        st = io.BytesIO(frame)
        RESPONSE_HEADER_V1.parse_stream(st)
        pos = st.tell()
    else:
        h = RESPONSE_HEADER_V0.parse(frame)
        pos = 4
    return h.correlation_id, response_struct(api_key, version).parse(frame[pos:])


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
