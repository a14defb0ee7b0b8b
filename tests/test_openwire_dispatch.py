"""Queue dispatch over OpenWire with the real ActiveMQ 5.17 JMS client (tests/java/JmsDispatch.java):
XA refused, exclusive consumers with a standby, durable unsubscribe, JMSPriority, message groups,
virtual topics and wildcard queue consumers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))

import jmsrun  # noqa: E402
from brokerproc import BrokerProcess  # noqa: E402

pytestmark = pytest.mark.skipif(jmsrun.missing() is not None, reason=str(jmsrun.missing()))


@pytest.fixture(scope="module")
def classes():
    return jmsrun.classes_once(["JmsDispatch.java"])


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("ow-dispatch"), adapters=["openwire"], store="sqlite")
    b.start()
    yield b
    b.stop()
    b.kill9()


def run(classes, b, *scenarios):
    return jmsrun.run_java(
        classes, "JmsDispatch", f"tcp://{b.host}:{b.port('openwire')}", *scenarios
    )


def test_xa_is_refused_never_answered_read_only(classes, broker):
    r = run(classes, broker, "xa")
    r.check(
        "xa.branch.refused",
        "xa.prepare.refused",
        "xa.recover.refused",
        "xa.commit.refused",
        "xa.nothing.delivered",
        "xa.broker.still.serves",
    )


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
