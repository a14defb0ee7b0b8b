"""Kafka SASL/PLAIN through the broker's auth hook (config ``adapters.kafka.sasl = true``)."""

from __future__ import annotations

import socket
import struct
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from conftest import module_broker
from kafka import KafkaProducer

from polymq.adapters.kafka import codec as C


@pytest.fixture(scope="module")
def sbroker(tmp_path_factory):
    settings = {"adapters.kafka.sasl": True, "security.sasl_plain_without_tls": True}
    with module_broker(
        tmp_path_factory, "sasl", ["kafka"], log_level="info", settings=settings
    ) as b:
        yield b


def conf(b, user, password):
    return {
        "bootstrap.servers": f"{b.host}:{b.port('kafka')}",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": user,
        "sasl.password": password,
    }


def test_confluent_plain_accepted(sbroker):
    t = "s-" + uuid.uuid4().hex[:8]
    p = Producer(conf(sbroker, "guest", "guest"))
    p.produce(t, b"secret")
    assert p.flush(15) == 0
    c = Consumer(
        {**conf(sbroker, "guest", "guest"), "group.id": t, "auto.offset.reset": "earliest"}
    )
    c.subscribe([t])
    got = None
    deadline = time.time() + 15
    while got is None and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got = m.value()
    c.close()
    assert got == b"secret"


def test_confluent_wrong_password_refused(sbroker):
    errors = []
    p = Producer(
        {**conf(sbroker, "guest", "nope"), "error_cb": errors.append, "message.timeout.ms": 2000}
    )
    p.produce("s-refused", b"x")
    p.flush(5)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors


def test_kafka_python_plain(sbroker):
    p = KafkaProducer(
        bootstrap_servers=f"{sbroker.host}:{sbroker.port('kafka')}",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="guest",
        sasl_plain_password="guest",
    )
    md = p.send("s-" + uuid.uuid4().hex[:8], b"v").get(timeout=15)
    assert md.offset == 0
    p.close()


def test_request_before_authentication_closes(sbroker):
    s = socket.create_connection((sbroker.host, sbroker.port("kafka")), timeout=5)
    s.sendall(C.encode_request(C.METADATA, 1, 1, "x", {"topics": None}))
    assert s.recv(100) == b""
    s.close()
    s = socket.create_connection((sbroker.host, sbroker.port("kafka")), timeout=5)
    s.sendall(C.encode_request(C.API_VERSIONS, 0, 1, "x", {}))
    (n,) = struct.unpack(">i", s.recv(4))
    assert n > 0
    s.close()


def _recv_frame(s):
    (n,) = struct.unpack(">i", s.recv(4))
    buf = b""
    while len(buf) < n:
        buf += s.recv(n - len(buf))
    return buf


def test_handshake_v0_raw_token(sbroker):
    s = socket.create_connection((sbroker.host, sbroker.port("kafka")), timeout=5)
    s.sendall(C.encode_request(C.SASL_HANDSHAKE, 0, 1, "x", {"mechanism": "PLAIN"}))
    corr, r = C.decode_response(C.SASL_HANDSHAKE, 0, _recv_frame(s))
    assert corr == 1 and r.error_code == 0
    assert list(r.mechanisms) == ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
    token = b"\x00guest\x00guest"
    s.sendall(struct.pack(">i", len(token)) + token)
    assert _recv_frame(s) == b""  # empty server token: authenticated
    s.sendall(C.encode_request(C.METADATA, 1, 2, "x", {"topics": []}))
    corr, r = C.decode_response(C.METADATA, 1, _recv_frame(s))
    assert corr == 2 and r.brokers[0].node_id == 1
    s.close()


def test_authenticate_v1_wrong_password(sbroker):
    s = socket.create_connection((sbroker.host, sbroker.port("kafka")), timeout=5)
    s.sendall(C.encode_request(C.SASL_HANDSHAKE, 1, 1, "x", {"mechanism": "GSSAPI"}))
    _, r = C.decode_response(C.SASL_HANDSHAKE, 1, _recv_frame(s))
    assert r.error_code == C.UNSUPPORTED_SASL_MECHANISM
    s.sendall(C.encode_request(C.SASL_HANDSHAKE, 1, 2, "x", {"mechanism": "PLAIN"}))
    _, r = C.decode_response(C.SASL_HANDSHAKE, 1, _recv_frame(s))
    assert r.error_code == 0
    s.sendall(C.encode_request(C.SASL_AUTHENTICATE, 1, 3, "x", {"auth_bytes": b"\x00guest\x00bad"}))
    _, r = C.decode_response(C.SASL_AUTHENTICATE, 1, _recv_frame(s))
    assert r.error_code == C.SASL_AUTHENTICATION_FAILED and "password" in r.error_message
    s.close()
