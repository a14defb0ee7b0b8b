"""Small builders of Python syntax trees, for the codec functions generated from the
``construct`` declarations: the trees are compiled with ``compile`` and made functions with
``types.FunctionType``; no source text is generated or executed."""

from __future__ import annotations

import ast
import types
from collections.abc import Callable
from typing import Any


def name(n: str) -> ast.Name:
    return ast.Name(n, ast.Load())


def store(n: str) -> ast.Name:
    return ast.Name(n, ast.Store())


def const(value: Any) -> ast.Constant:
    return ast.Constant(value)


def add(a: ast.expr, b: int | ast.expr) -> ast.expr:
    if isinstance(b, int):
        return ast.BinOp(a, ast.Add(), const(b)) if b else a
    return ast.BinOp(a, ast.Add(), b)


def assign(target: str | ast.expr, value: ast.expr) -> ast.Assign:
    t = store(target) if isinstance(target, str) else target
    return ast.Assign([t], value)


def assign_tuple(targets: list[str], value: ast.expr) -> ast.Assign:
    return ast.Assign([ast.Tuple([store(v) for v in targets], ast.Store())], value)


def increment(var: str, by: int | ast.expr) -> ast.AugAssign:
    return ast.AugAssign(store(var), ast.Add(), const(by) if isinstance(by, int) else by)


def attr(obj: ast.expr, a: str) -> ast.Attribute:
    return ast.Attribute(obj, a, ast.Load())


def set_attr(obj: str, a: str, value: ast.expr) -> ast.Assign:
    return ast.Assign([ast.Attribute(name(obj), a, ast.Store())], value)


def item(obj: ast.expr, key: ast.expr) -> ast.Subscript:
    return ast.Subscript(obj, key, ast.Load())


def set_item(obj: str, key: ast.expr, value: ast.expr) -> ast.Assign:
    return ast.Assign([ast.Subscript(name(obj), key, ast.Store())], value)


def call(fn: ast.expr, *args: ast.expr) -> ast.Call:
    return ast.Call(fn, list(args), [])


def compare(a: ast.expr, op: ast.cmpop, b: ast.expr) -> ast.Compare:
    return ast.Compare(a, [op], [b])


def tuple_(*elts: ast.expr) -> ast.Tuple:
    return ast.Tuple(list(elts), ast.Load())


def if_(test: ast.expr, body: list[ast.stmt], orelse: list[ast.stmt] | None = None) -> ast.If:
    return ast.If(test, body, orelse or [])


def beyond(pos: ast.expr, size: int) -> ast.expr:
    """``pos + size > end``"""
    return compare(add(pos, size), ast.Gt(), name("end"))


def function(
    fname: str,
    args: list[str],
    body: list[ast.stmt],
    env: dict[str, Any],
    defaults: tuple = (),
) -> Callable:
    """A function of ``body`` whose globals are ``env``."""
    arguments = ast.arguments(
        [], [ast.arg(a) for a in args], None, [], [], None, [const(d) for d in defaults]
    )
    fn = ast.FunctionDef(fname, arguments, body, [], None)
    module = ast.fix_missing_locations(ast.Module([fn], []))
    code = compile(module, f"<openwire {fname}>", "exec")
    (fn_code,) = (k for k in code.co_consts if isinstance(k, types.CodeType))
    return types.FunctionType(fn_code, env, fname, defaults or None)


class Globals:
    """The globals of generated functions: values named on first use."""

    def __init__(self, env: dict[str, Any]) -> None:
        self.env = env
        self._names: dict[int, str] = {}

    def ref(self, value: Any, stem: str) -> ast.Name:
        n = self._names.get(id(value))
        if n is None or self.env[n] is not value:
            n = f"_{stem}{len(self.env)}"
            self.env[n] = value
            self._names[id(value)] = n
        return name(n)
