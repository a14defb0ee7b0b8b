"""Unit tests of core/selector.py (JMS message selectors)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polymq.core.message import Message
from polymq.core.selector import MAX_DEPTH, MAX_LENGTH, InvalidSelector, compile_selector


def msg(**headers):
    return Message(
        b"x",
        headers=headers,
        message_id="ID:1",
        correlation_id="corr",
        type="t1",
        priority=7,
        timestamp=1000,
        durable=True,
    )


def sel(text, **headers):
    return compile_selector(text)(msg(**headers))


@pytest.mark.parametrize(
    "text,headers,expected",
    [
        ("color = 'red'", {"color": "red"}, True),
        ("color = 'red'", {"color": "blue"}, False),
        ("color <> 'red'", {"color": "blue"}, True),
        ("size > 2", {"size": 3}, True),
        ("size >= 3 AND size <= 3", {"size": 3}, True),
        ("size < 2.5", {"size": 2}, True),
        ("size * 2 + 1 = 7", {"size": 3}, True),
        ("size / 2 = 1", {"size": 3}, True),  # integer division
        ("size / 2.0 = 1.5", {"size": 3}, True),
        ("-size = -3", {"size": 3}, True),
        ("size BETWEEN 1 AND 3", {"size": 3}, True),
        ("size NOT BETWEEN 1 AND 3", {"size": 4}, True),
        ("color IN ('red', 'green')", {"color": "green"}, True),
        ("color NOT IN ('red', 'green')", {"color": "blue"}, True),
        ("name LIKE 'ab%'", {"name": "abc"}, True),
        ("name LIKE 'a_c'", {"name": "abc"}, True),
        ("name LIKE 'a_c'", {"name": "abbc"}, False),
        ("name NOT LIKE 'a%'", {"name": "bc"}, True),
        ("name LIKE 'a\\_%' ESCAPE '\\'", {"name": "a_x"}, True),
        ("name LIKE 'a\\_%' ESCAPE '\\'", {"name": "abx"}, False),
        ("name LIKE '50!%' ESCAPE '!'", {"name": "50%"}, True),
        ("missing IS NULL", {}, True),
        ("color IS NOT NULL", {"color": "x"}, True),
        ("flag", {"flag": True}, True),
        ("flag = TRUE", {"flag": False}, False),
        ("NOT flag", {"flag": False}, True),
        ("JMSPriority > 5", {}, True),
        ("JMSType = 't1' AND JMSCorrelationID = 'corr'", {}, True),
        ("JMSMessageID = 'ID:1'", {}, True),
        ("JMSDeliveryMode = 'PERSISTENT'", {}, True),
        ("JMSTimestamp = 1000", {}, True),
        ("a = 1 OR b = 2", {"b": 2}, True),
        ("(a = 1 OR b = 2) AND c = 3", {"b": 2, "c": 4}, False),
        ("x = 0x1F", {"x": 31}, True),
        ("x = 10L", {"x": 10}, True),
        ("x = 1.5e1", {"x": 15}, True),
        ("s = 'it''s'", {"s": "it's"}, True),
        ("color = 'red'", {"color": 1}, False),  # kinds differ: unknown
        ("color = 1", {"color": "1"}, False),
        ("size / 0 = 1", {"size": 1}, False),
    ],
)
def test_selects(text, headers, expected):
    assert sel(text, **headers) is expected


def test_three_valued_logic():
    # unknown AND false = false; unknown OR true = true; NOT unknown = unknown (not selected)
    assert sel("missing > 1 AND x = 1", x=2) is False
    assert sel("missing > 1 OR x = 1", x=1) is True
    assert sel("NOT (missing > 1)") is False
    assert sel("NOT (missing > 1) OR x = 1", x=1) is True
    assert sel("missing NOT IN ('a')") is False
    assert sel("missing NOT LIKE 'a'") is False
    assert sel("missing NOT BETWEEN 1 AND 2") is False
    assert sel("NOT (missing IS NULL)") is False


def test_keywords_case_insensitive_identifiers_case_sensitive():
    assert sel("Color = 'red' and size between 1 and 5", Color="red", size=2) is True
    assert sel("color = 'red'", Color="red") is False


def test_empty_selector_selects_all():
    assert compile_selector("")(msg()) is True
    assert compile_selector("   ")(msg()) is True


@pytest.mark.parametrize(
    "text",
    [
        "color = = 'x'",
        "color =",
        "AND",
        "(a = 1",
        "a = 1)",
        "a IN (1, 2)",
        "a LIKE b",
        "a LIKE 'x' ESCAPE 'ab'",
        "'a' + 1 = 2",
        "'a' < 'b'",
        "a = 'x' 'y'",
        "a # 1",
        "1 + 2",
        "a IS 5",
        "name LIKE 'a!' ESCAPE '!'",
        "x = 09",
    ],
)
def test_invalid(text):
    with pytest.raises(InvalidSelector):
        compile_selector(text)


def test_nesting_and_length_are_bounded():
    deep = "(" * (MAX_DEPTH + 1) + "a = 1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(InvalidSelector):
        compile_selector(deep)
    ok = "(" * (MAX_DEPTH - 1) + "a = 1" + ")" * (MAX_DEPTH - 1)
    assert compile_selector(ok)(msg(a=1)) is True
    with pytest.raises(InvalidSelector):
        compile_selector("NOT " * (MAX_DEPTH + 1) + "a = 1")
    with pytest.raises(InvalidSelector):
        compile_selector("a = '" + "x" * MAX_LENGTH + "'")


def test_long_chains_do_not_recurse():
    text = " AND ".join(f"a{i} = {i}" for i in range(500))
    assert len(text) < MAX_LENGTH
    f = compile_selector(text)
    assert f(msg(**{f"a{i}": i for i in range(500)})) is True
    arith = "a = " + " + ".join("1" for _ in range(2000))
    assert compile_selector(arith)(msg(a=2000)) is True


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_never_crashes(text):
    try:
        f = compile_selector(text)
    except InvalidSelector:
        return
    assert f(msg(a=1, b="x", c=True)) in (True, False)
