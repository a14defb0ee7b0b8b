"""What every connection of one RocketMQ listener shares: topics (core streams, one partition
per queue), consumer-group membership from heartbeats, committed group offsets, and the
translation between RocketMQ messages and core messages."""

from __future__ import annotations

import re
import socket
import zlib
from typing import Any

from twisted.logger import Logger

from polymq.core.message import Message
from polymq.core.stream import Partition, Stream, StreamEntry

from . import codec as C

log = Logger(namespace="polymq.rocketmq")

PROTOCOL = "rocketmq"
OFFSETS_NS = "rocketmq.offsets"
TOPIC_RE = re.compile(r"^[%|A-Za-z0-9_-]{1,127}$")
DEFAULT_DELAY_LEVELS = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
_DELAY_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
RETRY_PREFIX = "%RETRY%"
DLQ_PREFIX = "%DLQ%"
PERM_READ_WRITE = 6
MASTER_ID = "0"
# a member that sent no heartbeat for this long has left its group (the Java broker's figure)
MEMBER_EXPIRY_S = 120.0

# The properties RocketMQ itself sets (org.apache.rocketmq.common.message.MessageConst): they
# travel in the annotation ``rocketmq.props``; every other property is an application header.
SYSTEM_PROPERTIES = frozenset(
    {
        "KEYS", "TAGS", "WAIT", "DELAY", "RETRY_TOPIC", "REAL_TOPIC", "REAL_QID", "TRAN_MSG",
        "PGROUP", "MIN_OFFSET", "MAX_OFFSET", "BUYER_ID", "ORIGIN_MESSAGE_ID",
        "TRANSFER_FLAG", "CORRECTION_FLAG", "MQ2_FLAG", "RECONSUME_TIME", "MSG_REGION",
        "TRACE_ON", "UNIQ_KEY", "MAX_RECONSUME_TIMES", "CONSUME_START_TIME",
        "TRAN_PREPARED_QUEUE_OFFSET", "TRANSACTION_CHECK_TIMES", "CHECK_IMMUNITY_TIME_IN_SECONDS",
        "INSTANCE_ID", "CORRELATION_ID", "REPLY_TO_CLIENT", "TTL", "ARRIVE_TIME",
        "PUSH_REPLY_TIME", "CLUSTER", "MSG_TYPE", "__SHARDING_KEY", "__STARTDELIVERTIME",
    }
)  # fmt: skip

# properties a stored message carries only while it is in flight
_TRANSIENT = ("MIN_OFFSET", "MAX_OFFSET", "WAIT")


class Member:
    """One client (``clientID``) in one consumer group, as its last heartbeat described it."""

    __slots__ = ("client_id", "session", "model", "subscriptions", "seen")

    def __init__(self, client_id: str, session: Any, model: str, seen: float) -> None:
        self.client_id = client_id
        self.session = session
        self.model = model
        self.subscriptions: dict[str, frozenset[str] | None] = {}  # topic -> tags (None: all)
        self.seen = seen


def parse_tags(expression: str | None) -> frozenset[str] | None:
    """A tag expression (``*``, ``a || b``) as a set of tags; None matches every message."""
    if expression is None:
        return None
    expression = expression.strip()
    if expression in ("", "*"):
        return None
    return frozenset(t.strip() for t in expression.split("||") if t.strip())


def parse_delay_levels(text: str) -> list[int]:
    """RocketMQ's ``messageDelayLevel`` (``"1s 5s 10s 30s 1m ..."``, units ms, s, m, h, d) as
    the delay of each level in ms, level 1 first."""
    levels = []
    for word in text.split():
        m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", word)
        if m is None:
            raise ValueError(f"bad delay level {word!r} (a number then ms, s, m, h or d)")
        levels.append(int(m.group(1)) * _DELAY_UNITS_MS[m.group(2)])
    if not levels:
        raise ValueError("no delay levels")
    return levels


def message_tag(m: Message) -> str | None:
    tag = m.annotations.get("rocketmq.tags")
    if tag is None:
        tag = m.headers.get("TAGS")
        if isinstance(tag, bytes):
            tag = tag.decode("utf-8", "replace")
    return tag if isinstance(tag, str) else None


def to_core(
    body: bytes, props: dict[str, str], born: int, reconsume_times: int = 0, flag: int = 0
) -> Message:
    """A RocketMQ message as a core message: user properties become headers, system properties
    an annotation, KEYS the key, UNIQ_KEY the message id, the born time the timestamp."""
    headers: dict[str, Any] = {}
    system: dict[str, str] = {}
    for k, v in props.items():
        if k in SYSTEM_PROPERTIES:
            if k not in _TRANSIENT:
                system[k] = v
        else:
            headers[k] = v
    ann: dict[str, Any] = {"rocketmq.props": system}
    tag = system.get("TAGS")
    if tag:
        ann["rocketmq.tags"] = tag
    if reconsume_times:
        ann["rocketmq.reconsume_times"] = reconsume_times
    if flag:
        ann["rocketmq.flag"] = flag
    keys = system.get("KEYS")
    return Message(
        body,
        key=keys.encode() if keys else None,
        headers=headers,
        message_id=system.get("UNIQ_KEY"),
        timestamp=born if born > 0 else None,
        durable=True,
        annotations=ann,
    )


def _text(v: Any) -> str | None:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    elif isinstance(v, bool):
        v = "true" if v else "false"
    elif v is None:
        return None
    else:
        v = str(v)
    return v


def to_properties(m: Message) -> bytes:
    """The property string of a core message (what :func:`to_core` took apart, put back)."""
    props: dict[str, str] = {}
    system = m.annotations.get("rocketmq.props")
    if isinstance(system, dict):
        props.update(system)
    for k, v in m.headers.items():
        t = _text(v)
        if t is not None and k not in props:
            props[str(k)] = t
    if m.key is not None and "KEYS" not in props:
        props["KEYS"] = m.key.decode("utf-8", "replace")
    if m.message_id is not None and "UNIQ_KEY" not in props:
        props["UNIQ_KEY"] = str(m.message_id)
    out = bytearray()
    for k, v in props.items():
        if "\x01" in k or "\x02" in k or "\x01" in v or "\x02" in v:
            continue  # cannot be told apart from the separators
        item = f"{k}\x01{v}\x02".encode()
        if len(out) + len(item) > 32767:
            break  # the record's property length is a signed short
        out += item
    return bytes(out)


class RocketServer:
    """State shared by every connection of one RocketMQ listener (and its siblings)."""

    def __init__(self, broker: Any, section: dict) -> None:
        self.broker = broker
        self.section = section
        self.vhost = broker.vhost(section.get("vhost") or None)
        self.advertised_host: str = section.get("advertised_host") or "127.0.0.1"
        self.advertised_port: int = int(section.get("advertised_port") or 0)
        self.broker_name: str = section.get("broker_name") or "polymq"
        self.cluster_name: str = section.get("cluster_name") or "polymq"
        self.queue_nums: int = max(1, min(32, int(section.get("queue_nums") or 4)))
        self.auto_create: bool = bool(section.get("auto_create_topics", True))
        self.max_reconsume_times: int = int(section.get("max_reconsume_times") or 16)
        self.delay_levels_ms = parse_delay_levels(
            str(section.get("delay_levels") or DEFAULT_DELAY_LEVELS)
        )
        self.max_suspend_s: float = float(section.get("max_suspend_ms") or 30000) / 1000.0
        try:
            self.store_host = socket.inet_aton(self.advertised_host)
        except OSError:
            self.store_host = socket.inet_aton("127.0.0.1")
        self.groups: dict[str, dict[str, Member]] = {}
        self.offsets: dict[tuple[str, str, int], int] = {}
        for key in list(broker.kv(OFFSETS_NS)):
            group, _, rest = key.partition("\t")
            topic, _, qid = rest.rpartition("\t")
            try:
                self.offsets[(group, topic, int(qid))] = int(broker.kv_get_obj(OFFSETS_NS, key))
            except (TypeError, ValueError):
                log.warn("rocketmq: ignoring a bad stored offset record {k!r}", k=key)

    # -- topics ----------------------------------------------------------------------------

    def topic(self, name: str, create: bool = False) -> Stream | None:
        q = self.vhost.queues.get(name)
        if q is not None:
            return q if q.kind == "stream" else None
        if not create or not self.auto_create or not TOPIC_RE.match(name):
            return None
        return self.create_topic(name, self.queue_nums)

    def create_topic(self, name: str, queues: int) -> Stream:
        internal = name.startswith((RETRY_PREFIX, DLQ_PREFIX))
        if internal:
            queues = 1  # as RocketMQ: one queue per retry and dead-letter topic
        s = self.vhost.declare_stream(name, partitions=max(1, min(32, queues)))
        if not internal:
            # reached by publishers of every protocol, as a Kafka topic is
            self.vhost.bind_queue(name, "amq.topic", name)
        log.info("rocketmq topic {t} created with {n} queues", t=name, n=len(s.partitions))
        return s

    def route_data(self, s: Stream, address: str) -> dict:
        n = len(s.partitions)
        return {
            "orderTopicConf": None,
            "queueDatas": [
                {
                    "brokerName": self.broker_name,
                    "readQueueNums": n,
                    "writeQueueNums": n,
                    "perm": PERM_READ_WRITE,
                    "topicSynFlag": 0,
                }
            ],
            "brokerDatas": [
                {
                    "cluster": self.cluster_name,
                    "brokerName": self.broker_name,
                    "brokerAddrs": {MASTER_ID: address},
                }
            ],
            "filterServerTable": {},
        }

    def delay_ms(self, level: int) -> int:
        """The delay of a DELAY level; a level past the last is the last (as RocketMQ)."""
        levels = self.delay_levels_ms
        return levels[min(level, len(levels)) - 1]

    def schedule(self, name: str, message: Message, delay_ms: int) -> int:
        """Hand ``message`` for topic ``name`` to the broker's scheduler; returns the job id.

        When due it is routed as a send to ``name`` then is: through ``amq.topic`` (the topic's
        stream and every other protocol's subscribers of the name), or for a retry topic,
        which is bound to nothing, through the default exchange straight to its stream."""
        internal = name.startswith((RETRY_PREFIX, DLQ_PREFIX))
        exchange = "" if internal or "amq.topic" not in self.vhost.exchanges else "amq.topic"
        return self.broker.scheduler.schedule(
            self.vhost.name, exchange, name, message, delay_ms=delay_ms
        )

    # -- ids -------------------------------------------------------------------------------

    @staticmethod
    def commit_log_offset(topic: str, queue_id: int, offset: int) -> int:
        """A message's "physical offset" as clients see it: 12 bits of the topic's hash, the
        queue (5 bits) and the offset in it (36 bits), so CONSUMER_SEND_MSG_BACK finds the
        message again; 53 bits, exact in a JavaScript number."""
        if not 0 <= queue_id < 32 or not 0 <= offset < (1 << 36):
            return 0
        return ((zlib.crc32(topic.encode()) & 0xFFF) << 41) | (queue_id << 36) | offset

    @staticmethod
    def split_commit_log_offset(value: int) -> tuple[int, int, int]:
        return (value >> 41) & 0xFFF, (value >> 36) & 0x1F, value & ((1 << 36) - 1)

    def msg_id(self, port: int, commit_log_offset: int) -> str:
        return (
            (self.store_host + port.to_bytes(4, "big") + commit_log_offset.to_bytes(8, "big"))
            .hex()
            .upper()
        )

    # -- reading ---------------------------------------------------------------------------

    def records(self, name: str, p: Partition, e: StreamEntry, port: int) -> list:
        """The entry's messages as (MessageExt record, tag) pairs, encoded once per entry."""
        cache = e.cache
        if cache is not None:
            got = cache.get(PROTOCOL)
            if got is not None:
                return got
        else:
            cache = e.cache = {}
        topic = name.encode()
        out = []
        qid = p.index
        for i, m in enumerate(p.messages(e)):
            off = e.offset + i
            born = m.timestamp if m.timestamp is not None else e.timestamp
            ann = m.annotations
            record = C.encode_message_ext(
                qid,
                off,
                self.commit_log_offset(name, qid, off),
                0,
                born,
                e.timestamp,
                self.store_host,
                port,
                int(ann.get("rocketmq.reconsume_times", 0)),
                m.body,
                topic,
                to_properties(m),
                int(ann.get("rocketmq.flag", 0)),
            )
            out.append((record, message_tag(m)))
        cache[PROTOCOL] = out
        return out

    def message_at(self, name: str, queue_id: int, offset: int) -> Message | None:
        """The core message at one offset, if it is in memory."""
        s = self.topic(name)
        if s is None or not 0 <= queue_id < len(s.partitions):
            return None
        p = s.partitions[queue_id]
        if not p.start_offset <= offset < p.next_offset:
            return None
        entries = p.read(offset, 1)
        if not entries:
            return None
        e = entries[0]
        msgs = p.messages(e)
        i = offset - e.offset
        return msgs[i] if 0 <= i < len(msgs) else None

    # -- groups ----------------------------------------------------------------------------

    def heartbeat(self, session: Any, data: dict, now: float) -> list[str]:
        """Record a heartbeat; returns the groups whose membership changed."""
        client_id = str(data.get("clientID") or "")
        changed = []
        for cd in data.get("consumerDataSet") or []:
            if not isinstance(cd, dict):
                continue
            group = str(cd.get("groupName") or "")
            if not group:
                continue
            members = self.groups.setdefault(group, {})
            m = members.get(client_id)
            if m is None or m.session is not session:
                changed.append(group)
                m = members[client_id] = Member(
                    client_id, session, str(cd.get("messageModel") or "CLUSTERING"), now
                )
                session.groups.add((group, client_id))
            m.seen = now
            subs: dict[str, frozenset[str] | None] = {}
            for sd in cd.get("subscriptionDataSet") or []:
                if isinstance(sd, dict) and isinstance(sd.get("topic"), str):
                    sub = sd.get("subString")
                    subs[sd["topic"]] = parse_tags(sub if isinstance(sub, str) else None)
            m.subscriptions = subs
        return changed

    def leave(self, group: str, client_id: str, session: Any) -> bool:
        members = self.groups.get(group)
        if not members:
            return False
        m = members.get(client_id)
        if m is None or m.session is not session:
            return False
        del members[client_id]
        if not members:
            del self.groups[group]
        return True

    def members(self, group: str, now: float) -> list[str]:
        members = self.groups.get(group) or {}
        for cid in [c for c, m in members.items() if now - m.seen > MEMBER_EXPIRY_S]:
            del members[cid]
        return sorted(members)

    def tags_for(self, group: str, topic: str) -> frozenset[str] | None:
        for m in (self.groups.get(group) or {}).values():
            if topic in m.subscriptions:
                return m.subscriptions[topic]
        return None

    # -- offsets ---------------------------------------------------------------------------

    def commit(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        key = (group, topic, queue_id)
        if self.offsets.get(key) == offset:
            return
        self.offsets[key] = offset
        self.broker.kv_put_obj(OFFSETS_NS, f"{group}\t{topic}\t{queue_id}", offset)

    def committed(self, group: str, topic: str, queue_id: int) -> int | None:
        return self.offsets.get((group, topic, queue_id))
