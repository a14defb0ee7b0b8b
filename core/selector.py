"""JMS message selectors (the SQL-92 subset of JMS 1.1 section 3.8), protocol-neutral.

``compile_selector(text)`` parses a selector once and returns ``match(message) -> bool``, which
evaluates it against a core :class:`~polymq.core.message.Message`: identifiers name application
properties (``message.headers``) or the JMS headers ``JMSMessageID``, ``JMSCorrelationID``,
``JMSType``, ``JMSPriority``, ``JMSTimestamp``, ``JMSDeliveryMode`` (``'PERSISTENT'`` /
``'NON_PERSISTENT'``), ``JMSExpiration`` and ``JMSRedelivered`` is not supported (the message
does not know it). Supported: literals (strings with ``''``, exact and approximate numbers,
``TRUE``/``FALSE``), ``= <> < > <= >=``, ``+ - * /``, ``AND OR NOT``, ``[NOT] BETWEEN``,
``[NOT] IN (...)``, ``[NOT] LIKE pattern [ESCAPE c]``, ``IS [NOT] NULL``, parentheses.

Evaluation follows the spec's three-valued logic: a missing property is NULL (unknown);
comparisons and arithmetic with NULL are unknown; ``AND``/``OR``/``NOT`` use the SQL truth
tables; a message is selected only when the selector is TRUE. Comparing values of different
kinds (a string with a number) is unknown; strings and booleans only compare with ``=``/``<>``.

Safety: the text is capped at :data:`MAX_LENGTH` characters and nesting (parentheses, ``NOT``,
unary signs) at :data:`MAX_DEPTH`; ``AND``/``OR`` and arithmetic chains are flattened into
lists, so neither parsing nor evaluation recurses deeper than a fixed bound.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

MAX_LENGTH = 8192
MAX_DEPTH = 64

__all__ = ["InvalidSelector", "compile_selector", "MAX_LENGTH", "MAX_DEPTH"]


class InvalidSelector(ValueError):
    """The selector text is not a valid JMS selector."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


Eval = Callable[[Any], Any]

_KEYWORDS = {
    "AND",
    "OR",
    "NOT",
    "BETWEEN",
    "LIKE",
    "IN",
    "IS",
    "NULL",
    "ESCAPE",
    "TRUE",
    "FALSE",
}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>
        0[xX][0-9a-fA-F]+[lL]?
      | (?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?[fFdD]?
      | \d+[eE][+-]?\d+[fFdD]?
      | \d+[lLfFdD]?
    )
  | (?P<ident>[A-Za-z_$][A-Za-z0-9_$.]*)
  | (?P<op><>|<=|>=|=|<|>|\+|-|\*|/|\(|\)|,)
    """,
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise InvalidSelector(f"unexpected character {text[pos]!r} at {pos}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group()
        if kind == "ws":
            continue
        if kind == "string":
            out.append(("str", value[1:-1].replace("''", "'")))
        elif kind == "number":
            out.append(("num", _number(value)))
        elif kind == "ident":
            up = value.upper()
            if up in _KEYWORDS:
                out.append(("kw", up))
            else:
                out.append(("id", value))
        else:
            out.append(("op", value))
    out.append(("end", None))
    return out


def _number(text: str) -> int | float:
    t = text
    if t[:2] in ("0x", "0X"):
        return int(t.rstrip("lL"), 16)
    if t[-1] in "lL":
        return int(t[:-1])
    if t[-1] in "fFdD":
        return float(t[:-1])
    if any(ch in t for ch in ".eE"):
        return float(t)
    if len(t) > 1 and t[0] == "0":
        try:
            return int(t, 8)
        except ValueError:
            raise InvalidSelector(f"invalid octal literal {t}") from None
    return int(t)


# -- three-valued helpers -------------------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _compare(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    if _is_num(a) and _is_num(b):
        pass
    elif isinstance(a, str) and isinstance(b, str) or isinstance(a, bool) and isinstance(b, bool):
        if op == "=":
            return a == b
        if op == "<>":
            return a != b
        return None
    else:
        return None
    if op == "=":
        return a == b
    if op == "<>":
        return a != b
    if op == "<":
        return a < b
    if op == ">":
        return a > b
    if op == "<=":
        return a <= b
    return a >= b


def _arith(op: str, a: Any, b: Any) -> Any:
    if not (_is_num(a) and _is_num(b)):
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    if isinstance(a, int) and isinstance(b, int):
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    return a / b


def _and(values: list[Eval], msg: Any) -> bool | None:
    unknown = False
    for f in values:
        v = f(msg)
        if v is False:
            return False
        if v is not True:
            unknown = True
    return None if unknown else True


def _or(values: list[Eval], msg: Any) -> bool | None:
    unknown = False
    for f in values:
        v = f(msg)
        if v is True:
            return True
        if v is not False:
            unknown = True
    return None if unknown else False


# -- identifiers -----------------------------------------------------------------------------


def _prop(name: str) -> Eval:
    if name == "JMSPriority":
        return lambda m: 4 if m.priority is None else m.priority
    if name == "JMSMessageID":
        return lambda m: m.message_id
    if name == "JMSCorrelationID":
        return lambda m: m.correlation_id
    if name == "JMSType":
        return lambda m: m.type
    if name == "JMSTimestamp":
        return lambda m: m.timestamp
    if name == "JMSExpiration":
        return lambda m: m.expiration or 0
    if name == "JMSDeliveryMode":
        return lambda m: "PERSISTENT" if m.durable else "NON_PERSISTENT"

    def get(m: Any) -> Any:
        v = m.headers.get(name)
        if v is None or isinstance(v, bool | int | float | str):
            return v
        return None

    return get


# -- the parser ------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.i]

    def next(self) -> tuple[str, Any]:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def accept(self, kind: str, value: Any = None) -> bool:
        t = self.tokens[self.i]
        if t[0] == kind and (value is None or t[1] == value):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, value: Any = None) -> tuple[str, Any]:
        t = self.tokens[self.i]
        if t[0] != kind or (value is not None and t[1] != value):
            raise InvalidSelector(f"expected {value or kind}, found {t[1]!r}")
        self.i += 1
        return t

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise InvalidSelector(f"selector nested deeper than {MAX_DEPTH}")

    # expression := or
    def parse(self) -> tuple[str, Eval]:
        kind, f = self.or_()
        if self.peek()[0] != "end":
            raise InvalidSelector(f"unexpected {self.peek()[1]!r}")
        return kind, f

    def or_(self) -> tuple[str, Eval]:
        kind, f = self.and_()
        if not (self.peek() == ("kw", "OR")):
            return kind, f
        items = [self._bool(kind, f)]
        while self.accept("kw", "OR"):
            k2, f2 = self.and_()
            items.append(self._bool(k2, f2))
        return "bool", lambda m: _or(items, m)

    def and_(self) -> tuple[str, Eval]:
        kind, f = self.not_()
        if not (self.peek() == ("kw", "AND")):
            return kind, f
        items = [self._bool(kind, f)]
        while self.accept("kw", "AND"):
            k2, f2 = self.not_()
            items.append(self._bool(k2, f2))
        return "bool", lambda m: _and(items, m)

    def not_(self) -> tuple[str, Eval]:
        if self.accept("kw", "NOT"):
            self.enter()
            kind, f = self.not_()
            self.depth -= 1
            g = self._bool(kind, f)

            def neg(m: Any) -> bool | None:
                v = g(m)
                return None if v is None else not v

            return "bool", neg
        return self.comparison()

    def _bool(self, kind: str, f: Eval) -> Eval:
        if kind == "bool":
            return f
        if kind in ("num", "str"):
            raise InvalidSelector("expected a condition, found a value")

        def as_bool(m: Any) -> bool | None:
            v = f(m)
            return v if isinstance(v, bool) else None

        return as_bool

    def comparison(self) -> tuple[str, Eval]:
        kind, left = self.additive()
        t = self.peek()
        if t[0] == "op" and t[1] in ("=", "<>", "<", ">", "<=", ">="):
            self.next()
            op = t[1]
            k2, right = self.additive()
            if kind != "any" and k2 != "any" and kind != k2:
                raise InvalidSelector(f"cannot compare {kind} with {k2}")
            if op not in ("=", "<>") and "str" in (kind, k2):
                raise InvalidSelector(f"strings cannot be compared with {op}")
            return "bool", lambda m: _compare(op, left(m), right(m))
        negate = False
        if t == ("kw", "NOT"):
            nxt = self.tokens[self.i + 1]
            if nxt in (("kw", "BETWEEN"), ("kw", "IN"), ("kw", "LIKE")):
                self.next()
                negate = True
        t = self.peek()
        if t == ("kw", "BETWEEN"):
            self.next()
            _, low = self.additive()
            self.expect("kw", "AND")
            _, high = self.additive()

            def between(m: Any) -> bool | None:
                v = left(m)
                r = _and(
                    [lambda _m: _compare(">=", v, low(m)), lambda _m: _compare("<=", v, high(m))], m
                )
                return None if r is None else (r != negate)

            return "bool", between
        if t == ("kw", "IN"):
            self.next()
            self.expect("op", "(")
            values = {self.expect("str")[1]}
            while self.accept("op", ","):
                values.add(self.expect("str")[1])
            self.expect("op", ")")
            frozen = frozenset(values)

            def in_(m: Any) -> bool | None:
                v = left(m)
                if not isinstance(v, str):
                    return None
                return (v in frozen) != negate

            return "bool", in_
        if t == ("kw", "LIKE"):
            self.next()
            pattern = self.expect("str")[1]
            escape = None
            if self.accept("kw", "ESCAPE"):
                escape = self.expect("str")[1]
                if len(escape) != 1:
                    raise InvalidSelector("ESCAPE must be a single character")
            rx = _like_regex(pattern, escape)

            def like(m: Any) -> bool | None:
                v = left(m)
                if not isinstance(v, str):
                    return None
                return (rx.fullmatch(v) is not None) != negate

            return "bool", like
        if negate:
            raise InvalidSelector("NOT must be followed by BETWEEN, IN or LIKE here")
        if t == ("kw", "IS"):
            self.next()
            is_not = self.accept("kw", "NOT")
            self.expect("kw", "NULL")
            if is_not:
                return "bool", lambda m: left(m) is not None
            return "bool", lambda m: left(m) is None
        return kind, left

    def additive(self) -> tuple[str, Eval]:
        kind, f = self.multiplicative()
        ops: list[tuple[str, Eval]] = []
        while self.peek()[0] == "op" and self.peek()[1] in ("+", "-"):
            op = self.next()[1]
            k2, g = self.multiplicative()
            self._numeric(kind, k2)
            ops.append((op, g))
        if not ops:
            return kind, f
        return "num", _chain(f, ops)

    def multiplicative(self) -> tuple[str, Eval]:
        kind, f = self.unary()
        ops: list[tuple[str, Eval]] = []
        while self.peek()[0] == "op" and self.peek()[1] in ("*", "/"):
            op = self.next()[1]
            k2, g = self.unary()
            self._numeric(kind, k2)
            ops.append((op, g))
        if not ops:
            return kind, f
        return "num", _chain(f, ops)

    def _numeric(self, k1: str, k2: str) -> None:
        if k1 not in ("num", "any") or k2 not in ("num", "any"):
            raise InvalidSelector("arithmetic needs numeric operands")

    def unary(self) -> tuple[str, Eval]:
        t = self.peek()
        if t[0] == "op" and t[1] in ("+", "-"):
            self.next()
            self.enter()
            kind, f = self.unary()
            self.depth -= 1
            self._numeric(kind, "num")
            if t[1] == "+":
                return "num", f
            if kind == "num" and getattr(f, "constant", None) is not None:
                return "num", _const(-f.constant)

            def neg(m: Any) -> Any:
                v = f(m)
                return -v if _is_num(v) else None

            return "num", neg
        return self.primary()

    def primary(self) -> tuple[str, Eval]:
        t = self.next()
        kind, value = t
        if kind == "op" and value == "(":
            self.enter()
            k, f = self.or_()
            self.depth -= 1
            self.expect("op", ")")
            return k, f
        if kind == "num":
            return "num", _const(value)
        if kind == "str":
            return "str", _const(value)
        if kind == "kw" and value in ("TRUE", "FALSE"):
            v = value == "TRUE"
            return "bool", lambda m: v
        if kind == "kw" and value == "NULL":
            return "any", lambda m: None
        if kind == "id":
            return "any", _prop(value)
        raise InvalidSelector(f"unexpected {value!r}")


def _const(v: Any) -> Eval:
    def f(m: Any) -> Any:
        return v

    f.constant = v  # type: ignore[attr-defined]
    return f


def _chain(first: Eval, ops: list[tuple[str, Eval]]) -> Eval:
    def run(m: Any) -> Any:
        acc = first(m)
        for op, g in ops:
            acc = _arith(op, acc, g(m))
        return acc

    return run


def _like_regex(pattern: str, escape: str | None) -> re.Pattern:
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if escape is not None and ch == escape:
            i += 1
            if i >= n:
                raise InvalidSelector("LIKE pattern ends with the escape character")
            out.append(re.escape(pattern[i]))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def compile_selector(text: str) -> Callable[[Any], bool]:
    """Parse ``text`` once; the result tells whether a message is selected (TRUE only)."""
    if not isinstance(text, str):
        raise InvalidSelector("a selector must be a string")
    if len(text) > MAX_LENGTH:
        raise InvalidSelector(f"selector longer than {MAX_LENGTH} characters")
    if not text.strip():
        return lambda message: True
    parser = _Parser(_tokenize(text))
    kind, f = parser.parse()
    g = parser._bool(kind, f)

    def match(message: Any) -> bool:
        return g(message) is True

    match.selector = text  # type: ignore[attr-defined]
    return match
