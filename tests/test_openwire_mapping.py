"""Unit tests of the OpenWire <-> core Message mapping (docs/openwire.md, field mapping)."""

from __future__ import annotations

import json

import pytest

from polymq.adapters.openwire import codec as c
from polymq.adapters.openwire import mapping as s
from polymq.adapters.openwire.codec import Obj
from polymq.core.message import Message

PID = Obj(c.PRODUCER_ID, connection_id="ID:syn", value=0, session_id=0)


def out(msg: Message) -> Obj:
    return s.core_to_jms(msg, PID, 42)


@pytest.mark.parametrize(
    "ct,body,expected",
    [
        ("text/plain", b"hi", c.TEXT_MESSAGE),
        ("application/json", b'{"a":1}', c.TEXT_MESSAGE),
        ("application/xml; charset=utf-8", b"<a/>", c.TEXT_MESSAGE),
        ("text/plain", b"\xff\xfe", c.BYTES_MESSAGE),  # not UTF-8
        ("application/octet-stream", b"hi", c.BYTES_MESSAGE),
        (None, b"hi", c.BYTES_MESSAGE),
    ],
)
def test_foreign_messages_become_text_or_bytes(ct, body, expected):
    m = out(Message(body, content_type=ct))
    assert m.type == expected
    if expected == c.TEXT_MESSAGE:
        assert c.decode_text_body(m.content) == body.decode()
    else:
        assert m.content == body


def test_foreign_headers_and_fields():
    msg = Message(
        b"x",
        headers={"i": 5, "big": 2**40, "f": 0.5, "s": "v", "b": True, "n": None, "raw": b"\x01"},
        message_id="m-1",
        correlation_id="c-1",
        reply_to="topic://r.t",
        type="T",
        timestamp=123,
        expiration=456,
        priority=7,
        durable=True,
        exchange="amq.topic",
        routing_key="a.b",
    )
    m = out(msg)
    types: dict = {}
    props = c.decode_primitive_map(c.Reader(m.marshalled_properties), 100, types)
    assert props == {"i": 5, "big": 2**40, "f": 0.5, "s": "v", "b": True, "n": None, "raw": b"\x01"}
    assert types == {"big": "long"}  # a Python int beyond 32 bits travels as a Java long
    assert m.message_id.text_view == "m-1" and m.message_id.producer_id == PID
    assert m.message_id.producer_sequence_id == m.message_id.broker_sequence_id == 42
    assert m.correlation_id == "c-1" and m.jms_type == "T"
    assert m.reply_to == Obj(c.TOPIC, physical_name="r.t")
    assert (m.timestamp, m.expiration, m.priority, m.persistent) == (123, 456, 7, True)
    assert m.destination == Obj(c.TOPIC, physical_name="a.b")
    queue_msg = out(Message(b"", exchange="", routing_key="Q"))
    assert queue_msg.destination == Obj(c.QUEUE, physical_name="Q")
    assert queue_msg.priority == 4  # JMS default when unset


def jms(type_id, **fields) -> Obj:
    pid = Obj(c.PRODUCER_ID, connection_id="ID:p", value=1, session_id=2)
    base = dict(
        producer_id=pid,
        destination=Obj(c.QUEUE, physical_name="q"),
        message_id=Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=9),
        priority=4,
        persistent=True,
        timestamp=1000,
    )
    base.update(fields)
    return Obj(type_id, **base)


def test_jms_in_text_map_and_properties():
    props = c.encode_primitive_map(
        {"b": 1, "sh": 2, "f": 0.5, "i": 3}, {"b": "byte", "sh": "short", "f": "float"}
    )
    msg = s.jms_to_core(
        jms(
            c.TEXT_MESSAGE,
            content=c.encode_text_body("h\u00e9\x00"),
            marshalled_properties=props,
            correlation_id="x",
            reply_to=Obj(c.TEMP_QUEUE, physical_name="ID:tmp"),
        ),
        1 << 20,
        None,
    )
    assert msg.body == "h\u00e9\x00".encode()
    assert msg.content_type == "text/plain; charset=utf-8"
    assert msg.headers == {"b": 1, "sh": 2, "f": 0.5, "i": 3}
    assert msg.annotations["openwire.ptypes"] == {"b": "byte", "sh": "short", "f": "float"}
    assert msg.annotations["jms.type"] == "Text"
    assert msg.message_id == "ID:p:2:1:9"  # as the client prints its JMSMessageID
    assert msg.reply_to == "temp-queue://ID:tmp"
    assert msg.durable and msg.priority == 4 and msg.timestamp == 1000
    # and back out: the Java types of the properties are restored
    m = out(msg)
    types: dict = {}
    c.decode_primitive_map(c.Reader(m.marshalled_properties), 100, types)
    assert types == {"b": "byte", "sh": "short", "f": "float"}
    mp = c.encode_primitive_map({"k": "v", "n": 1, "raw": b"\x00"})
    mm = s.jms_to_core(jms(c.MAP_MESSAGE, content=mp), 1 << 20, None)
    assert mm.content_type == "application/json"
    assert json.loads(mm.body) == {"k": "v", "n": 1, "raw": "AA=="}
    assert out(mm).content == mp  # JMS -> JMS keeps the original map
    assert out(
        Message(b'{"a": 2}', annotations={"jms.type": "Map"})
    ).content == c.encode_primitive_map({"a": 2})


def test_bad_compressed_body_is_a_decode_error():
    with pytest.raises(c.DecodeError):
        s.jms_to_core(jms(c.TEXT_MESSAGE, content=b"not zlib", compressed=True), 1 << 20, None)
    bomb = __import__("zlib").compress(b"\x00" * 100000)
    with pytest.raises(c.DecodeError):
        s.jms_to_core(
            jms(c.BYTES_MESSAGE, content=b"\x00\x01\x86\xa0" + bomb, compressed=True), 1000, None
        )
