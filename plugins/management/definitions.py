"""Definitions export and import: vhosts, exchanges, queues, streams and bindings as JSON,
in the shape of RabbitMQ's ``/api/definitions`` so its files can be read back.

Import merges like RabbitMQ's: objects missing from the file are left alone, an object that
exists already keeps the server's version, an error stops the import part-way (the reply says
where).
"""

from __future__ import annotations

from typing import Any

from polymq.core.cli import version
from polymq.core.errors import BrokerError
from polymq.core.queue import Queue
from polymq.core.stream import Stream
from polymq.core.vhost import STANDARD_EXCHANGES

from .state import jsonable

_BUILTIN_EXCHANGES = {""} | {name for name, _ in STANDARD_EXCHANGES}


def export(broker: Any) -> dict[str, Any]:
    """Every durable or shareable object: exclusive queues belong to a connection, not here."""
    vhosts, queues, exchanges, bindings = [], [], [], []
    for vname, vh in sorted(broker.vhosts.items()):
        vhosts.append({"name": vname})
        for name, q in sorted(vh.queues.items()):
            if q.exclusive_owner is not None:
                continue
            args = jsonable(q.arguments)
            if isinstance(q, Stream):
                args = dict(args, **{"x-queue-type": "stream", "x-partitions": len(q.partitions)})
            queues.append(
                {
                    "name": name,
                    "vhost": vname,
                    "durable": q.durable,
                    "auto_delete": q.auto_delete,
                    "arguments": args,
                }
            )
        for name, ex in sorted(vh.exchanges.items()):
            if name not in _BUILTIN_EXCHANGES:
                exchanges.append(
                    {
                        "name": name,
                        "vhost": vname,
                        "type": ex.type,
                        "durable": ex.durable,
                        "auto_delete": ex.auto_delete,
                        "internal": ex.internal,
                        "arguments": jsonable(ex.arguments),
                    }
                )
            for b in sorted(ex.bindings.values(), key=lambda b: (b.destination.name, b.key)):
                dest = b.destination
                if getattr(dest, "exclusive_owner", None) is not None:
                    continue
                bindings.append(
                    {
                        "source": name,
                        "vhost": vname,
                        "destination": dest.name,
                        "destination_type": dest.kind,
                        "routing_key": b.key,
                        "arguments": jsonable(b.arguments),
                    }
                )
    return {
        "product_name": "polymq",
        "product_version": version(),
        "users": [],
        "vhosts": vhosts,
        "permissions": [],
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }


def import_(broker: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Declare what ``data`` lists; returns how many of each kind were created, and under
    ``ignored`` the sections present in ``data`` that polymq does not import."""
    counts = {"vhosts": 0, "exchanges": 0, "queues": 0, "bindings": 0}
    for key in ("vhosts", "exchanges", "queues", "bindings"):
        if not isinstance(data.get(key, []), list):
            raise BrokerError(f"definitions: '{key}' must be a list")
    default = broker.default_vhost
    for v in data.get("vhosts", []):
        name = v.get("name") if isinstance(v, dict) else None
        if not isinstance(name, str) or not name:
            raise BrokerError(f"definitions: bad vhost entry {v!r}")
        if name not in broker.vhosts:
            broker.add_vhost(name)
            counts["vhosts"] += 1
    for e in data.get("exchanges", []):
        vh = broker.add_vhost(_str(e, "vhost", default))
        name = _str(e, "name")
        if name in vh.exchanges:
            continue
        vh.declare_exchange(
            name,
            _str(e, "type", "direct"),
            durable=bool(e.get("durable", True)),
            auto_delete=bool(e.get("auto_delete", False)),
            internal=bool(e.get("internal", False)),
            arguments=_args(e),
        )
        counts["exchanges"] += 1
    for q in data.get("queues", []):
        vh = broker.add_vhost(_str(q, "vhost", default))
        name = _str(q, "name")
        if name in vh.queues:
            continue
        args = _args(q)
        if args.get("x-queue-type") == "stream":
            vh.declare_stream(
                name,
                partitions=args.get("x-partitions", 1),
                durable=bool(q.get("durable", True)),
                arguments=args,
            )
        else:
            vh.declare_queue(
                name,
                durable=bool(q.get("durable", True)),
                auto_delete=bool(q.get("auto_delete", False)),
                arguments=args,
            )
        counts["queues"] += 1
    for b in data.get("bindings", []):
        vh = broker.add_vhost(_str(b, "vhost", default))
        source, dest = _str(b, "source"), _str(b, "destination")
        key, args = _str(b, "routing_key", ""), _args(b)
        if source == "":
            continue  # the default exchange's bindings are implicit
        if b.get("destination_type", "queue") == "exchange":
            vh.bind_exchange(dest, source, key, args)
        else:
            target = vh.queues.get(dest)
            if isinstance(target, Queue | Stream):
                vh.bind_queue(dest, source, key, args)
            else:
                raise BrokerError(f"definitions: binding to missing queue '{dest}'")
        counts["bindings"] += 1
    # users, permissions, policies ... have no home in polymq yet: say so rather than pretend
    ignored = sorted(k for k in _NOT_IMPORTED if data.get(k))
    if ignored:
        counts["ignored"] = ignored
    return counts


_NOT_IMPORTED = (
    "users",
    "permissions",
    "topic_permissions",
    "parameters",
    "policies",
    "global_parameters",
)


def _args(entry: dict) -> dict:
    value = entry.get("arguments") or {}
    if not isinstance(value, dict):
        raise BrokerError(f"definitions: 'arguments' must be an object in {entry!r}")
    check_partitions(value)
    return dict(value)


def check_partitions(arguments: dict) -> None:
    """x-partitions reaches the core as is: it must be a positive integer."""
    n = arguments.get("x-partitions")
    if n is not None and (type(n) is not int or n < 1):
        raise BrokerError("'x-partitions' must be a positive integer")


def _str(entry: Any, key: str, default: str | None = None) -> str:
    if not isinstance(entry, dict):
        raise BrokerError(f"definitions: entry {entry!r} is not an object")
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise BrokerError(f"definitions: '{key}' missing or not a string in {entry!r}")
    return value
