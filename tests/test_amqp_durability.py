"""Publisher confirms are sent only once persistent messages are on disk: kill -9 right after the
confirm, restart, and the message is still there."""

from __future__ import annotations

import threading
import time

import pika
import pika.exceptions as pe


def connect(broker):
    return pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    )


def test_confirmed_persistent_message_survives_kill9(broker_factory):
    broker = broker_factory(adapters=["amqp"], log_level="info")
    c = connect(broker)
    ch = c.channel()
    ch.exchange_declare("dur-x", "direct", durable=True)
    ch.queue_declare("dur-q", durable=True)
    ch.queue_bind("dur-q", "dur-x", "k")
    ch.confirm_delivery()
    ch.basic_publish(
        "dur-x",
        "k",
        b"keep-me",
        pika.BasicProperties(delivery_mode=2, message_id="m1", headers={"h": 1}),
    )
    # the confirm has arrived (basic_publish returned): crash at once
    broker.kill9()
    broker.start()
    c = connect(broker)
    ch = c.channel()
    method, props, body = ch.basic_get("dur-q", auto_ack=True)
    assert body == b"keep-me"
    assert props.message_id == "m1" and props.headers == {"h": 1} and props.delivery_mode == 2
    # the durable exchange and binding survived too
    ch.basic_publish("dur-x", "k", b"again")
    assert ch.basic_get("dur-q", auto_ack=True)[2] == b"again"
    c.close()


def test_no_confirmed_message_lost_when_killed_under_load(broker_factory):
    broker = broker_factory(adapters=["amqp"], log_level="info")
    c = connect(broker)
    ch = c.channel()
    ch.queue_declare("load-q", durable=True)
    ch.confirm_delivery()
    confirmed: list[int] = []
    threading.Timer(0.8, broker.kill9).start()
    i = 0
    try:
        while i < 100000:
            ch.basic_publish("", "load-q", str(i).encode(), pika.BasicProperties(delivery_mode=2))
            confirmed.append(i)
            i += 1
    except (pe.AMQPError, OSError):
        pass
    time.sleep(0.2)
    assert confirmed, "nothing was confirmed before the kill"
    broker.start()
    c = connect(broker)
    ch = c.channel()
    received = set()
    while True:
        method, _, body = ch.basic_get("load-q", auto_ack=True)
        if method is None:
            break
        received.add(int(body))
    c.close()
    missing = set(confirmed) - received
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
