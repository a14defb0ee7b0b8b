"""The AMQP 0-9-1 framer: the same frames whatever the reads, sizes checked before anything is
kept, bad framing reported after the good frames before it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_amqp_transport import connect_with, handshake, methods

from polymq.adapters.amqp import codec as C
from polymq.adapters.amqp.framing import HEADER, AMQPFramer, BadProtocolHeader

frame_lists = st.lists(
    st.tuples(st.sampled_from([1, 2, 3, 8]), st.integers(0, 65535), st.binary(max_size=300)),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(frame_lists, st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_frames_are_the_same_whatever_the_reads(frames, cuts):
    data = C.PROTOCOL_HEADER + b"".join(C.frame(t, ch, p) for t, ch, p in frames)
    framer = AMQPFramer(4096)
    got = []
    pos = 0
    i = 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        got += framer.feed(data[pos : pos + n])
        pos += n
        i += 1
    assert got == [(HEADER, 0, C.PROTOCOL_HEADER)] + frames
    assert framer.error is None and framer.buffered == 0


def test_a_frame_over_frame_max_is_refused_before_its_bytes_are_kept():
    framer = AMQPFramer(4096)
    ok = C.frame(1, 1, b"x" * 10)
    head = C.frame(3, 1, b"y" * 5000)[:7]  # announces 5000 bytes, over 4096 - 8
    out = framer.feed(C.PROTOCOL_HEADER + ok + head + b"y" * 100)
    assert out == [(HEADER, 0, C.PROTOCOL_HEADER), (1, 1, b"x" * 10)]
    assert isinstance(framer.error, C.FrameError) and framer.error.code == C.FRAME_ERROR
    assert framer.buffered == 0
    assert framer.feed(b"more") == []


def test_a_partial_frame_is_kept_once_and_completed():
    framer = AMQPFramer(131072)
    framer.feed(C.PROTOCOL_HEADER)
    data = C.frame(3, 7, bytes(range(256)) * 400)
    for i in range(0, len(data) - 1, 1000):
        assert framer.feed(data[i : min(i + 1000, len(data) - 1)]) == []
    assert framer.buffered == len(data) - 1
    assert framer.feed(data[-1:]) == [(3, 7, bytes(range(256)) * 400)]
    assert framer.buffered == 0


def test_a_missing_frame_end_is_a_frame_error():
    framer = AMQPFramer(4096)
    bad = C.frame(1, 0, b"abcd")[:-1] + b"\x00"
    out = framer.feed(C.PROTOCOL_HEADER + C.HEARTBEAT_FRAME + bad)
    assert out[-1] == (8, 0, b"")
    assert framer.error.code == C.FRAME_ERROR and "frame end" in framer.error.text


@pytest.mark.parametrize("header", [b"AMQP\x00\x01\x00\x00", b"GET / HTTP/1.1\r\n"])
def test_another_protocol_header_is_refused(header):
    framer = AMQPFramer(4096)
    assert framer.feed(header[:5]) == []  # the header is judged once all 8 bytes are in
    with pytest.raises(BadProtocolHeader):
        framer.feed(header[5:])


def test_frame_max_lowered_by_tune_ok_applies_to_the_rest_of_the_same_read():
    big = C.method_frame(
        1, "queue.declare", queue="q" * 200, arguments={"x-pad": "p" * 5000}
    )  # about 5.3 kB: over 4096
    clock, factory, p, t = connect_with(handshake(frame_max=4096) + big)
    out = methods(t.value())
    assert [m[1] for m in out][-1] == "connection.close"
    assert out[-1][2]["reply_code"] == C.FRAME_ERROR
    assert p.session.state == "closing"
