"""What management shows, read from the broker's own structures when asked.

Everything here runs on the reactor thread, on request or on the stats timer; nothing is
added to the path a message takes. Counters that the core does not keep (messages enqueued
per queue, per-protocol totals that survive a connection closing) are derived by
:class:`Sampler` from state the core keeps anyway (a queue's next sequence number, a
partition's end offset, each connection's counters).
"""

from __future__ import annotations

import base64
import json
import os
import resource
from collections import deque
from typing import Any

from polymq.core.connection import ConnectionInfo, registry_of
from polymq.core.queue import Queue
from polymq.core.stream import Stream

MQTT_SESSIONS_NS = "mqtt.sessions"
MQTT_RETAINED_NS = "mqtt.retained"
MQTT_SESSION_QUEUE = "mqtt-session."
KAFKA_OFFSETS_NS = "kafka.offsets"

# samples kept for the console's chart and the rates (at the default 5 s: ten minutes)
HISTORY = 120


def jsonable(value: Any) -> Any:
    """Queue/exchange arguments and headers may hold bytes: make them JSON values."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def memory_bytes() -> int:
    """Resident memory of this process (procfs is in memory: no disk I/O)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Totals:
    """Monotonic counters since the broker started (never drop when a connection closes)."""

    __slots__ = ("protocols", "enqueued", "appended")

    def __init__(self) -> None:
        # protocol -> [messages_in, messages_out, bytes_in, bytes_out]
        self.protocols: dict[str, list[int]] = {}
        self.enqueued = 0  # messages routed into queues
        self.appended = 0  # messages appended to streams

    def snapshot(self) -> dict[str, Any]:
        return {
            "enqueued": self.enqueued,
            "appended": self.appended,
            "messages_in": sum(v[0] for v in self.protocols.values()),
            "messages_out": sum(v[1] for v in self.protocols.values()),
            "bytes_in": sum(v[2] for v in self.protocols.values()),
            "bytes_out": sum(v[3] for v in self.protocols.values()),
        }


class Sampler:
    """Turns the state the core keeps into monotonic totals and per-second rates.

    ``sample()`` walks the queues, stream partitions and connections once: O(objects), run
    every ``stats_interval`` seconds and before a scrape, never per message. A connection that
    closes between two samples loses what it counted since the last one.
    """

    def __init__(self, broker: Any, clock: Any) -> None:
        self.broker = broker
        self.clock = clock
        self.totals = Totals()
        self.per_queue: dict[int, list] = {}  # id(queue) -> [queue, last seq, enqueued total]
        self.per_partition: dict[tuple[int, int], list] = {}  # -> [partition, last end offset]
        self.per_conn: dict[int, tuple[int, int, int, int]] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.queue_rates: dict[int, float] = {}
        self.started_at = clock.seconds()
        self._last_t: float | None = None
        self._rate_base: dict[int, int] = {}  # per-queue enqueued totals at the last point

    def sample(self, record: bool = True) -> dict[str, Any]:
        """Bring the totals up to date; ``record`` adds a point to the history (the chart and
        the rates), which only the stats timer does, so rates keep a steady interval."""
        now = self.clock.seconds()
        totals = self.totals
        seen_q: set[int] = set()
        seen_p: set[tuple[int, int]] = set()
        for vh in self.broker.vhosts.values():
            for q in vh.queues.values():
                if isinstance(q, Queue):
                    key = id(q)
                    seen_q.add(key)
                    entry = self.per_queue.get(key)
                    seq = q._next_seq
                    if entry is None or entry[0] is not q:
                        # a queue first seen: what it holds now counts as enqueued once
                        base = max(0, seq - 1 - q.message_count - len(q.unacked))
                        entry = self.per_queue[key] = [q, base + 1, 0]
                    delta = seq - entry[1]
                    if delta > 0:
                        entry[2] += delta
                        totals.enqueued += delta
                    entry[1] = seq
                elif isinstance(q, Stream):
                    for p in q.partitions:
                        key2 = (id(q), p.index)
                        seen_p.add(key2)
                        entry = self.per_partition.get(key2)
                        if entry is None or entry[0] is not p:
                            entry = self.per_partition[key2] = [p, p.start_offset]
                        delta = p.next_offset - entry[1]
                        if delta > 0:
                            totals.appended += delta
                        entry[1] = p.next_offset
        for key in set(self.per_queue) - seen_q:
            del self.per_queue[key]
        for key2 in set(self.per_partition) - seen_p:
            del self.per_partition[key2]
        live: dict[int, tuple[int, int, int, int]] = {}
        for info in registry_of(self.broker):
            cur = (info.messages_in, info.messages_out, info.bytes_in, info.bytes_out)
            before = self.per_conn.get(info.id, (0, 0, 0, 0))
            acc = totals.protocols.setdefault(info.protocol, [0, 0, 0, 0])
            for i in range(4):
                d = cur[i] - before[i]
                if d > 0:
                    acc[i] += d
            live[info.id] = cur
        self.per_conn = live
        if not record:
            return totals.snapshot()
        dt = None if self._last_t is None else now - self._last_t
        prev = self._rate_base
        if dt:
            self.queue_rates = {k: (v[2] - prev.get(k, 0)) / dt for k, v in self.per_queue.items()}
        self._rate_base = {k: v[2] for k, v in self.per_queue.items()}
        self._last_t = now
        point = dict(totals.snapshot(), t=now)
        point["queued"] = sum(
            q.message_count
            for vh in self.broker.vhosts.values()
            for q in vh.queues.values()
            if isinstance(q, Queue)
        )
        point["connections"] = len(registry_of(self.broker))
        self.history.append(point)
        return point

    def rates(self) -> dict[str, float]:
        """Per-second rates over the last two samples (0 before there are two)."""
        if len(self.history) < 2:
            return {k: 0.0 for k in _RATE_KEYS}
        a, b = self.history[-2], self.history[-1]
        dt = b["t"] - a["t"] or 1.0
        return {k: max(0.0, (b[k] - a[k]) / dt) for k in _RATE_KEYS}

    def enqueued(self, q: Queue) -> int:
        entry = self.per_queue.get(id(q))
        return entry[2] if entry is not None and entry[0] is q else 0


_RATE_KEYS = ("enqueued", "appended", "messages_in", "messages_out", "bytes_in", "bytes_out")


class State:
    """The broker as management sees it: plain dicts for the API, CLI, console and metrics."""

    def __init__(self, broker: Any, config: dict, sampler: Sampler) -> None:
        self.broker = broker
        self.config = config
        self.sampler = sampler

    # -- helpers -----------------------------------------------------------------------------

    @property
    def registry(self):
        return registry_of(self.broker)

    def vhosts(self, vhost: str | None = None) -> list:
        if vhost is None:
            return list(self.broker.vhosts.values())
        return [self.broker.vhost(vhost)]

    def _owner_map(self) -> dict[int, ConnectionInfo]:
        """Consumers name their owner as a session or connection object: find its entry."""
        out: dict[int, ConnectionInfo] = {}
        for info in self.registry:
            conn = info.conn
            if conn is not None:
                out[id(conn)] = info
                if getattr(conn, "session", None) is not None:
                    out[id(conn.session)] = info
        return out

    # -- overview ----------------------------------------------------------------------------

    def ha(self) -> dict[str, Any]:
        """This node's shared-store HA state (core/ha.py); "standalone" without ``ha.enabled``."""
        node = getattr(self.broker, "ha", None)
        if node is None:
            return {"role": "standalone"}
        return node.status()

    def overview(self) -> dict[str, Any]:
        from polymq.core.cli import version

        queues = [q for vh in self.broker.vhosts.values() for q in vh.queues.values()]
        classic = [q for q in queues if isinstance(q, Queue)]
        ready = sum(q.message_count for q in classic)
        unacked = sum(len(q.unacked) for q in classic)
        rates = self.sampler.rates()
        totals = self.sampler.totals.snapshot()
        per_proto = {}
        for name, section in sorted(self.config.get("adapters", {}).items()):
            if section.get("enabled"):
                per_proto[name] = {"connections": self.registry.count(name)}
        for info in self.registry:
            per_proto.setdefault(info.protocol, {"connections": self.registry.count(info.protocol)})
        for name, acc in self.sampler.totals.protocols.items():
            entry = per_proto.setdefault(name, {"connections": self.registry.count(name)})
            entry.update(messages_in=acc[0], messages_out=acc[1], bytes_in=acc[2], bytes_out=acc[3])
        reg = self.registry
        alarm = getattr(self.broker, "alarm", None)
        return {
            "product_name": "polymq",
            "polymq_version": version(),
            "management_version": version(),
            "node": os.uname().nodename,
            "uptime": int((self.sampler.clock.seconds() - self.sampler.started_at) * 1000),
            "ha_role": self.ha()["role"],
            "listeners": [
                {"protocol": name, "host": s.get("host"), "port": s.get("port")}
                for name, s in sorted(self.config.get("adapters", {}).items())
                if s.get("enabled")
            ],
            "object_totals": {
                "connections": len(reg),
                "exchanges": sum(len(vh.exchanges) for vh in self.broker.vhosts.values()),
                "queues": len(classic),
                "streams": len(queues) - len(classic),
                "consumers": sum(q.consumer_count for q in queues),
            },
            "queue_totals": {
                "messages": ready + unacked,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
            },
            "message_stats": {
                "publish": totals["enqueued"] + totals["appended"],
                "publish_details": {"rate": rates["enqueued"] + rates["appended"]},
                "messages_in": totals["messages_in"],
                "messages_in_details": {"rate": rates["messages_in"]},
                "messages_out": totals["messages_out"],
                "messages_out_details": {"rate": rates["messages_out"]},
                "recv_oct": totals["bytes_in"],
                "send_oct": totals["bytes_out"],
            },
            "protocols": per_proto,
            "connections_opened": reg.opened,
            "connections_refused": reg.refused,
            "mem_used": memory_bytes(),
            "mem_alarm": bool(alarm.memory_alarm) if alarm is not None else bool(reg.blocked),
            "disk_free_alarm": bool(alarm.disk_alarm) if alarm is not None else False,
            "alarm_reason": reg.blocked_reason or None,
            "stats_interval": self.config.get("management", {}).get("stats_interval"),
            "samples": [
                {
                    k: p[k]
                    for k in (
                        "t",
                        "enqueued",
                        "appended",
                        "messages_in",
                        "messages_out",
                        "queued",
                        "connections",
                    )
                }
                for p in list(self.sampler.history)[-60:]
            ],
        }

    # -- connections -------------------------------------------------------------------------

    def connections(self) -> list[dict[str, Any]]:
        out = []
        for info in sorted(self.registry, key=lambda i: i.id):
            d = info.as_dict()
            d["recv_oct"] = d["bytes_in"]
            d["send_oct"] = d["bytes_out"]
            d["ssl"] = d["tls"]
            channels = _channels_of(info)
            d["channels"] = len(channels) if channels is not None else None
            out.append(d)
        return out

    def find_connection(self, name: str) -> ConnectionInfo | None:
        for info in self.registry:
            if info.name == name or str(info.id) == name:
                return info
        return None

    def channels(self) -> list[dict[str, Any]]:
        out = []
        for info in sorted(self.registry, key=lambda i: i.id):
            for number, ch in sorted((_channels_of(info) or {}).items()):
                consumers = getattr(ch, "consumers", None)
                out.append(
                    {
                        "name": f"{info.name} ({number})",
                        "number": number,
                        "connection": info.name,
                        "protocol": info.protocol,
                        "user": info.user,
                        "vhost": info.vhost,
                        "consumer_count": len(consumers) if consumers is not None else None,
                        "prefetch_count": getattr(ch, "prefetch_count", None),
                    }
                )
        return out

    # -- exchanges, queues, bindings ---------------------------------------------------------

    def exchange(self, ex) -> dict[str, Any]:
        return {
            "name": ex.name,
            "vhost": ex.vhost.name,
            "type": ex.type,
            "durable": ex.durable,
            "auto_delete": ex.auto_delete,
            "internal": ex.internal,
            "arguments": jsonable(ex.arguments),
            "bindings": len(ex.bindings),
        }

    def exchanges(self, vhost: str | None = None) -> list[dict[str, Any]]:
        return [
            self.exchange(ex) for vh in self.vhosts(vhost) for _, ex in sorted(vh.exchanges.items())
        ]

    def queue(self, q, owners: dict | None = None) -> dict[str, Any]:
        owners = self._owner_map() if owners is None else owners
        owner = owners.get(id(q.exclusive_owner)) if q.exclusive_owner is not None else None
        d: dict[str, Any] = {
            "name": q.name,
            "vhost": q.vhost.name,
            "type": "stream" if q.kind == "stream" else "classic",
            "durable": q.durable,
            "auto_delete": q.auto_delete,
            "exclusive": q.exclusive_owner is not None,
            "owner_connection": owner.name if owner is not None else None,
            "arguments": jsonable(q.arguments),
            "consumers": q.consumer_count,
            "state": "running",
        }
        if isinstance(q, Queue):
            unacked = len(q.unacked)
            d.update(
                messages=q.message_count + unacked,
                messages_ready=q.message_count,
                messages_unacknowledged=unacked,
                messages_paged_out=0,
                message_bytes=q.byte_count,
                message_stats={
                    "publish": self.sampler.enqueued(q),
                    "publish_details": {"rate": self.sampler.queue_rates.get(id(q), 0.0)},
                },
            )
        else:
            d.update(
                messages=q.message_count,
                messages_ready=q.message_count,
                messages_unacknowledged=0,
                messages_paged_out=0,
                message_bytes=sum(p.bytes for p in q.partitions),
                partitions=len(q.partitions),
            )
        return d

    def queues(self, vhost: str | None = None) -> list[dict[str, Any]]:
        owners = self._owner_map()
        return [
            self.queue(q, owners) for vh in self.vhosts(vhost) for _, q in sorted(vh.queues.items())
        ]

    def bindings(self, vhost: str | None = None) -> list[dict[str, Any]]:
        out = []
        for vh in self.vhosts(vhost):
            # the default exchange's implicit bindings, as RabbitMQ lists them
            for qname in sorted(vh.queues):
                out.append(_binding_dict(vh.name, "", "queue", qname, qname, {}))
            for _, ex in sorted(vh.exchanges.items()):
                for b in sorted(ex.bindings.values(), key=lambda b: (b.destination.name, b.key)):
                    out.append(
                        _binding_dict(
                            vh.name,
                            ex.name,
                            b.destination.kind,
                            b.destination.name,
                            b.key,
                            b.arguments,
                        )
                    )
        return out

    def consumers(self, vhost: str | None = None) -> list[dict[str, Any]]:
        owners = self._owner_map()
        out = []
        for vh in self.vhosts(vhost):
            for _, q in sorted(vh.queues.items()):
                for c in q.consumers:
                    info = owners.get(id(c.owner)) if c.owner is not None else None
                    out.append(
                        {
                            "consumer_tag": c.tag,
                            "queue": {"name": q.name, "vhost": vh.name},
                            "queue_type": "stream" if q.kind == "stream" else "classic",
                            "prefetch_count": c.limit.prefetch,
                            "credit": c.credit,
                            "in_flight": c.limit.in_flight,
                            "unacknowledged": len(c.unacked),
                            "ack_required": not c.no_ack,
                            "exclusive": c.exclusive,
                            "active": c.ready(),
                            "selector": c.selector is not None,
                            "connection": info.name if info is not None else None,
                            "protocol": info.protocol if info is not None else None,
                            "client_id": info.client_id if info is not None else None,
                        }
                    )
        return out

    # -- streams, Kafka groups ---------------------------------------------------------------

    def stream(self, s: Stream) -> dict[str, Any]:
        parts = [
            {
                "partition": p.index,
                "start_offset": p.start_offset,
                "end_offset": p.next_offset,
                "messages": p.next_offset - p.start_offset,
                "bytes": p.bytes,
                "readers": len(p.readers),
            }
            for p in s.partitions
        ]
        return {
            "name": s.name,
            "vhost": s.vhost.name,
            "durable": s.durable,
            "partitions": parts,
            "partition_count": len(parts),
            "messages": sum(p["messages"] for p in parts),
            "bytes": sum(p["bytes"] for p in parts),
            "consumers": s.consumer_count,
            "arguments": jsonable(s.arguments),
            "config": jsonable(s.config),
            "groups": sorted({g for g, t, _ in self._committed() if t == s.name}),
        }

    def streams(self, vhost: str | None = None) -> list[dict[str, Any]]:
        return [
            self.stream(q)
            for vh in self.vhosts(vhost)
            for _, q in sorted(vh.queues.items())
            if isinstance(q, Stream)
        ]

    def _committed(self) -> dict[tuple[str, str, int], int]:
        out: dict[tuple[str, str, int], int] = {}
        for key in list(self.broker.kv(KAFKA_OFFSETS_NS)):
            try:
                group, topic, partition = json.loads(key)
                offset, _meta = self.broker.kv_get_obj(KAFKA_OFFSETS_NS, key)
                out[(group, topic, int(partition))] = int(offset)
            except Exception:
                continue  # not ours to judge: the Kafka adapter logs unreadable records
        return out

    def _coordinators(self) -> list:
        """Live Kafka group coordinators, reached through the Kafka connections' listeners."""
        found = {}
        for info in self.registry:
            conn = info.conn
            for holder in (getattr(conn, "factory", None), getattr(conn, "session", None)):
                server = getattr(holder, "server", None) or holder
                coord = getattr(server, "coordinator", None)
                if coord is not None:
                    found[id(coord)] = coord
        return list(found.values())

    def groups(self) -> list[dict[str, Any]]:
        """Kafka consumer groups: committed offset, log-end offset and lag per partition."""
        vh = self.broker.vhost(self._kafka_vhost())
        by_group: dict[str, dict[str, Any]] = {}
        live = {}
        for coord in self._coordinators():
            for gid, g in getattr(coord, "groups", {}).items():
                live[gid] = g
        for (group, topic, partition), offset in sorted(self._committed().items()):
            entry = by_group.setdefault(group, {"group": group, "partitions": []})
            s = vh.queues.get(topic)
            end = None
            if isinstance(s, Stream) and partition < len(s.partitions):
                end = s.partitions[partition].next_offset
            entry["partitions"].append(
                {
                    "topic": topic,
                    "partition": partition,
                    "current_offset": offset,
                    "log_end_offset": end,
                    "lag": max(0, end - offset) if end is not None and offset >= 0 else None,
                }
            )
        for gid in live:
            by_group.setdefault(gid, {"group": gid, "partitions": []})
        out = []
        for gid, entry in sorted(by_group.items()):
            g = live.get(gid)
            members = getattr(g, "members", {}) if g is not None else {}
            entry["state"] = str(getattr(g, "state", "Empty")) if g is not None else "Empty"
            entry["protocol"] = getattr(g, "protocol", None) if g is not None else None
            entry["members"] = [
                {"member_id": m.id, "client_id": m.client_id, "client_host": m.client_host}
                for m in members.values()
            ]
            entry["lag"] = sum(p["lag"] or 0 for p in entry["partitions"])
            out.append(entry)
        return out

    def _kafka_vhost(self) -> str | None:
        section = self.config.get("adapters", {}).get("kafka", {})
        return section.get("vhost") or None

    # -- MQTT --------------------------------------------------------------------------------

    def mqtt_sessions(self) -> list[dict[str, Any]]:
        """Persistent sessions (the MQTT adapter's records) and live ones: a session's queue
        (``mqtt-session.<client id>``) has a consumer exactly while its client is connected."""
        connected = {
            info.client_id: info
            for info in self.registry
            if info.protocol == "mqtt" and info.client_id
        }
        section = self.config.get("adapters", {}).get("mqtt", {})
        vh = self.broker.vhosts.get(section.get("vhost") or self.broker.default_vhost)
        queues = {}
        if vh is not None:
            for qname, q in vh.queues.items():
                if qname.startswith(MQTT_SESSION_QUEUE):
                    queues[qname[len(MQTT_SESSION_QUEUE) :]] = q
        stored = self.broker.kv(MQTT_SESSIONS_NS)
        out = []
        for cid in sorted(set(stored) | set(connected) | set(queues)):
            try:
                rec = self.broker.kv_get_obj(MQTT_SESSIONS_NS, cid) or {}
            except Exception:
                rec = {}
            info = connected.get(cid)
            q = queues.get(cid)
            expiry = rec.get("expiry")
            out.append(
                {
                    "client_id": cid,
                    "connected": info is not None or (q is not None and q.consumer_count > 0),
                    "persistent": cid in stored,
                    "connection": info.name if info is not None else None,
                    "protocol_version": _MQTT_VERSIONS.get(rec.get("v"), rec.get("v")),
                    "expiry_interval": None if expiry is None or expiry >= 2**32 - 1 else expiry,
                    "queued": q.message_count if q is not None else 0,
                    "subscriptions": [
                        {"filter": s[0], "qos": s[1]} for s in rec.get("subs", ()) if s
                    ],
                }
            )
        return out

    def mqtt_retained(self) -> list[dict[str, Any]]:
        from polymq.core.message import Message

        out = []
        for topic, data in sorted(self.broker.kv(MQTT_RETAINED_NS).items()):
            try:
                msg = Message.from_bytes(data)
                body = msg.body
            except Exception:
                body = b""
            out.append(
                {
                    "topic": topic,
                    "payload_bytes": len(body),
                    "payload": jsonable(body[:256]),
                }
            )
        return out


_MQTT_VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}


def _channels_of(info: ConnectionInfo) -> dict | None:
    """AMQP-style channels, when the connection's session keeps a dict of them."""
    session = getattr(info.conn, "session", None)
    channels = getattr(session, "channels", None)
    return channels if isinstance(channels, dict) else None


def _binding_dict(vhost: str, source: str, kind: str, dest: str, key: str, args: dict) -> dict:
    return {
        "source": source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": kind,
        "routing_key": key,
        "arguments": jsonable(args),
        "properties_key": properties_key(key, args),
    }


def properties_key(key: str, args: dict) -> str:
    """The one path segment naming a binding between the same two ends (RabbitMQ's form)."""
    if not args:
        return key or "~"
    digest = (
        base64.urlsafe_b64encode(json.dumps(jsonable(args), sort_keys=True).encode())
        .decode()
        .rstrip("=")
    )
    return f"{key}~{digest}"
