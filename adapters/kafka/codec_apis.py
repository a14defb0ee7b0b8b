"""Kafka's API keys, the versions polymq advertises for each, and the error codes it answers.

Re-exported by :mod:`.codec`, the module the rest of the adapter reads them from.
"""

# --------------------------------------------------------------------------------------------
# error codes and API keys

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


def is_flexible(api_key: int, version: int) -> bool:
    """Whether this version uses the compact encodings and tagged fields."""
    return version >= FLEXIBLE_SINCE.get(api_key, 99)
