"""Exchanges: AMQP 0-9-1 router semantics, protocol-neutral.

An exchange maps (routing key, headers) to a set of bound destinations. Destinations are queues,
streams or other exchanges (exchange-to-exchange bindings); the virtual host follows exchange
destinations. Topic routing uses a word trie walked iteratively, so neither the number of bindings
nor a client-chosen key depth costs a regex per binding or recursion.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import PreconditionFailed

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")


class Binding:
    __slots__ = ("source", "destination", "key", "arguments")

    def __init__(self, source: Exchange, destination: Any, key: str, arguments: dict) -> None:
        self.source = source
        self.destination = destination
        self.key = key
        self.arguments = arguments

    @property
    def identity(self) -> tuple:
        return (id(self.destination), self.key, _freeze(self.arguments))


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class Exchange:
    """Base router. Subclasses implement ``_add``, ``_remove`` and ``match``."""

    type = ""
    kind = "exchange"

    def __init__(
        self,
        vhost: Any,
        name: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict | None = None,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.bindings: dict[tuple, Binding] = {}

    @property
    def alternate_exchange(self) -> str | None:
        return self.arguments.get("alternate-exchange")

    def record(self) -> dict:
        return {
            "type": self.type,
            "durable": self.durable,
            "auto_delete": self.auto_delete,
            "internal": self.internal,
            "arguments": self.arguments,
        }

    def bind(self, destination: Any, key: str, arguments: dict | None = None) -> bool:
        """Add a binding; False if it already existed."""
        b = Binding(self, destination, key, arguments or {})
        ident = b.identity
        if ident in self.bindings:
            return False
        self.bindings[ident] = b
        self._add(b)
        return True

    def unbind(self, destination: Any, key: str, arguments: dict | None = None) -> bool:
        ident = (id(destination), key, _freeze(arguments or {}))
        b = self.bindings.pop(ident, None)
        if b is None:
            return False
        self._remove(b)
        return True

    def bindings_to(self, destination: Any) -> list[Binding]:
        return [b for b in self.bindings.values() if b.destination is destination]

    def match(self, routing_key: str, headers: dict) -> Iterable[Any]:
        raise NotImplementedError

    def _add(self, binding: Binding) -> None:
        raise NotImplementedError

    def _remove(self, binding: Binding) -> None:
        raise NotImplementedError


class DirectExchange(Exchange):
    type = "direct"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        # key -> {id(dest): [dest, bindings]}; plus the destinations as a tuple per key, so
        # that a delivery may change bindings while publish iterates
        self._members: dict[str, dict[int, list]] = {}
        self._by_key: dict[str, tuple] = {}

    def _add(self, b: Binding) -> None:
        members = self._members.setdefault(b.key, {})
        entry = members.get(id(b.destination))
        if entry is None:
            members[id(b.destination)] = [b.destination, 1]
        else:
            entry[1] += 1
        self._by_key[b.key] = tuple(e[0] for e in members.values())

    def _remove(self, b: Binding) -> None:
        members = self._members.get(b.key)
        entry = members.get(id(b.destination)) if members else None
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del members[id(b.destination)]
        if members:
            self._by_key[b.key] = tuple(e[0] for e in members.values())
        else:
            del self._members[b.key]
            self._by_key.pop(b.key, None)

    def match(self, routing_key: str, headers: dict) -> Iterable[Any]:
        return self._by_key.get(routing_key, ())


class FanoutExchange(Exchange):
    type = "fanout"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._dests: tuple = ()

    def _rebuild(self) -> None:
        unique = {id(b.destination): b.destination for b in self.bindings.values()}
        self._dests = tuple(unique.values())

    def _add(self, b: Binding) -> None:
        self._rebuild()

    def _remove(self, b: Binding) -> None:
        self._rebuild()

    def match(self, routing_key: str, headers: dict) -> Iterable[Any]:
        return self._dests


class _TrieNode:
    __slots__ = ("children", "hash_child", "dests", "is_hash")

    def __init__(self, is_hash: bool = False) -> None:
        self.is_hash = is_hash  # reached through "#": may swallow further words
        self.children: dict[str, _TrieNode] = {}  # literal words and "*"
        self.hash_child: _TrieNode | None = None  # "#"
        self.dests: dict[int, list] = {}  # id(dest) -> [dest, refcount]


class TopicTrie:
    """Binding patterns of dot-separated words; ``*`` is one word, ``#`` zero or more words.

    Matching is iterative with a visited set over (node, position), each state pushing a
    constant number of successors, so it is linear in (pattern nodes × key words) in the worst
    case, whatever the client sends.
    """

    def __init__(self) -> None:
        self.root = _TrieNode()

    def add(self, pattern: str, dest: Any) -> None:
        node = self.root
        for word in pattern.split("."):
            if word == "#":
                if node.hash_child is None:
                    node.hash_child = _TrieNode(is_hash=True)
                node = node.hash_child
            else:
                nxt = node.children.get(word)
                if nxt is None:
                    nxt = node.children[word] = _TrieNode()
                node = nxt
        entry = node.dests.get(id(dest))
        if entry is None:
            node.dests[id(dest)] = [dest, 1]
        else:
            entry[1] += 1

    def remove(self, pattern: str, dest: Any) -> None:
        path: list[tuple[_TrieNode, str]] = []
        node = self.root
        for word in pattern.split("."):
            path.append((node, word))
            nxt = node.hash_child if word == "#" else node.children.get(word)
            if nxt is None:
                return
            node = nxt
        entry = node.dests.get(id(dest))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del node.dests[id(dest)]
        # prune empty nodes bottom-up
        for parent, word in reversed(path):
            if node.dests or node.children or node.hash_child is not None:
                break
            if word == "#":
                parent.hash_child = None
            else:
                del parent.children[word]
            node = parent

    def match(self, key: str) -> dict[int, Any]:
        words = key.split(".")
        n = len(words)
        found: dict[int, Any] = {}
        stack: list[tuple[_TrieNode, int]] = [(self.root, 0)]
        seen: set[tuple[int, int]] = set()
        while stack:
            node, i = stack.pop()
            mark = (id(node), i)
            if mark in seen:
                continue
            seen.add(mark)
            h = node.hash_child
            if h is not None:
                stack.append((h, i))  # "#" matching zero words
            if node.is_hash and i < n:
                stack.append((node, i + 1))  # "#" swallowing one more word
            if i == n:
                for k, entry in node.dests.items():
                    found[k] = entry[0]
                continue
            w = words[i]
            c = node.children.get(w)
            if c is not None:
                stack.append((c, i + 1))
            c = node.children.get("*")
            if c is not None:
                stack.append((c, i + 1))
        return found


class TopicExchange(Exchange):
    type = "topic"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.trie = TopicTrie()
        # exact-key cache: topic workloads repeat keys; invalidated on any binding change
        self._cache: dict[str, tuple] = {}

    def _add(self, b: Binding) -> None:
        self.trie.add(b.key, b.destination)
        self._cache.clear()

    def _remove(self, b: Binding) -> None:
        self.trie.remove(b.key, b.destination)
        self._cache.clear()

    def match(self, routing_key: str, headers: dict) -> Iterable[Any]:
        hit = self._cache.get(routing_key)
        if hit is None:
            hit = tuple(self.trie.match(routing_key).values())
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[routing_key] = hit
        return hit


def _headers_match(arguments: dict, headers: dict) -> bool:
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = mode.endswith("-with-x")
    any_mode = mode.startswith("any")
    for k, v in arguments.items():
        if k == "x-match" or (k.startswith("x-") and not with_x):
            continue
        # a void binding value asks only for presence of the header
        ok = k in headers and (v is None or headers[k] == v)
        if any_mode and ok:
            return True
        if not any_mode and not ok:
            return False
    # "all" with nothing to check matches everything; "any" with no match matches nothing
    return not any_mode


class HeadersExchange(Exchange):
    type = "headers"

    def _add(self, b: Binding) -> None:
        mode = b.arguments.get("x-match", "all")
        if isinstance(mode, bytes):
            mode = mode.decode()
        if mode not in ("all", "any", "all-with-x", "any-with-x"):
            raise PreconditionFailed(f"invalid x-match value {mode!r}")

    def _remove(self, b: Binding) -> None:
        pass

    def match(self, routing_key: str, headers: dict) -> Iterable[Any]:
        out: dict[int, Any] = {}
        for b in self.bindings.values():
            if _headers_match(b.arguments, headers):
                out[id(b.destination)] = b.destination
        return out.values()


EXCHANGE_CLASSES: dict[str, type[Exchange]] = {
    "direct": DirectExchange,
    "fanout": FanoutExchange,
    "topic": TopicExchange,
    "headers": HeadersExchange,
}
