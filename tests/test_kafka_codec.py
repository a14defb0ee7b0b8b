"""Kafka codec: fast paths checked against the construct declarations, record batches, fuzz."""

from __future__ import annotations

import struct

import construct as cs
import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polymq.adapters.kafka import codec as C
from polymq.adapters.kafka import records as R
from polymq.core.message import Message

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=20)
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=150, deadline=None)
@given(
    version=st.integers(3, 7),
    txn=st.none() | names,
    acks=st.sampled_from([0, 1, -1]),
    timeout=i32,
    topics=st.lists(
        st.tuples(names, st.lists(st.tuples(i32, st.none() | st.binary(max_size=64)), max_size=3)),
        max_size=3,
    ),
)
def test_produce_fast_path_matches_declaration(version, txn, acks, timeout, topics):
    body = {
        "transactional_id": txn,
        "acks": acks,
        "timeout_ms": timeout,
        "topic_data": [
            {"name": n, "partition_data": [{"index": i, "records": r} for i, r in parts]}
            for n, parts in topics
        ],
    }
    raw = C.request_struct(C.PRODUCE, version).build(body)
    fast = C.decode_produce(version, memoryview(raw))
    assert fast.transactional_id == txn and fast.acks == acks and fast.timeout_ms == timeout
    assert [
        (n, [(i, None if r is None else bytes(r)) for i, r in ps]) for n, ps in fast.topics
    ] == topics
    slow = C.decode_body(C.PRODUCE, version, raw)
    assert slow.acks == acks


@settings(max_examples=150, deadline=None)
@given(
    version=st.integers(4, 11),
    corr=i32,
    topics=st.lists(
        st.tuples(
            names,
            st.lists(
                st.tuples(
                    i32,
                    st.sampled_from([0, 1, 3]),
                    i64,
                    i64,
                    st.lists(st.binary(min_size=1, max_size=40), max_size=3),
                ),
                max_size=3,
            ),
        ),
        max_size=3,
    ),
)
def test_fetch_fast_path_matches_declaration(version, corr, topics):
    parts = [
        (n, [C.FetchPartition(i, e, hw, ls, bs) for i, e, hw, ls, bs in ps]) for n, ps in topics
    ]
    frame = b"".join(C.encode_fetch_response(version, corr, parts))
    (n,) = struct.unpack(">i", frame[:4])
    assert n == len(frame) - 4
    got_corr, resp = C.decode_response(C.FETCH, version, frame[4:])
    assert got_corr == corr
    assert resp.throttle_time_ms == 0
    assert len(resp.responses) == len(topics)
    for (name, ps), rt in zip(topics, resp.responses, strict=True):
        assert rt.topic == name
        for (i, e, hw, ls, bs), rp in zip(ps, rt.partitions, strict=True):
            assert (rp.partition_index, rp.error_code, rp.high_watermark) == (i, e, hw)
            assert rp.last_stable_offset == hw
            if version >= 5:
                assert rp.log_start_offset == ls
            assert rp.records == b"".join(bs)


@given(api=st.sampled_from(sorted(C.SCHEMAS)), corr=i32, client=st.none() | names)
def test_request_header_fast_path_matches_declaration(api, corr, client):
    lo, hi = C.API_RANGES[api]
    for ver in (lo, hi):
        hs = C.REQUEST_HEADER_V2 if C.is_flexible(api, ver) else C.REQUEST_HEADER_V1
        raw = hs.build(
            {"api_key": api, "api_version": ver, "correlation_id": corr, "client_id": client}
        )
        h, pos = C.decode_request_header(raw)
        assert (h.api_key, h.api_version, h.correlation_id, h.client_id) == (api, ver, corr, client)
        assert pos == len(raw)


def test_every_declaration_builds_and_parses():
    samples = {
        C.METADATA: {
            "topics": [{"name": "a"}],
            "allow_auto_topic_creation": True,
            "include_cluster_authorized_operations": False,
            "include_topic_authorized_operations": False,
        },
        C.API_VERSIONS: {"client_software_name": "x", "client_software_version": "1"},
    }
    for api, ver in [(C.METADATA, v) for v in range(9)] + [(C.API_VERSIONS, v) for v in range(4)]:
        raw = C.request_struct(api, ver).build(samples[api])
        C.decode_body(api, ver, raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_request_decoder(data):
    try:
        C.decode_request(data)
    except C.KafkaDecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(api=st.sampled_from(sorted(C.SCHEMAS)), data=st.binary(max_size=120))
def test_fuzz_bodies_after_valid_header(api, data):
    lo, hi = C.API_RANGES[api]
    for ver in (lo, hi):
        hs = C.REQUEST_HEADER_V2 if C.is_flexible(api, ver) else C.REQUEST_HEADER_V1
        frame = (
            hs.build({"api_key": api, "api_version": ver, "correlation_id": 1, "client_id": "f"})
            + data
        )
        try:
            C.decode_request(frame)
        except C.KafkaDecodeError:
            pass
        if api == C.PRODUCE and ver >= 3:
            try:
                C.decode_produce(ver, memoryview(data))
            except C.KafkaDecodeError:
                pass


def test_inflated_lengths_refused_before_allocation():
    hdr = C.REQUEST_HEADER_V1.build(
        {"api_key": C.METADATA, "api_version": 1, "correlation_id": 1, "client_id": None}
    )
    with pytest.raises(C.KafkaDecodeError):
        C.decode_request(hdr + struct.pack(">i", 2**31 - 1))
    with pytest.raises(C.KafkaDecodeError):
        C.decode_request(hdr + struct.pack(">ih", 1, 32000) + b"ab")


record = st.tuples(
    st.none() | st.binary(max_size=30),
    st.none() | st.binary(max_size=200),
    st.lists(st.tuples(names, st.none() | st.binary(max_size=10)), max_size=3),
    st.integers(0, 2**41),
)


@settings(max_examples=100, deadline=None)
@given(
    recs=st.lists(record, min_size=1, max_size=10),
    base=st.integers(0, 2**40),
    codec=st.sampled_from([0, 1, 2, 3, 4]),
)
def test_record_batch_round_trip(recs, base, codec):
    data = R.encode_batch(recs, base, codec=codec)
    hdr = R.RECORD_BATCH_HEADER.parse(data)
    assert hdr.magic == 2 and hdr.records_count == len(recs)
    assert hdr.batch_length == len(data) - 12
    assert hdr.crc == crc32c.crc32c(data[21:])
    infos = R.check_batches(memoryview(data))
    assert len(infos) == 1 and infos[0].count == len(recs)
    moved = R.with_base_offset(infos[0].data, base + 7)
    R.check_batches(memoryview(moved))  # the CRC does not cover the base offset
    out = R.decode_batch(moved)
    assert [(r.key, r.value, r.headers, r.timestamp) for r in out] == [
        (k, v, h, ts) for k, v, h, ts in recs
    ]
    assert [r.offset for r in out] == [base + 7 + i for i in range(len(recs))]


@settings(max_examples=100, deadline=None)
@given(recs=st.lists(record, min_size=1, max_size=4), flip=st.integers(21, 10**6))
def test_corrupted_batch_detected(recs, flip):
    data = bytearray(R.encode_batch(recs))
    data[flip % (len(data) - 21) + 21] ^= 0x01
    with pytest.raises(R.BatchError) as ei:
        R.check_batches(memoryview(bytes(data)))
    assert ei.value.code == C.CORRUPT_MESSAGE


def test_message_mapping():
    m = Message(
        b"body", key=b"key", headers={"s": "x", "b": b"\x00", "i": 5, "n": None}, timestamp=1234
    )
    data = R.encode_messages([m], base_offset=42)
    (back,) = R.decode_messages(data)
    assert back.body == b"body" and back.key == b"key" and back.timestamp == 1234
    # UTF-8 header values come back as text, others as bytes
    assert back.headers == {"s": "x", "b": "\x00", "i": "5", "n": None}
    (back,) = R.decode_messages(R.encode_messages([Message(b"", headers={"b": b"\xff"})]))
    assert back.headers == {"b": b"\xff"}


def test_declarations_are_construct():
    assert isinstance(C.request_struct(C.FETCH, 11), cs.Construct)
    assert isinstance(C.response_struct(C.PRODUCE, 7), cs.Construct)


@pytest.mark.parametrize("codec", [1, 2, 3, 4])
def test_decompression_is_bounded(codec):
    big = R.encode_batch([(None, b"\x00" * 2_000_000, [], 1)], codec=codec)
    assert len(big) < 200_000
    with pytest.raises(R.BatchError) as ei:
        R.decode_batch(big, limit=100_000)
    assert ei.value.code == C.MESSAGE_TOO_LARGE
    assert R.decode_batch(big, limit=3_000_000)[0].value == b"\x00" * 2_000_000


def test_xerial_snappy_decoded():
    import snappy

    body = R.encode_batch([(b"k", b"v" * 100, [], 1)])[R.HEADER_SIZE :]
    chunk = snappy.compress(body)
    framed = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1) + struct.pack(">i", len(chunk)) + chunk
    assert R.decompress(R.CODEC_SNAPPY, framed, 10_000) == body
