"""The sqlite store gives disk space back after a backlog drains (incremental vacuum, and a WAL
cut back after checkpoints), and converts a store created without incremental vacuum at open."""

from __future__ import annotations

import sqlite3
import time

import pika

BODY = b"x" * 4000
COUNT = 6000


def store_bytes(broker) -> int:
    path = broker.data_dir / "polymq.sqlite3"
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def fill_and_drain(broker, queue: str) -> int:
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for _ in range(COUNT):
        ch.basic_publish("", queue, BODY, props)
    peak = store_bytes(broker)
    got = 0
    ch.basic_qos(prefetch_count=500)
    for method, _props, body in ch.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        assert body == BODY
        got += 1
        if got % 100 == 0 or got == COUNT:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if got == COUNT:
            break
    ch.cancel()
    assert got == COUNT
    assert ch.queue_declare(queue, passive=True).method.message_count == 0
    conn.close()
    return peak


def wait_smaller(broker, limit: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    size = store_bytes(broker)
    while size > limit and time.monotonic() < deadline:
        time.sleep(0.5)
        size = store_bytes(broker)
    return size


def test_store_file_shrinks_after_a_drain(broker_factory):
    broker = broker_factory(adapters=["amqp"])
    peak = fill_and_drain(broker, "shrink")
    assert peak > COUNT * len(BODY)  # every body was on disk
    size = wait_smaller(broker, peak // 4)
    assert size <= peak // 4, f"store still {size} bytes after draining (peak {peak})"
    # the store is whole: it restarts and serves
    broker.restart()
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    assert ch.queue_declare("shrink", durable=True, passive=True).method.message_count == 0
    conn.close()


def test_a_store_without_incremental_vacuum_is_converted_at_open(broker_factory):
    broker = broker_factory(adapters=["amqp"])
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    ch.queue_declare("kept", durable=True)
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", "kept", b"%d" % i, pika.BasicProperties(delivery_mode=2))
    conn.close()
    broker.stop()
    path = broker.data_dir / "polymq.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA auto_vacuum = NONE")
    db.execute("VACUUM")  # as a store made before incremental vacuum was used
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    broker.start()
    assert "converted to incremental vacuum" in broker.log_text()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    db.close()
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    got = [ch.basic_get("kept", auto_ack=True)[2] for _ in range(100)]
    assert got == [b"%d" % i for i in range(100)]
    conn.close()
