"""The RocketMQ session: name-server and broker requests of one connection, on the adapter
contract, without sockets.

Every request carries an ``opaque`` that its response repeats, so responses need not keep
request order: sends are answered once the message is durable (``conn.reply_after_durable``),
pulls as soon as they have messages or their long poll ends (``conn.write``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from polymq.core.auth import Refusal
from polymq.core.connection import ProtocolConnection, SessionBase
from polymq.core.errors import AccessRefused, BrokerError
from polymq.core.message import Message, now_ms
from polymq.core.scheduler import ScheduleError
from polymq.core.stream import READ_BATCH_BYTES, Partition, Stream

from . import codec as C
from .server import DLQ_PREFIX, RETRY_PREFIX, TOPIC_RE, RocketServer, parse_tags, to_core

log = Logger(namespace="polymq.rocketmq")

# SEND_MESSAGE_V2 abbreviates the header fields of SEND_MESSAGE to one letter each
V2_FIELDS = {
    "a": "producerGroup",
    "b": "topic",
    "c": "defaultTopic",
    "d": "defaultTopicQueueNums",
    "e": "queueId",
    "f": "sysFlag",
    "g": "bornTimestamp",
    "h": "flag",
    "i": "properties",
    "j": "reconsumeTimes",
    "k": "unitMode",
    "l": "maxReconsumeTimes",
    "m": "batch",
}
# where RocketMQ keeps delayed messages until due (in msgIds of delayed sends)
SCHEDULE_TOPIC = "SCHEDULE_TOPIC_XXXX"
# the furthest ahead a start-deliver time may be (a bound, so a wild value gets an answer)
MAX_START_DELAY_MS = 366 * 86_400_000
# messages one pull may scan for a tag filter before it answers "nothing matched yet"
MAX_SCAN = 4096


def _int(ext: dict[str, str], name: str, default: int | None = None) -> int:
    v = ext.get(name)
    if v is None:
        if default is None:
            raise ValueError(f"header field {name} missing")
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"header field {name} is not an integer: {v!r}") from None


class PendingPull:
    """A PULL_MESSAGE suspended until its queue grows or its time is up (long polling)."""

    __slots__ = ("session", "cmd", "stream", "name", "partition", "offset", "tags", "max", "timer")

    def __init__(self, session, cmd, stream, name, partition, offset, tags, max_msgs) -> None:
        self.session = session
        self.cmd = cmd
        self.stream = stream
        self.name = name
        self.partition = partition
        self.offset = offset
        self.tags = tags
        self.max = max_msgs
        self.timer: Any = None

    def arm(self) -> None:
        self.partition.waiters.append(self.wake)

    def wake(self) -> None:
        if self.timer is None:
            return  # answered already
        # called from whichever connection appended: a failure here is this session's
        self.session.conn.call_session(self.session.retry_pull, self, False)

    def expire(self) -> None:
        self.timer = None
        self.disarm()
        self.session.conn.call_session(self.session.retry_pull, self, True)

    def disarm(self) -> None:
        try:
            self.partition.waiters.remove(self.wake)
        except ValueError:
            pass

    def cancel(self) -> None:
        t, self.timer = self.timer, None
        if t is not None and t.active():
            t.cancel()
        self.disarm()


class RocketSession(SessionBase):
    def __init__(self, conn: ProtocolConnection, server: RocketServer) -> None:
        super().__init__(conn)
        self.server = server
        self.broker = conn.broker
        self.vhost = server.vhost
        self.groups: set[tuple[str, str]] = set()  # (group, clientID) this connection joined
        self.pending: set[PendingPull] = set()
        self._writable: set[str] = set()
        self._readable: set[str] = set()
        self.blocked = False
        self.local_port = 0

    # -- the contract's callbacks ----------------------------------------------------------

    def connection_made(self) -> None:
        # RocketMQ's ACL signs requests with a secret the broker must hold in clear; polymq
        # asks its auth plugins about an anonymous client instead
        result = self.conn.authenticate(None, None)
        if isinstance(result, Refusal):
            raise AccessRefused(f"access refused: {result.reason}")
        self.local_port = getattr(self.conn.transport.getHost(), "port", 0) or 0
        self.conn.handshake_done(user=result.user, vhost=self.vhost.name)

    def frames_received(self, frames: list) -> None:
        conn = self.conn
        for i, frame in enumerate(frames):
            cmd = C.decode_command(frame)
            if cmd.is_response:
                continue  # an answer to a broker-initiated request (none needs reading)
            handler = self.HANDLERS.get(cmd.code)
            if handler is None:
                self.answer(
                    cmd, C.REQUEST_CODE_NOT_SUPPORTED, f"request code {cmd.code} not supported"
                )
                continue
            try:
                handler(self, cmd)
            except ValueError as e:  # a header field missing or malformed: this request only
                self.answer(cmd, C.SYSTEM_ERROR, str(e))
            except AccessRefused as e:
                self.answer(cmd, C.NO_PERMISSION, e.text)
            except BrokerError as e:
                self.answer(cmd, C.SYSTEM_ERROR, f"{e.code} {e.text}")
            if conn.closing:
                return
            if self.blocked and handler is RocketSession.do_send:
                conn.hold_publisher(frames[i + 1 :])
                return

    def protocol_error(self, error: Exception) -> None:
        pass  # the remoting protocol has no connection-level error frame: the close says it

    def connection_lost(self) -> None:
        for p in list(self.pending):
            p.cancel()
        self.pending.clear()
        for group, client_id in self.groups:
            if self.server.leave(group, client_id, self):
                self.notify_group(group)
        self.groups.clear()

    def publishing_blocked(self, blocked: bool, reason: str) -> None:
        # short of memory or disk: a send holds the connection unread until it clears
        # (conn.hold_publisher); consumers keep pulling
        self.blocked = blocked

    # -- helpers ---------------------------------------------------------------------------

    def answer(self, cmd: C.Command, code: int, remark: str | None = None, **kw: Any) -> None:
        if not cmd.oneway:
            self.conn.reply(C.response(cmd, code, remark, **kw))

    @property
    def address(self) -> str:
        port = self.server.advertised_port or self.local_port
        return f"{self.server.advertised_host}:{port}"

    def allow(self, cache: set[str], action: str, name: str) -> None:
        if name in cache:
            return
        if not self.conn.authorize(action, "topic", name):
            raise AccessRefused(f"{action} on topic '{name}' refused")
        cache.add(name)

    def _topic(self, name: str, create: bool) -> Stream | None:
        if create and name not in self.vhost.queues and TOPIC_RE.match(name):
            if not self.conn.authorize("configure", "topic", name):
                raise AccessRefused(f"creating topic '{name}' refused")
        return self.server.topic(name, create)

    def notify_group(self, group: str) -> None:
        """Tell the group's other members to rebalance (NOTIFY_CONSUMER_IDS_CHANGED)."""
        for m in (self.server.groups.get(group) or {}).values():
            s = m.session
            if s is self or s.conn.closing:
                continue
            s.conn.write(
                C.encode_command(
                    C.Command(40, 0, C.FLAG_ONEWAY, None, {"consumerGroup": group}, b"")
                )
            )

    # -- name server -----------------------------------------------------------------------

    def do_route(self, cmd: C.Command) -> None:
        name = cmd.ext.get("topic", "")
        s = self._topic(name, create=True)
        if s is None:
            self.answer(cmd, C.TOPIC_NOT_EXIST, f"No topic route info in name server for {name}")
            return
        body = json.dumps(self.server.route_data(s, self.address)).encode()
        self.answer(cmd, C.SUCCESS, body=body)

    def do_cluster_info(self, cmd: C.Command) -> None:
        srv = self.server
        body = {
            "brokerAddrTable": {
                srv.broker_name: {
                    "cluster": srv.cluster_name,
                    "brokerName": srv.broker_name,
                    "brokerAddrs": {"0": self.address},
                }
            },
            "clusterAddrTable": {srv.cluster_name: [srv.broker_name]},
        }
        self.answer(cmd, C.SUCCESS, body=json.dumps(body).encode())

    def do_kv_config(self, cmd: C.Command) -> None:
        self.answer(cmd, C.QUERY_NOT_FOUND, "no such config")

    def do_create_topic(self, cmd: C.Command) -> None:
        name = cmd.ext.get("topic", "")
        queues = _int(cmd.ext, "readQueueNums", self.server.queue_nums)
        if not TOPIC_RE.match(name):
            self.answer(cmd, C.SYSTEM_ERROR, f"invalid topic name {name!r}")
            return
        if not self.conn.authorize("configure", "topic", name):
            raise AccessRefused(f"creating topic '{name}' refused")
        s = self.server.topic(name)
        if s is None:
            if name in self.vhost.queues:
                self.answer(cmd, C.SYSTEM_ERROR, f"{name} is a queue, not a topic")
                return
            self.server.create_topic(name, queues)
        elif len(s.partitions) < queues <= 32:
            s.add_partitions(queues)
        self.answer(cmd, C.SUCCESS)

    # -- producing -------------------------------------------------------------------------

    def do_send(self, cmd: C.Command) -> None:
        ext = cmd.ext
        if cmd.code == C.SEND_MESSAGE_V2 or "b" in ext:
            ext = {V2_FIELDS.get(k, k): v for k, v in ext.items()}
        name = ext.get("topic", "")
        self.allow(self._writable, "write", name)
        s = self._topic(name, create=True)
        if s is None:
            self.answer(cmd, C.TOPIC_NOT_EXIST, f"topic {name} does not exist")
            return
        sys_flag = _int(ext, "sysFlag", 0)
        born = _int(ext, "bornTimestamp", 0)
        reconsume = _int(ext, "reconsumeTimes", 0)
        limit = self.broker.max_message_size
        if cmd.code == C.SEND_BATCH_MESSAGE or ext.get("batch") == "true":
            try:
                items = C.decode_batch(cmd.body)
            except ValueError as e:
                self.answer(cmd, C.MESSAGE_ILLEGAL, f"bad batch body: {e}")
                return
        else:
            items = [(_int(ext, "flag", 0), cmd.body, ext.get("properties", ""))]
        if not items:
            self.answer(cmd, C.MESSAGE_ILLEGAL, "empty batch")
            return
        if sys_flag & C.MSG_TRANSACTION_MASK:
            self.answer(cmd, C.MESSAGE_ILLEGAL, "transactional messages are not supported")
            return
        messages = []
        delays = []
        for flag, body, text in items:
            props = C.parse_properties(text)
            try:
                delays.append(self._delay_of(props))
            except ValueError as e:
                self.answer(cmd, C.MESSAGE_ILLEGAL, str(e))
                return
            if sys_flag & C.MSG_COMPRESSED:
                try:
                    body = C.inflate(body, limit)
                except ValueError as e:
                    self.answer(cmd, C.MESSAGE_ILLEGAL, str(e))
                    return
            if len(body) > limit:
                self.answer(cmd, C.MESSAGE_ILLEGAL, f"message body over {limit} bytes")
                return
            messages.append(to_core(body, props, born, reconsume, flag))
        if any(delays):
            if len(messages) > 1:
                # as RocketMQ's broker: a batch cannot carry delays
                self.answer(cmd, C.MESSAGE_ILLEGAL, "a batch cannot hold delayed messages")
                return
            self._send_later(cmd, s, name, ext, messages[0], delays[0])
            return
        n = len(s.partitions)
        qid = _int(ext, "queueId", 0) % n
        p = s.partitions[qid]
        first = None
        ids = []
        port = self.server.advertised_port or self.local_port
        for m in messages:
            off = p.append_message(m)
            if first is None:
                first = off
            ids.append(self.server.msg_id(port, self.server.commit_log_offset(name, qid, off)))
        self.conn.info.messages_in += len(messages)
        self._route(s, name, messages)
        if cmd.oneway:
            return
        reply = C.response(
            cmd,
            C.SUCCESS,
            None,
            {"msgId": ",".join(ids), "queueId": qid, "queueOffset": first},
        )
        self.conn.reply_after_durable(reply)

    def _delay_of(self, props: dict[str, str]) -> int:
        """The delay (ms) a message's properties ask for, taking those properties out: a
        ``DELAY`` level, or a ``__STARTDELIVERTIME`` (epoch ms) of Alibaba's clients."""
        level = props.pop("DELAY", "")
        start = props.pop("__STARTDELIVERTIME", "")
        try:
            n = int(level or 0)
            at = int(start or 0)
        except ValueError:
            raise ValueError(f"bad DELAY {level!r} or __STARTDELIVERTIME {start!r}") from None
        if n > 0:
            return self.server.delay_ms(n)
        delay = max(0, at - now_ms()) if at > 0 else 0
        if delay > MAX_START_DELAY_MS:
            raise ValueError(f"__STARTDELIVERTIME {start} is more than a year ahead")
        return delay

    def _send_later(
        self, cmd: C.Command, s: Stream, name: str, ext: dict, message: Message, delay: int
    ) -> None:
        """A delayed send: to the broker's scheduler, answered once the job is on disk."""
        try:
            job = self.server.schedule(name, message, delay)
        except ScheduleError as e:
            self.answer(cmd, C.MESSAGE_ILLEGAL, f"cannot schedule: {e}")
            return
        self.conn.info.messages_in += 1
        if cmd.oneway:
            return
        port = self.server.advertised_port or self.local_port
        # RocketMQ answers with the place in its schedule topic; the job id stands for it
        cl_offset = self.server.commit_log_offset(SCHEDULE_TOPIC, 0, job)
        ext_out = {
            "msgId": self.server.msg_id(port, cl_offset),
            "queueId": _int(ext, "queueId", 0) % len(s.partitions),
            "queueOffset": job,
        }
        self.conn.reply_after_durable(C.response(cmd, C.SUCCESS, None, ext_out))

    def _route(self, s: Stream, name: str, messages: list[Message]) -> None:
        """Pass messages on through amq.topic to its subscribers other than the topic itself
        (MQTT, AMQP and OpenWire subscribers; a Kafka topic of the same name is this one)."""
        if name.startswith((RETRY_PREFIX, DLQ_PREFIX)):
            return
        if not self.vhost.reaches_beyond("amq.topic", name, s):
            return
        for m in messages:
            self.vhost.publish("amq.topic", name, m, exclude=s)

    # -- consuming -------------------------------------------------------------------------

    def do_pull(self, cmd: C.Command) -> None:
        ext = cmd.ext
        name = ext.get("topic", "")
        group = ext.get("consumerGroup", "")
        qid = _int(ext, "queueId")
        offset = _int(ext, "queueOffset")
        max_msgs = max(1, min(_int(ext, "maxMsgNums", 32), 1024))
        flags = _int(ext, "sysFlag", 0)
        self.allow(self._readable, "read", name)
        s = self.server.topic(name)
        if s is None:
            self.answer(cmd, C.TOPIC_NOT_EXIST, f"topic {name} does not exist")
            return
        if not 0 <= qid < len(s.partitions):
            self.answer(cmd, C.SYSTEM_ERROR, f"queueId {qid} out of range for {name}")
            return
        if flags & C.PULL_COMMIT_OFFSET and group:
            commit = _int(ext, "commitOffset", -1)
            if commit >= 0:
                self.server.commit(group, name, qid, commit)
        if flags & C.PULL_SUBSCRIPTION:
            tags = parse_tags(ext.get("subscription"))
        else:
            tags = self.server.tags_for(group, name)
        pull = PendingPull(self, cmd, s, name, s.partitions[qid], offset, tags, max_msgs)
        if not self.attempt(pull, final=False):
            if flags & C.PULL_SUSPEND and not cmd.oneway:
                wait = _int(ext, "suspendTimeoutMillis", 15000) / 1000.0
                wait = max(0.0, min(wait, self.server.max_suspend_s))
                pull.timer = self.conn.clock.callLater(wait, pull.expire)
                self.pending.add(pull)
                pull.arm()
            else:
                self.attempt(pull, final=True)

    def retry_pull(self, pull: PendingPull, final: bool) -> None:
        if self.conn.closing:
            return
        if self.attempt(pull, final) or final:
            pull.cancel()
            self.pending.discard(pull)
        else:
            pull.arm()

    def attempt(self, pull: PendingPull, final: bool) -> bool:
        """Answer the pull if there is something to say (or ``final``); False to wait."""
        p: Partition = pull.partition
        cmd = pull.cmd
        start, end = p.start_offset, p.next_offset
        offset = pull.offset
        if pull.stream.deleted:
            self._pull_answer(cmd, C.PULL_NOT_FOUND, offset, p, b"")
            return True
        if offset < start or offset > end:
            moved = start if offset < start else end
            self._pull_answer(cmd, C.PULL_OFFSET_MOVED, moved, p, b"")
            return True
        found: list[bytes] = []
        size = 0
        scanned = 0
        srv = self.server
        port = srv.advertised_port or self.local_port
        tags = pull.tags
        full = False
        while not full and offset < end and scanned < MAX_SCAN:
            entries = p.read(offset, READ_BATCH_BYTES)
            if not entries:
                break  # paged out: the read is under way, the waiters are called when back
            for e in entries:
                for i, (record, tag) in enumerate(srv.records(pull.name, p, e, port)):
                    o = e.offset + i
                    if o < offset:
                        continue
                    if len(found) >= pull.max or (found and size + len(record) > READ_BATCH_BYTES):
                        full = True
                        break
                    offset = o + 1
                    scanned += 1
                    if tags is None or tag in tags:
                        found.append(record)
                        size += len(record)
                if full:
                    break
        pull.offset = offset
        if found:
            self.conn.info.messages_out += len(found)
            self._pull_answer(cmd, C.SUCCESS, offset, p, b"".join(found))
            return True
        if scanned and (offset < end or not final):
            # nothing matched the filter so far: say where to go on from
            self._pull_answer(cmd, C.PULL_RETRY_IMMEDIATELY, offset, p, b"")
            return True
        if final:
            self._pull_answer(cmd, C.PULL_NOT_FOUND, offset, p, b"")
            return True
        return False

    def _pull_answer(self, cmd: C.Command, code: int, nxt: int, p: Partition, body: bytes):
        ext = {
            "nextBeginOffset": nxt,
            "minOffset": p.start_offset,
            "maxOffset": p.next_offset,
            "suggestWhichBrokerId": 0,
        }
        if not cmd.oneway:
            self.conn.write(C.response(cmd, code, None, ext, body))

    def do_query_offset(self, cmd: C.Command) -> None:
        ext = cmd.ext
        group, name, qid = ext.get("consumerGroup", ""), ext.get("topic", ""), _int(ext, "queueId")
        got = self.server.committed(group, name, qid)
        if got is None:
            s = self.server.topic(name)
            if s is not None and 0 <= qid < len(s.partitions):
                p = s.partitions[qid]
                if p.start_offset == 0 and (not p.entries or p.entries[0].offset == 0):
                    # as RocketMQ's broker: a new group reads a queue from its start while
                    # nothing of it was deleted and all of it is still in memory
                    got = 0
        if got is None:
            self.answer(cmd, C.QUERY_NOT_FOUND, "Not found, maybe this group consumer boot first")
        else:
            self.answer(cmd, C.SUCCESS, None, ext={"offset": got})

    def do_update_offset(self, cmd: C.Command) -> None:
        ext = cmd.ext
        group, name = ext.get("consumerGroup", ""), ext.get("topic", "")
        qid, offset = _int(ext, "queueId"), _int(ext, "commitOffset")
        if group and offset >= 0:
            self.allow(self._readable, "read", name)
            self.server.commit(group, name, qid, offset)
        self.answer(cmd, C.SUCCESS)

    def _offset_of(self, cmd: C.Command, pick: Callable[[Partition], int]) -> None:
        name, qid = cmd.ext.get("topic", ""), _int(cmd.ext, "queueId")
        s = self.server.topic(name)
        if s is None or not 0 <= qid < len(s.partitions):
            self.answer(cmd, C.TOPIC_NOT_EXIST, f"no queue {qid} in topic {name}")
            return
        self.answer(cmd, C.SUCCESS, None, ext={"offset": pick(s.partitions[qid])})

    def do_max_offset(self, cmd: C.Command) -> None:
        self._offset_of(cmd, lambda p: p.next_offset)

    def do_min_offset(self, cmd: C.Command) -> None:
        self._offset_of(cmd, lambda p: p.start_offset)

    def do_search_offset(self, cmd: C.Command) -> None:
        ts = _int(cmd.ext, "timestamp")
        name, qid = cmd.ext.get("topic", ""), _int(cmd.ext, "queueId")
        s = self.server.topic(name)
        if s is None or not 0 <= qid < len(s.partitions):
            self.answer(cmd, C.TOPIC_NOT_EXIST, f"no queue {qid} in topic {name}")
            return

        def found(offset: int) -> None:
            self.answer(cmd, C.SUCCESS, None, ext={"offset": offset})

        # a queue partly on disk is searched in its segment files: answered when that is back
        s.partitions[qid].offset_at_time(ts, lambda offset: self.conn.call_session(found, offset))

    def do_earliest_time(self, cmd: C.Command) -> None:
        name, qid = cmd.ext.get("topic", ""), _int(cmd.ext, "queueId")
        s = self.server.topic(name)
        if s is None or not 0 <= qid < len(s.partitions):
            self.answer(cmd, C.TOPIC_NOT_EXIST, f"no queue {qid} in topic {name}")
            return
        p = s.partitions[qid]
        ts = p.entries[0].timestamp if p.entries else 0
        self.answer(cmd, C.SUCCESS, None, ext={"timestamp": ts})

    # -- groups ----------------------------------------------------------------------------

    def do_heartbeat(self, cmd: C.Command) -> None:
        try:
            data = json.loads(cmd.body or b"{}")
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            self.answer(cmd, C.SYSTEM_ERROR, "heartbeat body is not a JSON object")
            return
        client_id = data.get("clientID")
        if isinstance(client_id, str) and self.conn.info.client_id is None:
            self.conn.handshake_done(client_id=client_id)
        for group in self.server.heartbeat(self, data, self.conn.clock.seconds()):
            self.notify_group(group)
        self.answer(cmd, C.SUCCESS)

    def do_unregister(self, cmd: C.Command) -> None:
        group, client_id = cmd.ext.get("consumerGroup"), cmd.ext.get("clientID", "")
        if group and self.server.leave(group, client_id, self):
            self.groups.discard((group, client_id))
            self.notify_group(group)
        self.answer(cmd, C.SUCCESS)

    def do_consumer_list(self, cmd: C.Command) -> None:
        group = cmd.ext.get("consumerGroup", "")
        ids = self.server.members(group, self.conn.clock.seconds())
        if not ids:
            self.answer(cmd, C.SYSTEM_ERROR, f"no consumer of group {group} online")
            return
        self.answer(cmd, C.SUCCESS, body=json.dumps({"consumerIdList": ids}).encode())

    def do_send_back(self, cmd: C.Command) -> None:
        """A consumer could not handle a message: it goes to the group's retry topic, or to its
        dead-letter topic once it was retried ``maxReconsumeTimes`` times."""
        ext = cmd.ext
        srv = self.server
        group = ext.get("group", "")
        origin = ext.get("originTopic", "")
        value = _int(ext, "offset")
        delay = _int(ext, "delayLevel", 0)
        max_times = _int(ext, "maxReconsumeTimes", srv.max_reconsume_times)
        if not group:
            self.answer(cmd, C.SYSTEM_ERROR, "no consumer group")
            return
        h, qid, off = srv.split_commit_log_offset(value)
        message = None
        for name in (origin, RETRY_PREFIX + group):
            if srv.commit_log_offset(name, qid, off) == value:
                message = srv.message_at(name, qid, off)
                if message is not None:
                    self.allow(self._readable, "read", name)
                    break
        if message is None:
            self.answer(cmd, C.SYSTEM_ERROR, f"message at offset {value} not found in memory")
            return
        times = int(message.annotations.get("rocketmq.reconsume_times", 0))
        dead = times >= max_times or delay < 0
        target = (DLQ_PREFIX if dead else RETRY_PREFIX) + group
        self.allow(self._writable, "write", target)
        s = self._topic(target, create=True)
        if s is None:
            self.answer(cmd, C.SYSTEM_ERROR, f"cannot create {target}")
            return
        ann = dict(message.annotations)
        props = dict(ann.get("rocketmq.props") or {})
        props.setdefault("RETRY_TOPIC", origin)
        props.setdefault("ORIGIN_MESSAGE_ID", ext.get("originMsgId", ""))
        ann["rocketmq.props"] = props
        ann["rocketmq.reconsume_times"] = times + 1
        again = message.copy(annotations=ann, timestamp=now_ms())
        if dead:
            s.partitions[0].append_message(again)
            log.info(
                "rocketmq: a message of {t} went to {d} after {n} deliveries",
                t=origin,
                d=target,
                n=times + 1,
            )
        else:
            # RocketMQ's back-off: level 3 (10 s) for the first retry, one level more for
            # each further one, unless the client named a level
            level = delay if delay > 0 else 3 + times
            try:
                srv.schedule(target, again, srv.delay_ms(level))
            except ScheduleError as e:
                self.answer(cmd, C.SYSTEM_ERROR, f"cannot schedule the retry: {e}")
                return
        if not cmd.oneway:
            self.conn.reply_after_durable(C.response(cmd, C.SUCCESS))

    def do_end_transaction(self, cmd: C.Command) -> None:
        self.answer(cmd, C.SYSTEM_ERROR, "transactional messages are not supported by polymq")

    HANDLERS: dict[int, Callable[[RocketSession, C.Command], None]] = {
        C.GET_ROUTEINFO_BY_TOPIC: do_route,
        C.GET_BROKER_CLUSTER_INFO: do_cluster_info,
        C.GET_KV_CONFIG: do_kv_config,
        C.GET_KV_CONFIG_BY_VALUE: do_kv_config,
        C.UPDATE_AND_CREATE_TOPIC: do_create_topic,
        C.SEND_MESSAGE: do_send,
        C.SEND_MESSAGE_V2: do_send,
        C.SEND_BATCH_MESSAGE: do_send,
        C.PULL_MESSAGE: do_pull,
        C.QUERY_CONSUMER_OFFSET: do_query_offset,
        C.UPDATE_CONSUMER_OFFSET: do_update_offset,
        C.GET_MAX_OFFSET: do_max_offset,
        C.GET_MIN_OFFSET: do_min_offset,
        C.SEARCH_OFFSET_BY_TIMESTAMP: do_search_offset,
        C.GET_EARLIEST_MSG_STORETIME: do_earliest_time,
        C.HEART_BEAT: do_heartbeat,
        C.UNREGISTER_CLIENT: do_unregister,
        C.GET_CONSUMER_LIST_BY_GROUP: do_consumer_list,
        C.CONSUMER_SEND_MSG_BACK: do_send_back,
        C.END_TRANSACTION: do_end_transaction,
    }
