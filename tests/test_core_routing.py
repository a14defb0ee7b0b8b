"""Routing: every exchange type, topic wildcard edge cases, e2e bindings, alternate exchanges."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from polymq.core.broker import Broker
from polymq.core.errors import AccessRefused, CommandInvalid, NotFound, PreconditionFailed
from polymq.core.message import Message
from polymq.core.routing import TopicTrie


@pytest.fixture
def vh():
    return Broker(clock=Clock()).vhost()


def routed_to(vh, exchange, key, headers=None):
    """Publish and report which queues got a message."""
    before = {n: q.message_count for n, q in vh.queues.items()}
    vh.publish(exchange, key, Message(b"x", headers=headers or {}))
    return sorted(n for n, q in vh.queues.items() if q.message_count > before[n])


def test_default_exchange_routes_by_queue_name(vh):
    vh.declare_queue("q1")
    vh.declare_queue("q2")
    assert routed_to(vh, "", "q1") == ["q1"]
    assert routed_to(vh, "", "nope") == []


def test_default_exchange_refuses_bindings(vh):
    vh.declare_queue("q")
    with pytest.raises(AccessRefused):
        vh.bind_queue("q", "", "k")


def test_standard_exchanges_exist_and_cannot_be_deleted(vh):
    for name in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"):
        assert name in vh.exchanges
        with pytest.raises(AccessRefused):
            vh.delete_exchange(name)


def test_direct(vh):
    for q in ("a", "b", "c"):
        vh.declare_queue(q)
    vh.bind_queue("a", "amq.direct", "k1")
    vh.bind_queue("b", "amq.direct", "k1")
    vh.bind_queue("c", "amq.direct", "k2")
    assert routed_to(vh, "amq.direct", "k1") == ["a", "b"]
    assert routed_to(vh, "amq.direct", "k2") == ["c"]
    vh.unbind_queue("b", "amq.direct", "k1")
    assert routed_to(vh, "amq.direct", "k1") == ["a"]


def test_same_queue_bound_twice_gets_one_copy(vh):
    vh.declare_queue("a")
    vh.bind_queue("a", "amq.topic", "x.*")
    vh.bind_queue("a", "amq.topic", "#")
    vh.bind_queue("a", "amq.topic", "x.y")
    vh.publish("amq.topic", "x.y", Message(b"1"))
    assert vh.queues["a"].message_count == 1


def test_fanout(vh):
    vh.declare_exchange("f", "fanout")
    for q in ("a", "b"):
        vh.declare_queue(q)
        vh.bind_queue(q, "f", "ignored")
    assert routed_to(vh, "f", "anything") == ["a", "b"]


@pytest.mark.parametrize(
    "pattern,key,hit",
    [
        ("a.b.c", "a.b.c", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.*.c", "a.b.b.c", False),
        ("a.#", "a", True),  # '#' matches zero words
        ("a.#", "a.b.c.d", True),
        ("#", "", True),
        ("#", "anything.at.all", True),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y.c", False),
        ("#.b", "b", True),
        ("#.b", "a.a.b", True),
        ("*", "", True),  # the empty key is one empty word
        ("*", "a.b", False),
        ("a..b", "a..b", True),  # empty words are words
        ("a.*.b", "a..b", True),
        ("#.#", "x", True),
        ("a.#.#.b", "a.b", True),
        ("*.#", "", True),
        ("*.*", "a", False),
        ("a.b", "a.b.c", False),
    ],
)
def test_topic_patterns(pattern, key, hit):
    trie = TopicTrie()
    trie.add(pattern, "dest")
    assert (list(trie.match(key).values()) == ["dest"]) is hit


def test_topic_exchange_unbind_prunes(vh):
    vh.declare_queue("q")
    vh.bind_queue("q", "amq.topic", "a.*.c")
    assert routed_to(vh, "amq.topic", "a.b.c") == ["q"]
    vh.unbind_queue("q", "amq.topic", "a.*.c")
    assert routed_to(vh, "amq.topic", "a.b.c") == []
    assert not vh.exchanges["amq.topic"].trie.root.children


def test_topic_match_is_not_recursive_on_deep_keys():
    trie = TopicTrie()
    trie.add("#.z", "d")
    trie.add("a.#.#.z", "e")
    key = ".".join(["a"] * 20000 + ["z"])  # a client-chosen depth must not blow the stack
    assert sorted(trie.match(key).values()) == ["d", "e"]


def _regex_model(pattern: str, key: str) -> bool:
    pw, kw = pattern.split("."), key.split(".")

    # plain dynamic programming over (pattern word, key word)
    n, m = len(pw), len(kw)
    ok = [[False] * (m + 1) for _ in range(n + 1)]
    ok[n][m] = True
    for i in range(n - 1, -1, -1):
        for j in range(m, -1, -1):
            w = pw[i]
            if w == "#":
                ok[i][j] = ok[i + 1][j] or (j < m and ok[i][j + 1])
            elif j < m and (w == "*" or w == kw[j]):
                ok[i][j] = ok[i + 1][j + 1]
    return ok[0][0]


words = st.sampled_from(["a", "b", "", "*", "#"])
key_words = st.sampled_from(["a", "b", ""])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(words, min_size=1, max_size=5).map(".".join), min_size=1, max_size=6),
    st.lists(key_words, min_size=1, max_size=6).map(".".join),
)
def test_trie_agrees_with_model(patterns, key):
    trie = TopicTrie()
    for i, p in enumerate(patterns):
        trie.add(p, i)
    expected = {i for i, p in enumerate(patterns) if _regex_model(p, key)}
    assert set(trie.match(key).values()) == expected


def test_headers_all_and_any(vh):
    vh.declare_queue("all")
    vh.declare_queue("any")
    vh.declare_queue("presence")
    vh.bind_queue("all", "amq.headers", "", {"x-match": "all", "a": 1, "b": "x"})
    vh.bind_queue("any", "amq.headers", "", {"x-match": "any", "a": 1, "b": "x"})
    vh.bind_queue("presence", "amq.match", "", {"c": None})
    assert routed_to(vh, "amq.headers", "", {"a": 1, "b": "x"}) == ["all", "any"]
    assert routed_to(vh, "amq.headers", "", {"a": 1}) == ["any"]
    assert routed_to(vh, "amq.headers", "", {"a": 2}) == []
    assert routed_to(vh, "amq.match", "", {"c": "whatever"}) == ["presence"]


def test_headers_bad_x_match(vh):
    vh.declare_queue("q")
    with pytest.raises(PreconditionFailed):
        vh.bind_queue("q", "amq.headers", "", {"x-match": "some"})


def test_exchange_to_exchange_and_cycles(vh):
    vh.declare_exchange("e1", "topic")
    vh.declare_exchange("e2", "fanout")
    vh.declare_queue("q")
    vh.bind_exchange("e2", "e1", "a.#")
    vh.bind_exchange("e1", "e2", "")  # a cycle must not loop
    vh.bind_queue("q", "e2")
    assert routed_to(vh, "e1", "a.b") == ["q"]
    assert routed_to(vh, "e1", "b") == []
    vh.unbind_exchange("e2", "e1", "a.#")
    assert routed_to(vh, "e1", "a.b") == []


def test_alternate_exchange(vh):
    vh.declare_exchange("ae", "fanout")
    vh.declare_queue("unrouted")
    vh.bind_queue("unrouted", "ae")
    vh.declare_exchange("main", "direct", arguments={"alternate-exchange": "ae"})
    vh.declare_queue("q")
    vh.bind_queue("q", "main", "k")
    assert routed_to(vh, "main", "k") == ["q"]
    assert routed_to(vh, "main", "other") == ["unrouted"]


def test_declare_exchange_rules(vh):
    vh.declare_exchange("x", "topic", durable=True)
    assert vh.declare_exchange("x", "topic", durable=True) is vh.exchanges["x"]
    with pytest.raises(PreconditionFailed):
        vh.declare_exchange("x", "direct", durable=True)
    with pytest.raises(PreconditionFailed):
        vh.declare_exchange("x", "topic", durable=False)
    with pytest.raises(NotFound):
        vh.declare_exchange("missing", passive=True)
    with pytest.raises(CommandInvalid):
        vh.declare_exchange("y", "bogus")
    with pytest.raises(AccessRefused):
        vh.declare_exchange("amq.mine", "direct")


def test_delete_exchange_if_unused_and_auto_delete(vh):
    vh.declare_exchange("x", "direct")
    vh.declare_queue("q")
    vh.bind_queue("q", "x", "k")
    with pytest.raises(PreconditionFailed):
        vh.delete_exchange("x", if_unused=True)
    vh.delete_exchange("x")
    assert "x" not in vh.exchanges
    vh.declare_exchange("ad", "direct", auto_delete=True)
    vh.bind_queue("q", "ad", "k")
    vh.unbind_queue("q", "ad", "k")
    assert "ad" not in vh.exchanges


def test_publish_to_missing_exchange(vh):
    with pytest.raises(NotFound):
        vh.publish("nope", "k", Message(b""))


def test_publish_records_exchange_and_key(vh):
    q = vh.declare_queue("q")
    vh.bind_queue("q", "amq.topic", "a.*")
    vh.publish("amq.topic", "a.b", Message(b"m"))
    d = q.get(no_ack=True)
    assert (d.message.exchange, d.message.routing_key) == ("amq.topic", "a.b")
