"""Kafka adapter over a raw socket: bad input, CRC checks, idempotent retries, ordering."""

from __future__ import annotations

import socket
import struct
import time
import uuid

import pytest
from brokerproc import BrokerProcess
from conftest import module_broker
from wire import peer_closed

from polymq.adapters.kafka import codec as C
from polymq.adapters.kafka.records import encode_batch


@pytest.fixture(scope="module")
def kbroker(tmp_path_factory):
    settings = {"adapters.kafka.max_request_size": 1024 * 1024}
    with module_broker(
        tmp_path_factory, "kafka", ["kafka"], log_level="info", settings=settings
    ) as b:
        yield b


class Client:
    def __init__(self, b: BrokerProcess) -> None:
        self.sock = socket.create_connection((b.host, b.port("kafka")), timeout=10)
        self.corr = 0

    def send(self, api: int, ver: int, body: dict) -> int:
        self.corr += 1
        self.sock.sendall(C.encode_request(api, ver, self.corr, "raw", body))
        return self.corr

    def recv_frame(self) -> bytes:
        n = struct.unpack(">i", self._exact(4))[0]
        return self._exact(n)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def call(self, api: int, ver: int, body: dict):
        corr = self.send(api, ver, body)
        got, resp = C.decode_response(api, ver, self.recv_frame())
        assert got == corr
        return resp

    def closed(self, timeout: float = 5.0) -> bool:
        return peer_closed(self.sock, timeout)

    def close(self) -> None:
        self.sock.close()


def still_served(b: BrokerProcess) -> None:
    c = Client(b)
    r = c.call(C.API_VERSIONS, 0, {})
    assert r.error_code == 0
    c.close()


def produce_body(topic: str, batch: bytes, acks: int = 1, partition: int = 0) -> dict:
    return {
        "transactional_id": None,
        "acks": acks,
        "timeout_ms": 5000,
        "topic_data": [{"name": topic, "partition_data": [{"index": partition, "records": batch}]}],
    }


def latest(c: Client, topic: str, partition: int = 0) -> int:
    r = c.call(
        C.LIST_OFFSETS,
        1,
        {
            "replica_id": -1,
            "topics": [
                {"name": topic, "partitions": [{"partition_index": partition, "timestamp": -1}]}
            ],
        },
    )
    return r.topics[0].partitions[0].offset


def topic() -> str:
    return "raw-" + uuid.uuid4().hex[:8]


def test_api_versions_v0_fallback_and_v3(kbroker):
    c = Client(kbroker)
    c.corr += 1
    c.sock.sendall(
        C.encode_request(C.API_VERSIONS, 0, c.corr, "x", {})[:6]
        + struct.pack(">h", 77)
        + C.encode_request(C.API_VERSIONS, 0, c.corr, "x", {})[8:]
    )
    corr, r = C.decode_response(C.API_VERSIONS, 0, c.recv_frame())
    assert corr == c.corr and r.error_code == C.UNSUPPORTED_VERSION
    keys = {k.api_key: (k.min_version, k.max_version) for k in r.api_keys}
    assert keys[C.PRODUCE] == (0, 7) and keys[C.FETCH] == (4, 11)
    r = c.call(C.API_VERSIONS, 3, {"client_software_name": "raw", "client_software_version": "1"})
    assert r.error_code == 0 and len(r.api_keys) == len(keys)
    c.close()


def test_unknown_api_key_closes_connection(kbroker):
    c = Client(kbroker)
    payload = struct.pack(">hhih", 999, 0, 1, -1)
    c.sock.sendall(struct.pack(">i", len(payload)) + payload)
    assert c.closed()
    still_served(kbroker)


def test_unsupported_version_closes_connection(kbroker):
    c = Client(kbroker)
    payload = struct.pack(">hhih", C.METADATA, 42, 1, -1) + struct.pack(">i", 0)
    c.sock.sendall(struct.pack(">i", len(payload)) + payload)
    assert c.closed()
    # Produce v0-2 are advertised for old librdkafka but refused when used
    c = Client(kbroker)
    c.sock.sendall(
        C.encode_request(C.PRODUCE, 2, 1, "x", {"acks": 1, "timeout_ms": 1, "topic_data": []})
    )
    assert c.closed()
    still_served(kbroker)


def test_truncated_and_inflated_frames(kbroker):
    frame = C.encode_request(C.METADATA, 1, 1, "x", {"topics": [{"name": "abc"}]})
    c = Client(kbroker)
    short = frame[4:-2]  # body shorter than its declared string
    c.sock.sendall(struct.pack(">i", len(short)) + short)
    assert c.closed()
    c = Client(kbroker)  # an array count far beyond the frame: refused before allocating
    payload = struct.pack(">hhih", C.METADATA, 1, 1, -1) + struct.pack(">i", 2**30)
    c.sock.sendall(struct.pack(">i", len(payload)) + payload)
    assert c.closed()
    c = Client(kbroker)
    c.sock.sendall(struct.pack(">i", -5) + b"hello")
    assert c.closed()
    c = Client(kbroker)  # over max_request_size (1 MiB here): closed without reading it
    c.sock.sendall(struct.pack(">i", 2 * 1024 * 1024) + b"\x00" * 100)
    assert c.closed()
    still_served(kbroker)


def test_bad_crc_is_corrupt_message_and_nothing_appended(kbroker):
    t = topic()
    c = Client(kbroker)
    batch = bytearray(encode_batch([(b"k", b"v", [], int(time.time() * 1000))]))
    batch[-1] ^= 0xFF
    r = c.call(C.PRODUCE, 7, produce_body(t, bytes(batch)))
    part = r.responses[0].partition_responses[0]
    assert part.error_code == C.CORRUPT_MESSAGE
    assert latest(c, t) == 0
    bad_count = bytearray(encode_batch([(b"k", b"v", [], 1), (b"k", b"w", [], 2)]))
    struct.pack_into(">i", bad_count, 57, 3)  # recordsCount changed: CRC no longer matches
    r = c.call(C.PRODUCE, 7, produce_body(t, bytes(bad_count)))
    assert r.responses[0].partition_responses[0].error_code == C.CORRUPT_MESSAGE
    assert latest(c, t) == 0
    r = c.call(C.PRODUCE, 7, produce_body(t, encode_batch([(b"k", b"ok", [], 5)])))
    assert r.responses[0].partition_responses[0].error_code == 0
    assert latest(c, t) == 1
    c.close()


def test_idempotent_retry_not_appended_twice(kbroker):
    t = topic()
    c = Client(kbroker)
    r = c.call(C.INIT_PRODUCER_ID, 0, {"transactional_id": None, "transaction_timeout_ms": 60000})
    pid, epoch = r.producer_id, r.producer_epoch
    assert pid >= 0
    recs = [(None, b"a", [], 1), (None, b"b", [], 2)]
    b0 = encode_batch(recs, producer_id=pid, producer_epoch=epoch, base_sequence=0)
    b1 = encode_batch(recs, producer_id=pid, producer_epoch=epoch, base_sequence=2)
    offs = []
    for b in (b0, b0, b1, b1, b0):
        r = c.call(C.PRODUCE, 7, produce_body(t, b, acks=-1))
        p = r.responses[0].partition_responses[0]
        assert p.error_code == 0
        offs.append(p.base_offset)
    assert offs == [0, 0, 2, 2, 0]
    assert latest(c, t) == 4
    gap = encode_batch(recs, producer_id=pid, producer_epoch=epoch, base_sequence=10)
    r = c.call(C.PRODUCE, 7, produce_body(t, gap, acks=-1))
    assert r.responses[0].partition_responses[0].error_code == C.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert latest(c, t) == 4
    c.close()


def test_acks0_no_response_and_fetch_order(kbroker):
    t = topic()
    c = Client(kbroker)
    c.call(C.METADATA, 4, {"topics": [{"name": t}], "allow_auto_topic_creation": True})
    c.send(C.PRODUCE, 7, produce_body(t, encode_batch([(None, b"x", [], 1)]), acks=0))
    # a long-polling fetch at the end of the log, then a metadata request: responses in order
    fetch_body = {
        "replica_id": -1,
        "max_wait_ms": 800,
        "min_bytes": 10**6,
        "max_bytes": 10**6,
        "isolation_level": 0,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [
            {
                "topic": t,
                "partitions": [
                    {
                        "partition": 0,
                        "current_leader_epoch": -1,
                        "fetch_offset": 0,
                        "log_start_offset": -1,
                        "partition_max_bytes": 10**6,
                    }
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }
    start = time.time()
    fc = c.send(C.FETCH, 11, fetch_body)
    mc = c.send(C.METADATA, 1, {"topics": [{"name": t}]})
    corr, fr = C.decode_response(C.FETCH, 11, c.recv_frame())
    assert corr == fc  # the acks=0 produce got no response at all
    assert time.time() - start >= 0.7  # min_bytes not reached: waited max_wait_ms
    part = fr.responses[0].partitions[0]
    assert part.high_watermark == 1 and len(part.records) > 61
    corr, _ = C.decode_response(C.METADATA, 1, c.recv_frame())
    assert corr == mc
    c.close()


def test_long_poll_woken_by_produce(kbroker):
    t = topic()
    c = Client(kbroker)
    c.call(C.METADATA, 4, {"topics": [{"name": t}], "allow_auto_topic_creation": True})
    fetch_body = {
        "replica_id": -1,
        "max_wait_ms": 5000,
        "min_bytes": 1,
        "max_bytes": 10**6,
        "isolation_level": 0,
        "topics": [
            {
                "topic": t,
                "partitions": [
                    {
                        "partition": 0,
                        "fetch_offset": 0,
                        "log_start_offset": -1,
                        "partition_max_bytes": 10**6,
                    }
                ],
            }
        ],
    }
    start = time.time()
    fc = c.send(C.FETCH, 5, fetch_body)
    time.sleep(0.3)
    p = Client(kbroker)
    p.call(C.PRODUCE, 3, produce_body(t, encode_batch([(None, b"wake", [], 1)])))
    corr, fr = C.decode_response(C.FETCH, 5, c.recv_frame())
    assert corr == fc
    assert time.time() - start < 3
    assert fr.responses[0].partitions[0].high_watermark == 1
    c.close()
    p.close()


def test_answers_in_request_order_when_some_wait_for_the_disk(kbroker):
    """Produce (answered once fsynced), Metadata (answered at once), Produce, Fetch and
    ApiVersions in one write: the answers leave in request order."""
    t = topic()
    c = Client(kbroker)
    c.call(C.METADATA, 4, {"topics": [{"name": t}], "allow_auto_topic_creation": True})
    fetch_body = {
        "replica_id": -1,
        "max_wait_ms": 300,
        "min_bytes": 10**6,
        "max_bytes": 10**6,
        "isolation_level": 0,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [
            {
                "topic": t,
                "partitions": [
                    {
                        "partition": 0,
                        "current_leader_epoch": -1,
                        "fetch_offset": 0,
                        "log_start_offset": -1,
                        "partition_max_bytes": 10**6,
                    }
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }
    for _ in range(5):
        sent = []
        data = b""
        for api, ver, body in (
            (C.PRODUCE, 7, produce_body(t, encode_batch([(None, b"a", [], 1)]))),
            (C.METADATA, 1, {"topics": [{"name": t}]}),
            (C.PRODUCE, 7, produce_body(t, encode_batch([(None, b"b", [], 2)]))),
            (C.FETCH, 11, fetch_body),
            (C.API_VERSIONS, 0, {}),
        ):
            c.corr += 1
            sent.append((api, ver, c.corr))
            data += C.encode_request(api, ver, c.corr, "raw", body)
        c.sock.sendall(data)
        for api, ver, corr in sent:
            got, _ = C.decode_response(api, ver, c.recv_frame())
            assert got == corr
    c.close()


def test_idle_connections_are_closed(broker_factory):
    """idle_timeout (Kafka's connections.max.idle.ms) closes a connection that sends nothing;
    one that keeps sending stays."""
    b = broker_factory(
        adapters=["kafka"], store="memory", settings={"adapters.kafka.idle_timeout": 1.0}
    )
    idle, busy = Client(b), Client(b)
    assert idle.call(C.API_VERSIONS, 0, {}).error_code == 0
    start = time.time()
    while time.time() - start < 2.5:
        assert busy.call(C.API_VERSIONS, 0, {}).error_code == 0
        time.sleep(0.3)
    assert idle.closed(timeout=5.0)
    assert busy.call(C.METADATA, 1, {"topics": []}).brokers
    busy.close()
    assert "nothing received for" in b.log_text()
