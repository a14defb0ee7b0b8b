"""Kafka idempotence across a failover: a retried batch is not appended twice on the new node.

The active node appends two idempotent batches and is killed (as if its answer to the second
was lost); the producer retries that batch on the node that took over. The new node rebuilds
the producer's state from the stored batch headers (committed with the records), answers with
the original offset and appends nothing; the next sequence goes on, a gap is refused, and a
new producer id is never one already handed out.
"""

from __future__ import annotations

import time

from hanodes import make_nodes
from test_kafka_raw import Client, latest, produce_body

from polymq.adapters.kafka import codec as C
from polymq.adapters.kafka.records import encode_batch

TOPIC = "ha-idempotent"


def produce(c: Client, batch: bytes) -> tuple[int, int]:
    r = c.call(C.PRODUCE, 7, produce_body(TOPIC, batch, acks=-1))
    p = r.responses[0].partition_responses[0]
    return p.error_code, p.base_offset


def init_pid(c: Client) -> tuple[int, int]:
    r = c.call(C.INIT_PRODUCER_ID, 0, {"transactional_id": None, "transaction_timeout_ms": 60000})
    return r.producer_id, r.producer_epoch


def test_retried_batch_after_failover_is_not_appended_twice(pg_server, tmp_path):
    _dsn, (a, b) = make_nodes(pg_server, tmp_path, adapters=("kafka",))
    a.start()
    b.launch()
    try:
        c = Client(a)
        pid, epoch = init_pid(c)
        recs = [(None, b"a", [], 1), (None, b"b", [], 2)]

        def batch(seq: int) -> bytes:
            return encode_batch(recs, producer_id=pid, producer_epoch=epoch, base_sequence=seq)

        assert produce(c, batch(0)) == (0, 0)
        assert produce(c, batch(2)) == (0, 2)
        c.close()
        time.sleep(0.5)  # b is polling for the lease
        a.kill9()
        b.wait_active(30)

        c = Client(b)
        assert produce(c, batch(2)) == (0, 2), "the retry must get the original offset"
        assert latest(c, TOPIC) == 4, "the retry must not be appended again"
        assert produce(c, batch(4)) == (0, 4)
        err, _ = produce(c, batch(10))
        assert err == C.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert latest(c, TOPIC) == 6
        new_pid, _ = init_pid(c)
        assert new_pid > pid, "a producer id is never handed out twice"
        c.close()
    finally:
        for node in (a, b):
            node.kill9()
