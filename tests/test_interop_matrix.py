"""Every protocol to every protocol (issue 7), with real clients on both sides.

``test_matrix`` covers the 49 ordered pairs (producer, consumer) among MQTT 3.1.1, MQTT 5,
AMQP 0-9-1, Kafka, OpenWire, STOMP (the polymq-stomp plugin, driven by stomp.py) and RocketMQ
(the polymq-rocketmq plugin, driven by ali-ons on Node.js): the
producer sends a binary body holding every byte value and a text body with non-ASCII
characters, each with every standard field its protocol can carry; the consumer checks each
field that ``SURVIVES`` (the table of docs/mapping.md) says reaches it.
The matrix is printed at the end of the module. Then wildcards across protocols, reply-to across
protocols, and persistent messages surviving a restart consumed by another protocol.

One broker for the module, one client per protocol, one JVM for the JMS client.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))

from brokerproc import BrokerProcess  # noqa: E402
from clients import AmqpClient, JmsClient, KafkaClient, MqttClient, Out, RocketClient  # noqa: E402
from conftest import module_broker  # noqa: E402
from stompclient import StompInterop  # noqa: E402

ADAPTERS = ["mqtt", "amqp", "kafka", "openwire", "stomp", "rocketmq"]
# RocketMQ topics of one queue, so a cell's two messages keep their order (as Kafka's topics here)
SETTINGS = {"adapters.rocketmq.queue_nums": 1}

PROTOS = ["mqtt311", "mqtt5", "amqp", "kafka", "openwire", "stomp", "rocketmq"]
ALL = frozenset(PROTOS)
MQTT = frozenset({"mqtt311", "mqtt5"})

# The mapping table (docs/mapping.md): field -> (protocols whose producers can set it,
# protocols whose consumers see it). A field survives producer -> consumer when both hold.
SURVIVES: dict[str, tuple[frozenset, frozenset]] = {
    "body": (ALL, ALL),
    # Kafka: the record headers content-type / correlation-id (CloudEvents Kafka binding)
    "content_type": (
        frozenset({"amqp", "mqtt5", "kafka", "openwire", "stomp"}),
        frozenset({"amqp", "mqtt5", "kafka", "stomp"}),
    ),
    "content_encoding": (frozenset({"amqp", "stomp"}), frozenset({"amqp", "stomp"})),
    # RocketMQ consumers: the property UNIQ_KEY (ali-ons gives its producers no way to set it)
    "message_id": (
        frozenset({"amqp", "openwire", "stomp"}),
        frozenset({"amqp", "openwire", "stomp", "rocketmq"}),
    ),
    "correlation_id": (
        frozenset({"amqp", "mqtt5", "kafka", "openwire", "stomp"}),
        frozenset({"amqp", "mqtt5", "kafka", "openwire", "stomp"}),
    ),
    "reply_to": (
        frozenset({"amqp", "mqtt5", "openwire", "stomp"}),
        frozenset({"amqp", "mqtt5", "openwire", "stomp"}),
    ),
    "user_id": (frozenset({"amqp", "stomp"}), frozenset({"amqp", "openwire", "stomp"})),
    "type": (
        frozenset({"amqp", "openwire", "stomp"}),
        frozenset({"amqp", "openwire", "stomp"}),
    ),
    # RocketMQ consumers: the born timestamp (set by the client when sending, not by the user)
    "timestamp": (
        frozenset({"amqp", "kafka", "openwire", "stomp"}),
        frozenset({"amqp", "kafka", "openwire", "stomp", "rocketmq"}),
    ),
    "expiration": (
        frozenset({"amqp", "mqtt5", "openwire", "stomp"}),
        frozenset({"amqp", "mqtt5", "openwire", "stomp"}),
    ),
    "priority": (
        frozenset({"amqp", "openwire", "stomp"}),
        frozenset({"amqp", "openwire", "stomp"}),
    ),
    # MQTT producers: QoS 1 = durable; Kafka records are always durable; MQTT consumers: QoS 1
    "durable": (ALL, frozenset({"amqp", "openwire", "mqtt311", "mqtt5", "stomp"})),
    # RocketMQ: user properties (strings)
    "headers": (
        frozenset({"amqp", "mqtt5", "kafka", "openwire", "stomp", "rocketmq"}),
        frozenset({"amqp", "mqtt5", "kafka", "openwire", "stomp", "rocketmq"}),
    ),
    # AMQP, MQTT 5, JMS and STOMP carry the Kafka key as the header / property x-kafka-key;
    # RocketMQ as its KEYS
    "key": (
        frozenset({"amqp", "kafka", "mqtt5", "openwire", "stomp", "rocketmq"}),
        frozenset({"amqp", "kafka", "mqtt5", "openwire", "stomp", "rocketmq"}),
    ),
    "jms_class": (ALL, frozenset({"openwire"})),
    "tags": (frozenset({"rocketmq"}), frozenset({"rocketmq"})),
}

TYPED = frozenset({"amqp", "openwire"})  # typed header values (field tables, JMS properties)

BINARY = bytes(range(256))
TEXT = "Grüße, 世界 — naïve café ✓ ¿qué? Ωμέγα 🚀"
TEXT_CT = "text/plain; charset=utf-8"
TTL = 60_000
REPLY = {
    "amqp": "reply.amqp",
    "mqtt5": "reply/mqtt",
    "openwire": "reply.jms",
    "stomp": "/queue/reply.stomp",
}
# reply-to as each consumer sees it (docs/mapping.md, "Reply-to addresses")
REPLY_SEEN = {
    "amqp": {
        "amqp": "reply.amqp",
        "mqtt5": "reply/amqp",
        "openwire": "queue://reply.amqp",
        "stomp": "/queue/reply.amqp",
    },
    "mqtt5": {
        "amqp": "topic://reply.mqtt",
        "mqtt5": "reply/mqtt",
        "openwire": "topic://reply.mqtt",
        "stomp": "/topic/reply.mqtt",
    },
    "openwire": {
        "amqp": "reply.jms",
        "mqtt5": "reply/jms",
        "openwire": "queue://reply.jms",
        "stomp": "/queue/reply.jms",
    },
    "stomp": {
        "amqp": "reply.stomp",
        "mqtt5": "reply/stomp",
        "openwire": "queue://reply.stomp",
        "stomp": "/queue/reply.stomp",
    },
}
TYPED_HEADERS = {"h-str": "välue ✓", "h-int": 42, "h-long": 2**40, "h-bool": True}
HEADERS = {
    "amqp": TYPED_HEADERS,  # pika cannot encode a float header
    "openwire": {**TYPED_HEADERS, "h-float": 1.5},
    "mqtt5": {"h-str": "välue ✓", "h-int": "42"},
    "kafka": {"h-str": "välue ✓".encode(), "h-bin": b"\x00\xff"},
    "stomp": {"h-str": "välue ✓", "h-int": "42"},  # STOMP headers are strings
    "rocketmq": {"h-str": "välue ✓", "h-int": "42"},  # user properties are strings
}


def make_out(p: str, text: bool, cell: str) -> Out:
    out = Out(TEXT.encode() if text else BINARY, text=text)
    ins = {f for f, (i, _o) in SURVIVES.items() if p in i}
    if "content_type" in ins:
        out.content_type = TEXT_CT if text else "application/octet-stream"
    if "content_encoding" in ins:
        out.content_encoding = "identity"
    if "message_id" in ins:
        out.message_id = f"mid-{cell}-{int(text)}"
    if "correlation_id" in ins:
        out.correlation_id = f"corr-{cell}-{int(text)}"
    if "reply_to" in ins:
        out.reply_to = REPLY[p]
    if "user_id" in ins:
        out.user_id = "guest"
    if "type" in ins:
        out.type = "order.created"
    if "timestamp" in ins:
        out.timestamp_ms = int(time.time()) * 1000 - 5000  # whole seconds: AMQP carries s
    if "expiration" in ins:
        out.ttl_ms = TTL
    if "priority" in ins:
        out.priority = 7
    if "headers" in ins:
        out.headers = dict(HEADERS[p])
    if "key" in ins:
        out.key = f"key-{cell}".encode()
    if "tags" in ins:
        out.tags = f"tag-{int(text)}"
    return out


def header_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def expected_header(p: str, c: str, v):
    """A header value ``v`` set by a ``p`` producer, as a ``c`` consumer sees it."""
    if c == "kafka":
        return v if isinstance(v, bytes) else header_text(v).encode()
    if c in ("mqtt5", "stomp"):  # strings hold no U+0000 (the broker sends U+FFFD instead)
        return header_text(v).replace("\x00", "\ufffd")
    if c == "rocketmq":  # property values are strings (U+0000 included)
        return header_text(v)
    # typed consumers (AMQP, JMS)
    if c == "amqp" and isinstance(v, float):
        return int(v)  # pika decodes a double ('d') field as an integer (pika/data.py)
    if p == "kafka" and isinstance(v, bytes):
        try:
            return v.decode("utf-8")  # UTF-8 Kafka header values become text
        except UnicodeDecodeError:
            return v
    return v


def kind(v) -> str:
    """The type class of a header value (pika's ``long`` is an int)."""
    for t in (bool, int, float, str, bytes):
        if isinstance(v, t):
            return t.__name__
    return type(v).__name__


def check(p: str, c: str, out: Out, got, sent_at: float, jms_id: str | None) -> list[str]:
    """Differences between what was sent and what arrived, for the fields that survive."""
    bad: list[str] = []

    def eq(name, expected, actual):
        if expected != actual:
            bad.append(f"{name}: expected {expected!r}, got {actual!r}")

    def survives(f):
        i, o = SURVIVES[f]
        return p in i and c in o

    eq("body", out.body, got.body)
    if survives("content_type"):
        if p == "openwire":  # TextMessage: text/plain; charset=utf-8, BytesMessage: none
            want = TEXT_CT if out.text else None
        else:
            want = out.content_type
        eq("content_type", want, got.content_type)
    if survives("content_encoding"):
        eq("content_encoding", out.content_encoding, got.content_encoding)
    if survives("message_id"):
        mid = jms_id if p == "openwire" else out.message_id
        if c == "openwire" and not mid.startswith("ID:"):
            mid = "ID:" + mid  # the JMS client shows every id with its ID: prefix
        eq("message_id", mid, got.message_id)
    if survives("correlation_id"):
        eq("correlation_id", out.correlation_id, got.correlation_id)
    if survives("reply_to"):
        eq("reply_to", REPLY_SEEN[p][c], got.reply_to)
    if survives("user_id"):
        eq("user_id", out.user_id, got.user_id)
    if survives("type"):
        eq("type", out.type, got.type)
    if survives("timestamp"):
        if p == "openwire":  # set by the JMS client when sending
            lo, hi = int(sent_at * 1000) - 2000, int(time.time() * 1000) + 1000
            if got.timestamp_ms is None or not lo <= got.timestamp_ms <= hi:
                bad.append(f"timestamp: {got.timestamp_ms} not in [{lo}, {hi}]")
        else:
            eq("timestamp", out.timestamp_ms, got.timestamp_ms)
    if survives("expiration"):
        left = got.ttl_left_ms
        if left is None or not TTL - 30_000 < left <= TTL:
            bad.append(f"expiration: {left} ms left, expected about {TTL}")
    if survives("priority"):
        eq("priority", out.priority, got.priority)
    if survives("durable"):
        if c in MQTT:
            eq("qos (durable)", 1, got.qos)
        else:
            eq("durable", True, got.durable)
    if survives("headers"):
        for k, v in out.headers.items():
            if k not in got.headers:
                bad.append(f"header {k} missing (got {sorted(got.headers)})")
                continue
            want = expected_header(p, c, v)
            have = got.headers[k]
            eq(f"header {k}", want, have)
            if p in TYPED and c in TYPED and kind(want) != kind(have):
                bad.append(
                    f"header {k}: type {type(have).__name__}, expected {type(want).__name__}"
                )
    if survives("key"):
        eq("key", out.key, got.key)
    if survives("jms_class"):
        if p == "openwire":
            want = "Text" if out.text else "Bytes"
        else:  # textual content type and valid UTF-8 -> Text
            want = "Text" if (out.text and out.content_type == TEXT_CT) else "Bytes"
        eq("JMS message class", want, got.jms_class)
    if survives("tags"):
        eq("tags", out.tags, got.tags)
    return bad


DOC_ROWS = {  # first words of the rows of docs/mapping.md's "What survives" table
    "body": "body",
    "content type": "content_type",
    "content encoding": "content_encoding",
    "message id": "message_id",
    "correlation id": "correlation_id",
    "reply-to": "reply_to",
    "user id": "user_id",
    "type": "type",
    "timestamp": "timestamp",
    "expiration / TTL": "expiration",
    "priority": "priority",
    "durability": "durable",
    "headers / properties": "headers",
    "Kafka key": "key",
    "JMS message class": "jms_class",
    "RocketMQ tag": "tags",
}


def _doc_protocols(cell: str) -> frozenset:
    import re

    if cell.startswith("all"):
        return ALL
    cell = re.sub(r"\([^)]*\)", "", cell)  # remarks in parentheses
    found = set()
    for word in (w.strip() for w in cell.split(",")):
        found |= {
            "AMQP": {"amqp"},
            "MQTT 5": {"mqtt5"},
            "MQTT": set(MQTT),
            "Kafka": {"kafka"},
            "JMS": {"openwire"},
            "STOMP": {"stomp"},
            "RocketMQ": {"rocketmq"},
        }[word]
    return frozenset(found)


def test_survival_table_mirrors_the_docs():
    """SURVIVES above is the "What survives" table of docs/mapping.md."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "mapping.md").read_text()
    table = text.split("| field | set by | seen by |", 1)[1].split("\n\n", 1)[0]
    doc = {}
    for line in table.strip().splitlines()[1:]:
        name, set_by, seen_by = (c.strip() for c in line.strip("|").split("|"))
        field = next(f for prefix, f in DOC_ROWS.items() if name.startswith(prefix))
        doc[field] = (_doc_protocols(set_by), _doc_protocols(seen_by))
    assert doc == SURVIVES


# -- fixtures --------------------------------------------------------------------------------

RESULTS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(
        tmp_path_factory, "interop", ADAPTERS, settings=SETTINGS, log_level="info"
    ) as b:
        yield b


def open_clients(b: BrokerProcess) -> dict:
    return {
        "mqtt311": MqttClient(b.host, b.port("mqtt"), v5=False),
        "mqtt5": MqttClient(b.host, b.port("mqtt"), v5=True),
        "amqp": AmqpClient(b.host, b.port("amqp")),
        "kafka": KafkaClient(b.host, b.port("kafka")),
        "openwire": JmsClient(f"tcp://{b.host}:{b.port('openwire')}"),
        "stomp": StompInterop(b.port("stomp")),
        "rocketmq": RocketClient(f"{b.host}:{b.port('rocketmq')}"),
    }


def close_clients(clients: dict) -> None:
    for cl in clients.values():
        try:
            cl.close()
        except Exception:
            pass


class _MatrixReport:
    """Prints the matrix in pytest's terminal summary (registered as a plugin)."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        tr = terminalreporter
        if not RESULTS:
            return
        w = max(len(p) for p in PROTOS) + 2
        tr.write_sep("=", "interoperability matrix (rows: producer, columns: consumer)")
        tr.write_line("".ljust(w) + "".join(c.ljust(w) for c in PROTOS))
        for p in PROTOS:
            tr.write_line(p.ljust(w) + "".join(RESULTS.get((p, c), "-").ljust(w) for c in PROTOS))


@pytest.fixture(scope="module")
def clients(broker, request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("polymq-interop-matrix"):
        pm.register(_MatrixReport(), "polymq-interop-matrix")
    cl = open_clients(broker)
    yield cl
    close_clients(cl)


# -- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize("consumer", PROTOS)
@pytest.mark.parametrize("producer", PROTOS)
def test_matrix(clients, producer, consumer):
    RESULTS[(producer, consumer)] = "FAIL"
    cell = f"{producer}-{consumer}"
    # dashes, not dots: a RocketMQ topic name has none (one word for every protocol)
    key = f"ix-{producer}-{consumer}"
    pc, cc = clients[producer], clients[consumer]
    handle = cc.subscribe(key)
    sent_at = time.time()
    outs, ids = [make_out(producer, False, cell), make_out(producer, True, cell)], []
    for out in outs:
        pc.publish(key, out)
        ids.append(getattr(pc, "last_id", None))
    got = cc.receive(handle, 2, timeout=10)
    cc.done(handle)
    assert len(got) == 2, f"{cell}: received {len(got)} of 2 messages"
    problems = []
    for out, g, jid in zip(outs, got, ids, strict=True):
        kind = "text" if out.text else "binary"
        problems += [f"{kind} {d}" for d in check(producer, consumer, out, g, sent_at, jid)]
    assert not problems, f"{cell}:\n" + "\n".join(problems)
    RESULTS[(producer, consumer)] = "pass"


# -- wildcards -------------------------------------------------------------------------------


def test_wildcards_across_protocols(clients):
    """MQTT ``s/+/t``, an AMQP binding ``s.*.t`` and a JMS topic ``s.*.t`` get what each protocol
    publishes to ``s.x.t``; the Kafka topic ``s.x.t`` (a stream bound with its own name) too."""
    s = "w" + uuid.uuid4().hex[:6]
    pattern, topic = f"{s}.*.t", f"{s}.x.t"
    subs = {p: clients[p].subscribe(pattern) for p in ("mqtt311", "mqtt5", "amqp", "openwire")}
    subs["kafka"] = clients["kafka"].subscribe(topic)  # creates the topic first
    publishers = ["mqtt311", "mqtt5", "amqp", "kafka", "openwire"]
    # two levels where the pattern has one, sent first: matched by nobody
    clients["amqp"].publish(f"{s}.x.y.t", Out(b"too deep"))
    for p in publishers:
        clients[p].publish(topic, Out(f"from {p}".encode(), text=True))
    for c, h in subs.items():
        got = clients[c].receive(h, len(publishers), timeout=10)
        got += clients[c].receive(h, 1, timeout=0.2)  # nothing more
        assert sorted(g.body.decode() for g in got) == sorted(f"from {p}" for p in publishers), c
        if c in MQTT:
            assert {g.topic for g in got} == {f"{s}/x/t"}
        elif c == "openwire":
            assert {g.topic for g in got} == {f"topic://{s}.x.t"}
        else:
            assert {g.topic for g in got} == {topic}
        clients[c].done(h)


def test_jms_and_mqtt_multilevel_wildcards(clients):
    """JMS ``>`` (one or more levels) and MQTT ``#`` (zero or more levels) across protocols."""
    s = "m" + uuid.uuid4().hex[:6]
    hj = clients["openwire"].subscribe(f"{s}.>")
    hm = clients["mqtt5"].subscribe(f"{s}.#")
    clients["amqp"].publish(s, Out(b"parent"))
    clients["amqp"].publish(f"{s}.a.b", Out(b"child"))
    assert [g.body for g in clients["mqtt5"].receive(hm, 2, 5)] == [b"parent", b"child"]
    assert [g.body for g in clients["openwire"].receive(hj, 1, 5)] == [b"child"]
    assert clients["openwire"].receive(hj, 1, 0.3) == []
    clients["mqtt5"].done(hm)
    clients["openwire"].done(hj)


# -- reply-to --------------------------------------------------------------------------------


def test_amqp_request_answered_by_jms_and_mqtt5(clients):
    """An AMQP requester's reply queue (bound to amq.topic under its own name, for MQTT
    responders) gets the answers of a JMS responder and of an MQTT 5 responder."""
    amqp, jms, m5 = clients["amqp"], clients["openwire"], clients["mqtt5"]
    rid = uuid.uuid4().hex[:6]
    reply_q = amqp.subscribe(f"rpc.reply.{rid}", queue=f"rpc.reply.{rid}")
    assert reply_q == f"rpc.reply.{rid}"
    # JMS responder on queue rpc.jms.<rid>
    hj = jms.subscribe(f"rpc.jms.{rid}", kind="queue")
    amqp.publish(
        f"rpc.jms.{rid}", Out(b"ask jms", correlation_id="c-jms", reply_to=reply_q), exchange=""
    )
    (req,) = jms.receive(hj, 1, 5)
    assert req.reply_to == f"queue://{reply_q}" and req.correlation_id == "c-jms"
    jms.publish(
        req.reply_to.removeprefix("queue://"),
        Out(b"jms says hi", text=True, correlation_id=req.correlation_id),
        kind="queue",
    )
    # MQTT 5 responder on topic rpc/mqtt/<rid>
    hm = m5.subscribe(f"rpc.mqtt.{rid}")
    amqp.publish(f"rpc.mqtt.{rid}", Out(b"ask mqtt", correlation_id="c-mqtt", reply_to=reply_q))
    (req,) = m5.receive(hm, 1, 5)
    assert req.reply_to == f"rpc/reply/{rid}" and req.correlation_id == "c-mqtt"
    m5.publish(
        req.reply_to.replace("/", "."),  # the wrapper addresses by routing key
        Out(b"mqtt says hi", correlation_id=req.correlation_id),
    )
    answers = amqp.receive(reply_q, 2, 5)
    assert sorted((g.correlation_id, g.body) for g in answers) == [
        ("c-jms", b"jms says hi"),
        ("c-mqtt", b"mqtt says hi"),
    ]
    jms.done(hj)
    m5.done(hm)
    amqp.done(reply_q)


def test_mqtt5_and_jms_requests_answered_across(clients):
    """MQTT 5 requester answered by a JMS responder (reply to ``topic://``), and a JMS
    requester answered by an AMQP responder (reply-to is the plain queue name)."""
    amqp, jms, m5 = clients["amqp"], clients["openwire"], clients["mqtt5"]
    rid = uuid.uuid4().hex[:6]
    # MQTT 5 -> JMS -> MQTT 5
    hr = m5.subscribe(f"mr.{rid}")
    hj = jms.subscribe(f"svc.{rid}")
    m5.publish(f"svc.{rid}", Out(b"q", correlation_id="c1", reply_to=f"mr/{rid}"))
    (req,) = jms.receive(hj, 1, 5)
    assert req.reply_to == f"topic://mr.{rid}"
    jms.publish(req.reply_to.removeprefix("topic://"), Out(b"a", text=True, correlation_id="c1"))
    (ans,) = m5.receive(hr, 1, 5)
    assert (ans.body, ans.correlation_id, ans.topic) == (b"a", "c1", f"mr/{rid}")
    # JMS -> AMQP -> JMS
    hq = amqp.subscribe(f"svc2.{rid}")
    hjr = jms.subscribe(f"jr.{rid}", kind="queue")
    jms.publish(f"svc2.{rid}", Out(b"q2", correlation_id="c2", reply_to=f"jr.{rid}"))
    (req,) = amqp.receive(hq, 1, 5)
    assert req.reply_to == f"jr.{rid}"
    amqp.publish(req.reply_to, Out(b"a2", correlation_id="c2"), exchange="")
    (ans,) = jms.receive(hjr, 1, 5)
    assert (ans.body, ans.correlation_id, ans.jms_class) == (b"a2", "c2", "Bytes")
    for cl, h in ((m5, hr), (jms, hj), (amqp, hq), (jms, hjr)):
        cl.done(h)


# -- persistence across a restart ------------------------------------------------------------


def test_persistent_messages_survive_restart_across_protocols(tmp_path):
    """Persistent messages from each protocol into durable queues and streams are consumed by
    another protocol after the broker is killed (-9) and started again."""
    b = BrokerProcess(tmp_path / "restart", adapters=ADAPTERS, log_level="info").start()
    try:
        cl = open_clients(b)
        try:
            amqp = cl["amqp"]
            amqp.ch.confirm_delivery()  # publishes wait for their (after-fsync) confirm
            # durable destinations: two queues bound to amq.topic, one Kafka topic
            amqp.subscribe("p.mqtt", queue="p.from-mqtt", durable=True)
            amqp.subscribe("p.kafka", queue="p.from-kafka", durable=True)
            cl["kafka"].create("p.stream")
            # AMQP -> durable queue p.q1 (consumed by JMS)
            amqp.ch.queue_declare("p.q1", durable=True)
            amqp.publish("p.q1", Out(BINARY, headers={"n": 1}), exchange="")
            # JMS -> queue://p.q2 (consumed by AMQP)
            cl["openwire"].publish(
                "p.q2", Out(TEXT.encode(), text=True, correlation_id="j"), kind="queue"
            )
            # MQTT QoS 1 -> p/mqtt (queue, consumed by JMS) and p/stream (consumed by Kafka)
            cl["mqtt5"].publish("p.mqtt", Out(b"mqtt persistent", content_type="text/plain"))
            cl["mqtt311"].publish("p.stream", Out(b"mqtt into a stream"))
            # Kafka (acks=all) -> p.kafka (queue, consumed by AMQP); AMQP -> the stream
            cl["kafka"].publish("p.kafka", Out(b"kafka persistent", key=b"k"))
            amqp.publish("p.stream", Out(b"amqp into a stream"))
        finally:
            close_clients(cl)
        # every publish above was acknowledged after fsync (AMQP confirm, JMS synchronous
        # persistent send, MQTT PUBACK, Kafka acks=all), so even kill -9 loses nothing
        b.kill9()
        b.start()
        cl = open_clients(b)
        try:
            jms, amqp = cl["openwire"], cl["amqp"]
            h1 = jms.subscribe("p.q1", kind="queue")
            (g,) = jms.receive(h1, 1, 5)
            assert (g.body, g.jms_class, g.durable, g.headers.get("n")) == (
                BINARY,
                "Bytes",
                True,
                1,
            )
            (g,) = amqp.receive("p.q2", 1, 5)
            assert (g.body, g.content_type, g.correlation_id, g.durable) == (
                TEXT.encode(),
                TEXT_CT,
                "j",
                True,
            )
            h3 = jms.subscribe("p.from-mqtt", kind="queue")
            (g,) = jms.receive(h3, 1, 5)
            assert (g.body, g.jms_class) == (b"mqtt persistent", "Text")
            (g,) = amqp.receive("p.from-kafka", 1, 5)
            assert (g.body, g.key) == (b"kafka persistent", b"k")
            hk = cl["kafka"].subscribe("p.stream")
            got = cl["kafka"].receive(hk, 2, 10)
            assert [g.body for g in got] == [b"mqtt into a stream", b"amqp into a stream"]
        finally:
            close_clients(cl)
    finally:
        try:
            b.stop()
        finally:
            b.kill9()


# -- JMS bodies and dead letters -------------------------------------------------------------


def test_jms_map_message_reaches_others_as_json(clients):
    """A MapMessage is a JSON object (application/json) for non-JMS consumers, and still a
    MapMessage for JMS consumers."""
    import json

    key = "jm." + uuid.uuid4().hex[:6]
    hs = {c: clients[c].subscribe(key) for c in ("amqp", "mqtt5", "openwire")}
    entries = {"name": "Zoë", "city": "Kyōto"}
    clients["openwire"].publish(key, Out(b"", jms_map=entries))
    (a,) = clients["amqp"].receive(hs["amqp"], 1, 5)
    assert a.content_type == "application/json" and json.loads(a.body) == entries
    (m,) = clients["mqtt5"].receive(hs["mqtt5"], 1, 5)
    assert m.content_type == "application/json" and json.loads(m.body) == entries
    (j,) = clients["openwire"].receive(hs["openwire"], 1, 5)
    assert j.jms_class == "Map"
    for c, h in hs.items():
        clients[c].done(h)


def test_amqp_message_dead_lettered_by_jms_shows_the_cause_to_amqp(clients):
    """An AMQP message that a JMS consumer rejects for good lands in ActiveMQ.DLQ with
    ``dlqDeliveryFailureCause``; an AMQP consumer of the DLQ sees that header (the publisher's
    cached property list is not reused once the message changed)."""
    amqp, jms = clients["amqp"], clients["openwire"]
    q = "dlq.src." + uuid.uuid4().hex[:6]
    amqp.ch.queue_declare(q, durable=True)
    amqp.ch.queue_declare("ActiveMQ.DLQ", durable=True)
    amqp.ch.queue_purge("ActiveMQ.DLQ")
    amqp.publish(q, Out(b"poison", headers={"n": 1}, correlation_id="dead-1"), exchange="")
    assert jms.poison(q)
    (g,) = amqp.receive("ActiveMQ.DLQ", 1, 5)
    assert (g.body, g.correlation_id, g.headers.get("n")) == (b"poison", "dead-1", 1)
    assert "dlqDeliveryFailureCause" in g.headers


# -- durability flag and MQTT retain ---------------------------------------------------------


def test_non_persistent_stays_non_persistent(clients):
    """Transient messages (AMQP delivery-mode 1, JMS NON_PERSISTENT, MQTT QoS 0) arrive as
    transient everywhere: delivery-mode not 2, NON_PERSISTENT, QoS 0."""
    key = "np." + uuid.uuid4().hex[:6]
    hs = {c: clients[c].subscribe(key) for c in ("amqp", "mqtt5", "openwire")}
    for p in ("amqp", "openwire", "mqtt5"):
        clients[p].publish(key, Out(f"t-{p}".encode(), durable=False))
    for c, h in hs.items():
        got = clients[c].receive(h, 3, 5)
        assert sorted(g.body for g in got) == [b"t-amqp", b"t-mqtt5", b"t-openwire"], c
        for g in got:
            if c == "mqtt5":
                assert g.qos == 0
            else:
                assert g.durable is False, (c, g.body)
        clients[c].done(h)


def test_mqtt_retain_is_mqtt_only(clients):
    """A retained MQTT publish reaches current AMQP and JMS subscribers as a plain message and
    later MQTT subscribers (3.1.1 and 5) as the retained copy."""
    s = "rt" + uuid.uuid4().hex[:6]
    ha = clients["amqp"].subscribe(f"{s}.state")
    hj = clients["openwire"].subscribe(f"{s}.state")
    clients["mqtt5"].publish(f"{s}.state", Out(b"on", content_type="text/plain"), retain=True)
    assert [g.body for g in clients["amqp"].receive(ha, 1, 5)] == [b"on"]
    (j,) = clients["openwire"].receive(hj, 1, 5)
    assert (j.body, j.jms_class) == (b"on", "Text")
    for c in ("mqtt311", "mqtt5"):
        h = clients[c].subscribe(f"{s}.state")
        (g,) = clients[c].receive(h, 1, 5)
        assert (g.body, g.retain, g.topic) == (b"on", True, f"{s}/state")
        clients[c].done(h)
    clients["mqtt5"].publish(f"{s}.state", Out(b""), retain=True)  # clear the retained copy
    clients["amqp"].done(ha)
    clients["openwire"].done(hj)


# -- value types -----------------------------------------------------------------------------


def test_header_value_types_across_protocols(clients):
    """The value-type table of docs/mapping.md: AMQP decimal, timestamp, list, table, void and
    byte-array fields and JMS byte/short properties, as the other protocols see them."""
    import datetime
    import decimal

    key = "vt." + uuid.uuid4().hex[:6]
    hs = {c: clients[c].subscribe(key) for c in ("amqp", "mqtt5", "kafka", "openwire")}
    ts = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    secs = int(ts.timestamp())
    amqp_headers = {
        "dec": decimal.Decimal("3.14"),
        "ts": ts,
        "nul": None,
        "lst": [1, "a"],
        "tbl": {"x": 1},
        "neg": -7,
    }
    clients["amqp"].publish(key, Out(b"a", headers=amqp_headers))
    clients["openwire"].publish(key, Out(b"j", headers={"by": ("byte", 7), "sh": ("short", -300)}))
    got = {c: clients[c].receive(h, 2, 10) for c, h in hs.items()}
    for c, h in hs.items():
        clients[c].done(h)
    a_amqp, j_amqp = got["amqp"]
    assert a_amqp.headers == amqp_headers  # AMQP -> AMQP: the publisher's own encoding
    assert (j_amqp.headers["by"], j_amqp.headers["sh"]) == (7, -300)
    a_jms, j_jms = got["openwire"]
    assert (a_jms.headers["dec"], a_jms.jms_types["dec"]) == ("3.14", "string")
    assert (a_jms.headers["ts"], a_jms.headers["neg"]) == (secs, -7)
    assert a_jms.jms_types["neg"] == "int"
    assert (j_jms.jms_types["by"], j_jms.jms_types["sh"]) == ("byte", "short")  # JMS -> JMS
    a_m5, j_m5 = got["mqtt5"]
    assert {k: a_m5.headers[k] for k in ("dec", "ts", "nul", "neg")} == {
        "dec": "3.14",
        "ts": str(secs),
        "nul": "",
        "neg": "-7",
    }
    assert (j_m5.headers["by"], j_m5.headers["sh"]) == ("7", "-300")
    assert (a_m5.headers["lst"], a_m5.headers["tbl"]) == ("[1, 'a']", "{'x': 1}")
    a_k, j_k = got["kafka"]
    assert {k: a_k.headers[k] for k in ("dec", "ts", "nul", "neg")} == {
        "dec": b"3.14",
        "ts": str(secs).encode(),
        "nul": None,
        "neg": b"-7",
    }
    assert (j_k.headers["by"], j_k.headers["sh"]) == (b"7", b"-300")


# -- Kafka topic = stream --------------------------------------------------------------------


def test_kafka_topic_is_a_stream_for_amqp(clients):
    """A Kafka topic is the core stream of that name: an AMQP consumer reads it from the first
    offset (records decoded, key as x-kafka-key, offset as x-stream-offset) and an AMQP publish
    through the default exchange appends to it for Kafka consumers."""
    amqp, kafka = clients["amqp"], clients["kafka"]
    t = "st." + uuid.uuid4().hex[:6]
    kafka.create(t)
    kafka.publish(t, Out(b"rec-0", key=b"k0", headers={"h": b"v"}))
    amqp.publish(t, Out(b"rec-1", key=b"k1"), exchange="")  # default exchange -> stream t
    ch = amqp.conn.channel()
    ch.basic_qos(prefetch_count=10)
    got = []
    tag = ch.basic_consume(
        t, lambda c, m, p, b: got.append((b, p.headers)), arguments={"x-stream-offset": "first"}
    )
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        amqp.conn.process_data_events(0.05)
    ch.basic_cancel(tag)
    ch.close()
    assert [(b, h["x-kafka-key"], h["x-stream-offset"]) for b, h in got] == [
        (b"rec-0", "k0", 0),
        (b"rec-1", "k1", 1),
    ]
    assert got[0][1]["h"] == "v"
    h = kafka.subscribe(t)
    recs = kafka.receive(h, 2, 10)
    kafka.done(h)
    assert [(r.body, r.key) for r in recs] == [(b"rec-0", b"k0"), (b"rec-1", b"k1")]
