"""Kafka transactions with confluent-kafka (librdkafka): commit and abort, read_committed
readers, a consume-transform-produce loop (send_offsets_to_transaction), fencing of an older
producer with the same transactional.id, and a broker killed in the middle of a transaction."""

from __future__ import annotations

import time
import uuid

import pytest
from brokerproc import BrokerProcess
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def bootstrap(b: BrokerProcess) -> str:
    return f"{b.host}:{b.port('kafka')}"


def name() -> str:
    return "tx-" + uuid.uuid4().hex[:10]


def create(b: BrokerProcess, *topics: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap(b)})
    for f in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
        f.result(10)


def tx_producer(b: BrokerProcess, txn_id: str) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap(b), "transactional.id": txn_id})
    p.init_transactions(15)
    return p


def read_all(b: BrokerProcess, topic: str, isolation: str, quiet: float = 1.5) -> list:
    """Every record readable with ``isolation``: polls until nothing came for ``quiet`` s."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap(b),
            "group.id": "r-" + uuid.uuid4().hex[:8],
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    last = time.time()
    deadline = time.time() + 20
    while time.time() - last < quiet and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            out.append((m.offset(), m.value()))
            last = time.time()
    c.close()
    return out


def test_commit_and_abort_read_committed(kbroker):
    t = name()
    create(kbroker, t)
    p = tx_producer(kbroker, "txid-" + t)
    p.begin_transaction()
    for i in range(3):
        p.produce(t, b"c1-%d" % i)
    p.commit_transaction(15)
    p.begin_transaction()
    for i in range(2):
        p.produce(t, b"ab-%d" % i)
    p.flush(10)
    p.abort_transaction(15)
    p.begin_transaction()
    p.produce(t, b"c2-0")
    p.commit_transaction(15)
    committed = read_all(kbroker, t, "read_committed")
    assert [v for _o, v in committed] == [b"c1-0", b"c1-1", b"c1-2", b"c2-0"]
    uncommitted = read_all(kbroker, t, "read_uncommitted")
    assert [v for _o, v in uncommitted] == [b"c1-0", b"c1-1", b"c1-2", b"ab-0", b"ab-1", b"c2-0"]
    # each transaction ends with a marker that takes an offset no reader is shown
    assert [o for o, _v in uncommitted] == [0, 1, 2, 4, 5, 7]


def test_open_transaction_holds_back_read_committed_and_newer_producer_fences(kbroker):
    t = name()
    create(kbroker, t)
    txn_id = "txid-" + t
    old = tx_producer(kbroker, txn_id)
    old.begin_transaction()
    old.produce(t, b"open")
    old.flush(10)
    # open: a read_committed reader sees nothing yet, a read_uncommitted one sees it
    assert read_all(kbroker, t, "read_committed", quiet=1.0) == []
    assert [v for _o, v in read_all(kbroker, t, "read_uncommitted")] == [b"open"]
    new = tx_producer(kbroker, txn_id)  # aborts what the old one left open, fences it
    with pytest.raises(KafkaException) as err:
        old.commit_transaction(10)
    assert err.value.args[0].fatal() or "fenc" in str(err.value).lower()
    new.begin_transaction()
    new.produce(t, b"new")
    new.commit_transaction(15)
    assert [v for _o, v in read_all(kbroker, t, "read_committed")] == [b"new"]


def test_consume_transform_produce(kbroker):
    src, dst = name(), name()
    create(kbroker, src, dst)
    plain = Producer({"bootstrap.servers": bootstrap(kbroker)})
    for i in range(10):
        plain.produce(src, b"%d" % i)
    assert plain.flush(10) == 0
    group = "ctp-" + src
    c = Consumer(
        {
            "bootstrap.servers": bootstrap(kbroker),
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([src])
    p = tx_producer(kbroker, "ctp-" + src)
    done = 0
    deadline = time.time() + 40
    while done < 10 and time.time() < deadline:
        msgs = c.consume(4, 1.0)
        msgs = [m for m in msgs if not m.error()]
        if not msgs:
            continue
        p.begin_transaction()
        for m in msgs:
            p.produce(dst, b"x" + m.value())
        p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 10)
        p.commit_transaction(15)
        done += len(msgs)
    c.close()
    assert done == 10
    assert sorted(v for _o, v in read_all(kbroker, dst, "read_committed")) == sorted(
        b"x%d" % i for i in range(10)
    )
    # the group's offset was committed with the transactions
    check = Consumer({"bootstrap.servers": bootstrap(kbroker), "group.id": group})
    (tp,) = check.committed([TopicPartition(src, 0)], 10)
    check.close()
    assert tp.offset == 10


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_broker_killed_in_open_transaction(tmp_path, request, store):
    settings = None
    if store == "postgres":
        settings = {"store.dsn": request.getfixturevalue("pg_server").create_database()}
    with BrokerProcess(tmp_path / "b", adapters=["kafka"], store=store, settings=settings) as b:
        assert f"store: {store}" in b.log_text()
        t = name()
        create(b, t)
        txn_id = "txid-" + t
        p = tx_producer(b, txn_id)
        p.begin_transaction()
        p.produce(t, b"committed-0")
        p.commit_transaction(15)
        p.begin_transaction()
        p.produce(t, b"open-0")
        p.produce(t, b"open-1")
        assert p.flush(10) == 0  # acknowledged: durable
        b.kill9()
        b.start()
        # the open transaction is still open after the crash
        assert [v for _o, v in read_all(b, t, "read_committed")] == [b"committed-0"]
        assert [v for _o, v in read_all(b, t, "read_uncommitted")] == [
            b"committed-0",
            b"open-0",
            b"open-1",
        ]
        # the producer's successor aborts it; its own transaction commits
        p2 = tx_producer(b, txn_id)
        p2.begin_transaction()
        p2.produce(t, b"after")
        p2.commit_transaction(15)
        assert [v for _o, v in read_all(b, t, "read_committed")] == [b"committed-0", b"after"]
        b.stop()
        b.start()  # the aborted list is durable too
        assert [v for _o, v in read_all(b, t, "read_committed")] == [b"committed-0", b"after"]
