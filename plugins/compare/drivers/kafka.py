"""Kafka load client: confluent-kafka (librdkafka, C). Fan-out = one topic with one partition
read in full by every consumer (each is its own reader, no group); queue = a topic with one
partition per consumer, each consumer assigned one partition, producers spreading records over
them (Kafka's competing consumers). acks: at-most-once 0, at-least-once 1, persistent all."""

from __future__ import annotations

import os
import threading

from ..common import Budget, Pacer, Tally, now_ns
from ..side import (
    DriverError,
    SideContext,
    consumer_result,
    run_consumer_threads,
    run_producer_threads,
)
from ..workload import HEADER

ACKS = {"at-most-once": "0", "at-least-once": "1", "persistent": "all"}


def _bootstrap(ctx: SideContext) -> str:
    return f"{ctx.target.host}:{ctx.target.port}"


def _partitions(ctx: SideContext) -> int:
    return ctx.wl.consumers if ctx.wl.pattern == "queue" else 1


def _common(ctx: SideContext) -> dict:
    conf = {
        "bootstrap.servers": _bootstrap(ctx),
        "client.id": f"polymq-compare-{ctx.run}",
        "socket.nagle.disable": True,
        "broker.address.family": "v4",
    }
    t = ctx.target
    if t.username:
        conf.update(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": t.username,
                "sasl.password": t.password or "",
            }
        )
    return conf


def _create_topic(ctx: SideContext) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_common(ctx))
    futures = admin.create_topics(
        [NewTopic(ctx.topic, _partitions(ctx), 1)], operation_timeout=10, request_timeout=15
    )
    try:
        futures[ctx.topic].result(timeout=20)
    except KafkaException as e:
        err = e.args[0] if e.args else None
        if getattr(err, "code", lambda: None)() not in (36,):  # TOPIC_ALREADY_EXISTS
            raise DriverError(f"kafka: cannot create topic {ctx.topic}: {e}") from None
    except Exception as e:
        raise DriverError(
            f"kafka: cannot create topic {ctx.topic} at {_bootstrap(ctx)}: {e}"
        ) from None


def _delete_topic(ctx: SideContext) -> None:
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(_common(ctx))
        for f in admin.delete_topics([ctx.topic], operation_timeout=10).values():
            f.result(timeout=15)
    except Exception:
        pass


def _check_metadata(ctx: SideContext, client) -> None:
    try:
        md = client.list_topics(ctx.topic, timeout=15)
    except Exception as e:
        raise DriverError(f"kafka: no metadata from {_bootstrap(ctx)}: {e}") from None
    tmd = md.topics.get(ctx.topic)
    if tmd is None or tmd.error is not None or len(tmd.partitions) < _partitions(ctx):
        raise DriverError(
            f"kafka: topic {ctx.topic} not usable: {getattr(tmd, 'error', 'missing')}"
        )


# ---------------------------------------------------------------------------------------------


def _consume(ctx: SideContext, consumer, tally: Tally, stop: threading.Event) -> None:
    add = tally.add
    try:
        while not stop.is_set():
            # consume(n, timeout) waits for n messages or the whole timeout: take what is
            # there without waiting, else block in poll() which returns on the first message
            msgs = consumer.consume(2000, 0)
            if not msgs:
                m = consumer.poll(0.1)
                if m is None:
                    continue
                msgs = [m]
            now = now_ns()
            for m in msgs:
                if m.error() is None:
                    add(m.value(), now)
                elif m.error().code() != -191:  # _PARTITION_EOF
                    ctx.error(f"kafka consumer: {m.error()}")
    except Exception as e:
        if not stop.is_set():
            ctx.error(f"kafka consumer: {e}")


def run_consumers(ctx: SideContext) -> dict:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    wl = ctx.wl
    _create_topic(ctx)
    consumers = []
    for i in range(wl.consumers):
        conf = _common(ctx)
        conf.update(
            {
                "group.id": f"polymq-compare-{ctx.run}-{i}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
                "fetch.max.bytes": 52428800,
                "queued.max.messages.kbytes": 262144,
                "enable.partition.eof": False,
            }
        )
        c = Consumer(conf)
        _check_metadata(ctx, c)
        parts = [i] if wl.pattern == "queue" else [0]
        c.assign([TopicPartition(ctx.topic, p, OFFSET_BEGINNING) for p in parts])
        consumers.append(c)
    for c in consumers:  # connect and start fetching before the producers start
        c.consume(1, 0.2)
    tallies, wire, cpu0 = run_consumer_threads(ctx, consumers, _consume)
    for c in consumers:
        c.close()
    _delete_topic(ctx)
    return consumer_result(ctx, tallies, wire, cpu0)


# ---------------------------------------------------------------------------------------------


def _produce(ctx: SideContext, index: int, producer, out: dict) -> None:
    from confluent_kafka import KafkaException

    wl = ctx.wl
    pad = os.urandom(wl.size - HEADER.size)
    nparts = _partitions(ctx)
    acks = {"ok": 0, "failed": 0}

    def delivered(err, _msg) -> None:
        if err is None:
            acks["ok"] += 1
        else:
            acks["failed"] += 1
            if acks["failed"] <= 3:
                ctx.error(f"kafka producer {index}: {err}")

    batch = 256 if wl.rate is None else 16
    pacer = Pacer(wl.rate, batch)
    budget = Budget(wl.count, wl.duration)
    pack = HEADER.pack
    produce = producer.produce
    topic = ctx.topic
    sent = 0
    first = 0
    counter = ctx.shared.sent
    try:
        while not ctx.aborted():
            left = budget.left(sent)
            if left <= 0:
                break
            n = min(pacer.due(sent), left)
            if not first:
                first = now_ns()
            for k in range(n):
                seq = sent + k
                value = pack(index, seq, now_ns()) + pad
                while True:
                    try:
                        produce(
                            topic, value, partition=(index + seq) % nparts, on_delivery=delivered
                        )
                        break
                    except BufferError:
                        producer.poll(0.001)
            sent += n
            counter.value += n
            producer.poll(0)
        while producer.flush(1.0) and not ctx.aborted():
            pass
    except KafkaException as e:
        ctx.error(f"kafka producer {index}: {e}")
    out.update(sent=sent, confirmed=acks["ok"], first_ns=first, last_ns=now_ns())


def run_producers(ctx: SideContext) -> dict:
    from confluent_kafka import Producer

    wl = ctx.wl

    def connect(_index: int):
        conf = _common(ctx)
        conf.update(
            {
                "acks": ACKS[wl.guarantee],
                "linger.ms": 0 if wl.rate else 5,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 1000000,
                "queue.buffering.max.kbytes": 1048576,
                "compression.type": "none",
                "enable.idempotence": False,
                "max.in.flight": 5,
            }
        )
        p = Producer(conf)
        _check_metadata(ctx, p)
        return p

    # librdkafka producers have nothing to close: they were flushed by _produce
    return run_producer_threads(ctx, connect, _produce, close=False)
