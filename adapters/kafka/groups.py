"""The Kafka group coordinator (classic protocol) and durable committed offsets.

One coordinator per broker. A group goes Empty -> PreparingRebalance -> CompletingRebalance ->
Stable; a join, a leave or a missed session timeout starts a new rebalance. Generation ids grow
by one per completed join phase. Committed offsets are kept in ``broker.kv("kafka.offsets")``
(one record per group/topic/partition) and reloaded at start.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from . import codec as E

log = Logger(namespace="polymq.kafka.groups")

EMPTY = "Empty"
PREPARING = "PreparingRebalance"
COMPLETING = "CompletingRebalance"
STABLE = "Stable"
DEAD = "Dead"

OFFSETS_NS = "kafka.offsets"


class Member:
    __slots__ = (
        "id",
        "client_id",
        "client_host",
        "session_timeout",
        "rebalance_timeout",
        "protocols",
        "assignment",
        "join_reply",
        "sync_reply",
        "timer",
        "instance_id",
    )

    def __init__(self, member_id: str, client_id: str, client_host: str) -> None:
        self.id = member_id
        self.instance_id: str | None = None  # group.instance.id of a static member
        self.client_id = client_id
        self.client_host = client_host
        self.session_timeout = 10000
        self.rebalance_timeout = 10000
        self.protocols: list[tuple[str, bytes]] = []
        self.assignment = b""
        self.join_reply: Callable[[dict], None] | None = None
        self.sync_reply: Callable[[dict], None] | None = None
        self.timer: Any = None

    def metadata_for(self, protocol: str) -> bytes:
        for name, md in self.protocols:
            if name == protocol:
                return md
        return b""


class Group:
    def __init__(self, group_id: str) -> None:
        self.id = group_id
        self.state = EMPTY
        self.generation = 0
        self.protocol_type = ""
        self.protocol: str | None = None
        self.leader: str | None = None
        self.members: dict[str, Member] = {}
        self.timer: Any = None
        self.waiting_initial = False
        self.static: dict[str, str] = {}  # group.instance.id -> member id


class Coordinator:
    def __init__(self, broker: Any, initial_delay_ms: int = 0) -> None:
        self.broker = broker
        self.clock = broker.clock
        self.initial_delay = initial_delay_ms / 1000.0
        self.groups: dict[str, Group] = {}
        # group -> {(topic, partition): (offset, metadata)}
        self.offsets: dict[str, dict[tuple[str, int], tuple[int, str | None]]] = {}
        for key in list(broker.kv(OFFSETS_NS)):
            try:
                g, t, p = json.loads(key)
                off, md = broker.kv_get_obj(OFFSETS_NS, key)
                self.offsets.setdefault(g, {})[(t, int(p))] = (int(off), md)
            except Exception:
                log.warn("ignoring unreadable committed offset record {key!r}", key=key)

    # -- membership ---------------------------------------------------------------------------

    def join(
        self,
        group_id: str,
        member_id: str,
        client_id: str,
        client_host: str,
        session_timeout: int,
        rebalance_timeout: int,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        reply: Callable[[dict], None],
        instance_id: str | None = None,
    ) -> None:
        def fail(code: int) -> None:
            reply(
                {
                    "error_code": code,
                    "generation_id": -1,
                    "protocol_name": "",
                    "leader": "",
                    "member_id": member_id,
                    "members": [],
                }
            )

        if not group_id:
            return fail(E.INVALID_GROUP_ID)
        if session_timeout <= 0 or not protocols:
            return fail(
                E.INVALID_SESSION_TIMEOUT if session_timeout <= 0 else E.INCONSISTENT_GROUP_PROTOCOL
            )
        g = self.groups.get(group_id)
        if g is None:
            g = self.groups[group_id] = Group(group_id)
        others = [m for m in g.members.values() if m.id != member_id]
        if others:
            if protocol_type != g.protocol_type:
                return fail(E.INCONSISTENT_GROUP_PROTOCOL)
            common = {n for n, _ in protocols}
            for m in others:
                common &= {n for n, _ in m.protocols}
            if not common:
                return fail(E.INCONSISTENT_GROUP_PROTOCOL)
        known = g.static.get(instance_id) if instance_id else None
        if member_id and known is not None and known != member_id:
            return fail(E.FENCED_INSTANCE_ID)  # an older process with the same instance id
        if member_id:
            m = g.members.get(member_id)
            if m is None:
                return fail(E.UNKNOWN_MEMBER_ID)
        elif known is not None and known in g.members:
            # a static member back (restarted) before its session timed out: it takes the
            # place of its previous member id, without a rebalance when nothing changed
            if self._replace_static(g, g.members[known], client_id, protocols, reply):
                return
            m = g.members[g.static[instance_id]]
        else:
            m = Member(f"{client_id or 'member'}-{uuid.uuid4()}", client_id, client_host)
            m.instance_id = instance_id
            g.members[m.id] = m
            if instance_id:
                g.static[instance_id] = m.id
        g.protocol_type = protocol_type
        m.session_timeout = session_timeout
        m.rebalance_timeout = max(rebalance_timeout, session_timeout)
        m.protocols = list(protocols)
        if m.join_reply is not None:  # a second join while the first waits: answer the first
            old, m.join_reply = m.join_reply, None
            old(
                {
                    "error_code": E.REBALANCE_IN_PROGRESS,
                    "generation_id": -1,
                    "protocol_name": "",
                    "leader": "",
                    "member_id": m.id,
                    "members": [],
                }
            )
        m.join_reply = reply
        self._stop_timer(m)
        if g.state == PREPARING:
            self._maybe_complete(g)
        else:
            self._prepare(g)

    def _replace_static(
        self,
        g: Group,
        old: Member,
        client_id: str,
        protocols: list[tuple[str, bytes]],
        reply: Callable[[dict], None],
    ) -> bool:
        """Give a returning static member a new member id in its old place; True when it was
        answered at once (a stable group, same protocols: it keeps its assignment)."""
        if old.join_reply is not None:
            old.join_reply(
                {
                    "error_code": E.FENCED_INSTANCE_ID,
                    "generation_id": -1,
                    "protocol_name": "",
                    "leader": "",
                    "member_id": old.id,
                    "members": [],
                }
            )
        if old.sync_reply is not None:
            old.sync_reply({"error_code": E.FENCED_INSTANCE_ID, "assignment": b""})
        old.join_reply = old.sync_reply = None
        del g.members[old.id]
        new_id = f"{client_id or 'member'}-{uuid.uuid4()}"
        if g.leader == old.id:
            g.leader = new_id
        old.id = new_id
        old.client_id = client_id
        g.members[new_id] = old
        g.static[old.instance_id or ""] = new_id
        log.info("group {g}: static member {i} rejoined", g=g.id, i=old.instance_id)
        if g.state != STABLE or old.protocols != list(protocols):
            return False
        self._touch(g, old)
        reply(
            {
                "error_code": 0,
                "generation_id": g.generation,
                "protocol_name": g.protocol,
                "leader": g.leader,
                "member_id": new_id,
                "members": self._member_list(g) if new_id == g.leader else [],
            }
        )
        return True

    @staticmethod
    def _member_list(g: Group) -> list[dict]:
        return [
            {
                "member_id": m.id,
                "group_instance_id": m.instance_id,
                "metadata": m.metadata_for(g.protocol or ""),
            }
            for m in g.members.values()
        ]

    def _prepare(self, g: Group) -> None:
        was_empty = g.state == EMPTY
        for m in g.members.values():
            if m.sync_reply is not None:
                r, m.sync_reply = m.sync_reply, None
                r({"error_code": E.REBALANCE_IN_PROGRESS, "assignment": b""})
        g.state = PREPARING
        self._cancel(g)
        if was_empty and self.initial_delay > 0:
            g.waiting_initial = True
            g.timer = self.clock.callLater(self.initial_delay, self._initial_done, g)
            return
        self._arm_rebalance(g)
        self._maybe_complete(g)

    def _arm_rebalance(self, g: Group) -> None:
        timeout = max((m.rebalance_timeout for m in g.members.values()), default=10000)
        g.timer = self.clock.callLater(timeout / 1000.0, self._rebalance_timeout, g)

    def _initial_done(self, g: Group) -> None:
        g.timer = None
        g.waiting_initial = False
        self._arm_rebalance(g)
        self._maybe_complete(g)

    def _rebalance_timeout(self, g: Group) -> None:
        g.timer = None
        for m in list(g.members.values()):
            if m.join_reply is None:
                log.info("group {g}: member {m} did not rejoin in time", g=g.id, m=m.id)
                self._remove(g, m)
        self._maybe_complete(g, force=True)

    def _maybe_complete(self, g: Group, force: bool = False) -> None:
        if g.state != PREPARING or g.waiting_initial:
            return
        if not g.members:
            self._cancel(g)
            g.state = EMPTY
            return
        if all(m.join_reply is not None for m in g.members.values()):
            self._complete_join(g)
        elif force:
            self._arm_rebalance(g)

    def _complete_join(self, g: Group) -> None:
        self._cancel(g)
        g.generation += 1
        g.protocol = self._select_protocol(g)
        if g.leader not in g.members:
            g.leader = next(iter(g.members))
        g.state = COMPLETING
        members = self._member_list(g)
        for m in list(g.members.values()):
            reply, m.join_reply = m.join_reply, None
            m.assignment = b""
            self._touch(g, m)
            reply(
                {
                    "error_code": 0,
                    "generation_id": g.generation,
                    "protocol_name": g.protocol,
                    "leader": g.leader,
                    "member_id": m.id,
                    "members": members if m.id == g.leader else [],
                }
            )

    @staticmethod
    def _select_protocol(g: Group) -> str:
        ms = list(g.members.values())
        common = [n for n, _ in ms[0].protocols]
        for m in ms[1:]:
            names = {n for n, _ in m.protocols}
            common = [n for n in common if n in names]
        votes: dict[str, int] = {}
        for m in ms:
            for n, _ in m.protocols:
                if n in common:
                    votes[n] = votes.get(n, 0) + 1
                    break
        if not votes:
            return common[0] if common else ""
        best = max(votes.values())
        leader = g.members.get(g.leader) or ms[0]
        for n, _ in leader.protocols:
            if votes.get(n) == best:
                return n
        return max(votes, key=votes.__getitem__)

    def sync(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        assignments: list[tuple[str, bytes]],
        reply: Callable[[dict], None],
    ) -> None:
        g = self.groups.get(group_id)
        m = g.members.get(member_id) if g else None
        if m is None:
            return reply({"error_code": E.UNKNOWN_MEMBER_ID, "assignment": b""})
        if generation != g.generation:
            return reply({"error_code": E.ILLEGAL_GENERATION, "assignment": b""})
        self._touch(g, m)
        if g.state == PREPARING:
            return reply({"error_code": E.REBALANCE_IN_PROGRESS, "assignment": b""})
        if g.state == STABLE:
            return reply({"error_code": 0, "assignment": m.assignment})
        if m.sync_reply is not None:
            # a repeated SyncGroup: the earlier one must still be answered, or every later
            # answer on its connection would wait behind it forever
            m.sync_reply({"error_code": E.REBALANCE_IN_PROGRESS, "assignment": b""})
        m.sync_reply = reply
        if member_id == g.leader:
            given = dict(assignments)
            for other in g.members.values():
                other.assignment = given.get(other.id, b"")
            g.state = STABLE
            for other in g.members.values():
                if other.sync_reply is not None:
                    r, other.sync_reply = other.sync_reply, None
                    r({"error_code": 0, "assignment": other.assignment})

    def heartbeat(self, group_id: str, generation: int, member_id: str) -> int:
        g = self.groups.get(group_id)
        m = g.members.get(member_id) if g else None
        if m is None:
            return E.UNKNOWN_MEMBER_ID
        if m.join_reply is None:
            self._touch(g, m)
        if g.state == PREPARING:
            return E.REBALANCE_IN_PROGRESS
        if generation != g.generation:
            return E.ILLEGAL_GENERATION
        return 0

    def leave(self, group_id: str, member_id: str) -> int:
        g = self.groups.get(group_id)
        m = g.members.get(member_id) if g else None
        if m is None:
            return E.UNKNOWN_MEMBER_ID
        log.info("group {g}: member {m} left", g=g.id, m=m.id)
        self._remove(g, m)
        self._after_removal(g)
        return 0

    def _after_removal(self, g: Group) -> None:
        if not g.members:
            self._cancel(g)
            for_empty = g.state
            g.state = EMPTY
            g.leader = None
            if for_empty == PREPARING:
                g.waiting_initial = False
            return
        if g.state in (STABLE, COMPLETING):
            self._prepare(g)
        elif g.state == PREPARING:
            self._maybe_complete(g)

    def _remove(self, g: Group, m: Member) -> None:
        self._stop_timer(m)
        g.members.pop(m.id, None)
        if m.instance_id and g.static.get(m.instance_id) == m.id:
            del g.static[m.instance_id]
        if m.join_reply is not None:
            r, m.join_reply = m.join_reply, None
            r(
                {
                    "error_code": E.UNKNOWN_MEMBER_ID,
                    "generation_id": -1,
                    "protocol_name": "",
                    "leader": "",
                    "member_id": m.id,
                    "members": [],
                }
            )
        if m.sync_reply is not None:
            r, m.sync_reply = m.sync_reply, None
            r({"error_code": E.UNKNOWN_MEMBER_ID, "assignment": b""})
        if g.leader == m.id:
            g.leader = None

    def _touch(self, g: Group, m: Member) -> None:
        self._stop_timer(m)
        m.timer = self.clock.callLater(m.session_timeout / 1000.0, self._expired, g, m)

    def _expired(self, g: Group, m: Member) -> None:
        m.timer = None
        if g.members.get(m.id) is not m:
            return
        log.info("group {g}: member {m} session timed out", g=g.id, m=m.id)
        self._remove(g, m)
        self._after_removal(g)

    @staticmethod
    def _stop_timer(m: Member) -> None:
        if m.timer is not None:
            if m.timer.active():
                m.timer.cancel()
            m.timer = None

    @staticmethod
    def _cancel(g: Group) -> None:
        if g.timer is not None:
            if g.timer.active():
                g.timer.cancel()
            g.timer = None

    # -- offsets ------------------------------------------------------------------------------

    def check_commit(self, group_id: str, generation: int, member_id: str) -> int:
        if not group_id:
            return E.INVALID_GROUP_ID
        if generation < 0:
            return 0  # a commit outside group membership (simple consumer, admin)
        g = self.groups.get(group_id)
        if g is None or member_id not in g.members:
            return E.UNKNOWN_MEMBER_ID
        if generation != g.generation:
            return E.ILLEGAL_GENERATION
        if g.state == COMPLETING:
            return E.REBALANCE_IN_PROGRESS
        return 0

    def commit(
        self, group_id: str, topic: str, partition: int, offset: int, metadata: str | None
    ) -> None:
        self.offsets.setdefault(group_id, {})[(topic, partition)] = (offset, metadata)
        self.broker.kv_put_obj(
            OFFSETS_NS, json.dumps([group_id, topic, partition]), [offset, metadata]
        )

    def committed(self, group_id: str, topic: str, partition: int) -> tuple[int, str | None]:
        return self.offsets.get(group_id, {}).get((topic, partition), (-1, ""))

    def committed_all(self, group_id: str) -> dict[tuple[str, int], tuple[int, str | None]]:
        return dict(self.offsets.get(group_id, {}))

    def forget_topic(self, topic: str) -> None:
        for g, offs in self.offsets.items():
            for t, p in [k for k in offs if k[0] == topic]:
                del offs[(t, p)]
                self.broker.kv_delete(OFFSETS_NS, json.dumps([g, t, p]))

    def delete_offset(self, group_id: str, topic: str, partition: int) -> None:
        offs = self.offsets.get(group_id)
        if offs is not None and offs.pop((topic, partition), None) is not None:
            self.broker.kv_delete(OFFSETS_NS, json.dumps([group_id, topic, partition]))

    # -- admin --------------------------------------------------------------------------------

    def known(self, group_id: str) -> bool:
        return group_id in self.groups or group_id in self.offsets

    def delete_group(self, group_id: str) -> int:
        """DeleteGroups: only a group without members; its committed offsets go with it."""
        g = self.groups.get(group_id)
        if g is not None and g.members:
            return E.NON_EMPTY_GROUP
        if not self.known(group_id):
            return E.GROUP_ID_NOT_FOUND
        if g is not None:
            self._cancel(g)
            del self.groups[group_id]
        for t, p in list(self.offsets.get(group_id, {})):
            self.delete_offset(group_id, t, p)
        self.offsets.pop(group_id, None)
        log.info("group {g} deleted", g=group_id)
        return 0

    def subscribed_topics(self, group_id: str) -> set[str]:
        """The topics the members of a consumer group subscribe to (from their join metadata:
        the consumer protocol's version, then its topic names)."""
        g = self.groups.get(group_id)
        out: set[str] = set()
        if g is None or g.protocol_type != "consumer":
            return out
        for m in g.members.values():
            md = m.metadata_for(g.protocol or "")
            try:
                (count,) = struct.unpack_from(">i", md, 2)
                pos = 6
                for _ in range(count):
                    (n,) = struct.unpack_from(">h", md, pos)
                    out.add(md[pos + 2 : pos + 2 + n].decode("utf-8"))
                    pos += 2 + n
            except (struct.error, UnicodeDecodeError):
                continue
        return out

    def list_groups(self) -> list[tuple[str, str]]:
        names = dict.fromkeys(list(self.groups) + list(self.offsets))
        out = []
        for n in names:
            g = self.groups.get(n)
            out.append((n, g.protocol_type if g and g.protocol_type else "consumer"))
        return out

    def describe(self, group_id: str) -> dict:
        g = self.groups.get(group_id)
        if g is None:
            state = EMPTY if group_id in self.offsets else DEAD
            return {
                "error_code": 0,
                "group_id": group_id,
                "group_state": state,
                "protocol_type": "",
                "protocol_data": "",
                "members": [],
                "authorized_operations": -2147483648,
            }
        members = []
        for m in g.members.values():
            members.append(
                {
                    "member_id": m.id,
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                    "member_metadata": m.metadata_for(g.protocol or ""),
                    "member_assignment": m.assignment,
                }
            )
        return {
            "error_code": 0,
            "group_id": g.id,
            "group_state": g.state,
            "protocol_type": g.protocol_type,
            "protocol_data": g.protocol if g.state == STABLE and g.protocol else "",
            "members": members,
            "authorized_operations": -2147483648,
        }

    def close(self) -> None:
        for g in self.groups.values():
            self._cancel(g)
            for m in g.members.values():
                self._stop_timer(m)
