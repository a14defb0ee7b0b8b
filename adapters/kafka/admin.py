"""Admin requests: CreateTopics, DeleteTopics, CreatePartitions, DeleteRecords, DescribeConfigs,
AlterConfigs / IncrementalAlterConfigs (topic retention), DeleteGroups, OffsetDelete and
DescribeCluster. Each handler is a method of :class:`~.session.KafkaSession` (see its
HANDLERS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from polymq.core.errors import BrokerError
from polymq.core.stream import Stream, parse_max_age

from . import codec as C
from .server import CLUSTER_ID, NODE_ID, TOPIC_RE

if TYPE_CHECKING:
    from .session import KafkaSession

log = Logger(namespace="polymq.kafka")

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
MAX_PARTITIONS = 10000
# the topic configs that change how the stream keeps records; the others are kept and reported
RETENTION_MS = "retention.ms"
RETENTION_BYTES = "retention.bytes"
SET, DELETE, APPEND, SUBTRACT = range(4)  # IncrementalAlterConfigs operations


def create_partitions(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    srv = session.server
    results = []
    for t in req.topics:
        r = {"name": t.name, "error_code": 0, "error_message": None}
        s = srv.topic(t.name)
        if s is None:
            r.update(error_code=C.UNKNOWN_TOPIC_OR_PARTITION, error_message="unknown topic")
        elif not session.conn.authorize("configure", "topic", t.name):
            r.update(error_code=C.TOPIC_AUTHORIZATION_FAILED, error_message="not authorized")
        elif t.count <= len(s.partitions) or t.count > MAX_PARTITIONS:
            r.update(
                error_code=C.INVALID_PARTITIONS,
                error_message=f"topic has {len(s.partitions)} partitions; asked for {t.count}",
            )
        elif t.assignments is not None and any(
            list(a.broker_ids) != [NODE_ID] for a in t.assignments
        ):
            r.update(
                error_code=C.INVALID_REQUEST,
                error_message=f"the only broker is {NODE_ID}",
            )
        elif not req.validate_only:
            s.add_partitions(t.count)
        results.append(r)
    reply({"results": results}, durable=True)


def delete_records(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    """Move each partition's log start up to the given offset (-1: the high watermark). The
    log start lands on the first batch boundary at or before the offset: records of a batch are
    kept while any of them is wanted."""
    srv = session.server
    topics = []
    for t in req.topics:
        s = srv.topic(t.name)
        allowed = s is not None and session.conn.authorize("configure", "topic", t.name)
        parts = []
        for rp in t.partitions:
            out = {"partition_index": rp.partition_index, "low_watermark": -1, "error_code": 0}
            if s is None or not 0 <= rp.partition_index < len(s.partitions):
                out["error_code"] = C.UNKNOWN_TOPIC_OR_PARTITION
            elif not allowed:
                out["error_code"] = C.TOPIC_AUTHORIZATION_FAILED
            else:
                p = s.partitions[rp.partition_index]
                offset = p.next_offset if rp.offset == -1 else rp.offset
                if not p.start_offset <= offset <= p.next_offset:
                    if offset < p.start_offset:
                        out["low_watermark"] = p.start_offset  # already gone
                    else:
                        out["error_code"] = C.OFFSET_OUT_OF_RANGE
                else:
                    p.trim_before(offset)
                    out["low_watermark"] = p.start_offset
            parts.append(out)
        topics.append({"name": t.name, "partitions": parts})
    reply({"topics": topics}, durable=True)


def _apply_topic_configs(s: Stream, configs: dict[str, str | None]) -> None:
    """Set the stream's retention from ``retention.ms`` / ``retention.bytes`` (None or -1:
    the broker default) and keep every config for DescribeConfigs; persisted with the
    stream's record."""
    args = s.arguments
    if RETENTION_MS in configs:
        value = configs[RETENTION_MS]
        if value in (None, "-1"):
            args.pop("x-max-age", None)
            s.max_age_ms = s.vhost.stream_retention_ms
        else:
            args["x-max-age"] = int(value)
            s.max_age_ms = parse_max_age(int(value))
    if RETENTION_BYTES in configs:
        value = configs[RETENTION_BYTES]
        if value in (None, "-1"):
            args.pop("x-max-length-bytes", None)
            s.max_bytes = s.vhost.stream_retention_bytes
        else:
            args["x-max-length-bytes"] = int(value)
            s.max_bytes = int(value)
    kept = {k: v for k, v in configs.items() if k not in (RETENTION_MS, RETENTION_BYTES)}
    for k in [k for k, v in kept.items() if v is None]:
        s.config.pop(k, None)
        del kept[k]
    s.set_config(kept)  # also writes the stream's record, with its arguments
    for p in s.partitions:
        s._retain(p)
    s.apply_retention()


def _check_topic_configs(configs: dict[str, str | None]) -> str | None:
    """Why ``configs`` cannot be applied, or None."""
    for k in (RETENTION_MS, RETENTION_BYTES):
        v = configs.get(k)
        if v is None:
            continue
        try:
            if int(v) < -1:
                return f"{k} must be -1 or more"
        except ValueError:
            return f"{k} must be an integer"
    if "compact" in (configs.get("cleanup.policy") or ""):
        return "cleanup.policy=compact is not supported (delete only)"
    return None


def _resource_result(r: Any) -> dict:
    """The answer about one resource of AlterConfigs or DescribeConfigs: fine, until told."""
    return {
        "error_code": 0,
        "error_message": None,
        "resource_type": r.resource_type,
        "resource_name": r.resource_name,
    }


def _alter(
    session: KafkaSession, req: Any, reply: Callable, new_configs: Callable[[Stream, Any], Any]
) -> None:
    responses = []
    for r in req.resources:
        res = _resource_result(r)
        responses.append(res)
        if r.resource_type != TOPIC_RESOURCE:
            res.update(
                error_code=C.INVALID_REQUEST,
                error_message="only topic configs can be altered (broker configs are read-only)",
            )
            continue
        s = session.server.topic(r.resource_name)
        if s is None:
            res.update(error_code=C.UNKNOWN_TOPIC_OR_PARTITION, error_message="unknown topic")
            continue
        if not session.conn.authorize("configure", "topic", r.resource_name):
            res.update(error_code=C.TOPIC_AUTHORIZATION_FAILED, error_message="not authorized")
            continue
        configs = new_configs(s, r.configs)
        if isinstance(configs, str):
            res.update(error_code=C.INVALID_CONFIG, error_message=configs)
            continue
        problem = _check_topic_configs(configs)
        if problem:
            res.update(error_code=C.INVALID_CONFIG, error_message=problem)
        elif not req.validate_only:
            _apply_topic_configs(s, configs)
    reply({"responses": responses}, durable=True)


def alter_configs(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    """AlterConfigs replaces a topic's whole set: what it does not name goes back to the
    default."""

    def replace(s: Stream, given: Any) -> dict[str, str | None]:
        configs: dict[str, str | None] = dict.fromkeys(s.config)
        configs[RETENTION_MS] = None
        configs[RETENTION_BYTES] = None
        configs.update({c.name: c.value for c in given})
        return configs

    _alter(session, req, reply, replace)


def incremental_alter_configs(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    def change(s: Stream, given: Any) -> dict[str, str | None] | str:
        configs: dict[str, str | None] = {}
        for c in given:
            if c.config_operation == SET:
                configs[c.name] = c.value
            elif c.config_operation == DELETE:
                configs[c.name] = None
            else:  # APPEND / SUBTRACT apply to list configs; none of the topic's are lists
                return f"{c.name} is not a list config"
        return configs

    _alter(session, req, reply, change)


def delete_groups(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    co = session.server.coordinator
    results = []
    for g in req.groups_names:
        if not session.conn.authorize("configure", "group", g):
            code = C.GROUP_AUTHORIZATION_FAILED
        else:
            code = co.delete_group(g)
        results.append({"group_id": g, "error_code": code})
    reply({"results": results}, durable=True)


def offset_delete(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    co = session.server.coordinator
    if not session.conn.authorize("configure", "group", req.group_id):
        return reply({"error_code": C.GROUP_AUTHORIZATION_FAILED, "topics": []})
    if not co.known(req.group_id):
        return reply({"error_code": C.GROUP_ID_NOT_FOUND, "topics": []})
    subscribed = co.subscribed_topics(req.group_id)
    topics = []
    for t in req.topics:
        parts = []
        for p in t.partitions:
            if t.name in subscribed:
                code = C.GROUP_SUBSCRIBED_TO_TOPIC
            else:
                co.delete_offset(req.group_id, t.name, p.partition_index)
                code = 0
            parts.append({"partition_index": p.partition_index, "error_code": code})
        topics.append({"name": t.name, "partitions": parts})
    reply({"error_code": 0, "topics": topics}, durable=True)


def describe_cluster(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    b = session.broker_entry()
    # v1 asks for brokers (1) or controllers (2); this one node answers as a broker
    code = C.INVALID_REQUEST if ver >= 1 and req.endpoint_type != 1 else 0
    reply(
        {
            "error_code": code,
            "error_message": "only broker endpoints are described" if code else None,
            "endpoint_type": 1,
            "cluster_id": CLUSTER_ID,
            "controller_id": NODE_ID,
            "brokers": [{"broker_id": NODE_ID, "host": b["host"], "port": b["port"], "rack": None}],
            "cluster_authorized_operations": -2147483648,
        }
    )


def create_topics(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    srv = session.server
    out = []
    for t in req.topics:
        r = {"name": t.name, "error_code": 0, "error_message": None}
        n = t.num_partitions
        if t.assignments:
            n = len(t.assignments)
        if n == -1:
            n = srv.num_partitions
        if not TOPIC_RE.match(t.name) or t.name in (".", ".."):
            r.update(error_code=C.INVALID_TOPIC_EXCEPTION, error_message="invalid name")
        elif t.name in session.vhost.queues:
            r.update(
                error_code=C.TOPIC_ALREADY_EXISTS,
                error_message=f"Topic '{t.name}' already exists.",
            )
        elif n <= 0 or n > MAX_PARTITIONS:
            r.update(error_code=C.INVALID_PARTITIONS, error_message="invalid partitions")
        elif t.replication_factor not in (-1, 1):
            r.update(
                error_code=C.INVALID_REPLICATION_FACTOR,
                error_message="replication factor must be 1 (one broker)",
            )
        elif any(c.name == "cleanup.policy" and "compact" in (c.value or "") for c in t.configs):
            r.update(
                error_code=C.INVALID_CONFIG,  # compaction is not implemented
                error_message="cleanup.policy=compact is not supported (delete only)",
            )
        elif not (
            session.may_configure_cluster() or session.conn.authorize("configure", "topic", t.name)
        ):
            # Kafka: Create on the cluster, else Create on the topic
            r.update(error_code=C.TOPIC_AUTHORIZATION_FAILED, error_message="not authorized")
        elif not (ver >= 1 and req.validate_only):
            try:
                srv.create_topic(t.name, n, {c.name: c.value for c in t.configs})
            except BrokerError as e:
                r.update(error_code=C.INVALID_REQUEST, error_message=e.text)
        out.append(r)
    reply({"topics": out})


def delete_topics(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    out = []
    for name in req.topic_names:
        s = session.server.topic(name)
        if s is None:
            out.append({"name": name, "error_code": C.UNKNOWN_TOPIC_OR_PARTITION})
            continue
        if not session.conn.authorize("configure", "topic", name):
            out.append({"name": name, "error_code": C.TOPIC_AUTHORIZATION_FAILED})
            continue
        try:
            session.vhost.delete_queue(name)
            session.server.coordinator.forget_topic(name)
            session.server.txn.forget_topic(name)
            for key in [k for k in session.server.producers if k[1] == name]:
                del session.server.producers[key]
            log.info("kafka topic {t} deleted", t=name)
            out.append({"name": name, "error_code": 0})
        except BrokerError:
            out.append({"name": name, "error_code": C.UNKNOWN_SERVER_ERROR})
    reply({"responses": out}, durable=True)


def describe_configs(session: KafkaSession, ver: int, req: Any, reply: Callable) -> None:
    results = []
    for r in req.resources:
        res = _resource_result(r)
        res["configs"] = []
        results.append(res)
        if r.resource_type == TOPIC_RESOURCE:
            s = session.server.topic(r.resource_name)
            if not session.conn.authorize("configure", "topic", r.resource_name):
                res.update(error_code=C.TOPIC_AUTHORIZATION_FAILED, error_message="not authorized")
                continue
            if s is None:
                res.update(error_code=C.UNKNOWN_TOPIC_OR_PARTITION, error_message="unknown topic")
                continue
            values = _topic_configs(session, s)
        elif r.resource_type == BROKER_RESOURCE:
            if not session.may_configure_cluster():
                res.update(
                    error_code=C.CLUSTER_AUTHORIZATION_FAILED,
                    error_message="not authorized to describe the cluster's configuration",
                )
                continue
            values = {
                "message.max.bytes": (str(session.broker.max_message_size), True),
                "num.partitions": (str(session.server.num_partitions), True),
                "auto.create.topics.enable": (str(session.server.auto_create).lower(), True),
                "broker.id": (str(NODE_ID), True),
            }
        else:
            res.update(error_code=C.INVALID_REQUEST, error_message="unsupported resource")
            continue
        keys = r.configuration_keys
        for name, (value, default) in values.items():
            if keys is not None and name not in keys:
                continue
            res["configs"].append(
                {
                    "name": name,
                    "value": value,
                    "read_only": True,
                    "is_default": default,
                    "config_source": 5 if default else 1,
                    "is_sensitive": False,
                    "synonyms": [],
                }
            )
    reply({"results": results})


def _topic_configs(session: KafkaSession, s: Stream) -> dict[str, tuple[str, bool]]:
    values = {
        "cleanup.policy": ("delete", True),
        "retention.ms": (
            str(s.max_age_ms if s.max_age_ms is not None else -1),
            s.max_age_ms is None,
        ),
        "retention.bytes": (
            str(s.max_bytes if s.max_bytes is not None else -1),
            s.max_bytes is None,
        ),
        "max.message.bytes": (str(session.broker.max_message_size), True),
        "message.timestamp.type": ("CreateTime", True),
        "compression.type": ("producer", True),
    }
    for k, v in s.config.items():
        values[k] = (str(v), False)
    return values
