"""RecordBatch v2 (magic 2): validation on append, decoding to and encoding from core messages.

The hot path (``check_batches``) looks at the 61-byte batch header only and computes one CRC-32C
per batch; records are decoded only when a reader of another protocol needs them.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from typing import Any

import construct as cs
import crc32c

from polymq.core.message import Message

# the declaration of the batch header (offsets as in the Kafka docs)
RECORD_BATCH_HEADER = cs.Struct(
    "base_offset" / cs.Int64sb,  # 0
    "batch_length" / cs.Int32sb,  # 8
    "partition_leader_epoch" / cs.Int32sb,  # 12
    "magic" / cs.Int8sb,  # 16
    "crc" / cs.Int32ub,  # 17
    "attributes" / cs.Int16sb,  # 21
    "last_offset_delta" / cs.Int32sb,  # 23
    "base_timestamp" / cs.Int64sb,  # 27
    "max_timestamp" / cs.Int64sb,  # 35
    "producer_id" / cs.Int64sb,  # 43
    "producer_epoch" / cs.Int16sb,  # 51
    "base_sequence" / cs.Int32sb,  # 53
    "records_count" / cs.Int32sb,  # 57
)
HEADER_SIZE = 61
_HDR = struct.Struct(">qiibIhiqqqhii")
assert _HDR.size == HEADER_SIZE

CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = range(5)

# record headers that carry core fields (the names of the CloudEvents Kafka protocol binding)
CONTENT_TYPE_HEADER = "content-type"
CORRELATION_ID_HEADER = "correlation-id"


class BatchError(Exception):
    """A batch that must not be appended; ``code`` is the Kafka error code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class BatchInfo:
    """What the broker needs from a batch header (no record is looked at)."""

    __slots__ = (
        "data",
        "count",
        "max_timestamp",
        "producer_id",
        "producer_epoch",
        "base_sequence",
        "attributes",
    )

    def __init__(
        self,
        data: memoryview,
        count: int,
        max_timestamp: int,
        producer_id: int,
        producer_epoch: int,
        base_sequence: int,
        attributes: int,
    ) -> None:
        self.data = data
        self.count = count
        self.max_timestamp = max_timestamp
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self.attributes = attributes


def check_batches(records: memoryview) -> list[BatchInfo]:
    """Split a produce ``records`` field into validated v2 batches.

    Raises BatchError(2 CORRUPT_MESSAGE) on a bad magic, CRC, length or count.
    """
    out = []
    pos = 0
    end = len(records)
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise BatchError(2, "truncated record batch")
        (_, length, _, magic, crc, attrs, last_delta, _, max_ts, pid, epoch, seq, count) = (
            _HDR.unpack_from(records, pos)
        )
        if magic != 2:
            raise BatchError(2, f"unsupported record batch magic {magic}")
        size = length + 12
        if length < HEADER_SIZE - 12 or pos + size > end:
            raise BatchError(2, "bad record batch length")
        data = records[pos : pos + size]
        if crc32c.crc32c(data[21:]) != crc:
            raise BatchError(2, "record batch CRC mismatch")
        if count <= 0 or last_delta + 1 != count:
            raise BatchError(2, "record batch count mismatch")
        if attrs & 0x20:
            raise BatchError(2, "control batches are not accepted")
        out.append(BatchInfo(data, count, max_ts, pid, epoch, seq, attrs))
        pos += size
    if not out:
        raise BatchError(2, "no record batch")
    return out


def with_base_offset(data: memoryview | bytes, base_offset: int) -> bytes:
    """The batch bytes with ``base_offset`` written in (the CRC does not cover it)."""
    return struct.pack(">q", base_offset) + data[8:]


# --------------------------------------------------------------------------------------------
# varints


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def write_varint(out: bytearray, n: int) -> None:
    v = zigzag(n) & 0xFFFFFFFFFFFFFFFF
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    v = 0
    while True:
        if pos >= len(buf):
            raise BatchError(2, "truncated varint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise BatchError(2, "varint too long")
    return (v >> 1) ^ -(v & 1), pos


# --------------------------------------------------------------------------------------------
# compression


def _snappy_raw(data: bytes, limit: int) -> bytes:
    import snappy

    # a raw snappy block starts with its uncompressed length (uvarint): check it first
    n = shift = 0
    for i in range(min(5, len(data))):
        b = data[i]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if n > limit:
        raise BatchError(10, "decompressed batch too large")
    return snappy.uncompress(data)


def _decompress_errors() -> tuple[type[Exception], ...]:
    import snappy
    import zstandard

    # zlib.error (gzip), RuntimeError (lz4), UncompressError (snappy), ZstdError, and the
    # ValueError / EOFError some of them raise for truncated input
    return (
        zlib.error,
        RuntimeError,
        ValueError,
        EOFError,
        snappy.UncompressError,
        zstandard.ZstdError,
    )


def decompress(codec: int, data: bytes, limit: int) -> bytes:
    """Decompress a batch's records; never produces (much) more than ``limit`` bytes."""
    if codec == CODEC_NONE:
        return data
    try:
        if codec == CODEC_GZIP:
            out = zlib.decompressobj(wbits=47).decompress(data, limit + 1)
        elif codec == CODEC_SNAPPY:
            if data[:8] == b"\x82SNAPPY\x00":  # xerial framing (Java clients, kafka-python)
                parts = []
                pos = 16
                total = 0
                while pos + 4 <= len(data):
                    (n,) = struct.unpack_from(">i", data, pos)
                    pos += 4
                    if n < 0 or pos + n > len(data):
                        raise BatchError(2, "bad xerial snappy chunk")
                    chunk = _snappy_raw(data[pos : pos + n], limit - total)
                    total += len(chunk)
                    parts.append(chunk)
                    pos += n
                out = b"".join(parts)
            else:
                out = _snappy_raw(data, limit)
        elif codec == CODEC_LZ4:
            import lz4.frame

            out = lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=limit + 1)
        elif codec == CODEC_ZSTD:
            import zstandard

            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as r:
                out = r.read(limit + 1)
        else:
            raise BatchError(2, f"unknown compression codec {codec}")
    except _decompress_errors() as e:  # what the libraries raise for data they cannot read
        raise BatchError(2, f"cannot decompress batch: {e}") from e
    if len(out) > limit:
        raise BatchError(10, "decompressed batch too large")
    return out


def compress(codec: int, data: bytes) -> bytes:
    if codec == CODEC_NONE:
        return data
    if codec == CODEC_GZIP:
        return gzip.compress(data)
    if codec == CODEC_SNAPPY:
        import snappy

        return snappy.compress(data)
    if codec == CODEC_LZ4:
        import lz4.frame

        return lz4.frame.compress(data)
    if codec == CODEC_ZSTD:
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(codec)


# --------------------------------------------------------------------------------------------
# decoding


class Record:
    __slots__ = ("offset", "timestamp", "key", "value", "headers")

    def __init__(
        self,
        offset: int,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
    ) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.value = value
        self.headers = headers


DECODE_LIMIT = 64 * 1024 * 1024


def decode_batch(data: bytes, limit: int = DECODE_LIMIT) -> list[Record]:
    """Every record of one v2 batch (decompressing as needed)."""
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise BatchError(2, "truncated record batch")
    (base, _, _, magic, _, attrs, _, base_ts, max_ts, _, _, _, count) = _HDR.unpack_from(data, 0)
    if magic != 2:
        raise BatchError(2, "unsupported magic")
    body = decompress(attrs & 7, data[HEADER_SIZE:], limit)
    log_append = bool(attrs & 0x08)
    records = []
    pos = 0
    n = len(body)
    if count < 0 or count > n:
        raise BatchError(2, "bad record count")
    for _ in range(count):
        length, pos = read_varint(body, pos)
        end = pos + length
        if length < 0 or end > n:
            raise BatchError(2, "bad record length")
        pos += 1  # attributes
        ts_delta, pos = read_varint(body, pos)
        off_delta, pos = read_varint(body, pos)
        klen, pos = read_varint(body, pos)
        if klen >= 0:
            if pos + klen > end:
                raise BatchError(2, "bad key length")
            key = body[pos : pos + klen]
            pos += klen
        else:
            key = None
        vlen, pos = read_varint(body, pos)
        if vlen >= 0:
            if pos + vlen > end:
                raise BatchError(2, "bad value length")
            value = body[pos : pos + vlen]
            pos += vlen
        else:
            value = None
        hcount, pos = read_varint(body, pos)
        if hcount < 0 or hcount > end - pos:
            raise BatchError(2, "bad header count")
        headers = []
        for _ in range(hcount):
            hk, pos = read_varint(body, pos)
            if hk < 0 or pos + hk > end:
                raise BatchError(2, "bad header key")
            hkey = body[pos : pos + hk].decode("utf-8", "replace")
            pos += hk
            hv, pos = read_varint(body, pos)
            if hv >= 0:
                if pos + hv > end:
                    raise BatchError(2, "bad header value")
                hval = body[pos : pos + hv]
                pos += hv
            else:
                hval = None
            headers.append((hkey, hval))
        pos = end
        ts = max_ts if log_append else base_ts + ts_delta
        records.append(Record(base + off_delta, ts, key, value, headers))
    return records


def decode_messages(data: bytes) -> list[Message]:
    """A stored Kafka batch as core messages (the ``kafka`` StreamFormat decoder).

    key -> ``key``; value -> ``body`` (null -> b""); headers -> ``headers``: a value that is
    valid UTF-8 becomes a str (so other protocols see text), any other stays bytes, a null value
    becomes None (``header_bytes`` gives the same bytes back); timestamp -> ``timestamp``. The
    CloudEvents Kafka binding's headers ``content-type`` and ``correlation-id`` become the
    message's ``content_type`` and ``correlation_id`` instead of application headers.
    """
    out = []
    if len(data) > 22 and data[22] & 0x20:
        return out  # a control batch (transaction marker) holds no messages
    for r in decode_batch(data):
        headers: dict[str, Any] = {}
        for k, v in r.headers:
            if v is not None:
                try:
                    v = v.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            headers[k] = v
        content_type = headers.pop(CONTENT_TYPE_HEADER, None)
        correlation_id = headers.pop(CORRELATION_ID_HEADER, None)
        out.append(
            Message(
                r.value if r.value is not None else b"",
                key=r.key,
                headers=headers,
                timestamp=r.timestamp,
                durable=True,
                content_type=_text_or_none(content_type),
                correlation_id=_text_or_none(correlation_id),
            )
        )
    return out


def _text_or_none(value: Any) -> str | None:
    # a header that is not UTF-8 cannot be a content type or correlation id: it is dropped
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------------------------
# encoding


def header_bytes(value: Any) -> bytes | None:
    """A core header value as a Kafka header value (bytes)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")


def encode_batch(
    records: list[tuple[bytes | None, bytes | None, list, int]],
    base_offset: int = 0,
    codec: int = CODEC_NONE,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
) -> bytes:
    """Build a v2 batch from (key, value, [(header key, header value)], timestamp) tuples;
    ``attributes`` adds flags (transactional, control) to the codec bits."""
    if not records:
        raise ValueError("empty batch")
    base_ts = records[0][3]
    max_ts = max(r[3] for r in records)
    body = bytearray()
    for i, (key, value, headers, ts) in enumerate(records):
        rec = bytearray(b"\x00")
        write_varint(rec, ts - base_ts)
        write_varint(rec, i)
        if key is None:
            write_varint(rec, -1)
        else:
            write_varint(rec, len(key))
            rec += key
        if value is None:
            write_varint(rec, -1)
        else:
            write_varint(rec, len(value))
            rec += value
        write_varint(rec, len(headers))
        for hk, hv in headers:
            kb = hk.encode("utf-8")
            write_varint(rec, len(kb))
            rec += kb
            if hv is None:
                write_varint(rec, -1)
            else:
                write_varint(rec, len(hv))
                rec += hv
        write_varint(body, len(rec))
        body += rec
    payload = compress(codec, bytes(body))
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            codec | attributes,
            len(records) - 1,
            base_ts,
            max_ts,
            producer_id,
            producer_epoch,
            base_sequence,
            len(records),
        )
        + payload
    )
    crc = crc32c.crc32c(after_crc)
    length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, rest
    return struct.pack(">qiibI", base_offset, length, -1, 2, crc) + after_crc


def encode_messages(messages: list[Message], base_offset: int = 0) -> bytes:
    """Core messages as one uncompressed v2 batch (the ``kafka`` StreamFormat encoder)."""
    from polymq.core.message import now_ms

    recs = []
    for m in messages:
        ts = m.timestamp if m.timestamp is not None else now_ms()
        headers = [(str(k), header_bytes(v)) for k, v in (m.headers or {}).items()]
        if m.content_type is not None:
            headers.append((CONTENT_TYPE_HEADER, m.content_type.encode("utf-8")))
        if m.correlation_id is not None:
            headers.append((CORRELATION_ID_HEADER, str(m.correlation_id).encode("utf-8")))
        recs.append((m.key, m.body, headers, ts))
    return encode_batch(recs, base_offset)
