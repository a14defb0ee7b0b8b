"""The RocketMQ codec: the hand-written fast paths against their construct declarations, and
arbitrary bytes fed to the decoders (a ProtocolError or ValueError, never anything else)."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polymq_rocketmq import codec as C
from polymq_rocketmq.server import RocketServer, to_core, to_properties

from polymq.core.errors import ProtocolError

text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x01\x02"),
    max_size=20,
)
ext_maps = st.dictionaries(text.filter(bool), text, max_size=6)


@given(
    code=st.integers(-(2**15), 2**15 - 1),
    opaque=st.integers(-(2**31), 2**31 - 1),
    flag=st.sampled_from([0, 1, 2, 3]),
    remark=st.none() | text.filter(bool),
    ext=ext_maps,
    body=st.binary(max_size=200),
    stype=st.sampled_from([C.SERIALIZE_JSON, C.SERIALIZE_ROCKETMQ]),
)
def test_command_round_trip(code, opaque, flag, remark, ext, body, stype):
    cmd = C.Command(code, opaque, flag, remark, ext, body, stype)
    data = C.encode_command(cmd)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    frame = C.Frame.parse(data[4:])
    assert frame.serialize_type == stype and frame.body == body
    back = C.decode_command(data[4:])
    assert (back.code, back.opaque, back.flag, back.remark, back.ext, back.body) == (
        code,
        opaque,
        flag,
        remark,
        ext,
        body,
    )


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_frames_decode_or_fail_cleanly(data):
    try:
        C.decode_command(data)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_json_headers_decode_or_fail_cleanly(data):
    frame = (len(data)).to_bytes(4, "big") + data
    try:
        C.decode_command(frame)
    except ProtocolError:
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=8,
    )
)
def test_any_json_header_value_is_handled(value):
    import json

    header = json.dumps({"code": 10, "opaque": 1, "flag": 0, "extFields": value}).encode()
    frame = len(header).to_bytes(4, "big") + header
    try:
        cmd = C.decode_command(frame)
    except ProtocolError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cmd.ext.items())


@given(
    queue_id=st.integers(0, 31),
    offset=st.integers(0, 2**36 - 1),
    born=st.integers(0, 2**62),
    stored=st.integers(0, 2**62),
    times=st.integers(0, 100),
    body=st.binary(max_size=500),
    topic=st.text(alphabet="abcXYZ_%-|0", min_size=1, max_size=127),
    props=text,
    flag=st.integers(-(2**31), 2**31 - 1),
)
def test_message_ext_fast_path_matches_declaration(
    queue_id, offset, born, stored, times, body, topic, props, flag
):
    clo = RocketServer.commit_log_offset(topic, queue_id, offset)
    assert clo < 2**53  # exact as a JavaScript number
    assert RocketServer.split_commit_log_offset(clo)[1:] == (queue_id, offset)
    host = bytes([127, 0, 0, 1])
    fast = C.encode_message_ext(
        queue_id, offset, clo, 0, born, stored, host, 9876, times, body, topic.encode(),
        props.encode(), flag,
    )  # fmt: skip
    declared = C.MessageExt.build(
        dict(
            store_size=len(fast), magic=C.MESSAGE_MAGIC, body_crc=zlib.crc32(body) & 0x7FFFFFFF,
            queue_id=queue_id, flag=flag, queue_offset=offset, commit_log_offset=clo, sys_flag=0,
            born_timestamp=born, born_host=host, born_port=9876, store_timestamp=stored,
            store_host=host, store_port=9876, reconsume_times=times,
            prepared_transaction_offset=0, body=body, topic=topic, properties=props,
        )
    )  # fmt: skip
    assert fast == declared


items = st.lists(
    st.tuples(st.integers(-(2**31), 2**31 - 1), st.binary(max_size=100), text), max_size=5
)


@given(items)
def test_batch_fast_path_matches_declaration(batch):
    data = b"".join(C.encode_batch_item(f, b, p.encode()) for f, b, p in batch)
    parsed = C.decode_batch(data)
    assert parsed == [(f, b, p) for f, b, p in batch]
    declared = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        item = C.BatchItem.parse(data[pos : pos + size])
        declared.append((item.flag, item.body, item.properties))
        pos += size
    assert declared == parsed


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_batches_decode_or_fail_cleanly(data):
    try:
        for _flag, body, _props in C.decode_batch(data):
            assert len(body) <= len(data)
    except ValueError:
        pass


@given(
    props=st.dictionaries(
        st.text(alphabet="abcdefKEYSTAG_", min_size=1, max_size=8), text, max_size=6
    ),
    body=st.binary(max_size=50),
)
def test_properties_survive_core_and_back(props, body):
    m = to_core(body, props, 123)
    assert C.parse_properties(to_properties(m).decode()) == {
        k: v for k, v in props.items() if k not in ("MIN_OFFSET", "MAX_OFFSET", "WAIT")
    } | ({"KEYS": props["KEYS"]} if props.get("KEYS") else {})


def test_inflate_refuses_bombs():
    bomb = zlib.compress(b"\0" * 1_000_000)
    assert C.inflate(bomb, 1_000_000) == b"\0" * 1_000_000
    with pytest.raises(ValueError):
        C.inflate(bomb, 999_999)
    with pytest.raises(ValueError):
        C.inflate(b"not zlib", 100)
