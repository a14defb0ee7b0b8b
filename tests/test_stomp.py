"""The STOMP adapter (plugins/stomp, the polymq-stomp distribution) with stomp.py, a real
client, against a broker subprocess: every frame, every ack mode, transactions, receipts,
heart-beating, destinations of RabbitMQ and ActiveMQ, and durability across a restart."""

from __future__ import annotations

import time
import uuid

import pytest
from brokerproc import BrokerProcess, installed_adapters
from conftest import module_broker
from stompclient import RawStomp, ack_args, connect, connect_frame, disconnect

VERSIONS = ["1.0", "1.1", "1.2"]


def test_plugin_is_found_through_its_entry_point():
    assert "stomp" in installed_adapters()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    settings = {"adapters.stomp.heart_beat_send_ms": 200}
    with module_broker(tmp_path_factory, "stomp", ["stomp"], settings=settings) as b:
        yield b


@pytest.fixture
def port(broker):
    return broker.port("stomp")


def name() -> str:
    return uuid.uuid4().hex[:10]


@pytest.mark.parametrize("version", VERSIONS)
def test_send_subscribe_each_version(port, version):
    conn, got = connect(port, version, auto_decode=False)
    q = f"/queue/v{name()}"
    sub = {"id": "s1"} if version != "1.0" else {}
    conn.subscribe(q, **sub)
    body = b"zero\0byte and \xff\x00 binary"
    # 1.0 has no escapes (stomp.py's 1.0 reader still undoes them: no backslash here)
    value = "a:b c" if version == "1.0" else "a:b\nc\\d"
    conn.send(q, body, headers={"x-app": value, "persistent": "true"}, receipt="r1")
    got.wait_receipt("r1")
    frame = got.get()
    assert frame.body == body
    assert frame.headers["x-app"] == value
    assert frame.headers["destination"] == q
    assert frame.headers["persistent"] == "true"
    assert frame.headers["content-length"] == str(len(body))
    assert "ack" not in frame.headers  # auto: nothing to acknowledge
    conn.disconnect()


def test_connected_frame_and_version_choice(port):
    raw = RawStomp(port)
    raw.send(connect_frame("1.0,1.1,1.2", heart_beat="0,0"))
    command, headers, _ = raw.frame()
    assert command == "CONNECTED"
    assert headers["version"] == "1.2"
    assert headers["server"].startswith("polymq/")
    assert headers["session"]
    raw.close()
    raw = RawStomp(port)
    raw.send(b"CONNECT\nlogin:guest\npasscode:guest\n\n\0")  # no accept-version: 1.0
    command, headers, _ = raw.frame()
    assert command == "CONNECTED" and "version" not in headers
    raw.close()


def test_stomp_command_connects(port):
    raw = RawStomp(port)
    raw.send(b"STOMP\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
    command, headers, _ = raw.frame()
    assert command == "CONNECTED" and headers["version"] == "1.2"
    raw.close()


def test_auto_ack_does_not_redeliver(port):
    q = f"/queue/auto{name()}"
    conn, got = connect(port)
    conn.subscribe(q, id="a", ack="auto")
    for i in range(3):
        conn.send(q, f"m{i}")
    assert [f.body for f in got.take(3)] == ["m0", "m1", "m2"]
    conn.disconnect()
    conn2, got2 = connect(port)
    conn2.subscribe(q, id="a")
    assert got2.none()
    conn2.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ack_is_cumulative(port, version):
    q = f"/queue/client{name()}"
    conn, got = connect(port, version)
    sub = {"id": "c"} if version != "1.0" else {}
    conn.subscribe(q, ack="client", **sub)
    for i in range(5):
        conn.send(q, f"m{i}")
    frames = got.take(5)
    conn.ack(*ack_args(frames[2], version), receipt="acked")  # m0..m2
    got.wait_receipt("acked")
    conn.disconnect()
    conn2, got2 = connect(port, version)
    conn2.subscribe(q, ack="auto", **sub)
    again = got2.take(2)
    assert [f.body for f in again] == ["m3", "m4"]
    assert all(f.headers.get("redelivered") == "true" for f in again)
    assert got2.none()
    conn2.disconnect()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_client_individual_ack(port, version):
    q = f"/queue/ind{name()}"
    conn, got = connect(port, version)
    conn.subscribe(q, id="i", ack="client-individual")
    for i in range(3):
        conn.send(q, f"m{i}")
    frames = got.take(3)
    conn.ack(*ack_args(frames[1], version), receipt="acked")  # m1 only
    got.wait_receipt("acked")
    conn.disconnect()
    conn2, got2 = connect(port, version)
    conn2.subscribe(q, id="i", ack="auto")
    assert sorted(f.body for f in got2.take(2)) == ["m0", "m2"]
    assert got2.none()
    conn2.disconnect()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_requeues_and_requeue_false_drops(port, version):
    q = f"/queue/nack{name()}"
    conn, got = connect(port, version)
    conn.subscribe(q, id="n", ack="client-individual")
    conn.send(q, "again")
    first = got.get()
    assert "redelivered" not in first.headers
    conn.nack(*ack_args(first, version))
    second = got.get()
    assert second.body == "again" and second.headers["redelivered"] == "true"
    conn.nack(*ack_args(second, version), requeue="false")  # RabbitMQ's header
    assert got.none()
    conn.disconnect()


def test_unknown_ack_id_is_an_error(port):
    conn, got = connect(port)
    conn.ack("no-such-id", receipt="x")
    deadline = time.monotonic() + 10
    while not got.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got.errors and "unknown message id" in got.errors[0].headers["message"]
    assert got.errors[0].headers.get("receipt-id") == "x"


def test_prefetch_limits_unacknowledged(port):
    q = f"/queue/pf{name()}"
    conn, got = connect(port)
    for i in range(5):
        conn.send(q, f"m{i}")
    conn.subscribe(q, id="p", ack="client-individual", headers={"prefetch-count": "2"})
    frames = got.take(2)
    assert got.none()
    conn.ack(frames[0].headers["ack"])
    assert got.get().body == "m2"
    conn.disconnect()


def test_unsubscribe_returns_unacknowledged(port):
    q = f"/queue/unsub{name()}"
    conn, got = connect(port)
    conn.subscribe(q, id="u", ack="client")
    conn.send(q, "kept")
    got.get()
    conn.unsubscribe("u", receipt="gone")
    got.wait_receipt("gone")
    conn.send(q, "next")
    assert got.none()
    conn.subscribe(q, id="u2", ack="auto")
    assert [f.body for f in got.take(2)] == ["kept", "next"]
    conn.disconnect()


def test_transaction_commit_and_abort(port):
    q = f"/queue/tx{name()}"
    conn, got = connect(port)
    conn.subscribe(q, id="t", ack="auto")
    conn.begin("t1")
    conn.send(q, "in-t1", transaction="t1")
    conn.send(q, "in-t1-b", transaction="t1")
    assert got.none()
    conn.commit("t1", receipt="c1")
    got.wait_receipt("c1")
    assert [f.body for f in got.take(2)] == ["in-t1", "in-t1-b"]
    conn.begin("t2")
    conn.send(q, "aborted", transaction="t2")
    conn.abort("t2", receipt="a2")
    got.wait_receipt("a2")
    assert got.none()
    conn.disconnect()


def test_acks_in_a_transaction(port):
    q = f"/queue/txack{name()}"
    conn, got = connect(port)
    conn.subscribe(q, id="t", ack="client-individual")
    conn.send(q, "one")
    conn.send(q, "two")
    one, two = got.take(2)
    conn.begin("a")
    conn.ack(one.headers["ack"], transaction="a")
    conn.abort("a")  # the ack of "one" is discarded: it can be acknowledged again
    conn.begin("b")
    conn.ack(one.headers["ack"], transaction="b")
    conn.ack(two.headers["ack"], transaction="b")
    conn.commit("b", receipt="done")
    got.wait_receipt("done")
    conn.disconnect()
    conn2, got2 = connect(port)
    conn2.subscribe(q, id="t")
    assert got2.none()
    conn2.disconnect()


def test_transaction_left_open_is_aborted_on_disconnect(port):
    q = f"/queue/txopen{name()}"
    conn, got = connect(port)
    conn.subscribe(q, id="t", ack="client-individual")
    conn.send(q, "held")
    held = got.get()
    conn.begin("open")
    conn.send(q, "never", transaction="open")
    conn.ack(held.headers["ack"], transaction="open")
    conn.disconnect()
    conn2, got2 = connect(port)
    conn2.subscribe(q, id="t")
    assert [f.body for f in got2.take(1)] == ["held"]
    assert got2.none()
    conn2.disconnect()


def test_unknown_transaction_is_an_error(port):
    conn, got = connect(port)
    conn.commit("nope")
    deadline = time.monotonic() + 10
    while not got.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "unknown transaction" in got.errors[0].headers["message"]


def test_topics_fan_out_with_wildcards(port):
    base = f"t{name()}"
    subs = {}
    for pattern in (f"{base}.a", f"{base}.*", f"{base}.#", f"{base}.>"):
        conn, got = connect(port)
        conn.subscribe(f"/topic/{pattern}", id="s", receipt="on")
        got.wait_receipt("on")
        subs[pattern] = (conn, got)
    pub, _ = connect(port)
    pub.send(f"/topic/{base}.a", "one word")
    pub.send(f"/topic/{base}.a.b", "two words")
    pub.send(f"/topic/{base}", "none")
    expect = {
        f"{base}.a": ["one word"],
        f"{base}.*": ["one word"],
        f"{base}.#": ["one word", "two words", "none"],
        f"{base}.>": ["one word", "two words"],
    }
    for pattern, (conn, got) in subs.items():
        frames = got.take(len(expect[pattern]))
        assert sorted(f.body for f in frames) == sorted(expect[pattern]), pattern
        assert frames[0].headers["destination"].startswith(f"/topic/{base}")
        assert got.none(0.2)
        conn.disconnect()
    pub.disconnect()


def test_durable_topic_subscription_activemq_style(port):
    topic = f"/topic/dur{name()}"
    conn, got = connect(port, client_id="cid1")
    sub = {"activemq.subscriptionName": "sub1"}
    conn.subscribe(topic, id="d", headers=sub, receipt="on")
    got.wait_receipt("on")
    disconnect(conn, got)
    pub, _ = connect(port)
    pub.send(topic, "while away", headers={"persistent": "true"})
    pub.disconnect()
    conn, got = connect(port, client_id="cid1")
    conn.subscribe(topic, id="d", headers=sub)
    assert got.get().body == "while away"
    conn.unsubscribe("d", headers=sub, receipt="off")  # removes the durable subscription
    got.wait_receipt("off")
    disconnect(conn, got)
    pub, _ = connect(port)
    pub.send(topic, "after removal")
    pub.disconnect()
    conn, got = connect(port, client_id="cid1")
    conn.subscribe(topic, id="d", headers=sub)
    assert got.none()
    conn.disconnect()


def test_durable_topic_subscription_rabbitmq_style(port):
    topic = f"/topic/rdur{name()}"
    conn, got = connect(port)
    hdr = {"durable": "true", "auto-delete": "false"}
    conn.subscribe(topic, id="keep", headers=hdr, receipt="on")
    got.wait_receipt("on")
    disconnect(conn, got)
    pub, _ = connect(port)
    pub.send(topic, "kept for me")
    pub.disconnect()
    conn, got = connect(port)
    conn.subscribe(topic, id="keep", headers=hdr)
    assert got.get().body == "kept for me"
    conn.disconnect()


def test_exchange_and_amq_queue_destinations(port):
    conn, got = connect(port)
    conn.subscribe("/exchange/amq.fanout", id="f", receipt="on")
    got.wait_receipt("on")
    conn.send("/exchange/amq.fanout/any", "fanned")
    frame = got.get()
    assert frame.body == "fanned"
    assert frame.headers["destination"] == "/exchange/amq.fanout/any"
    q = f"declared{name()}"
    conn.send(f"/queue/{q}", "via queue")  # declares it
    conn.subscribe(f"/amq/queue/{q}", id="aq")
    assert got.get().body == "via queue"
    conn.disconnect()


def test_amq_queue_that_does_not_exist_is_an_error(port):
    conn, got = connect(port)
    conn.subscribe("/amq/queue/nothing-here", id="x")
    deadline = time.monotonic() + 10
    while not got.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "no queue 'nothing-here'" in got.errors[0].headers["message"]


def test_activemq_forms_and_selector(port):
    q = f"plain{name()}"
    conn, got = connect(port)
    conn.subscribe(f"queue://{q}", id="s", headers={"selector": "colour = 'red'"})
    conn.send(q, "blue", headers={"colour": "blue"})  # a bare name is the queue too
    conn.send(f"/queue/{q}", "red", headers={"colour": "red"})
    frame = got.get()
    assert frame.body == "red" and frame.headers["colour"] == "red"
    assert got.none()
    conn.disconnect()


def test_heart_beats_both_ways(port):
    conn, got = connect(port, heartbeats=(200, 200))
    time.sleep(1.5)
    assert got.heartbeats >= 3  # the server's EOLs, every 200 ms
    assert conn.is_connected()  # and ours kept the server's read deadline away
    conn.disconnect()


def test_silent_client_is_closed_after_its_heart_beat(port):
    raw = RawStomp(port)
    raw.send(connect_frame("1.2", heart_beat="100,0"))
    command, headers, _ = raw.frame()
    assert command == "CONNECTED"
    assert headers["heart-beat"] == "200,10000"
    frame = raw.frame(timeout=30)  # 2 x max(100, 10000) ms of silence
    assert frame is not None and frame[0] == "ERROR"
    assert frame[1]["message"] == "heart-beat timeout"
    assert raw.frame() is None


def test_receipts_in_order_with_persistent_sends(port):
    q = f"/queue/rc{name()}"
    conn, got = connect(port)
    for i in range(20):
        headers = {"persistent": "true"} if i % 2 else {}
        conn.send(q, f"m{i}", headers=headers, receipt=f"r{i}")
    got.wait_receipt("r19")
    assert got.receipts == [f"r{i}" for i in range(20)]
    conn.disconnect()


def test_disconnect_receipt_then_close(port):
    raw = RawStomp(port)
    raw.send(connect_frame())
    assert raw.frame()[0] == "CONNECTED"
    raw.send(b"DISCONNECT\nreceipt:bye\n\n\0")
    command, headers, _ = raw.frame()
    assert command == "RECEIPT" and headers["receipt-id"] == "bye"
    assert raw.frame() is None


def test_persistent_messages_survive_a_restart(tmp_path):
    with BrokerProcess(tmp_path / "b", adapters=["stomp"]) as b:
        conn, got = connect(b.port("stomp"))
        for i in range(10):
            conn.send("/queue/kept", f"p{i}", headers={"persistent": "true"}, receipt=f"r{i}")
        conn.send("/queue/kept", "transient", receipt="t")
        got.wait_receipt("t")
        conn.disconnect()
        b.kill9()
        b.start()
        conn, got = connect(b.port("stomp"))
        conn.subscribe("/queue/kept", id="k")
        assert [f.body for f in got.take(10)] == [f"p{i}" for i in range(10)]
        assert got.none()
        conn.disconnect()


def test_any_protocol_port_hands_stomp_clients_over(tmp_path):
    """The plugin's looks_like lets the any-protocol listener recognise a STOMP client, and a
    STOMP client on another adapter's port is told which port it wanted."""
    with BrokerProcess(tmp_path / "b", adapters=["stomp", "any", "amqp"], log_level="info") as b:
        conn, got = connect(b.port("any"))
        conn.subscribe("/queue/via-any", id="a")
        conn.send("/queue/via-any", "through the any port")
        assert got.get().body == "through the any port"
        conn.disconnect()
        raw = RawStomp(b.port("amqp"))
        raw.send(connect_frame())
        raw.closed()
        assert f"it looks like stomp, which listens on {b.port('stomp')}" in b.log_text()


def test_slow_subscriber_leaves_messages_in_the_queue(tmp_path):
    """Back-pressure: a subscriber that does not read fills its socket, the contract pauses its
    consumer, and the rest stays in the queue (an AMQP client counts it) until it reads again;
    then everything arrives, in order."""
    import socket

    import pika

    with BrokerProcess(tmp_path / "b", adapters=["stomp", "amqp"]) as b:
        raw = RawStomp.__new__(RawStomp)
        raw.sock = socket.socket()
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.sock.connect(("127.0.0.1", b.port("stomp")))
        raw.buf = b""
        raw.send(connect_frame())
        assert raw.frame()[0] == "CONNECTED"
        raw.send(b"SUBSCRIBE\nid:s\ndestination:/queue/bp\nack:auto\nreceipt:on\n\n\0")
        assert raw.frame()[0] == "RECEIPT"
        pub, got = connect(b.port("stomp"))
        n, size = 1500, 16 * 1024
        for i in range(n):
            pub.send("/queue/bp", str(i).encode().ljust(size, b"."))
        pub.send("/queue/bp-done", "x", receipt="sent")
        got.wait_receipt("sent", timeout=60)
        amqp = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port("amqp")))
        waiting = amqp.channel().queue_declare("bp", passive=True).method.message_count
        amqp.close()
        assert waiting > n // 2, f"only {waiting} of {n} messages stayed in the queue"
        bodies = [raw.frame(timeout=30)[2] for _ in range(n)]
        assert [int(body.rstrip(b".")) for body in bodies] == list(range(n))
        pub.disconnect()
        raw.close()


def test_temp_queue_replies_from_amqp_and_stomp(tmp_path):
    """RabbitMQ's temporary reply queues: a reply-to of /temp-queue/r is this connection's own
    queue, subscribed at once; an AMQP responder and a STOMP responder both reach it."""
    import pika

    with BrokerProcess(tmp_path / "b", adapters=["stomp", "amqp"]) as b:
        requester, got = connect(b.port("stomp"))
        requester.send("/queue/rpc", "ask amqp", headers={"reply-to": "/temp-queue/r"})
        requester.send("/queue/rpc", "ask stomp", headers={"reply-to": "/temp-queue/r"})
        amqp = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port("amqp")))
        ch = amqp.channel()
        method, props, body = ch.basic_get("rpc", auto_ack=True)
        assert body == b"ask amqp" and props.reply_to.startswith("stomp-temp.")
        ch.basic_publish("", props.reply_to, b"amqp answers")
        responder, rgot = connect(b.port("stomp"))
        responder.subscribe("/queue/rpc", id="rpc")
        request = rgot.get()
        assert request.headers["reply-to"] == "/queue/" + props.reply_to
        responder.send(request.headers["reply-to"], "stomp answers")
        answers = got.take(2)
        assert sorted(a.body for a in answers) == ["amqp answers", "stomp answers"]
        assert {a.headers["subscription"] for a in answers} == {"/temp-queue/r"}
        disconnect(requester, got)
        # the temporary queue went with its connection
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.queue_declare(props.reply_to, passive=True)
        amqp.close()
        responder.disconnect()


@pytest.mark.parametrize(
    "flags",
    [
        ["--preset", "smoke"],
        ["--preset", "queue", "--count", "300"],
        ["--preset", "persistent", "--count", "300"],
        ["--preset", "throughput", "--count", "2000"],
    ],
    ids=["fanout-at-least-once", "queue", "persistent", "at-most-once"],
)
def test_compare_driver(broker, tmp_path, flags):
    """`polymq compare`'s STOMP driver against polymq: every message once, in order, with the
    guarantee's receipts and acknowledgements."""
    import json
    import subprocess
    import sys

    out = tmp_path / "r.json"
    url = f"stomp@polymq=stomp://127.0.0.1:{broker.port('stomp')}"
    res = subprocess.run(
        [sys.executable, "-m", "polymq.core", "compare", *flags, "--url", url]
        + ["--json", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (result,) = json.loads(out.read_text())["results"]
    c = result["counts"]
    assert result["ok"], result["failures"]
    assert c["sent"] == c["confirmed"] and c["unique"] == c["expected"] > 0
    assert c["lost"] == c["duplicates"] == c["out_of_order"] == 0
