"""Queue semantics: credit, round-robin, ack/nack, redelivery, DLX, TTL, priority, max-length."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from polymq.core.broker import Broker
from polymq.core.errors import AccessRefused, PreconditionFailed, ResourceLocked
from polymq.core.message import Message
from polymq.core.queue import Consumer, Limit
from polymq.core.tx import Transaction


class Clocked(Clock):
    """A test clock that starts at a realistic epoch so TTL arithmetic looks like real life."""

    def __init__(self) -> None:
        super().__init__()
        self.rightNow = 1_700_000_000.0


@pytest.fixture
def clock():
    return Clocked()


@pytest.fixture
def vh(clock):
    return Broker(clock=clock).vhost()


def bodies(deliveries):
    return [d.message.body for d in deliveries]


def publish_n(vh, queue, n, **kw):
    for i in range(n):
        vh.publish("", queue, Message(str(i).encode(), **kw))


def test_fifo_and_get(vh):
    q = vh.declare_queue("q")
    publish_n(vh, "q", 3)
    assert q.message_count == 3
    assert [q.get(no_ack=True).message.body for _ in range(3)] == [b"0", b"1", b"2"]
    assert q.get() is None


def test_prefetch_limits_unacked(vh):
    q = vh.declare_queue("q")
    got = []
    c = Consumer("c", got.append, prefetch=2)
    q.add_consumer(c)
    publish_n(vh, "q", 5)
    assert bodies(got) == [b"0", b"1"]
    assert q.message_count == 3
    q.ack(got[0])
    assert bodies(got) == [b"0", b"1", b"2"]
    q.ack(got[1])
    q.ack(got[2])
    assert bodies(got) == [b"0", b"1", b"2", b"3", b"4"]


def test_ack_refills_a_full_window_past_expired_messages(vh, clock):
    """An ack that frees a place in a full window hands the next live message on; one that
    expired meanwhile goes to the dead-letter queue instead."""
    dlq = vh.declare_queue("dlq")
    q = vh.declare_queue("q", arguments={"x-dead-letter-exchange": ""})
    q.dead_letter_routing_key = "dlq"
    got = []
    q.add_consumer(Consumer("c", got.append, prefetch=1))
    now = vh.now()
    vh.publish("", "q", Message(b"0"))
    vh.publish("", "q", Message(b"short", expiration=now + 10))
    vh.publish("", "q", Message(b"2"))
    clock.advance(0.02)
    q.ack(got[0])
    assert bodies(got) == [b"0", b"2"]
    assert dlq.message_count == 1 and q.message_count == 0


def test_ack_of_a_paused_consumer_waits_for_its_resume(vh):
    q = vh.declare_queue("q")
    got = []
    c = Consumer("c", got.append, prefetch=1)
    q.add_consumer(c)
    publish_n(vh, "q", 3)
    c.pause()
    q.ack(got[0])
    assert bodies(got) == [b"0"] and q.message_count == 2
    c.resume()
    assert bodies(got) == [b"0", b"1"]
    q.ack(got[1])
    assert bodies(got) == [b"0", b"1", b"2"]


def test_round_robin_across_consumers(vh):
    q = vh.declare_queue("q")
    a, b = [], []
    q.add_consumer(Consumer("a", a.append))
    q.add_consumer(Consumer("b", b.append))
    publish_n(vh, "q", 6)
    assert bodies(a) == [b"0", b"2", b"4"]
    assert bodies(b) == [b"1", b"3", b"5"]


def test_fair_dispatch_with_prefetch_one(vh):
    q = vh.declare_queue("q")
    slow, fast = [], []
    q.add_consumer(Consumer("slow", slow.append, prefetch=1))
    fc = Consumer("fast", fast.append, prefetch=1)
    q.add_consumer(fc)
    publish_n(vh, "q", 6)
    # the fast consumer acks at once, the slow one never does
    while len(fast) + len(slow) < 6:
        q.ack(fast[-1])
    assert len(slow) == 1 and len(fast) == 5


def test_shared_limit_is_global_prefetch(vh):
    q1 = vh.declare_queue("q1")
    q2 = vh.declare_queue("q2")
    shared = Limit(2)
    got = []
    q1.add_consumer(Consumer("a", got.append, limit=shared))
    q2.add_consumer(Consumer("b", got.append, limit=shared))
    publish_n(vh, "q1", 3)
    publish_n(vh, "q2", 3)
    assert len(got) == 2
    q1.ack(got[0])
    assert len(got) == 3


def test_no_ack_consumer_ignores_prefetch(vh):
    q = vh.declare_queue("q")
    got = []
    q.add_consumer(Consumer("c", got.append, prefetch=1, no_ack=True))
    publish_n(vh, "q", 4)
    assert len(got) == 4 and not q.unacked


def test_link_credit(vh):
    q = vh.declare_queue("q")
    got = []
    c = Consumer("c", got.append, credit=1)
    q.add_consumer(c)
    publish_n(vh, "q", 3)
    assert len(got) == 1
    c.add_credit(2)
    assert len(got) == 3


def test_pause_and_resume(vh):
    q = vh.declare_queue("q")
    got = []
    c = Consumer("c", got.append)
    q.add_consumer(c)
    c.pause()
    publish_n(vh, "q", 2)
    assert got == []
    c.resume()
    assert bodies(got) == [b"0", b"1"]


def test_nack_requeue_and_delivery_count(vh):
    q = vh.declare_queue("q")
    publish_n(vh, "q", 2)
    d = q.get()
    assert d.delivery_count == 0 and not d.redelivered
    q.nack(d, requeue=True)
    d2 = q.get()
    assert d2.message.body == b"0" and d2.delivery_count == 1 and d2.redelivered


def test_requeued_message_is_not_overtaken(vh):
    q = vh.declare_queue("q")
    got = []
    q.add_consumer(Consumer("c", got.append, prefetch=2))
    publish_n(vh, "q", 4)
    assert bodies(got) == [b"0", b"1"]
    q.nack(got[0], requeue=True)  # frees a slot: the requeued "0" must come before "2"
    assert bodies(got) == [b"0", b"1", b"0"]
    assert got[2].redelivered


def test_cancel_requeues_unacked_in_order_to_another_consumer(vh):
    q = vh.declare_queue("q")
    a, b = [], []
    ca = Consumer("a", a.append, prefetch=3)
    q.add_consumer(ca)
    publish_n(vh, "q", 3)
    assert len(a) == 3
    q.add_consumer(Consumer("b", b.append))
    q.remove_consumer(ca, requeue=True)
    assert bodies(b) == [b"0", b"1", b"2"]
    assert all(d.redelivered for d in b)


def test_reject_without_requeue_dead_letters_with_x_death(vh):
    vh.declare_exchange("dlx", "fanout")
    dlq = vh.declare_queue("dlq")
    vh.bind_queue("dlq", "dlx")
    q = vh.declare_queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    publish_n(vh, "q", 1)
    q.nack(q.get(), requeue=False)
    dead = dlq.get(no_ack=True).message
    assert dead.body == b"0"
    death = dead.headers["x-death"][0]
    assert death["reason"] == "rejected" and death["queue"] == "q" and death["count"] == 1
    assert dead.headers["x-first-death-reason"] == "rejected"


def test_dead_letter_routing_key(vh):
    dlq = vh.declare_queue("dlq")
    vh.bind_queue("dlq", "amq.direct", "dead")
    q = vh.declare_queue(
        "q",
        arguments={"x-dead-letter-exchange": "amq.direct", "x-dead-letter-routing-key": "dead"},
    )
    publish_n(vh, "q", 1)
    q.nack(q.get(), requeue=False)
    assert dlq.message_count == 1


def test_queue_ttl_expires_and_dead_letters_without_consumers(vh, clock):
    dlq = vh.declare_queue("dlq")
    vh.declare_queue("q", arguments={"x-message-ttl": 100, "x-dead-letter-exchange": ""})
    q = vh.queues["q"]
    q.dead_letter_routing_key = "dlq"
    publish_n(vh, "q", 2)
    clock.advance(0.05)
    assert q.message_count == 2 and dlq.message_count == 0
    clock.advance(0.06)
    assert q.message_count == 0 and dlq.message_count == 2
    assert dlq.get(no_ack=True).message.headers["x-death"][0]["reason"] == "expired"


def test_per_message_expiration(vh, clock):
    q = vh.declare_queue("q")
    now = vh.now()
    vh.publish("", "q", Message(b"old", expiration=now + 10))
    vh.publish("", "q", Message(b"new"))
    clock.advance(0.02)
    assert q.get(no_ack=True).message.body == b"new"


def test_priorities(vh):
    q = vh.declare_queue("q", arguments={"x-max-priority": 5})
    for p in (1, 9, 3, None):
        vh.publish("", "q", Message(str(p).encode(), priority=p))
    # 9 is capped to 5 and still first; None counts as 0
    assert [q.get(no_ack=True).message.body for _ in range(4)] == [b"9", b"3", b"1", b"None"]


def test_max_length_drop_head(vh):
    vh.declare_queue("dlq")
    q = vh.declare_queue(
        "q",
        arguments={
            "x-max-length": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq",
        },
    )
    publish_n(vh, "q", 4)
    assert [q.get(no_ack=True).message.body for _ in range(2)] == [b"2", b"3"]
    assert vh.queues["dlq"].message_count == 2


def test_max_length_bytes(vh):
    q = vh.declare_queue("q", arguments={"x-max-length-bytes": 10})
    for _ in range(3):
        vh.publish("", "q", Message(b"12345"))
    assert q.message_count == 2 and q.byte_count == 10


def test_max_length_reject_publish(vh):
    q = vh.declare_queue("q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    assert vh.publish("", "q", Message(b"a")) == (1, 0)
    assert vh.publish("", "q", Message(b"b")) == (0, 1)
    assert q.message_count == 1


def test_delivery_limit(vh):
    dlq = vh.declare_queue("dlq")
    q = vh.declare_queue(
        "q",
        arguments={
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq",
        },
    )
    publish_n(vh, "q", 1)
    q.nack(q.get())
    q.nack(q.get())
    assert q.message_count == 0 and dlq.message_count == 1
    assert dlq.get(no_ack=True).message.headers["x-death"][0]["reason"] == "delivery_limit"


def test_exclusive_consumer(vh):
    q = vh.declare_queue("q")
    q.add_consumer(Consumer("a", lambda d: None, exclusive=True))
    with pytest.raises(ResourceLocked):
        q.add_consumer(Consumer("b", lambda d: None))


def test_exclusive_queue_owner_and_connection_close(vh):
    owner, other = object(), object()
    vh.declare_queue("ex", exclusive_owner=owner)
    with pytest.raises(ResourceLocked):
        vh.declare_queue("ex", exclusive_owner=other)
    with pytest.raises(ResourceLocked):
        vh.get_queue("ex", other)
    vh.connection_closed(owner)
    assert "ex" not in vh.queues


def test_auto_delete_after_last_consumer(vh):
    q = vh.declare_queue("q", auto_delete=True)
    c = Consumer("c", lambda d: None)
    q.add_consumer(c)
    q.remove_consumer(c)
    assert "q" not in vh.queues


def test_queue_expires_when_unused(vh, clock):
    vh.declare_queue("q", arguments={"x-expires": 1000})
    clock.advance(0.9)
    assert "q" in vh.queues
    clock.advance(0.2)
    assert "q" not in vh.queues


def test_delete_queue_cancels_consumers(vh):
    q = vh.declare_queue("q")
    cancelled = []
    q.add_consumer(Consumer("c", lambda d: None, on_cancel=lambda: cancelled.append(1)))
    publish_n(vh, "q", 0)
    assert vh.delete_queue("q") == 0
    assert cancelled == [1]


def test_delete_if_empty_and_purge(vh):
    q = vh.declare_queue("q")
    publish_n(vh, "q", 3)
    with pytest.raises(PreconditionFailed):
        vh.delete_queue("q", if_empty=True)
    assert vh.purge_queue("q") == 3
    assert q.message_count == 0


def test_server_named_and_reserved_names(vh):
    q = vh.declare_queue("")
    assert q.name.startswith("amq.gen-")
    with pytest.raises(AccessRefused):
        vh.declare_queue("amq.mine")


def test_redeclare_with_different_arguments_fails(vh):
    vh.declare_queue("q", arguments={"x-max-length": 5})
    vh.declare_queue("q", arguments={"x-max-length": 5})
    with pytest.raises(PreconditionFailed):
        vh.declare_queue("q", arguments={"x-max-length": 6})
    with pytest.raises(PreconditionFailed):
        vh.declare_queue("q", durable=True, arguments={"x-max-length": 5})


def test_bad_arguments(vh):
    with pytest.raises(PreconditionFailed):
        vh.declare_queue("a", arguments={"x-message-ttl": "soon"})
    with pytest.raises(PreconditionFailed):
        vh.declare_queue("b", arguments={"x-overflow": "explode"})
    with pytest.raises(PreconditionFailed):
        vh.declare_queue("c", arguments={"x-queue-type": "weird"})


def test_selector_consumers_take_only_matching(vh):
    q = vh.declare_queue("q")
    reds, blues = [], []
    q.add_consumer(Consumer("r", reds.append, selector=lambda m: m.headers.get("c") == "red"))
    q.add_consumer(Consumer("b", blues.append, selector=lambda m: m.headers.get("c") == "blue"))
    for c in ("red", "blue", "green", "red"):
        vh.publish("", "q", Message(c.encode(), headers={"c": c}))
    assert bodies(reds) == [b"red", b"red"]
    assert bodies(blues) == [b"blue"]
    assert q.message_count == 1  # green waits for someone who wants it


def test_transaction_commit_and_rollback(vh):
    q = vh.declare_queue("q")
    tx = Transaction(vh)
    tx.publish("", "q", Message(b"a"))
    assert q.message_count == 0
    tx.commit()
    assert q.message_count == 1
    d = q.get()
    tx.ack(d)
    tx.publish("", "q", Message(b"b"))
    discarded = tx.rollback()
    assert discarded == [d] and q.message_count == 0 and d.seq in q.unacked
    tx.ack(d)
    done = []
    tx.commit(on_durable=lambda: done.append(1))
    assert not q.unacked and done == [1]


def test_browse_takes_nothing(vh, clock):
    q = vh.declare_queue("q", arguments={"x-max-priority": 2})
    vh.publish("", "q", Message(b"low", priority=0, headers={"k": 1}))
    vh.publish("", "q", Message(b"high", priority=2, headers={"k": 2}))
    vh.publish("", "q", Message(b"gone", expiration=vh.now() + 5))
    clock.advance(0.01)
    assert bodies(q.browse(10)) == [b"high", b"low"]
    assert bodies(q.browse(1)) == [b"high"]
    assert bodies(q.browse(10, lambda m: m.headers.get("k") == 1)) == [b"low"]
    assert q.message_count == 3


def test_uncounted_requeue_and_detach(vh):
    q = vh.declare_queue("q")
    got = []
    c = Consumer("c", got.append, prefetch=2)
    q.add_consumer(c)
    publish_n(vh, "q", 2)
    c.pause()  # closing: nothing more is sent to it
    q.requeue([got[1]], count=False)  # prefetched, never seen by the application
    c.detach(got[0])  # its ack is held elsewhere (a transaction)
    q.remove_consumer(c, requeue=True)
    assert q.message_count == 1 and got[0].seq in q.unacked
    again = q.get(no_ack=True)
    assert again.message.body == b"1" and again.delivery_count == 0
    q.ack(got[0])
    assert not q.unacked


def test_set_credit_takes_back_credit(vh):
    q = vh.declare_queue("q")
    got = []
    c = Consumer("c", got.append, credit=0)
    q.add_consumer(c)
    publish_n(vh, "q", 2)
    c.set_credit(1)
    assert len(got) == 1
    c.set_credit(0)
    q.ack(got[0])
    assert len(got) == 1
