"""Kafka wire codec (sans-I/O).

The request and response bodies are declared once, as version-annotated field lists, and turned
into ``construct`` structs per (api, version, direction): those structs are the single source of
truth for the wire format. The declarations live by API family: the connection's own requests
(ApiVersions, SASL, Metadata) here, the others in ``codec_produce_fetch``, ``codec_groups``,
``codec_txn`` and ``codec_admin``; the schema language and the wire primitives in
``codec_types``; the API keys, advertised versions and error codes in ``codec_apis``. Two
hand-written fast paths exist for the hot frames (the Produce request decoder and the Fetch
response encoder, beside their declarations); tests check them against the declarations.

This module is the codec's one entry point: it assembles ``SCHEMAS``, frames requests and
responses, and re-exports every public name of the modules above, so the adapter and the tests
read them all as ``codec.X``.
"""

from __future__ import annotations

import io
import struct
from functools import cache
from typing import Any

import construct as cs

from .codec_admin import ADMIN_SCHEMAS
from .codec_apis import *  # noqa: F403 -- the API keys and error codes, re-exported
from .codec_apis import API_RANGES, API_VERSIONS, METADATA, SASL_AUTHENTICATE, SASL_HANDSHAKE
from .codec_apis import is_flexible as is_flexible
from .codec_groups import GROUP_SCHEMAS
from .codec_produce_fetch import PRODUCE_FETCH_SCHEMAS
from .codec_produce_fetch import FetchPartition as FetchPartition
from .codec_produce_fetch import ProduceRequest as ProduceRequest
from .codec_produce_fetch import decode_produce as decode_produce
from .codec_produce_fetch import encode_fetch_response as encode_fetch_response
from .codec_txn import TXN_SCHEMAS
from .codec_types import BOOL, BYTES, I16, I32, I64, NSTR, STR, Arr, F, fields_struct
from .codec_types import I8 as I8
from .codec_types import NBYTES as NBYTES
from .codec_types import REQUEST_HEADER_V1 as REQUEST_HEADER_V1
from .codec_types import REQUEST_HEADER_V2 as REQUEST_HEADER_V2
from .codec_types import RESPONSE_HEADER_V0 as RESPONSE_HEADER_V0
from .codec_types import RESPONSE_HEADER_V1 as RESPONSE_HEADER_V1
from .codec_types import KafkaDecodeError as KafkaDecodeError
from .codec_types import KArray as KArray
from .codec_types import KString as KString
from .codec_types import TaggedFields as TaggedFields
from .codec_types import UVarint as UVarint

# --------------------------------------------------------------------------------------------
# the connection's own requests: ApiVersions, SASL, Metadata

_PARTITION_FIELDS_META = [
    F("error_code", I16),
    F("partition_index", I32),
    F("leader_id", I32),
    F("leader_epoch", I32, 7),
    F("replica_nodes", Arr(I32)),
    F("isr_nodes", Arr(I32)),
    F("offline_replicas", Arr(I32), 5),
]

CONNECTION_SCHEMAS: dict[int, tuple[list, list]] = {
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
}


# every declaration, by API key
SCHEMAS: dict[int, tuple[list, list]] = {
    **CONNECTION_SCHEMAS,
    **PRODUCE_FETCH_SCHEMAS,
    **GROUP_SCHEMAS,
    **TXN_SCHEMAS,
    **ADMIN_SCHEMAS,
}
assert SCHEMAS.keys() == API_RANGES.keys(), "every advertised API has a declaration"


@cache
def request_struct(api_key: int, version: int) -> cs.Construct:
    return fields_struct(SCHEMAS[api_key][0], version, is_flexible(api_key, version))[0]


@cache
def response_struct(api_key: int, version: int) -> cs.Construct:
    return fields_struct(SCHEMAS[api_key][1], version, is_flexible(api_key, version))[0]


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
