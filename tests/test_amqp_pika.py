"""AMQP 0-9-1 with pika (BlockingConnection and SelectConnection) against a real broker process."""

from __future__ import annotations

import datetime
import decimal
import threading
import time
import uuid

import pika
import pika.exceptions as pe
import pytest
from conftest import module_broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    settings = {"adapters.amqp.frame_max": 16384, "limits.max_message_size": 2 * 1024 * 1024}
    with module_broker(
        tmp_path_factory, "amqp_pika", ["amqp"], log_level="info", settings=settings
    ) as b:
        yield b


def params(broker, **kw):
    kw.setdefault("credentials", pika.PlainCredentials("guest", "guest"))
    kw.setdefault("blocked_connection_timeout", 10)
    return pika.ConnectionParameters(broker.host, broker.port("amqp"), **kw)


@pytest.fixture
def conn(broker):
    c = pika.BlockingConnection(params(broker))
    yield c
    if c.is_open:
        c.close()


def pump(connection, seconds):
    """Process I/O for ``seconds`` (process_data_events returns after the first event)."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        connection.process_data_events(min(left, 0.05))


def qname():
    return "t-" + uuid.uuid4().hex[:10]


def drain(ch, q, n, timeout=5.0, ack=True):
    """Consume ``n`` messages from q (ack each); returns (method, props, body) tuples."""
    got = []
    for method, props, body in ch.consume(q, inactivity_timeout=timeout):
        if method is None:
            break
        got.append((method, props, body))
        if ack:
            ch.basic_ack(method.delivery_tag)
        if len(got) == n:
            break
    ch.cancel()
    return got


# -- connection --------------------------------------------------------------------------------


def test_server_properties_and_capabilities(conn):
    props = conn._impl.server_properties
    assert props["product"] == "polymq"
    caps = props["capabilities"]
    for cap in (
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "exchange_exchange_bindings",
        "per_consumer_qos",
        "authentication_failure_close",
        "connection.blocked",
    ):
        assert caps[cap] is True, cap


def test_tune_negotiates_frame_max_and_heartbeat(broker):
    c = pika.BlockingConnection(params(broker, frame_max=8192, heartbeat=7))
    try:
        assert c._impl.params.frame_max == 8192
        assert c._impl.params.heartbeat == 7
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        body = bytes(range(256)) * 200  # 51200 bytes: several body frames of 8 KiB
        ch.basic_publish("", q, body)
        assert ch.basic_get(q, auto_ack=True)[2] == body
    finally:
        c.close()


def test_wrong_password_is_refused(broker):
    with pytest.raises(pe.ProbableAuthenticationError):
        pika.BlockingConnection(
            params(
                broker, credentials=pika.PlainCredentials("guest", "wrong"), connection_attempts=1
            )
        )


def test_unknown_vhost_is_530(broker):
    with pytest.raises(pe.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(params(broker, virtual_host="nope"))
    assert "(530)" in str(e.value) and "NOT_ALLOWED" in str(e.value)


def test_client_close(conn):
    ch = conn.channel()
    ch.queue_declare("", exclusive=True)
    conn.close()
    assert conn.is_closed


# -- channels and errors -----------------------------------------------------------------------


def test_channel_error_closes_only_the_channel(conn):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(qname(), passive=True)
    assert e.value.reply_code == 404
    assert ch.is_closed and conn.is_open
    ch2 = conn.channel()
    assert ch2.queue_declare("", exclusive=True).method.queue


def test_inequivalent_declare_is_406(conn):
    q = qname()
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 5})
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 6})
    assert e.value.reply_code == 406
    conn.channel().queue_delete(q)


def test_reserved_names_are_403(conn):
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        conn.channel().exchange_declare("amq.mine", "direct")
    assert e.value.reply_code == 403
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        conn.channel().queue_declare("amq.mine")
    assert e.value.reply_code == 403


def test_exclusive_queue_of_another_connection_is_405(broker, conn):
    q = conn.channel().queue_declare("", exclusive=True).method.queue
    other = pika.BlockingConnection(params(broker))
    try:
        with pytest.raises(pe.ChannelClosedByBroker) as e:
            other.channel().basic_consume(q, lambda *a: None)
        assert e.value.reply_code == 405
    finally:
        other.close()


def test_unknown_delivery_tag_is_406(conn):
    ch = conn.channel()
    ch.basic_ack(12345)
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert e.value.reply_code == 406
    assert conn.is_open


def test_reused_consumer_tag_is_a_connection_error_530(broker):
    c = pika.BlockingConnection(params(broker))
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_consume(q, lambda *a: None, consumer_tag="dup")
    with pytest.raises(
        (pe.ConnectionClosedByBroker, pe.ChannelClosedByBroker, pe.DuplicateConsumerTag)
    ):
        ch.basic_consume(q, lambda *a: None, consumer_tag="dup")
    # pika refuses the duplicate tag itself; send it through the raw impl to reach the broker
    if c.is_open:
        done = []
        ch._impl._rpc(
            pika.spec.Basic.Consume(queue=q, consumer_tag="dup"),
            lambda *a: done.append(a),
            [pika.spec.Basic.ConsumeOk],
        )
        with pytest.raises(pe.ConnectionClosedByBroker) as e:
            pump(c, 2)
            pump(c, 2)
        assert e.value.reply_code == 530


def test_unknown_exchange_type_is_a_connection_error_503(broker):
    c = pika.BlockingConnection(params(broker))
    with pytest.raises(pe.ConnectionClosedByBroker) as e:
        c.channel().exchange_declare(qname(), "x-no-such-type")
    assert e.value.reply_code == 503


def test_channel_flow(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    flows = []
    ch._impl.flow(False, flows.append)
    pump(conn, 0.2)
    ch.basic_publish("", q, b"1")
    pump(conn, 0.3)
    assert got == [] and flows == [False]
    ch._impl.flow(True, flows.append)
    pump(conn, 0.3)
    assert got == [b"1"] and flows == [False, True]
    pump(conn, 0.2)
    assert ch.is_open


# -- exchanges and queues ----------------------------------------------------------------------


def test_topic_exchange_bind_unbind(conn):
    ch = conn.channel()
    ex = qname()
    ch.exchange_declare(ex, "topic", auto_delete=False)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex, "a.*.c")
    ch.basic_publish(ex, "a.b.c", b"1")
    ch.basic_publish(ex, "a.b.d", b"2")
    ch.queue_unbind(q, ex, "a.*.c")
    ch.basic_publish(ex, "a.b.c", b"3")
    assert ch.basic_get(q, auto_ack=True)[2] == b"1"
    assert ch.basic_get(q, auto_ack=True)[0] is None
    with pytest.raises(pe.ChannelClosedByBroker):
        ch.exchange_declare(ex, "direct")  # inequivalent type: 406
    ch = conn.channel()
    ch.exchange_delete(ex)
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.exchange_declare(ex, "topic", passive=True)
    assert e.value.reply_code == 404


def test_exchange_to_exchange_and_if_unused(conn):
    ch = conn.channel()
    src, dst = qname(), qname()
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "direct")
    ch.exchange_bind(dst, src, "")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, dst, "k")
    ch.basic_publish(src, "k", b"via-e2e")
    assert ch.basic_get(q, auto_ack=True)[2] == b"via-e2e"
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.exchange_delete(src, if_unused=True)
    assert e.value.reply_code == 406
    ch = conn.channel()
    ch.exchange_unbind(dst, src, "")
    ch.basic_publish(src, "k", b"no")
    assert ch.basic_get(q, auto_ack=True)[0] is None
    ch.exchange_delete(src)
    ch.exchange_delete(dst)


def test_alternate_exchange_and_internal(conn):
    ch = conn.channel()
    ae, main = qname(), qname()
    ch.exchange_declare(ae, "fanout", internal=True)
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ae)
    ch.basic_publish(main, "nobody", b"alt")
    assert ch.basic_get(q, auto_ack=True)[2] == b"alt"
    ch.basic_publish(ae, "", b"x")  # internal: 403
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert e.value.reply_code == 403
    ch = conn.channel()
    ch.exchange_delete(main)
    ch.exchange_delete(ae)


def test_queue_declare_counts_purge_delete(conn):
    ch = conn.channel()
    q = qname()
    ok = ch.queue_declare(q, durable=True)
    assert ok.method.queue == q and ok.method.message_count == 0
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.message_count == 3 and ok.method.consumer_count == 0
    assert ch.queue_purge(q).method.message_count == 3
    ch.basic_publish("", q, b"x")
    assert ch.queue_delete(q).method.message_count == 1
    assert ch.queue_delete(q).method.message_count == 0


def test_queue_delete_if_empty_and_if_unused(conn):
    ch = conn.channel()
    q = ch.queue_declare(qname(), auto_delete=False).method.queue
    ch.basic_publish("", q, b"x")
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_delete(q, if_empty=True)
    assert e.value.reply_code == 406
    ch = conn.channel()
    ch.basic_consume(q, lambda *a: None, auto_ack=False)
    with pytest.raises(pe.ChannelClosedByBroker):
        conn.channel().queue_delete(q, if_unused=True)
    ch.close()
    conn.channel().queue_delete(q)


def test_server_named_exclusive_queue_goes_with_its_connection(broker):
    c = pika.BlockingConnection(params(broker))
    q = c.channel().queue_declare("", exclusive=True).method.queue
    assert q.startswith("amq.gen-")
    c.close()
    c2 = pika.BlockingConnection(params(broker))
    try:
        with pytest.raises(pe.ChannelClosedByBroker) as e:
            c2.channel().queue_declare(q, passive=True)
        assert e.value.reply_code == 404
    finally:
        c2.close()


def test_auto_delete_queue_goes_with_its_last_consumer(conn):
    ch = conn.channel()
    q = ch.queue_declare(qname(), auto_delete=True).method.queue
    tag = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(tag)
    with pytest.raises(pe.ChannelClosedByBroker):
        conn.channel().queue_declare(q, passive=True)


def test_max_length_drops_head(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-length": 2}).method.queue
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    assert [ch.basic_get(q, auto_ack=True)[2] for _ in range(2)] == [b"2", b"3"]


def test_headers_exchange_binding_arguments(conn):
    ch = conn.channel()
    q_all = ch.queue_declare("", exclusive=True).method.queue
    q_any = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_all, "amq.headers", arguments={"x-match": "all", "a": 1, "b": "x"})
    ch.queue_bind(q_any, "amq.headers", arguments={"x-match": "any", "a": 1, "b": "x"})
    ch.basic_publish("amq.headers", "", b"both", pika.BasicProperties(headers={"a": 1, "b": "x"}))
    ch.basic_publish("amq.headers", "", b"one", pika.BasicProperties(headers={"a": 1}))
    assert [ch.basic_get(q_all, auto_ack=True)[2] for _ in range(2)] == [b"both", None]
    assert [ch.basic_get(q_any, auto_ack=True)[2] for _ in range(3)] == [b"both", b"one", None]


def test_queue_arguments_reach_the_core(conn):
    ch = conn.channel()
    q = ch.queue_declare(qname(), arguments={"x-expires": 300}).method.queue
    ok = ch.queue_declare(
        "", exclusive=True, arguments={"x-max-length-bytes": 10, "x-overflow": "reject-publish"}
    )
    small = ok.method.queue
    ch.basic_publish("", small, b"12345678")
    ch.basic_publish("", small, b"too much")  # refused: 16 bytes > 10
    assert ch.queue_declare(small, passive=True).method.message_count == 1
    lim = ch.queue_declare("", exclusive=True, arguments={"x-delivery-limit": 2}).method.queue
    ch.basic_publish("", lim, b"poison")
    for _ in range(2):
        method, _, _ = ch.basic_get(lim)
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert ch.basic_get(lim)[0] is None  # dropped after two deliveries (no DLX)
    time.sleep(0.6)  # x-expires: the unused queue is gone
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        conn.channel().queue_declare(q, passive=True)
    assert e.value.reply_code == 404


def test_priority_queue(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 5}).method.queue
    for p in (1, 5, 3):
        ch.basic_publish("", q, b"%d" % p, pika.BasicProperties(priority=p))
    assert [ch.basic_get(q, auto_ack=True)[2] for _ in range(3)] == [b"5", b"3", b"1"]


# -- basic ---------------------------------------------------------------------------------------


def test_all_properties_and_header_types_round_trip(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ts = datetime.datetime(2024, 1, 2, 3, 4, 5)
    headers = {
        "str": "s",
        "int": 7,
        "big": 2**40,
        "neg": -3,
        "bool": True,
        "none": None,
        "list": [1, "two", [3]],
        "table": {"a": {"b": "c"}},
        "bytes": b"\x00\x01",
        "decimal": decimal.Decimal("3.14"),
        "time": ts,
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=4,
        correlation_id="corr",
        reply_to="reply",
        expiration="60000",
        message_id="mid",
        timestamp=1700000000,
        type="kind",
        user_id="guest",
        app_id="app",
        cluster_id="cluster",
    )
    ch.basic_publish("", q, b'{"x": 1}', props)
    method, got, body = ch.basic_get(q, auto_ack=True)
    assert body == b'{"x": 1}'
    for f in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    ):
        assert getattr(got, f) == getattr(props, f), f
    assert 55000 < int(got.expiration) <= 60000
    h = got.headers
    assert h["str"] == "s" and h["int"] == 7 and h["big"] == 2**40 and h["neg"] == -3
    assert h["bool"] is True and h["none"] is None
    assert h["list"] == [1, "two", [3]] and h["table"] == {"a": {"b": "c"}}
    assert h["bytes"] == b"\x00\x01" and h["decimal"] == decimal.Decimal("3.14")
    assert h["time"].replace(tzinfo=None) == ts


def test_user_id_must_match_login(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="mallory"))
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert e.value.reply_code == 406


def test_empty_and_large_bodies(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    big = bytes(range(256)) * 4096  # 1 MiB over 16 KiB frames
    ch.basic_publish("", q, b"")
    ch.basic_publish("", q, big)
    got = drain(ch, q, 2)
    assert [b for _, _, b in got] == [b"", big]


def test_message_over_max_message_size_is_406(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x" * (2 * 1024 * 1024 + 1))
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert e.value.reply_code == 406
    ch = conn.channel()  # the connection is fine
    ch.basic_publish("", q, b"small")
    assert ch.basic_get(q, auto_ack=True)[2] == b"small"


def test_get_and_get_empty(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    assert ch.basic_get(q) == (None, None, None)
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    method, _, body = ch.basic_get(q)
    assert body == b"a" and method.message_count == 1 and not method.redelivered
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q)
    assert body == b"a" and method.redelivered
    ch.basic_ack(method.delivery_tag)


def test_mandatory_unroutable_is_returned_with_312(conn):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
    ch.basic_publish(
        "amq.direct",
        "nobody-" + qname(),
        b"lost",
        mandatory=True,
        properties=pika.BasicProperties(message_id="r1"),
    )
    pump(conn, 0.5)
    assert len(returned) == 1
    m, p, b = returned[0]
    assert (m.reply_code, m.reply_text, b) == (312, "NO_ROUTE", b"lost")
    assert m.routing_key.startswith("nobody-")
    assert p.message_id == "r1"


def test_mandatory_with_confirms_raises_unroutable(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pe.UnroutableError):
        ch.basic_publish("amq.direct", "nobody-" + qname(), b"lost", mandatory=True)


def test_ack_multiple_and_nack_multiple_requeue(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(6):
        ch.basic_publish("", q, b"%d" % i)
    got = drain(ch, q, 6, ack=False)
    tags = [m.delivery_tag for m, _, _ in got]
    ch.basic_ack(tags[2], multiple=True)  # acks 0, 1, 2
    ch.basic_nack(tags[5], multiple=True, requeue=True)  # 3, 4, 5 back, in order
    again = drain(ch, q, 3)
    assert [b for _, _, b in again] == [b"3", b"4", b"5"]
    assert all(m.redelivered for m, _, _ in again)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_recover_requeues_unacked(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"r")
    method, _, _ = ch.basic_get(q)
    ch.basic_recover(requeue=True)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"r" and method.redelivered


def test_no_ack_consumer_and_exclusive_consumer(broker, conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=False, auto_delete=True).method.queue
    ch.basic_publish("", q, b"1")
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True, exclusive=True)
    pump(conn, 0.3)
    assert got == [b"1"]
    other = pika.BlockingConnection(params(broker))
    try:
        with pytest.raises(pe.ChannelClosedByBroker) as e:
            other.channel().basic_consume(q, lambda *a: None)
        assert e.value.reply_code == 403
    finally:
        other.close()
    ch.basic_cancel(tag)


def test_consumer_cancel_notify_when_queue_is_deleted(conn):
    ch = conn.channel()
    q = ch.queue_declare(qname()).method.queue
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    pump(conn, 0.5)
    assert cancelled == [tag]


def test_prefetch_count_per_consumer(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    ch.basic_qos(prefetch_count=3)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    pump(conn, 0.5)
    assert len(got) == 3
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    pump(conn, 0.5)
    assert len(got) == 6


def test_prefetch_global_is_shared_by_the_channels_consumers(conn):
    ch = conn.channel()
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    for _ in range(5):
        ch.basic_publish("", q1, b"a")
        ch.basic_publish("", q2, b"b")
    ch.basic_qos(prefetch_count=4, global_qos=True)
    got = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append(b))
    ch.basic_consume(q2, lambda c, m, p, b: got.append(b))
    pump(conn, 0.5)
    assert len(got) == 4


def test_fair_dispatch_slow_and_fast_consumer(broker):
    """prefetch 1: a consumer that does not ack gets one message, the fast one the rest."""
    q = qname()
    pub = pika.BlockingConnection(params(broker))
    slow = pika.BlockingConnection(params(broker))
    fast = pika.BlockingConnection(params(broker))
    try:
        pch = pub.channel()
        pch.queue_declare(q, auto_delete=True)
        sch, fch = slow.channel(), fast.channel()
        sch.basic_qos(prefetch_count=1)
        fch.basic_qos(prefetch_count=1)
        slow_got, fast_got = [], []
        sch.basic_consume(q, lambda c, m, p, b: slow_got.append(b))  # never acks
        pump(slow, 0.1)
        fch.basic_consume(q, lambda c, m, p, b: (fast_got.append(b), c.basic_ack(m.delivery_tag)))
        pump(fast, 0.1)
        for i in range(20):
            pch.basic_publish("", q, b"%d" % i)
        deadline = time.time() + 5
        while len(fast_got) < 19 and time.time() < deadline:
            pump(fast, 0.05)
            pump(slow, 0.01)
        assert len(slow_got) == 1
        assert len(fast_got) == 19
    finally:
        for c in (pub, slow, fast):
            c.close()


def test_round_robin_across_consumers(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got = {"a": [], "b": [], "c": []}
    for tag in got:
        ch.basic_consume(
            q, lambda c, m, p, b, t=tag: got[t].append(b), auto_ack=True, consumer_tag=tag
        )
    for i in range(9):
        ch.basic_publish("", q, b"%d" % i)
    pump(conn, 0.5)
    assert [len(v) for v in got.values()] == [3, 3, 3]
    assert sorted(got["a"] + got["b"] + got["c"]) == sorted(b"%d" % i for i in range(9))


def test_redelivery_after_consumer_connection_closes(broker, conn):
    q = qname()
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=False)
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    c2 = pika.BlockingConnection(params(broker))
    got = drain(c2.channel(), q, 3, ack=False)
    assert [m.redelivered for m, _, _ in got] == [False] * 3
    c2.close()
    again = drain(ch, q, 3)
    assert [b for _, _, b in again] == [b"0", b"1", b"2"]
    assert all(m.redelivered for m, _, _ in again)
    ch.queue_delete(q)


def test_dead_letter_after_reject_and_after_ttl(conn):
    ch = conn.channel()
    dlx = qname()
    ch.exchange_declare(dlx, "fanout")
    dead = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(dead, dlx)
    q = ch.queue_declare(
        "",
        exclusive=True,
        arguments={
            "x-dead-letter-exchange": dlx,
            "x-message-ttl": 200,
        },
    ).method.queue
    ch.basic_publish("", q, b"rejected")
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.basic_publish("", q, b"expired")
    time.sleep(0.6)
    got = drain(ch, dead, 2)
    assert [b for _, _, b in got] == [b"rejected", b"expired"]
    reasons = [p.headers["x-death"][0]["reason"] for _, p, _ in got]
    assert reasons == ["rejected", "expired"]
    assert got[0][1].headers["x-death"][0]["queue"] == q
    ch.exchange_delete(dlx)


def test_per_message_ttl_expires(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    time.sleep(0.3)
    assert ch.basic_get(q, auto_ack=True)[2] == b"long"


def test_stream_offsets(conn):
    ch = conn.channel()
    s = qname()
    ch.queue_declare(s, durable=True, arguments={"x-queue-type": "stream"})
    for i in range(5):
        ch.basic_publish("", s, b"%d" % i)
    ch.basic_qos(prefetch_count=100)

    def read(offset, n):
        c = conn.channel()
        c.basic_qos(prefetch_count=100)
        got = []
        c.basic_consume(
            s,
            lambda ch_, m, p, b: got.append((b, p.headers["x-stream-offset"])),
            arguments={"x-stream-offset": offset},
        )
        deadline = time.time() + 3
        while len(got) < n and time.time() < deadline:
            pump(conn, 0.05)
        pump(conn, 0.1)
        c.close()
        return got

    assert read("first", 5) == [(b"%d" % i, i) for i in range(5)]
    assert read(3, 2) == [(b"3", 3), (b"4", 4)]
    assert read("last", 1) == [(b"4", 4)]
    assert read("next", 0) == []
    assert len(read(datetime.datetime(2000, 1, 1), 5)) == 5
    conn.channel().queue_delete(s)


# -- confirms and transactions --------------------------------------------------------------------


def test_confirms_for_transient_and_persistent(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(qname(), durable=True).method.queue
    ch.basic_publish("", q, b"p", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", q, b"t")
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    ch.queue_delete(q)


def test_confirm_nack_when_queue_refuses(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(
        "", exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    ).method.queue
    ch.basic_publish("", q, b"1")
    with pytest.raises(pe.NackError):
        ch.basic_publish("", q, b"2")


def test_confirms_multiple_with_select_connection(broker):
    """SelectConnection: 200 pipelined publishes, confirms may come as multiple acks."""
    acked: set[int] = set()
    multiples = []
    result = {}
    q = qname()

    def on_open(connection):
        connection.channel(on_open_callback=on_channel)

    def on_channel(ch):
        def on_confirm(frame):
            m = frame.method
            if isinstance(m, pika.spec.Basic.Ack):
                if m.multiple:
                    multiples.append(m.delivery_tag)
                    acked.update(t for t in range(1, m.delivery_tag + 1))
                else:
                    acked.add(m.delivery_tag)
            if len(acked) >= 200:
                ch.queue_declare(q, passive=True, callback=on_count)

        def on_count(frame):
            result["count"] = frame.method.message_count
            ch.queue_delete(q)
            ch.connection.close()

        def on_select(_):
            for i in range(200):
                ch.basic_publish(
                    "", q, b"%d" % i, pika.BasicProperties(delivery_mode=2 if i % 2 else 1)
                )

        ch.queue_declare(
            q, durable=True, callback=lambda _: ch.confirm_delivery(on_confirm, callback=on_select)
        )

    c = pika.SelectConnection(params(broker), on_open_callback=on_open)
    timer = threading.Timer(15, lambda: c.ioloop.add_callback_threadsafe(c.ioloop.stop))
    timer.start()
    try:
        c.ioloop.start()
    finally:
        timer.cancel()
    assert acked == set(range(1, 201))
    assert result["count"] == 200
    assert multiples  # pipelined publishes were confirmed in batches


def test_transactions_commit_and_rollback(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.tx_select()
    ch.basic_publish("", q, b"1")
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 1
    ch.basic_publish("", q, b"2")
    ch.tx_rollback()
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 1
    method, _, body = ch.basic_get(q)
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()  # the ack is discarded: the message is still unacknowledged
    ch.basic_ack(method.delivery_tag)
    ch.tx_commit()
    ch.close()
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 0


def test_tx_rolled_back_settlements_are_requeued_on_close(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    ch.tx_select()
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(4)]
    ch.basic_ack(tags[0])
    ch.basic_ack(tags[2], multiple=True)  # tags 1 and 2 (0 is already settled in the tx)
    ch.basic_reject(tags[3], requeue=False)
    ch.tx_rollback()
    ch.close()  # nothing was committed: all four are unacked again, then requeued
    ch = conn.channel()
    got = [ch.basic_get(q, auto_ack=True) for _ in range(4)]
    assert [b for _, _, b in got] == [b"0", b"1", b"2", b"3"]
    assert all(m.redelivered for m, _, _ in got)


def test_tx_and_confirm_do_not_mix(conn):
    ch = conn.channel()
    ch.tx_select()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.confirm_delivery()
    assert e.value.reply_code == 406


def test_select_connection_consume(broker):
    """SelectConnection consumer with manual acks and prefetch."""
    q = qname()
    got = []

    def on_open(connection):
        connection.channel(on_open_callback=on_channel)

    def on_channel(ch):
        def on_msg(c, m, p, b):
            got.append(b)
            c.basic_ack(m.delivery_tag)
            if len(got) == 50:
                c.queue_delete(q, callback=lambda _: c.connection.close())

        def declared(_):
            for i in range(50):
                ch.basic_publish("", q, b"%d" % i)
            ch.basic_qos(prefetch_count=5, callback=lambda _: ch.basic_consume(q, on_msg))

        ch.queue_declare(q, callback=declared)

    c = pika.SelectConnection(params(broker), on_open_callback=on_open)
    timer = threading.Timer(15, lambda: c.ioloop.add_callback_threadsafe(c.ioloop.stop))
    timer.start()
    try:
        c.ioloop.start()
    finally:
        timer.cancel()
    assert got == [b"%d" % i for i in range(50)]


def test_connection_blocked_by_the_resource_alarm(tmp_path):
    """Under the broker's memory alarm publishers get connection.blocked and are no longer read,
    while a consumer-only connection keeps being served; once the alarm clears they get
    connection.unblocked and their held publishes go through."""
    from test_management_support import Api, start_broker, wait_for

    b, url = start_broker(tmp_path, adapters=["amqp"])
    api = Api(url)
    try:
        pub = pika.BlockingConnection(params(b))
        events = []
        pub.add_on_connection_blocked_callback(lambda c, f: events.append("blocked"))
        pub.add_on_connection_unblocked_callback(lambda c, f: events.append("unblocked"))
        ch = pub.channel()
        q = ch.queue_declare("held").method.queue
        for _ in range(5):
            ch.basic_publish("", q, b"x" * 1000)
        pump(pub, 0.3)
        # the watermark below the broker's own memory: the alarm sets at once
        assert api.call("PUT", "/api/limits", {"memory_high_watermark": 1e6})[0] == 200
        pump(pub, 0.8)
        assert events == ["blocked"]
        # the first publish while blocked is taken, then the connection is no longer read
        ch.basic_publish("", q, b"first")
        ch.basic_publish("", q, b"late")
        pump(pub, 0.5)
        other = pika.BlockingConnection(params(b))
        och = other.channel()
        assert och.queue_declare(q, passive=True).method.message_count == 6
        for _ in range(5):
            assert och.basic_get(q, auto_ack=True)[2] == b"x" * 1000
        assert och.basic_get(q, auto_ack=True)[2] == b"first"
        assert och.basic_get(q, auto_ack=True)[2] is None
        assert api.call("PUT", "/api/limits", {"memory_high_watermark": 0.95})[0] == 200
        wait_for(lambda: (pump(pub, 0.1), "unblocked" in events)[1], what="unblocked")
        assert events == ["blocked", "unblocked"]
        deadline = time.time() + 3
        body = None
        while body is None and time.time() < deadline:
            pump(pub, 0.1)
            body = och.basic_get(q, auto_ack=True)[2]
        assert body == b"late"
        other.close()
        pub.close()
    finally:
        b.stop()
