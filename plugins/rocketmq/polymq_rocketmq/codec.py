"""The RocketMQ 4.x remoting protocol, sans-I/O: frames, commands and stored-message records.

A remoting frame is ``total length (int32) | serialize type (1 byte) + header length (3 bytes) |
header | body``; the total counts everything after itself. The header is JSON (serialize type 0)
or RocketMQ's own binary layout (type 1): a request or response code, the client's language and
version, an ``opaque`` that pairs a response with its request, flags (bit 0: response, bit 1:
one-way), a remark and ``extFields``, the string map that carries each request's own header.

The ``construct`` declarations below are the single source of truth for the binary layouts;
:func:`encode_message_ext` and :func:`decode_batch` are the hand-written fast paths of the
records that travel per message, checked against the declarations by property tests.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from construct import (
    Bytes,
    GreedyBytes,
    GreedyRange,
    Int8ub,
    Int16sb,
    Int24ub,
    Int32sb,
    Int64sb,
    PascalString,
    Prefixed,
    Struct,
    this,
)

from polymq.core.errors import ProtocolError

# -- codes ----------------------------------------------------------------------------------

SEND_MESSAGE = 10
PULL_MESSAGE = 11
QUERY_CONSUMER_OFFSET = 14
UPDATE_CONSUMER_OFFSET = 15
UPDATE_AND_CREATE_TOPIC = 17
SEARCH_OFFSET_BY_TIMESTAMP = 29
GET_MAX_OFFSET = 30
GET_MIN_OFFSET = 31
GET_EARLIEST_MSG_STORETIME = 32
HEART_BEAT = 34
UNREGISTER_CLIENT = 35
CONSUMER_SEND_MSG_BACK = 36
END_TRANSACTION = 37
GET_CONSUMER_LIST_BY_GROUP = 38
GET_KV_CONFIG = 101
GET_ROUTEINFO_BY_TOPIC = 105
GET_BROKER_CLUSTER_INFO = 106
GET_KV_CONFIG_BY_VALUE = 217
SEND_MESSAGE_V2 = 310
SEND_BATCH_MESSAGE = 320

SUCCESS = 0
SYSTEM_ERROR = 1
REQUEST_CODE_NOT_SUPPORTED = 3
MESSAGE_ILLEGAL = 13
NO_PERMISSION = 16
TOPIC_NOT_EXIST = 17
PULL_NOT_FOUND = 19
PULL_RETRY_IMMEDIATELY = 20
PULL_OFFSET_MOVED = 21
QUERY_NOT_FOUND = 22
SUBSCRIPTION_PARSE_FAILED = 23

FLAG_RESPONSE = 1
FLAG_ONEWAY = 2

SERIALIZE_JSON = 0
SERIALIZE_ROCKETMQ = 1

# PULL_MESSAGE sysFlag bits
PULL_COMMIT_OFFSET = 1
PULL_SUSPEND = 2
PULL_SUBSCRIPTION = 4

# message sysFlag bits
MSG_COMPRESSED = 1
MSG_TRANSACTION_MASK = 0b1100

MESSAGE_MAGIC = -626843481  # 0xDAA320A7, the 4.x commit-log record's magic code
NAME_VALUE_SEPARATOR = "\x01"
PROPERTY_SEPARATOR = "\x02"

# -- declarations ---------------------------------------------------------------------------

# A frame as the framer hands it over (the total length already taken off).
Frame = Struct(
    "serialize_type" / Int8ub,
    "header_length" / Int24ub,
    "header" / Bytes(this.header_length),
    "body" / GreedyBytes,
)

# The binary (ROCKETMQ) header of serialize type 1.
BinaryHeader = Struct(
    "code" / Int16sb,
    "language" / Int8ub,
    "version" / Int16sb,
    "opaque" / Int32sb,
    "flag" / Int32sb,
    "remark" / PascalString(Int32sb, "utf8"),
    "ext"
    / Prefixed(
        Int32sb,
        GreedyRange(
            Struct("key" / PascalString(Int16sb, "utf8"), "value" / PascalString(Int32sb, "utf8"))
        ),
    ),
)

# One stored message as PULL_MESSAGE returns it (MessageExt, IPv4 hosts), back to back.
MessageExt = Struct(
    "store_size" / Int32sb,
    "magic" / Int32sb,
    "body_crc" / Int32sb,
    "queue_id" / Int32sb,
    "flag" / Int32sb,
    "queue_offset" / Int64sb,
    "commit_log_offset" / Int64sb,
    "sys_flag" / Int32sb,
    "born_timestamp" / Int64sb,
    "born_host" / Bytes(4),
    "born_port" / Int32sb,
    "store_timestamp" / Int64sb,
    "store_host" / Bytes(4),
    "store_port" / Int32sb,
    "reconsume_times" / Int32sb,
    "prepared_transaction_offset" / Int64sb,
    "body" / Prefixed(Int32sb, GreedyBytes),
    "topic" / PascalString(Int8ub, "utf8"),
    "properties" / PascalString(Int16sb, "utf8"),
)

# One message of a SEND_BATCH_MESSAGE body, back to back.
BatchItem = Struct(
    "total_size" / Int32sb,
    "magic" / Int32sb,
    "body_crc" / Int32sb,
    "flag" / Int32sb,
    "body" / Prefixed(Int32sb, GreedyBytes),
    "properties" / PascalString(Int16sb, "utf8"),
)

# -- commands -------------------------------------------------------------------------------


class Command:
    """One remoting command (request or response)."""

    __slots__ = ("code", "opaque", "flag", "remark", "ext", "body", "serialize_type", "language")

    def __init__(
        self,
        code: int,
        opaque: int,
        flag: int = 0,
        remark: str | None = None,
        ext: dict[str, str] | None = None,
        body: bytes = b"",
        serialize_type: int = SERIALIZE_JSON,
        language: str = "JAVA",
    ) -> None:
        self.code = code
        self.opaque = opaque
        self.flag = flag
        self.remark = remark
        self.ext = ext if ext is not None else {}
        self.body = body
        self.serialize_type = serialize_type
        self.language = language

    @property
    def oneway(self) -> bool:
        return bool(self.flag & FLAG_ONEWAY)

    @property
    def is_response(self) -> bool:
        return bool(self.flag & FLAG_RESPONSE)

    def __repr__(self) -> str:
        return f"Command(code={self.code}, opaque={self.opaque}, flag={self.flag}, ext={self.ext})"


_LANGUAGES = ["JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP"]
_HDR = struct.Struct(">iI")


def _ext_map(raw: Any) -> dict[str, str]:
    """extFields as strings (the Java broker keeps them as strings; JS clients send numbers)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError("extFields is not a map")
    out = {}
    for k, v in raw.items():
        if v is None:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        elif isinstance(v, dict | list):
            raise ProtocolError(f"extFields[{k!r}] is not a scalar")
        out[str(k)] = str(v)
    return out


def decode_command(frame: bytes | memoryview) -> Command:
    """Parse one frame (without its total length) into a :class:`Command`."""
    n = len(frame)
    if n < 4:
        raise ProtocolError("remoting frame shorter than its header length")
    word = int.from_bytes(frame[:4], "big")
    stype, hlen = word >> 24, word & 0xFFFFFF
    if hlen > n - 4:
        raise ProtocolError(f"header length {hlen} over the frame's remaining {n - 4} bytes")
    header = bytes(frame[4 : 4 + hlen])
    body = bytes(frame[4 + hlen :])
    if stype == SERIALIZE_JSON:
        try:
            h = json.loads(header)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            # (RecursionError: nesting deeper than the parser's limit, which the client chose)
            raise ProtocolError(f"header is not JSON: {e}") from None
        if not isinstance(h, dict):
            raise ProtocolError("header is not a JSON object")
        code, opaque, flag = h.get("code"), h.get("opaque", 0), h.get("flag", 0)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (code, opaque, flag)):
            raise ProtocolError("header code, opaque and flag must be integers")
        remark = h.get("remark")
        return Command(
            code,
            opaque,
            flag,
            remark if isinstance(remark, str) else None,
            _ext_map(h.get("extFields")),
            body,
            stype,
            str(h.get("language") or "JAVA"),
        )
    if stype == SERIALIZE_ROCKETMQ:
        try:
            h = BinaryHeader.parse(header)
        except Exception as e:  # construct's errors: the header does not fit its layout
            raise ProtocolError(f"bad binary header: {e}") from None
        lang = _LANGUAGES[h.language] if h.language < len(_LANGUAGES) else "OTHER"
        ext = {i.key: i.value for i in h.ext}
        return Command(h.code, h.opaque, h.flag, h.remark or None, ext, body, stype, lang)
    raise ProtocolError(f"unknown serialize type {stype}")


def encode_command(cmd: Command) -> bytes:
    """One frame, with its total length, in the serialize type ``cmd`` names."""
    if cmd.serialize_type == SERIALIZE_ROCKETMQ:
        lang = _LANGUAGES.index(cmd.language) if cmd.language in _LANGUAGES else 0
        header = BinaryHeader.build(
            {
                "code": cmd.code,
                "language": lang,
                "version": 0,
                "opaque": cmd.opaque,
                "flag": cmd.flag,
                "remark": cmd.remark or "",
                "ext": [{"key": k, "value": v} for k, v in cmd.ext.items()],
            }
        )
    else:
        h: dict[str, Any] = {
            "code": cmd.code,
            "language": "JAVA",
            "version": 0,
            "opaque": cmd.opaque,
            "flag": cmd.flag,
            "serializeTypeCurrentRPC": "JSON",
        }
        if cmd.remark is not None:
            h["remark"] = cmd.remark
        if cmd.ext:
            h["extFields"] = cmd.ext
        header = json.dumps(h, separators=(",", ":")).encode()
    body = cmd.body
    return (
        _HDR.pack(4 + len(header) + len(body), (cmd.serialize_type << 24) | len(header))
        + header
        + body
    )


def response(
    request: Command, code: int, remark: str | None = None, ext: dict | None = None, body=b""
) -> bytes:
    """The encoded response to ``request``."""
    return encode_command(
        Command(
            code,
            request.opaque,
            FLAG_RESPONSE,
            remark,
            {k: str(v) for k, v in ext.items()} if ext else None,
            body,
            request.serialize_type,
            request.language,
        )
    )


# -- message properties ---------------------------------------------------------------------


def parse_properties(text: str) -> dict[str, str]:
    """``k\\x01v\\x02k\\x01v\\x02`` into a dict (items without a separator are dropped)."""
    out: dict[str, str] = {}
    if not text:
        return out
    for item in text.split(PROPERTY_SEPARATOR):
        k, sep, v = item.partition(NAME_VALUE_SEPARATOR)
        if sep and k:
            out[k] = v
    return out


def format_properties(props: dict[str, str]) -> str:
    return "".join(f"{k}{NAME_VALUE_SEPARATOR}{v}{PROPERTY_SEPARATOR}" for k, v in props.items())


def inflate(body: bytes, limit: int) -> bytes:
    """A zlib-compressed body (sysFlag bit 0), refused if it inflates past ``limit``."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise ValueError(f"compressed body does not inflate: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ValueError(f"compressed body inflates past {limit} bytes")
    return out


# -- stored-message records (fast paths) ----------------------------------------------------

_EXT_HEAD = struct.Struct(">iiiiiqqiq4siq4siiqi")
_BATCH_HEAD = struct.Struct(">iiiii")


def encode_message_ext(
    queue_id: int,
    queue_offset: int,
    commit_log_offset: int,
    sys_flag: int,
    born_timestamp: int,
    store_timestamp: int,
    host: bytes,
    port: int,
    reconsume_times: int,
    body: bytes,
    topic: bytes,
    properties: bytes,
    flag: int = 0,
) -> bytes:
    """One :data:`MessageExt` record (``topic`` at most 127 bytes, ``properties`` 32767)."""
    size = _EXT_HEAD.size + len(body) + 1 + len(topic) + 2 + len(properties)
    return b"".join(
        (
            _EXT_HEAD.pack(
                size,
                MESSAGE_MAGIC,
                zlib.crc32(body) & 0x7FFFFFFF,
                queue_id,
                flag,
                queue_offset,
                commit_log_offset,
                sys_flag,
                born_timestamp,
                host,
                port,
                store_timestamp,
                host,
                port,
                reconsume_times,
                0,
                len(body),
            ),
            body,
            bytes((len(topic),)),
            topic,
            len(properties).to_bytes(2, "big"),
            properties,
        )
    )


def decode_batch(data: bytes) -> list[tuple[int, bytes, str]]:
    """The messages of a SEND_BATCH_MESSAGE body: ``(flag, body, properties)`` each.

    Every length is checked against what remains before it is used."""
    out = []
    pos, n = 0, len(data)
    head = _BATCH_HEAD
    while pos < n:
        if n - pos < head.size + 2:
            raise ValueError("batch item truncated")
        total, _magic, _crc, flag, blen = head.unpack_from(data, pos)
        if total < head.size + 2 or total > n - pos or blen < 0 or blen > total - head.size - 2:
            raise ValueError("batch item length out of range")
        b0 = pos + head.size
        body = data[b0 : b0 + blen]
        plen = int.from_bytes(data[b0 + blen : b0 + blen + 2], "big", signed=True)
        p0 = b0 + blen + 2
        if plen < 0 or p0 + plen > pos + total:
            raise ValueError("batch item properties out of range")
        props = data[p0 : p0 + plen].decode("utf-8", "replace")
        out.append((flag, bytes(body), props))
        pos += total
    return out


def encode_batch_item(flag: int, body: bytes, properties: bytes) -> bytes:
    """One :data:`BatchItem` (what a producer sends; the tests' clients use it)."""
    total = _BATCH_HEAD.size + len(body) + 2 + len(properties)
    return (
        _BATCH_HEAD.pack(total, 0, zlib.crc32(body) & 0x7FFFFFFF, flag, len(body))
        + body
        + len(properties).to_bytes(2, "big")
        + properties
    )
