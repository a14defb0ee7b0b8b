"""The consumer-group requests of a connection: FindCoordinator, JoinGroup, SyncGroup,
Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups and DescribeGroups. They check the
permissions and hand the group's state to the coordinator (:mod:`.groups`). Each handler is a
method of :class:`~.session.KafkaSession` (see its HANDLERS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import codec as C
from .server import NODE_ID

if TYPE_CHECKING:
    from .session import KafkaSession


def find_coordinator(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    b = session.broker_entry()
    key_type = req.key_type if ver >= 1 else 0
    if key_type == 0 and not session.may_describe("group", req.key):
        return reply(
            {
                "error_code": C.GROUP_AUTHORIZATION_FAILED,
                "error_message": "not authorized",
                "node_id": -1,
                "host": "",
                "port": -1,
            }
        )
    if key_type not in (0, 1):  # 0 group, 1 transaction
        return reply(
            {
                "error_code": C.INVALID_REQUEST,
                "error_message": f"unknown coordinator key type {key_type}",
                "node_id": -1,
                "host": "",
                "port": -1,
            }
        )
    reply(
        {
            "error_code": 0,
            "error_message": None,
            "node_id": NODE_ID,
            "host": b["host"],
            "port": b["port"],
        }
    )


def join_group(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    if not session.conn.authorize("read", "group", req.group_id):
        return reply(
            {
                "error_code": C.GROUP_AUTHORIZATION_FAILED,
                "generation_id": -1,
                "protocol_name": "",
                "leader": "",
                "member_id": req.member_id,
                "members": [],
            }
        )
    rebalance = req.rebalance_timeout_ms if ver >= 1 else req.session_timeout_ms
    session.server.coordinator.join(
        req.group_id,
        req.member_id,
        session.client_id,
        "/" + (session.conn.info.peer_host or "?"),
        req.session_timeout_ms,
        rebalance,
        req.protocol_type,
        [(p.name, p.metadata) for p in req.protocols],
        reply,
        req.group_instance_id if ver >= 5 else None,
    )


def sync_group(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    if not session.conn.authorize("read", "group", req.group_id):
        return reply({"error_code": C.GROUP_AUTHORIZATION_FAILED, "assignment": b""})
    session.server.coordinator.sync(
        req.group_id,
        req.generation_id,
        req.member_id,
        [(a.member_id, a.assignment) for a in req.assignments],
        reply,
    )


def heartbeat(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    if not session.conn.authorize("read", "group", req.group_id):
        return reply({"error_code": C.GROUP_AUTHORIZATION_FAILED})
    reply(
        {
            "error_code": session.server.coordinator.heartbeat(
                req.group_id, req.generation_id, req.member_id
            )
        }
    )


def leave_group(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    if not session.conn.authorize("read", "group", req.group_id):
        return reply({"error_code": C.GROUP_AUTHORIZATION_FAILED})
    reply({"error_code": session.server.coordinator.leave(req.group_id, req.member_id)})


def offset_commit(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    co = session.server.coordinator
    if not session.conn.authorize("read", "group", req.group_id):
        code = C.GROUP_AUTHORIZATION_FAILED
    else:
        code = co.check_commit(req.group_id, req.generation_id, req.member_id)
    topics = []
    for t in req.topics:
        parts = []
        topic_code = (
            code
            if code or session.conn.authorize("read", "topic", t.name)
            else C.TOPIC_AUTHORIZATION_FAILED
        )
        for p in t.partitions:
            c = topic_code
            if not c:
                co.commit(
                    req.group_id,
                    t.name,
                    p.partition_index,
                    p.committed_offset,
                    p.committed_metadata,
                )
            parts.append({"partition_index": p.partition_index, "error_code": c})
        topics.append({"name": t.name, "partitions": parts})
    reply({"topics": topics}, durable=True)


def offset_fetch(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    co = session.server.coordinator
    topics = []
    if not session.may_describe("group", req.group_id):
        return reply({"topics": [], "error_code": C.GROUP_AUTHORIZATION_FAILED})
    if req.topics is None:
        by_topic: dict[str, list] = {}
        for (t, p), (off, md) in sorted(co.committed_all(req.group_id).items()):
            by_topic.setdefault(t, []).append((p, off, md))
    else:
        by_topic = {
            t.name: [(p, *co.committed(req.group_id, t.name, p)) for p in t.partition_indexes]
            for t in req.topics
        }
    for name, parts in by_topic.items():
        code = 0 if session.may_describe("topic", name) else C.TOPIC_AUTHORIZATION_FAILED
        if code and req.topics is None:
            continue  # all of the group's offsets: topics it may not describe left out
        topics.append(
            {
                "name": name,
                "partitions": [
                    {
                        "partition_index": p,
                        "committed_offset": off,
                        "committed_leader_epoch": -1,
                        "metadata": md if md is not None else "",
                        "error_code": code,
                    }
                    for p, off, md in parts
                ],
            }
        )
    reply({"topics": topics, "error_code": 0})


def list_groups(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    reply(
        {
            "error_code": 0,
            "groups": [
                # Kafka: Describe on the cluster lists all; otherwise per group, silently
                {"group_id": g, "protocol_type": t}
                for g, t in session.server.coordinator.list_groups()
                if session.may_configure_cluster() or session.may_describe("group", g)
            ],
        }
    )


def describe_groups(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    groups = []
    for g in req.groups:
        if session.may_describe("group", g):
            groups.append(session.server.coordinator.describe(g))
            continue
        groups.append(
            {
                "error_code": C.GROUP_AUTHORIZATION_FAILED,
                "group_id": g,
                "group_state": "",
                "protocol_type": "",
                "protocol_data": "",
                "members": [],
                "authorized_operations": -2147483648,
            }
        )
    reply({"groups": groups})
