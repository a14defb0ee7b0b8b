"""VirtualHost.publish_direct, the routing of adapters' fast paths: consumers the core would
hand a message to at once are offered to the adapter's callback; the other destinations get
one core Message, enqueued as VirtualHost.publish does."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from polymq.core.broker import Broker
from polymq.core.errors import NotFound
from polymq.core.message import Message
from polymq.core.queue import Consumer


@pytest.fixture
def vh():
    return Broker(clock=Clock()).vhost()


class Adapter:
    """The two callbacks of a fast path, recording what the core asked."""

    def __init__(self, takes: bool = True, durable: bool = False) -> None:
        self.takes = takes
        self.durable = durable
        self.offered: list[Consumer] = []
        self.made: list[Message] = []

    def direct(self, consumer: Consumer, context: object) -> bool:
        assert context == "ctx"
        self.offered.append(consumer)
        return self.takes

    def make_message(self, context: object) -> Message:
        assert context == "ctx"
        msg = Message(b"body", durable=self.durable)
        self.made.append(msg)
        return msg

    def publish(self, vh, exchange: str, key: str, **kw) -> tuple[int, int]:
        return vh.publish_direct(
            exchange, key, 4, self.durable, self.make_message, self.direct, "ctx", **kw
        )


def consume(vh, name: str, no_ack: bool = True) -> tuple[Consumer, list]:
    got: list = []
    cons = Consumer(f"c-{name}", got.append, no_ack=no_ack)
    vh.get_queue(name).add_consumer(cons)
    return cons, got


def test_consumers_taken_directly_make_no_message_and_leave_no_trace(vh):
    for name in ("a", "b"):
        vh.declare_queue(name)
        vh.bind_queue(name, "amq.topic", "t.#")
    ca, got_a = consume(vh, "a")
    cb, got_b = consume(vh, "b")
    adapter = Adapter()
    assert adapter.publish(vh, "amq.topic", "t.x") == (2, 0)
    assert sorted(c.tag for c in adapter.offered) == ["c-a", "c-b"]
    assert adapter.made == [] and got_a == [] and got_b == []
    assert vh.get_queue("a").message_count == 0 and not vh.get_queue("a").unacked


def test_refused_and_unconsumed_destinations_share_one_message(vh):
    for name in ("with-consumer", "idle1", "idle2"):
        vh.declare_queue(name)
        vh.bind_queue(name, "amq.topic", "k")
    _, got = consume(vh, "with-consumer")
    adapter = Adapter(takes=False)
    assert adapter.publish(vh, "amq.topic", "k") == (3, 0)
    assert [c.tag for c in adapter.offered] == ["c-with-consumer"]
    [msg] = adapter.made
    assert (msg.exchange, msg.routing_key) == ("amq.topic", "k")
    assert [d.message for d in got] == [msg]  # delivered by the queue instead
    for name in ("idle1", "idle2"):
        assert vh.get_queue(name).get(no_ack=True).message is msg


def test_a_durable_message_is_offered_only_to_no_ack_consumers(vh):
    for name in ("acking", "no-ack"):
        vh.declare_queue(name, durable=True)
        vh.bind_queue(name, "amq.topic", "d")
    _, got_acking = consume(vh, "acking", no_ack=False)
    consume(vh, "no-ack", no_ack=True)
    adapter = Adapter(durable=True)
    assert adapter.publish(vh, "amq.topic", "d") == (2, 0)
    assert [c.tag for c in adapter.offered] == ["c-no-ack"]
    [d] = got_acking
    assert d.message.durable and d.data is not None  # kept by the queue until acknowledged
    assert len(vh.get_queue("acking").unacked) == 1


def test_a_queue_with_a_backlog_is_not_bypassed(vh):
    vh.declare_queue("q")
    vh.bind_queue("q", "amq.topic", "k")
    cons, got = consume(vh, "q")
    cons.pause()
    vh.publish("amq.topic", "k", Message(b"first"))
    cons.resume()
    assert [d.message.body for d in got] == [b"first"]
    cons.pause()
    vh.publish("amq.topic", "k", Message(b"waits"))
    adapter = Adapter()
    assert adapter.publish(vh, "amq.topic", "k") == (1, 0)
    assert adapter.offered == []  # behind the backlog, in order
    cons.resume()
    assert [d.message.body for d in got] == [b"first", b"waits", b"body"]


def test_refusals_and_exclude_are_counted_as_publish_counts_them(vh):
    vh.declare_queue("full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    vh.declare_queue("mine")
    vh.declare_queue("other")
    for name in ("full", "mine", "other"):
        vh.bind_queue(name, "amq.topic", "k")
    adapter = Adapter()
    assert adapter.publish(vh, "amq.topic", "k", exclude=vh.get_queue("mine")) == (1, 1)
    assert vh.get_queue("mine").message_count == 0
    assert vh.get_queue("other").message_count == 1


def test_exchange_to_exchange_bindings_take_the_publish_path(vh):
    vh.declare_exchange("side", "fanout")
    vh.bind_exchange("side", "amq.topic", "e.#")
    vh.declare_queue("behind")
    vh.bind_queue("behind", "side")
    vh.declare_queue("direct")
    vh.bind_queue("direct", "amq.topic", "e.#")
    _, got = consume(vh, "direct")
    adapter = Adapter()
    assert adapter.publish(vh, "amq.topic", "e.x") == (2, 0)
    assert adapter.offered == []
    [msg] = adapter.made
    assert [d.message for d in got] == [msg]
    assert vh.get_queue("behind").get(no_ack=True).message is msg


def test_alternate_exchange_takes_the_publish_path(vh):
    vh.declare_exchange("alt", "fanout")
    vh.declare_queue("unrouted")
    vh.bind_queue("unrouted", "alt")
    vh.declare_exchange("main", "direct", arguments={"alternate-exchange": "alt"})
    adapter = Adapter()
    assert adapter.publish(vh, "main", "nobody") == (1, 0)
    assert vh.get_queue("unrouted").get(no_ack=True).message is adapter.made[0]


def test_unknown_exchange_is_not_found(vh):
    with pytest.raises(NotFound):
        Adapter().publish(vh, "nope", "k")
