"""The delivery ledger of core/settlement.py on a real core queue: settle one, up to a tag, a
range; nack / dead-letter; transactions with both rollback rules; broker-side redelivery on the
scheduler's clock. A hypothesis state machine checks random sequences against a plain model.

The same rules through real clients: tests/test_amqp_pika.py (tx.rollback leaves messages
unacknowledged, requeued redelivered on close), tests/test_openwire_jms.py (JMS rollback
redelivers with JMSRedelivered), tests/test_stomp.py (ABORT leaves them unacknowledged).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet.task import Clock

from polymq.core.broker import Broker
from polymq.core.message import Message
from polymq.core.queue import Consumer
from polymq.core.redelivery import RedeliveryPolicy
from polymq.core.settlement import (
    REDELIVER,
    REDELIVERIES,
    RESTORE,
    DeliveryLedger,
    redeliver_later,
)
from polymq.core.tx import Transaction

DLX_ARGS = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}


def make_vhost():
    clock = Clock()
    clock.rightNow = 1_700_000_000.0
    return clock, Broker(clock=clock).vhost()


def fill(vh, name: str, n: int, ledger: DeliveryLedger, tags=None) -> list:
    """Publish ``n`` messages to ``name`` and take them (unacknowledged) into ``ledger``."""
    q = vh.queues.get(name) or vh.declare_queue(name, arguments=DLX_ARGS)
    for i in range(n):
        vh.publish("", name, Message(b"%d" % i))
    tags = list(tags) if tags is not None else list(range(1, n + 1))
    for tag in tags:
        ledger.add(tag, q.get(no_ack=False))
    return tags


@pytest.fixture
def vh():
    vh = make_vhost()[1]
    vh.declare_queue("dead")
    return vh


def test_ack_one_is_a_pop_and_a_queue_ack(vh):
    ledger = DeliveryLedger()
    fill(vh, "q", 3, ledger)
    q = vh.queues["q"]
    assert ledger.ack_one(2).message.body == b"1"
    assert ledger.ack_one(2) is None  # settled already: the adapter raises its error
    assert list(ledger.unsettled) == [1, 3] and len(q.unacked) == 2


def test_ack_oldest_only_settles_the_oldest(vh):
    ledger = DeliveryLedger()
    fill(vh, "q", 3, ledger)
    assert ledger.ack_oldest(2) is None and len(ledger) == 3
    assert ledger.ack_oldest(1).message.body == b"0"
    tx = Transaction(vh)
    ledger.settle_in(tx, [3])
    assert ledger.ack_oldest(2) is None  # something is held: the general path decides
    tx.rollback()
    assert ledger.ack_oldest(2) is not None and list(ledger.unsettled) == [3]


def test_take_consumer_removes_only_that_consumers_unheld_deliveries(vh):
    ledger = DeliveryLedger()
    q = vh.declare_queue("shared")
    tag = iter(range(1, 100))
    a = Consumer("a", lambda d: ledger.add(next(tag), d), prefetch=2)
    b = Consumer("b", lambda d: ledger.add(next(tag), d), prefetch=2)
    q.add_consumer(a)
    q.add_consumer(b)
    for i in range(4):
        vh.publish("", "shared", Message(b"%d" % i))
    mine = [t for t, d in ledger.unsettled.items() if d.consumer is a]
    assert len(mine) == 2
    tx = Transaction(vh)
    ledger.settle_in(tx, mine[:1])
    taken = ledger.take_consumer(a)
    assert [t for t, _ in taken] == mine[1:]  # the held one stays with the transaction...
    held = ledger.unsettled[mine[0]]
    assert held.consumer is None and held.seq not in a.unacked  # ...not requeued with a
    q.remove_consumer(a, requeue=True)
    assert q.message_count == 1  # the one taken, requeued; not the held one
    tx.commit()
    assert held.seq not in q.unacked and mine[0] not in ledger
    assert all(d.consumer is b for d in ledger.unsettled.values())
    assert len(ledger) == 2


def test_up_to_and_range_with_string_tags_in_dispatch_order(vh):
    ledger = DeliveryLedger()  # STOMP-like ids: ordered by dispatch, not by value
    tags = fill(vh, "q", 5, ledger, tags=["9", "10", "x", "2", "b"])
    assert ledger.take_up_to("nope") == []
    assert [t for t, _ in ledger.take_up_to("x")] == ["9", "10", "x"]
    assert ledger.tags_range("2", "b") == ["2", "b"]
    assert ledger.tags_range("gone", "2") == ["2"]  # from the oldest
    assert ledger.tags_range("2", "gone") == []
    assert [t for t, _ in ledger.take_range("b", "b")] == ["b"]
    assert list(ledger.unsettled) == [tags[3]]


def test_ordered_up_to_an_absent_tag_takes_those_below(vh):
    ledger = DeliveryLedger(ordered=True)
    fill(vh, "q", 4, ledger, tags=[1, 2, 5, 6])
    assert [t for t, _ in ledger.take_up_to(4)] == [1, 2]
    assert DeliveryLedger().take_up_to(4) == []


def test_nack_without_requeue_dead_letters_and_with_requeue_goes_back_in_order(vh):
    ledger = DeliveryLedger()
    fill(vh, "q", 4, ledger)
    q = vh.queues["q"]
    ledger.nack([(1, ledger.take(1))], requeue=False)
    assert vh.queues["dead"].message_count == 1
    ledger.nack(ledger.take_up_to(3), requeue=True)
    assert q.message_count == 2
    again = [q.get(no_ack=True) for _ in range(2)]
    assert [d.message.body for d in again] == [b"1", b"2"]
    assert all(d.delivery_count == 1 for d in again)


def test_requeue_all_groups_by_queue_and_keeps_held(vh):
    ledger = DeliveryLedger()
    fill(vh, "a", 2, ledger, tags=[1, 2])
    fill(vh, "b", 2, ledger, tags=[3, 4])
    tx = Transaction(vh)
    ledger.settle_in(tx, [2])
    ledger.requeue_all()
    assert list(ledger.unsettled) == [2] and ledger.held == {2}
    assert vh.queues["a"].message_count == 1 and vh.queues["b"].message_count == 2
    tx.commit()
    assert not ledger.unsettled and not ledger.held and not vh.queues["a"].unacked


def test_rollback_restore_keeps_tags_in_dispatch_order(vh):
    ledger = DeliveryLedger(RESTORE)
    fill(vh, "q", 4, ledger)
    tx = Transaction(vh)
    assert [t for t, _ in ledger.settle_in(tx, [3, 1, 3])] == [3, 1]
    assert ledger.take(1) is None and ledger.ack_one(3) is None  # held: not settled twice
    assert ledger.tags_up_to(4) == [2, 4]
    returned = tx.rollback()
    assert [d.message.body for d in returned] == [b"2", b"0"]
    assert list(ledger.unsettled) == [1, 2, 3, 4] and not ledger.held
    assert vh.queues["q"].message_count == 0


def test_rollback_redeliver_requeues_with_the_count_bumped(vh):
    ledger = DeliveryLedger(REDELIVER)
    fill(vh, "q", 3, ledger)
    tx = Transaction(vh)
    ledger.settle_in(tx, [1, 3], ack=False, requeue=False)
    tx.rollback()
    q = vh.queues["q"]
    assert list(ledger.unsettled) == [2] and q.message_count == 2
    back = [q.get(no_ack=True) for _ in range(2)]
    assert [d.message.body for d in back] == [b"0", b"2"]
    assert [d.delivery_count for d in back] == [1, 1]
    assert vh.queues["dead"].message_count == 0  # the rolled-back nack did not apply


def test_close_leaves_held_deliveries_to_the_transaction(vh):
    q = vh.declare_queue("q")
    ledger = DeliveryLedger(RESTORE)
    tag = iter(range(1, 100))
    consumer = Consumer("c", lambda d: ledger.add(next(tag), d), prefetch=10)
    q.add_consumer(consumer)
    for i in range(4):
        vh.publish("", "q", Message(b"%d" % i))
    commit_tx, rollback_tx = Transaction(vh), Transaction(vh)
    ledger.settle_in(commit_tx, [1])
    ledger.settle_in(rollback_tx, [2])
    ledger.close()
    q.remove_consumer(consumer, requeue=True)  # 3 and 4 go back with the consumer
    assert q.message_count == 2 and len(q.unacked) == 2
    commit_tx.commit()
    rollback_tx.rollback()  # the subscription is gone: requeued, whatever the rule
    assert not q.unacked and q.message_count == 3
    assert sorted(q.get(no_ack=True).message.body for _ in range(3)) == [b"1", b"2", b"3"]


def test_redeliver_later_uses_the_scheduler_clock_then_gives_up():
    clock, vh = make_vhost()
    q = vh.declare_queue("q")
    policy = RedeliveryPolicy(maximum=2, initial_delay_ms=500, delay_ms=500)
    vh.publish("", "q", Message(b"poison"))
    rounds = 0
    while True:
        d = q.get(no_ack=False)
        if not redeliver_later(d, policy):
            break
        rounds += 1
        assert q.message_count == 0 and not q.unacked  # settled; the copy waits
        clock.advance(0.4)
        assert q.message_count == 0
        clock.advance(0.2)
        assert q.message_count == 1
    assert rounds == 2 and d.message.annotations[REDELIVERIES] == 2
    assert not redeliver_later(d, RedeliveryPolicy())  # off: the caller dead-letters


class LedgerMachine(RuleBasedStateMachine):
    """Random settlement against a model: the ordered tags unsettled, those held by the open
    transaction, and where every message is (ready, acknowledged, dead-lettered)."""

    rule_name = RESTORE

    def __init__(self) -> None:
        super().__init__()
        self.vh = make_vhost()[1]
        self.vh.declare_queue("dead")
        self.q = self.vh.declare_queue("q", arguments=DLX_ARGS)
        self.ledger = DeliveryLedger(self.rule_name, ordered=True)
        self.tx = Transaction(self.vh)
        self.next_tag = 0
        self.model: list[int] = []
        self.held: set[int] = set()
        self.tx_nacks: set[int] = set()  # held tags settled by a nack without requeue
        self.ready = 0
        self.acked = 0
        self.dead = 0

    def _pick(self, data, absent: bool = True) -> int:
        choices = list(self.model)
        if absent or not choices:
            choices.append(self.next_tag + 5)
        return data.draw(st.sampled_from(choices))

    def _free(self, tags) -> list[int]:
        return [t for t in tags if t not in self.held]

    @rule(n=st.integers(1, 3))
    def publish(self, n: int) -> None:
        for _ in range(n):
            self.vh.publish("", "q", Message(b"m"))
        self.ready += n

    @rule(n=st.integers(1, 4))
    def deliver(self, n: int) -> None:
        if self.ready < n:  # (publish what is missing first)
            self.publish(n - self.ready)
        for _ in range(n):
            self.next_tag += 1
            self.ledger.add(self.next_tag, self.q.get(no_ack=False))
            self.model.append(self.next_tag)
        self.ready -= n

    @rule(data=st.data())
    def ack_one(self, data) -> None:
        tag = self._pick(data)
        done = self.ledger.ack_one(tag) is not None
        assert done == (tag in self.model and tag not in self.held)
        if done:
            self.model.remove(tag)
            self.acked += 1

    @rule(data=st.data(), requeue=st.booleans())
    def settle_up_to(self, data, requeue: bool) -> None:
        tag = self._pick(data)
        expected = self._free(t for t in self.model if t <= tag)
        taken = self.ledger.take_up_to(tag)
        assert [t for t, _ in taken] == expected
        if data.draw(st.booleans()):
            self.ledger.ack(taken)
            self.acked += len(taken)
        else:
            self.ledger.nack(taken, requeue)
            if requeue:
                self.ready += len(taken)
            else:
                self.dead += len(taken)
        self.model = [t for t in self.model if t not in expected]

    @rule(data=st.data())
    def settle_range(self, data) -> None:
        first, last = self._pick(data), self._pick(data)
        if last not in self.model:
            expected = []
        elif first not in self.model:
            expected = self._free(t for t in self.model if t <= last)
        else:
            expected = self._free(t for t in self.model if first <= t <= last)
        taken = self.ledger.take_range(first, last)
        assert [t for t, _ in taken] == expected
        self.ledger.ack(taken)
        self.acked += len(taken)
        self.model = [t for t in self.model if t not in expected]

    @rule(data=st.data(), ack=st.booleans())
    def settle_in_tx(self, data, ack: bool) -> None:
        tags = data.draw(st.lists(st.sampled_from([*self.model, -1]), max_size=4))
        expected = []
        for t in tags:
            if t in self.model and t not in self.held and t not in expected:
                expected.append(t)
        held = self.ledger.settle_in(self.tx, tags, ack, requeue=False)
        assert [t for t, _ in held] == expected
        self.held.update(expected)
        if not ack:
            self.tx_nacks.update(expected)

    @rule()
    def commit(self) -> None:
        self.tx.commit()
        self.dead += len(self.tx_nacks)
        self.acked += len(self.held) - len(self.tx_nacks)
        self.model = [t for t in self.model if t not in self.held]
        self.held.clear()
        self.tx_nacks.clear()

    @rule()
    def rollback(self) -> None:
        self.tx.rollback()
        if self.rule_name == REDELIVER:
            self.ready += len(self.held)
            self.model = [t for t in self.model if t not in self.held]
        self.held.clear()
        self.tx_nacks.clear()

    @rule()
    def requeue_all(self) -> None:
        self.ledger.requeue_all()
        self.ready += len(self._free(self.model))
        self.model = [t for t in self.model if t in self.held]

    @invariant()
    def ledger_matches_the_model(self) -> None:
        assert list(self.ledger.unsettled) == self.model
        assert self.ledger.held == self.held
        assert len(self.q.unacked) == len(self.model)
        assert self.q.message_count == self.ready
        assert self.vh.queues["dead"].message_count == self.dead


class RedeliverLedgerMachine(LedgerMachine):
    rule_name = REDELIVER


_machine_settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
TestLedgerRestore = LedgerMachine.TestCase
TestLedgerRestore.settings = _machine_settings
TestLedgerRedeliver = RedeliverLedgerMachine.TestCase
TestLedgerRedeliver.settings = _machine_settings
