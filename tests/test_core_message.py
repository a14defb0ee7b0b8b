"""The Message type: persisted form, copies, derived annotations, addresses."""

from __future__ import annotations

import pytest

from polymq.core import message as message_module
from polymq.core.address import parse_address, queue_address, topic_address
from polymq.core.message import Message


def test_round_trip_every_field():
    m = Message(
        bytes(range(256)),
        key=b"k",
        headers={
            "s": "é",
            "b": b"\x00",
            "i": -5,
            "f": 0.5,
            "t": True,
            "n": None,
            "l": [1, "x"],
            "d": {"a": 1},
        },
        content_type="text/plain",
        content_encoding="gzip",
        message_id="m1",
        correlation_id="c1",
        reply_to="queue://r",
        user_id="u",
        type="t",
        timestamp=1,
        expiration=2,
        priority=9,
        durable=True,
        annotations={"mqtt.retain": True},
        exchange="x",
        routing_key="k",
    )
    assert Message.from_bytes(m.to_bytes()) == m


def test_copy_drops_derived_annotations_only_when_properties_change(monkeypatch):
    monkeypatch.setattr(message_module, "DERIVED_ANNOTATIONS", {"proto.props"})
    m = Message(b"x", headers={"a": 1}, annotations={"proto.props": b"raw", "proto.other": 1})
    routed = m.copy(routing_key="elsewhere")
    assert routed.annotations == {"proto.props": b"raw", "proto.other": 1}
    changed = m.copy(headers={"a": 2})
    assert changed.annotations == {"proto.other": 1}
    assert m.annotations["proto.props"] == b"raw"  # the original is untouched


@pytest.mark.parametrize(
    "address,parsed",
    [
        ("q", ("queue", "q")),
        ("queue://q", ("queue", "q")),
        ("temp-queue://ID:x", ("queue", "ID:x")),
        ("topic://a.b", ("topic", "a.b")),
        ("temp-topic://t", ("topic", "t")),
    ],
)
def test_parse_address(address, parsed):
    assert parse_address(address) == parsed


def test_address_builders():
    assert parse_address(queue_address("q")) == ("queue", "q")
    assert parse_address(topic_address("a.b")) == ("topic", "a.b")


def test_key_travels_in_a_header():
    from polymq.core.address import KEY_HEADER, headers_with_key, key_from_headers

    plain = Message(b"", headers={"a": 1})
    assert headers_with_key(plain) is plain.headers
    text = headers_with_key(Message(b"", key=b"k1", headers={"a": 1}))
    assert text == {"a": 1, KEY_HEADER: "k1"}
    binary = headers_with_key(Message(b"", key=b"\xff"))
    assert binary == {KEY_HEADER: b"\xff"}
    assert key_from_headers(text) == b"k1" and key_from_headers(binary) == b"\xff"
    assert key_from_headers({}) is None and key_from_headers({KEY_HEADER: 5}) is None


def test_persisted_form_is_a_msgpack_array_of_the_fields_in_order():
    """Stores hold messages in this form and decode it by position: it must not change."""
    import msgpack

    m = Message(
        b"\x00\xff",
        key=b"k",
        headers={"a": 1, "b": [1.5, "x"]},
        message_id="ID:1",
        priority=4,
        durable=True,
        annotations={"jms.type": "Bytes"},
        routing_key="q",
    )
    fields = [getattr(m, f) for f in message_module._FIELDS]
    assert m.to_bytes() == msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(TypeError):
        Message(b"", headers={"bad": object()}).to_bytes()
    assert m.to_bytes() == msgpack.packb(fields, use_bin_type=True)  # the packer recovered


def test_fields_by_position_are_the_fields_by_keyword():
    """Message(...) by position, in the persisted field order (what a per-message path uses),
    builds the same message as by keyword."""
    fields = {
        "key": b"k",
        "headers": {"h": 1},
        "content_type": "text/plain",
        "content_encoding": "gzip",
        "message_id": "m1",
        "correlation_id": "c1",
        "reply_to": "queue://r",
        "user_id": "u",
        "type": "t",
        "timestamp": 1,
        "expiration": 2,
        "priority": 3,
        "durable": True,
        "annotations": {"a": 1},
        "exchange": "ex",
        "routing_key": "rk",
    }
    assert list(fields) == list(message_module._FIELDS[1:])  # every field after the body
    by_keyword = Message(b"body", **fields)
    by_position = Message(b"body", *fields.values())
    assert by_position == by_keyword
    assert [getattr(by_position, f) for f in message_module._FIELDS] == [
        getattr(by_keyword, f) for f in message_module._FIELDS
    ]


def test_an_adapters_encoding_is_neither_copied_nor_persisted():
    """``Message.encoded`` (an adapter's encoded form for dispatch) stays with the message
    object: a copy, and a message read back from its persisted form, start without it."""
    m = Message(b"x", message_id="m1")
    assert m.encoded is None
    m.encoded = ("adapter", b"encoded form")
    assert m.copy().encoded is None
    assert m.copy(priority=5).encoded is None
    back = Message.from_bytes(m.to_bytes())
    assert back == m and back.encoded is None
    assert m.encoded == ("adapter", b"encoded form")
