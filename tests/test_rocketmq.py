"""The RocketMQ adapter plugin with the unmodified ali-ons client (npm), plus the requests no npm
client sends (batches, one-way sends, long polls measured from outside) and bad input.

The plugin is its own distribution (plugins/rocketmq), installed into the test environment by
``make test``; the broker finds it through its ``polymq`` entry point like any third party's.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import zlib

import pytest
from polymq_rocketmq import codec as C
from rocketmq_helpers import ADAPTER, Raw, consumer, decode_pulled, ensure_ali_ons, produce


@pytest.fixture(scope="module")
def ali_ons():
    return ensure_ali_ons()


@pytest.fixture
def rmq(broker_factory, ali_ons):
    return broker_factory(adapters=[ADAPTER], store="sqlite")


def name_srv(broker) -> str:
    return f"{broker.host}:{broker.port(ADAPTER)}"


def test_plugin_is_a_separate_distribution():
    out = subprocess.run(
        [sys.executable, "-m", "polymq.core", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    info = json.loads(out.stdout)["adapters"][ADAPTER]
    assert info["origin"] == "polymq-rocketmq 0.1.0"
    assert info["default_port"] == 9876


def test_route_names_polymq_as_the_broker(rmq):
    raw = Raw(rmq.host, rmq.port(ADAPTER))
    r = raw.call(C.GET_ROUTEINFO_BY_TOPIC, {"topic": "orders"})
    assert r.code == C.SUCCESS
    route = json.loads(r.body)
    assert route["queueDatas"][0]["readQueueNums"] == 4
    assert route["queueDatas"][0]["writeQueueNums"] == 4
    assert route["brokerDatas"][0]["brokerAddrs"]["0"] == name_srv(rmq)
    # an invalid name is refused, the connection stays
    r = raw.call(C.GET_ROUTEINFO_BY_TOPIC, {"topic": "no spaces allowed"})
    assert r.code == C.TOPIC_NOT_EXIST
    r = raw.call(9999, {})
    assert r.code == C.REQUEST_CODE_NOT_SUPPORTED
    raw.close()


def test_produce_consume_with_tags_keys_and_properties(rmq):
    ns = name_srv(rmq)
    c = consumer(ns, "g-tags", "TagTopic", "red || blue", count=4)
    c.ready()
    produce(ns, "TagTopic", 3, tag="red", prefix="r")
    produce(ns, "TagTopic", 3, tag="green", prefix="g")
    produce(ns, "TagTopic", 1, tag="blue", prefix="b")
    got = c.finish(30)
    bodies = sorted(m["body"] for m in got)
    assert bodies == ["b-0", "r-0", "r-1", "r-2"]
    for m in got:
        assert m["tags"] in ("red", "blue")
        assert m["keys"] == "key-" + m["body"].split("-")[1]
        assert m["props"]["app_header"] == "value-" + m["body"].split("-")[1]
        assert m["bornTimestamp"] > 0


def test_large_compressed_bodies_arrive_whole(rmq):
    """ali-ons deflates bodies of 4 KiB and more: polymq stores them inflated."""
    ns = name_srv(rmq)
    c = consumer(ns, "g-big", "BigTopic", "*", count=2)
    c.ready()
    produce(ns, "BigTopic", 2, prefix="big", size=100_000)
    got = c.finish(30)
    assert sorted(m["len"] for m in got) == [100_000, 100_000]


def test_two_consumers_of_a_group_share_the_queues(rmq):
    ns = name_srv(rmq)
    a = consumer(ns, "g-share", "Shared", "*", count=1000, timeout=40)
    a.ready()
    b = consumer(ns, "g-share", "Shared", "*", count=1000, timeout=40)
    b.ready()
    time.sleep(3)  # both rebalance (each once a second) to two queues each
    sent = produce(ns, "Shared", 24, prefix="s")
    deadline = time.time() + 30
    while time.time() < deadline and len(a.messages) + len(b.messages) < 24:
        a._drain(0.2)
        b._drain(0.2)
    a.stop()
    b.stop()
    got_a = {m["body"] for m in a.messages}
    got_b = {m["body"] for m in b.messages}
    assert got_a | got_b == {s["sent"] for s in sent}
    assert got_a and got_b and not got_a & got_b
    # each consumer read whole queues
    qa = {m["queueId"] for m in a.messages}
    qb = {m["queueId"] for m in b.messages}
    assert not qa & qb


def test_broadcast_consumers_each_get_everything(rmq):
    ns = name_srv(rmq)
    a = consumer(ns, "g-bc", "Bcast", "*", count=5, model="broadcast")
    a.ready()
    b = consumer(ns, "g-bc", "Bcast", "*", count=5, model="broadcast")
    b.ready()
    produce(ns, "Bcast", 5, prefix="bc")
    expected = [f"bc-{i}" for i in range(5)]
    assert sorted(m["body"] for m in a.finish(30)) == expected
    assert sorted(m["body"] for m in b.finish(30)) == expected


def test_failed_messages_are_retried_then_dead_lettered(broker_factory, ali_ons):
    # short levels: the first retry waits level 3 (1 s here), the second level 4 (2 s)
    b = broker_factory(
        adapters=[ADAPTER], settings={"adapters.rocketmq.delay_levels": "1s 1s 1s 2s 3s"}
    )
    ns = name_srv(b)
    c = consumer(ns, "g-retry", "Poison", "*", count=1, fail="bad", max_reconsume=2, timeout=40)
    c.ready()
    produce(ns, "Poison", 1, prefix="bad")
    c.wait_for(lambda o: o.get("body") == "bad-0" and o.get("reconsumeTimes") == 2, 30)
    produce(ns, "Poison", 1, prefix="good")  # the consumer ends when it has one good message
    c.finish(40)
    deliveries = [m for m in c.messages if m["body"] == "bad-0"]
    # the original and two redeliveries through %RETRY%g-retry, counted
    assert [m["reconsumeTimes"] for m in deliveries] == [0, 1, 2]
    assert [m["props"].get("RETRY_TOPIC") for m in deliveries[1:]] == ["Poison", "Poison"]
    # each after RocketMQ's back-off (level 3 + reconsume times), not at once
    gaps = [b["at"] - a["at"] for a, b in zip(deliveries, deliveries[1:], strict=False)]
    assert gaps[0] >= 1000 and gaps[1] >= 2000, gaps
    dlq = consumer(ns, "g-dlq-reader", "%DLQ%g-retry", "*", count=1, timeout=30)
    got = dlq.finish(30)
    assert [(m["body"], m["reconsumeTimes"]) for m in got] == [("bad-0", 3)]
    assert got[0]["props"]["ORIGIN_MESSAGE_ID"]
    assert "went to %DLQ%g-retry after 3 deliveries" in b.log_text()


def test_delay_levels_hold_messages_back(rmq):
    """DELAY levels 1 and 2 (1 s and 5 s, RocketMQ's defaults) sent with ali-ons arrive after
    their delay, not before; an undelayed message alongside arrives too."""
    ns = name_srv(rmq)
    c = consumer(ns, "g-delay", "Later", "*", count=3, timeout=40)
    c.ready()
    (late,) = produce(ns, "Later", 1, prefix="level2", delay_level=2)
    (soon,) = produce(ns, "Later", 1, prefix="level1", delay_level=1)
    (now,) = produce(ns, "Later", 1, prefix="now")
    got = {m["body"]: m for m in c.finish(40)}
    assert sorted(got) == ["level1-0", "level2-0", "now-0"]
    assert got["level2-0"]["at"] - late["at"] >= 5000 - 50
    assert got["level1-0"]["at"] - soon["at"] >= 1000 - 50
    # the level is spent: consumers do not see a DELAY property (as RocketMQ clears it)
    assert "DELAY" not in got["level1-0"]["props"]
    assert got["level1-0"]["props"]["app_header"] == "value-0" and got["level1-0"]["keys"]


def test_delayed_send_survives_a_crash_while_pending(rmq):
    """An acknowledged delayed send is on disk: after a kill -9 before it is due it still
    arrives, once due."""
    ns = name_srv(rmq)
    (sent,) = produce(ns, "LaterCrash", 1, prefix="pending", delay_level=2)
    rmq.kill9()
    rmq.start()
    c = consumer(name_srv(rmq), "g-delay-crash", "LaterCrash", "*", count=1, timeout=40)
    (got,) = c.finish(40)
    assert got["body"] == "pending-0"
    assert got["at"] - sent["at"] >= 5000 - 50


def test_group_offsets_survive_a_crash(rmq):
    ns = name_srv(rmq)
    c = consumer(ns, "g-durable", "Durable", "*", count=5)
    c.ready()
    produce(ns, "Durable", 5, prefix="first")
    assert len(c.finish(30)) == 5  # closing commits the offsets (one-way requests)
    time.sleep(1.0)  # for the broker to read them: nothing answers a one-way request
    rmq.kill9()
    rmq.start()
    ns = name_srv(rmq)
    produce(ns, "Durable", 3, prefix="second")
    c = consumer(ns, "g-durable", "Durable", "*", count=3)
    got = c.finish(30)
    assert sorted(m["body"] for m in got) == ["second-0", "second-1", "second-2"]


def _batch(*bodies: bytes) -> bytes:
    return b"".join(
        C.encode_batch_item(0, b, f"TAGS\x01t{i}\x02KEYS\x01k{i}\x02".encode())
        for i, b in enumerate(bodies)
    )


def test_batch_and_oneway_sends_then_pull(rmq):
    raw = Raw(rmq.host, rmq.port(ADAPTER))
    header = {"producerGroup": "p", "topic": "Batch", "queueId": 0, "sysFlag": 0, "flag": 0}
    r = raw.call(C.SEND_BATCH_MESSAGE, header, _batch(b"one", b"two", b"three"))
    assert r.code == C.SUCCESS, r.remark
    assert r.ext["queueOffset"] == "0" and len(r.ext["msgId"].split(",")) == 3
    # one-way: no answer at all, the message is stored
    raw.send(C.SEND_MESSAGE, dict(header, properties="TAGS\x01t9\x02"), b"four", flag=2)
    r = raw.call(C.GET_MAX_OFFSET, {"topic": "Batch", "queueId": 0})
    assert r.ext["offset"] == "4"
    r = raw.call(
        C.PULL_MESSAGE,
        {"consumerGroup": "g", "topic": "Batch", "queueId": 0, "queueOffset": 0,
         "maxMsgNums": 32, "sysFlag": 4, "subscription": "t0 || t9"},
    )  # fmt: skip
    assert r.code == C.SUCCESS
    recs = decode_pulled(r.body)
    assert [x.body for x in recs] == [b"one", b"four"]
    assert [x.queue_offset for x in recs] == [0, 3]
    assert r.ext["nextBeginOffset"] == "4"
    # a batch cannot hold a delay (as RocketMQ), a level must be a number; transactions are
    # refused, each with a reason
    delayed = C.encode_batch_item(0, b"later", b"DELAY\x012\x02")
    r = raw.call(C.SEND_BATCH_MESSAGE, header, _batch(b"now") + delayed)
    assert r.code == C.MESSAGE_ILLEGAL and "delayed" in r.remark
    r = raw.call(C.SEND_MESSAGE, dict(header, properties="DELAY\x01soon\x02"), b"later")
    assert r.code == C.MESSAGE_ILLEGAL and "DELAY" in r.remark
    wild = dict(header, properties="__STARTDELIVERTIME\x01" + "9" * 40 + "\x02")
    r = raw.call(C.SEND_MESSAGE, wild, b"never")
    assert r.code == C.MESSAGE_ILLEGAL and "ahead" in r.remark
    r = raw.call(C.SEND_MESSAGE, dict(header, sysFlag=4), b"half")
    assert r.code == C.MESSAGE_ILLEGAL and "transaction" in r.remark
    raw.close()


def test_start_deliver_time_holds_a_message_until_then(rmq):
    """Alibaba's ``__STARTDELIVERTIME`` (epoch ms): the queue is empty until that time."""
    raw = Raw(rmq.host, rmq.port(ADAPTER))
    raw.call(C.UPDATE_AND_CREATE_TOPIC, {"topic": "At", "readQueueNums": 1, "writeQueueNums": 1})
    at = int(time.time() * 1000) + 1500
    header = {"producerGroup": "p", "topic": "At", "queueId": 0, "sysFlag": 0, "flag": 0}
    r = raw.call(C.SEND_MESSAGE, dict(header, properties=f"__STARTDELIVERTIME\x01{at}\x02"), b"x")
    assert r.code == C.SUCCESS, r.remark
    assert raw.call(C.GET_MAX_OFFSET, {"topic": "At", "queueId": 0}).ext["offset"] == "0"
    while raw.call(C.GET_MAX_OFFSET, {"topic": "At", "queueId": 0}).ext["offset"] == "0":
        assert time.time() * 1000 < at + 10_000, "never delivered"
        time.sleep(0.05)
    assert time.time() * 1000 >= at - 50  # not before its time
    r = raw.call(
        C.PULL_MESSAGE,
        {"consumerGroup": "g", "topic": "At", "queueId": 0, "queueOffset": 0, "maxMsgNums": 8,
         "sysFlag": 0},
    )  # fmt: skip
    (rec,) = decode_pulled(r.body)
    assert rec.body == b"x" and "__STARTDELIVERTIME" not in rec.properties
    raw.close()


def test_long_poll_waits_for_a_message(rmq):
    raw = Raw(rmq.host, rmq.port(ADAPTER))
    raw.call(C.GET_ROUTEINFO_BY_TOPIC, {"topic": "Poll"})
    pull = {"consumerGroup": "g", "topic": "Poll", "queueId": 1, "queueOffset": 0,
            "maxMsgNums": 8, "sysFlag": 2, "suspendTimeoutMillis": 600}  # fmt: skip
    start = time.time()
    r = raw.call(C.PULL_MESSAGE, pull)
    assert r.code == C.PULL_NOT_FOUND and time.time() - start >= 0.5
    opaque = raw.send(C.PULL_MESSAGE, dict(pull, suspendTimeoutMillis=20000))
    with pytest.raises(socket.timeout):
        raw.recv(timeout=0.7)  # held open: nothing to say yet

    def later():
        other = Raw(rmq.host, rmq.port(ADAPTER))
        other.call(C.SEND_MESSAGE_V2, {"a": "p", "b": "Poll", "e": 1, "f": 0, "i": ""}, b"woke")
        other.close()

    sender = threading.Thread(target=later)
    sender.start()
    r = raw.recv(timeout=10)
    sender.join(10)
    assert r.opaque == opaque and r.code == C.SUCCESS
    assert [x.body for x in decode_pulled(r.body)] == [b"woke"]
    raw.close()


def test_offset_requests(rmq):
    raw = Raw(rmq.host, rmq.port(ADAPTER))
    raw.call(C.UPDATE_AND_CREATE_TOPIC, {"topic": "Offs", "readQueueNums": 2})
    r = raw.call(C.GET_ROUTEINFO_BY_TOPIC, {"topic": "Offs"})
    assert b'"readQueueNums": 2' in r.body
    q = {"consumerGroup": "g", "topic": "Offs", "queueId": 1}
    assert raw.call(C.QUERY_CONSUMER_OFFSET, q).ext["offset"] == "0"
    raw.send(C.UPDATE_CONSUMER_OFFSET, dict(q, commitOffset=7), flag=2)
    assert raw.call(C.QUERY_CONSUMER_OFFSET, q).ext["offset"] == "7"
    r = raw.call(C.PULL_MESSAGE, dict(q, queueOffset=5, maxMsgNums=1, sysFlag=0))
    assert r.code == C.PULL_OFFSET_MOVED and r.ext["nextBeginOffset"] == "0"
    raw.close()


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"\x00\x00\x00\x08\x00\x00\x00\x10abcd", "header length 16 over"),
        (b"\x00\x00\x00\x08\x00\x00\x00\x04{no}", "header is not JSON"),
        (b"\x00\x00\x00\x08\x07\x00\x00\x04abcd", "unknown serialize type 7"),
        (b"\x00\x00\x00\x02\x00\x00", "under the minimum"),
        (b"\x7f\xff\xff\xff\x00\x00\x00\x02{}", "over the maximum"),
        (b"\x00\x00\x00\x06\x00\x00\x00\x02[]", "not a JSON object"),
        (b"\x00\x03\x0d\x44\x00\x03\x0d\x40" + b"[" * 200_000, "header is not JSON"),
    ],
)
def test_bad_frames_close_only_that_connection(rmq, frame, reason):
    bad = socket.create_connection((rmq.host, rmq.port(ADAPTER)), timeout=10)
    bad.sendall(frame)
    assert bad.recv(100) == b""  # closed
    bad.close()
    ok = Raw(rmq.host, rmq.port(ADAPTER))
    assert ok.call(C.GET_ROUTEINFO_BY_TOPIC, {"topic": "stillthere"}).code == C.SUCCESS
    ok.close()
    time.sleep(0.2)
    assert re.search(r"rocketmq: closing 127\.0\.0\.1:\d+: .*" + re.escape(reason), rmq.log_text())


def test_any_protocol_port_recognises_rocketmq(broker_factory, ali_ons):
    broker = broker_factory(adapters=[ADAPTER, "any"], store="memory")
    raw = Raw(broker.host, broker.port("any"))
    r = raw.call(C.GET_ROUTEINFO_BY_TOPIC, {"topic": "ViaAny"})
    assert r.code == C.SUCCESS
    # the route names the port the client came in by, so it stays on it
    addr = json.loads(r.body)["brokerDatas"][0]["brokerAddrs"]["0"]
    assert addr == f"{broker.host}:{broker.port('any')}"
    raw.close()


def test_acknowledged_sends_survive_a_crash(rmq):
    ns = name_srv(rmq)
    sent = produce(ns, "Crash", 10, prefix="acked")  # each answered after the store's fsync
    rmq.kill9()
    rmq.start()
    got = consumer(name_srv(rmq), "g-after-crash", "Crash", "*", count=10).finish(30)
    assert sorted(m["body"] for m in got) == sorted(s["sent"] for s in sent)


def test_bad_requests_get_an_error_answer_and_the_connection_stays(broker_factory):
    broker = broker_factory(
        adapters=[ADAPTER], store="memory", settings={"limits.max_message_size": 4096}
    )
    raw = Raw(broker.host, broker.port(ADAPTER))
    send = {"producerGroup": "p", "topic": "Bad", "queueId": 0, "sysFlag": 0}
    r = raw.call(C.PULL_MESSAGE, {"topic": "Bad", "queueOffset": 0})
    assert r.code == C.SYSTEM_ERROR and "queueId missing" in r.remark
    r = raw.call(C.PULL_MESSAGE, {"topic": "Bad", "queueId": "x", "queueOffset": 0})
    assert r.code == C.SYSTEM_ERROR and "not an integer" in r.remark
    r = raw.call(C.SEND_BATCH_MESSAGE, send, b"\x00\x00\x00\x20garbage")
    assert r.code == C.MESSAGE_ILLEGAL and "batch" in r.remark
    bomb = zlib.compress(b"\0" * 100_000)
    r = raw.call(C.SEND_MESSAGE, dict(send, sysFlag=1), bomb)
    assert r.code == C.MESSAGE_ILLEGAL and "inflates past 4096" in r.remark
    r = raw.call(C.SEND_MESSAGE, send, b"x" * 5000)
    assert r.code == C.MESSAGE_ILLEGAL and "over 4096" in r.remark
    r = raw.call(C.HEART_BEAT, {}, b"[1, 2]")
    assert r.code == C.SYSTEM_ERROR
    r = raw.call(C.HEART_BEAT, {}, b"[" * 200_000)  # deeper than the JSON parser goes
    assert r.code == C.SYSTEM_ERROR
    r = raw.call(C.GET_CONSUMER_LIST_BY_GROUP, {"consumerGroup": "nobody"})
    assert r.code == C.SYSTEM_ERROR and "no consumer" in r.remark
    # and the same connection still sends and reads
    r = raw.call(C.SEND_MESSAGE, dict(send, properties="KEYS\x01k\x02"), b"fine")
    assert r.code == C.SUCCESS
    q = {"consumerGroup": "g", "topic": "Bad", "queueId": 0, "queueOffset": 0, "maxMsgNums": 4}
    r = raw.call(C.PULL_MESSAGE, dict(q, sysFlag=0))
    assert [x.body for x in decode_pulled(r.body)] == [b"fine"]
    raw.close()


def _heartbeat(client_id: str, group: str) -> bytes:
    return json.dumps(
        {
            "clientID": client_id,
            "consumerDataSet": [
                {
                    "groupName": group,
                    "messageModel": "CLUSTERING",
                    "subscriptionDataSet": [{"topic": "Members", "subString": "a || b"}],
                }
            ],
            "producerDataSet": [],
        }
    ).encode()


def test_group_membership_follows_heartbeats_and_connections(rmq):
    first, second = Raw(rmq.host, rmq.port(ADAPTER)), Raw(rmq.host, rmq.port(ADAPTER))
    assert first.call(C.HEART_BEAT, {}, _heartbeat("10.0.0.1@1", "g-members")).code == 0
    assert second.call(C.HEART_BEAT, {}, _heartbeat("10.0.0.2@2", "g-members")).code == 0
    # the first member is told to rebalance
    note = first.recv(5)
    assert note.code == 40 and note.ext == {"consumerGroup": "g-members"}
    r = first.call(C.GET_CONSUMER_LIST_BY_GROUP, {"consumerGroup": "g-members"})
    assert json.loads(r.body) == {"consumerIdList": ["10.0.0.1@1", "10.0.0.2@2"]}
    second.close()  # leaving by closing the connection
    note = first.recv(5)
    assert note.code == 40
    r = first.call(C.GET_CONSUMER_LIST_BY_GROUP, {"consumerGroup": "g-members"})
    assert json.loads(r.body) == {"consumerIdList": ["10.0.0.1@1"]}
    # a pull without a subscription of its own filters by the tags of the group's heartbeat
    for tag in ("a", "c", "b"):
        props = f"TAGS\x01{tag}\x02"
        send = {"producerGroup": "p", "topic": "Members", "queueId": 0, "properties": props}
        assert first.call(C.SEND_MESSAGE, send, tag.encode()).code == C.SUCCESS
    pull = {"consumerGroup": "g-members", "topic": "Members", "queueId": 0, "queueOffset": 0,
            "maxMsgNums": 8, "sysFlag": 0}  # fmt: skip
    r = first.call(C.PULL_MESSAGE, pull)
    assert [x.body for x in decode_pulled(r.body)] == [b"a", b"b"]
    r = first.call(C.UNREGISTER_CLIENT, {"clientID": "10.0.0.1@1", "consumerGroup": "g-members"})
    assert r.code == C.SUCCESS
    r = first.call(C.GET_CONSUMER_LIST_BY_GROUP, {"consumerGroup": "g-members"})
    assert r.code == C.SYSTEM_ERROR
    first.close()


def test_binary_serialized_headers_are_answered_in_kind(rmq):
    """Java clients may use RocketMQ's binary header (serialize type 1) instead of JSON."""
    sock = socket.create_connection((rmq.host, rmq.port(ADAPTER)), timeout=10)
    req = C.Command(
        C.GET_ROUTEINFO_BY_TOPIC, 77, 0, None, {"topic": "Binary"}, b"", C.SERIALIZE_ROCKETMQ
    )
    sock.sendall(C.encode_command(req))
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
    frame = C.Frame.parse(data[4:])
    assert frame.serialize_type == C.SERIALIZE_ROCKETMQ
    r = C.decode_command(data[4:])
    assert (r.opaque, r.code, r.is_response) == (77, C.SUCCESS, True)
    assert json.loads(r.body)["queueDatas"][0]["writeQueueNums"] == 4
    sock.close()


def test_queue_larger_than_memory_is_pulled_from_disk(broker_factory):
    """A queue whose head is only on disk: a new group is told to start where the client
    chooses (QUERY_NOT_FOUND), and a pull from offset 0 is answered from the segment files."""
    broker = broker_factory(
        adapters=[ADAPTER],
        store="sqlite",
        settings={"store.stream_max_in_memory_bytes": 256 * 1024, "store.segment_mb": 1},
    )
    raw = Raw(broker.host, broker.port(ADAPTER))
    raw.call(C.UPDATE_AND_CREATE_TOPIC, {"topic": "Paged", "readQueueNums": 1})
    body = b"y" * 8000
    send = {"producerGroup": "p", "topic": "Paged", "queueId": 0}
    for i in range(300):  # 2.4 MB, acknowledged once on disk
        raw.send(C.SEND_MESSAGE, dict(send, properties=f"KEYS\x01k{i}\x02"), body)
    for _ in range(300):
        assert raw.recv().code == C.SUCCESS
    q = {"consumerGroup": "g-new", "topic": "Paged", "queueId": 0}
    assert raw.call(C.QUERY_CONSUMER_OFFSET, q).code == C.QUERY_NOT_FOUND
    offset, keys = 0, []
    while offset < 300:
        r = raw.call(
            C.PULL_MESSAGE,
            dict(q, queueOffset=offset, maxMsgNums=32, sysFlag=2, suspendTimeoutMillis=5000),
        )
        assert r.code == C.SUCCESS, (offset, r.code, r.remark)
        recs = decode_pulled(r.body)
        assert [x.queue_offset for x in recs] == list(range(offset, offset + len(recs)))
        keys += [C.parse_properties(x.properties)["KEYS"] for x in recs]
        offset = int(r.ext["nextBeginOffset"])
    assert keys == [f"k{i}" for i in range(300)]
    raw.close()
