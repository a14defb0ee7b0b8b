"""Consumer selection in core (core/dispatch.py): one active consumer, standby exclusive
consumers, consumer priorities, message groups, priority levels on demand, prepared branches."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from polymq.core.broker import Broker
from polymq.core.errors import ResourceLocked
from polymq.core.message import Message
from polymq.core.queue import Consumer
from polymq.core.tx import Transaction
from polymq.core.xa import NAMESPACE, PreparedBranches


@pytest.fixture
def broker():
    return Broker(clock=Clock())


@pytest.fixture
def vh(broker):
    return broker.vhost()


def bodies(deliveries):
    return [d.message.body for d in deliveries]


def consumer(name, got, **kw):
    return Consumer(name, got.append, **kw)


def test_single_active_consumer_hands_over_in_arrival_order(vh):
    q = vh.declare_queue("sac", arguments={"x-single-active-consumer": True})
    a, b, c = [], [], []
    ca, cb, cc = consumer("a", a), consumer("b", b), consumer("c", c)
    for x in (ca, cb, cc):
        q.add_consumer(x)
    assert q.consumer_count == 3 and q.consumers == [ca]
    vh.publish("", "sac", Message(b"1"))
    assert bodies(a) == [b"1"] and not b and not c
    q.remove_consumer(ca)  # its unacknowledged message goes to the next one, first
    assert q.consumers == [cb]
    vh.publish("", "sac", Message(b"2"))
    assert bodies(b) == [b"1", b"2"] and not c
    q.remove_consumer(cc)  # a waiting one leaving changes nothing
    q.remove_consumer(cb)
    assert q.consumers == [] and q.consumer_count == 0


def test_standby_exclusive_consumer_takes_over_and_plain_ones_come_back(vh):
    q = vh.declare_queue("ex")
    plain, first, second = [], [], []
    cp = consumer("plain", plain)
    q.add_consumer(cp)
    c1 = consumer("first", first, standby=True)
    c2 = consumer("second", second, standby=True)
    q.add_consumer(c1)
    q.add_consumer(c2)
    assert q.consumers == [c1] and q.standby == [cp, c2]
    vh.publish("", "ex", Message(b"1"))
    assert bodies(first) == [b"1"] and not plain and not second
    q.remove_consumer(c1)
    assert q.consumers == [c2]  # the next exclusive one, ahead of the plain one
    assert bodies(second) == [b"1"]
    q.remove_consumer(c2)
    assert q.consumers == [cp] and not q.standby
    # a refusing exclusive consumer (AMQP) still refuses
    with pytest.raises(ResourceLocked):
        q.add_consumer(consumer("amqp", [], exclusive=True))


def test_consumer_priorities_with_round_robin_among_equals(vh):
    q = vh.declare_queue("prio")
    lo, hi1, hi2 = [], [], []
    c_lo = consumer("lo", lo, prefetch=10)
    c_hi1 = consumer("hi1", hi1, prefetch=2, priority=5)
    c_hi2 = consumer("hi2", hi2, prefetch=2, priority=5)
    for x in (c_lo, c_hi1, c_hi2):
        q.add_consumer(x)
    for i in range(6):
        vh.publish("", "prio", Message(str(i).encode()))
    assert bodies(hi1) == [b"0", b"2"] and bodies(hi2) == [b"1", b"3"]
    assert bodies(lo) == [b"4", b"5"]
    q.ack(hi1[0])
    vh.publish("", "prio", Message(b"6"))
    assert bodies(hi1)[-1] == b"6"
    q.remove_consumer(c_hi1)
    q.remove_consumer(c_hi2)
    assert not q.prioritized


def test_message_groups_stick_close_and_move(vh):
    q = vh.declare_queue("g")
    a, b = [], []
    ca, cb = consumer("a", a), consumer("b", b)
    q.add_consumer(ca)
    q.add_consumer(cb)

    def send(body, group, seq=0):
        ann = {"openwire.group_id": group, "openwire.group_seq": seq}
        vh.publish("", "g", Message(body, annotations=ann))

    send(b"x1", "X")
    send(b"y1", "Y")
    send(b"x2", "X")
    send(b"y2", "Y")
    assert bodies(a) == [b"x1", b"x2"] and bodies(b) == [b"y1", b"y2"]
    send(b"x3", "X", -1)  # closes group X after this message
    assert bodies(a)[-1] == b"x3" and "X" not in q.groups
    q.remove_consumer(cb)  # Y's owner leaves: its unacknowledged messages go to a, with Y
    assert bodies(a)[-2:] == [b"y1", b"y2"]
    assert q.groups["Y"] is ca


def test_priority_levels_only_once_a_non_default_priority_comes(vh):
    q = vh.declare_queue("jms", arguments={"x-priority-on-demand": 9})
    for i in range(3):
        vh.publish("", "jms", Message(f"d{i}".encode(), priority=4))
    assert q.max_priority is None and len(q._levels) == 1
    vh.publish("", "jms", Message(b"low", priority=1))
    vh.publish("", "jms", Message(b"high", priority=9))
    assert q.max_priority == 9
    vh.publish("", "jms", Message(b"unset"))  # no priority (AMQP, MQTT): JMS's default, 4
    got = [q.get(no_ack=True).message.body for _ in range(6)]
    assert got == [b"high", b"d0", b"d1", b"d2", b"unset", b"low"]


def test_prepared_branch_is_recorded_and_survives_as_a_record(broker, vh):
    q = vh.declare_queue("xa", durable=True)
    vh.publish("", "xa", Message(b"consumed", durable=True))
    d = q.get()
    tx = Transaction(vh)
    tx.publish("", "xa", Message(b"sent", durable=True))
    tx.ack(d)
    prepared = PreparedBranches(broker)
    done = []
    prepared.prepare("k1", [1, b"g", b"b"], tx, [], lambda: done.append(True))
    assert broker.kv_get_obj(NAMESPACE, "k1")["consumed"][0][:2] == ["xa", d.seq]
    # a broker reading the records again (as after a restart) finds the branch
    again = PreparedBranches(broker)
    assert again.xids("/") == [[1, b"g", b"b"]]
    b = again.take("k1")
    again.rollback(b)  # restored: the consumed message goes back to its queue
    assert not broker.kv(NAMESPACE)
    assert [x.message.body for x in q.browse(10)] == [b"consumed"]
