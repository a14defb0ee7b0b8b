"""Queue dispatch over OpenWire with the real ActiveMQ 5.17 JMS client (JmsDispatch.java in
tests/java): XA two-phase commit (also across a kill -9), exclusive consumers with a standby,
durable unsubscribe, JMSPriority, message groups, virtual topics and wildcard queue consumers."""

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
