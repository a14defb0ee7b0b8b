"""Queue dispatch over OpenWire with the real ActiveMQ 5.17 JMS client (JmsDispatch.java in
tests/java): XA two-phase commit (also across a kill -9), exclusive consumers with a standby,
durable unsubscribe, JMSPriority, message groups, virtual topics and wildcard queue consumers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))

import jmsrun  # noqa: E402
from brokerproc import BrokerProcess  # noqa: E402
from conftest import module_broker  # noqa: E402

pytestmark = pytest.mark.skipif(jmsrun.missing() is not None, reason=str(jmsrun.missing()))


@pytest.fixture(scope="module")
def classes():
    return jmsrun.classes_once(["JmsDispatch.java"])


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory, "ow-dispatch", ["openwire"], store="sqlite") as b:
        yield b


def run(classes, b, *scenarios):
    return jmsrun.run_java(
        classes, "JmsDispatch", f"tcp://{b.host}:{b.port('openwire')}", *scenarios
    )


def test_xa_two_phase_commit_recover_and_rollback(classes, broker):
    r = run(classes, broker, "xa")
    r.check(
        "xa.prepare.ok",
        "xa.invisible.while.prepared",
        "xa.two.phase.commit",
        "xa.one.phase.commit",
        "xa.rollback.drops.send",
        "xa.consume.in.branch",
        "xa.prepare.consume",
        "xa.recover.lists.prepared",
        "xa.recover.not.finished",
        "xa.rollback.returns.consumed",
        "xa.consume2.in.branch",
        "xa.commit.consumes",
        "xa.unknown.commit.refused",
    )


def test_xa_prepared_branches_survive_kill9(classes, tmp_path):
    b = BrokerProcess(tmp_path / "b", adapters=["openwire"], store="sqlite")
    b.start()
    try:
        r = run(classes, b, "xa_prepare")
        r.check(
            "xa.restart.prepared.a",
            "xa.restart.prepared.b",
            "xa.restart.consumed",
            "xa.restart.out.empty",
            "xa.restart.in.held",
        )
        b.kill9()  # prepare was answered only once the branch was on disk
        b.start()
        r = run(classes, b, "xa_finish")
        r.check(
            "xa.restart.recovered",
            "xa.restart.recover.empty",
            "xa.restart.committed.send",
            "xa.restart.rolled.back.consume",
        )
    finally:
        b.stop()
        b.kill9()


def test_exclusive_consumer_standby_takes_over(classes, broker):
    r = run(classes, broker, "exclusive")
    r.check(
        "exclusive.first.gets.all",
        "exclusive.second.waits",
        "exclusive.plain.waits",
        "exclusive.standby.takes.over",
        "exclusive.plain.still.waits",
        "exclusive.plain.after",
    )


def test_consumer_priority_option(classes, broker):
    r = run(classes, broker, "consumer_priority")
    r.check("consumer.priority.high.first", "consumer.priority.low.when.high.full")


def test_durable_unsubscribe_of_a_missing_subscription_fails(classes, broker):
    r = run(classes, broker, "unsubscribe")
    r.check("unsubscribe.missing", "unsubscribe.existing", "unsubscribe.twice")


def test_jms_priority_orders_a_backlog(classes, broker):
    r = run(classes, broker, "priority")
    r.check("priority.order", "priority.default.fifo")


def test_message_groups_stick_and_move_when_the_owner_leaves(classes, broker):
    r = run(classes, broker, "groups")
    r.check("groups.sticky.g1", "groups.sticky.g2", "groups.reassigned")


def test_virtual_topics(classes, broker):
    r = run(classes, broker, "virtualtopic")
    r.check(
        "virtualtopic.each.consumer.queue",
        "virtualtopic.queue.shared",
        "virtualtopic.load.balanced",
        "virtualtopic.kept",
    )


def test_wildcard_queue_consumer(classes, broker):
    r = run(classes, broker, "wildcardqueue")
    r.check(
        "wildcardqueue.existing",
        "wildcardqueue.new.queue",
        "wildcardqueue.not.other",
        "wildcardqueue.star.one.level",
        "wildcardqueue.other.kept",
    )


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    adapters = ["openwire", "amqp", "mqtt"]
    with module_broker(tmp_path_factory, "ow-dispatch-multi", adapters, store="sqlite") as b:
        yield b


def test_virtual_topic_gets_amqp_and_mqtt_publishes(classes, multi):
    pika = pytest.importorskip("pika")
    mqtt = pytest.importorskip("paho.mqtt.client")
    run(classes, multi, "vt_cross_setup").check("vt.cross.queue")
    conn = pika.BlockingConnection(pika.ConnectionParameters(multi.host, multi.port("amqp")))
    ch = conn.channel()
    ch.basic_publish("amq.topic", "VirtualTopic.cross", b"from amqp")
    conn.close()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vt-cross")
    client.connect(multi.host, multi.port("mqtt"))
    client.loop_start()
    info = client.publish("VirtualTopic/cross", b"from mqtt", qos=1)
    info.wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    run(classes, multi, "vt_cross_read").check("vt.cross.received")


def test_pika_direct_reply_to_answered_by_a_jms_responder(classes, multi):
    pika = pytest.importorskip("pika")
    url = f"tcp://{multi.host}:{multi.port('openwire')}"
    responder = subprocess.Popen(
        jmsrun.java_cmd(classes, "JmsDispatch", url, "rpc_responder"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert responder.stdout.readline().strip() == "READY"
        conn = pika.BlockingConnection(pika.ConnectionParameters(multi.host, multi.port("amqp")))
        ch = conn.channel()
        replies = []
        ch.basic_consume(
            "amq.rabbitmq.reply-to",
            lambda c, m, p, body: replies.append((p.correlation_id, body)),
            auto_ack=True,
        )
        ch.basic_publish(
            "",
            "rpc.jms",
            b"ping",
            pika.BasicProperties(
                reply_to="amq.rabbitmq.reply-to", correlation_id="c-1", content_type="text/plain"
            ),
        )
        deadline = time.monotonic() + 20
        while not replies and time.monotonic() < deadline:
            conn.process_data_events(0.1)
        conn.close()
        out, err = responder.communicate(timeout=30)
    finally:
        if responder.poll() is None:
            responder.kill()
    assert "OK rpc.replied" in out, out + err[-2000:]
    assert replies == [("c-1", b"PING")]


def test_jms_consumer_refused_on_a_queue_with_an_amqp_exclusive_consumer(classes, multi):
    pika = pytest.importorskip("pika")
    conn = pika.BlockingConnection(pika.ConnectionParameters(multi.host, multi.port("amqp")))
    ch = conn.channel()
    ch.queue_declare("mixed.excl")
    ch.basic_consume("mixed.excl", lambda *a: None, exclusive=True)
    try:
        run(classes, multi, "excl_refused").check("excl.refused", "excl.connection.fine")
    finally:
        conn.close()


def test_wildcard_queue_consumer_gets_a_queue_amqp_declares_later(classes, multi):
    pika = pytest.importorskip("pika")
    url = f"tcp://{multi.host}:{multi.port('openwire')}"
    listener = subprocess.Popen(
        jmsrun.java_cmd(classes, "JmsDispatch", url, "wildcard_listen"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout.readline().strip() == "READY"
        conn = pika.BlockingConnection(pika.ConnectionParameters(multi.host, multi.port("amqp")))
        ch = conn.channel()
        ch.queue_declare("wqm.amqp")
        ch.basic_publish(
            "", "wqm.amqp", b"from amqp", pika.BasicProperties(content_type="text/plain")
        )
        conn.close()
        out, err = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert "OK wildcard.amqp.queue" in out, out + err[-2000:]


def test_receive_no_wait_waits_for_a_head_read_back_from_the_store(classes, tmp_path):
    # one ready message in memory per queue: every next one is read back from the store
    b = BrokerProcess(
        tmp_path / "b",
        adapters=["openwire"],
        store="sqlite",
        settings={"store.queue_max_in_memory_length": 1},
    )
    b.start()
    try:
        run(classes, b, "pull_paged").check("pull.paged.all")
    finally:
        b.stop()
        b.kill9()
