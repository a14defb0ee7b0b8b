"""One small wrapper per protocol around a real client, for the interoperability tests.

Every wrapper has the same three calls, all addressed by an ``amq.topic`` routing key
(``a.b.c``; patterns ``*``/``#`` for subscriptions):

* ``subscribe(key) -> handle`` — start receiving what is published to ``key`` (a pattern for
  MQTT, AMQP and JMS; a concrete topic for Kafka, whose topic is created).
* ``publish(key, out)`` — send one message described by an :class:`Out` (each client sends the
  fields its protocol can carry and ignores the others).
* ``receive(handle, n, timeout) -> [Got]`` — what arrived, as protocol-neutral :class:`Got`
  records (``None`` where the protocol has no place for a field).

Clients: paho-mqtt (3.1.1 and 5.0), pika (AMQP 0-9-1), confluent-kafka, the ActiveMQ 5.x JMS
client through the long-lived ``JmsInterop`` Java program (commands on stdin), and the RocketMQ
client ali-ons (npm) through ``tests/rocketmq/rmq.js interop`` on Node.js (JSON lines on stdin).
"""

from __future__ import annotations

import base64
import itertools
import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "java"))

import jmsrun  # noqa: E402

_ids = itertools.count(1)


@dataclass
class Out:
    """A message to send; ``text`` chooses a text body (TextMessage for JMS)."""

    body: bytes
    text: bool = False
    content_type: str | None = None
    content_encoding: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    user_id: str | None = None
    type: str | None = None
    timestamp_ms: int | None = None
    ttl_ms: int | None = None
    priority: int | None = None
    durable: bool = True
    headers: dict[str, Any] = field(default_factory=dict)
    key: bytes | None = None
    jms_map: dict[str, str] | None = None  # JMS only: send a MapMessage instead
    tags: str | None = None  # RocketMQ only: the message's tag


@dataclass
class Got:
    body: bytes
    content_type: str | None = None
    content_encoding: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    user_id: str | None = None
    type: str | None = None
    timestamp_ms: int | None = None
    ttl_left_ms: int | None = None  # remaining time to live when received
    priority: int | None = None
    durable: bool | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    key: bytes | None = None
    jms_class: str | None = None
    jms_types: dict[str, str] = field(default_factory=dict)  # header -> Java type
    qos: int | None = None
    retain: bool | None = None
    topic: str | None = None
    tags: str | None = None


def take_from_inbox(lock: threading.Lock, inbox: list[Got], n: int, timeout: float) -> list[Got]:
    """The first ``n`` messages a client's callback thread appends to ``inbox`` (fewer if they
    have not all come within ``timeout``), removed from it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lock:
            if len(inbox) >= n:
                break
        time.sleep(0.01)
    with lock:
        got = inbox[:n]
        del inbox[:n]
    return got


def mqtt_topic(key: str) -> str:
    """An amq.topic key (or pattern) as an MQTT topic (filter)."""
    swapped = key.translate(str.maketrans("./", "/."))
    return "/".join("+" if w == "*" else w for w in swapped.split("/"))


# -- MQTT ------------------------------------------------------------------------------------


class MqttClient:
    def __init__(self, host: str, port: int, v5: bool) -> None:
        import paho.mqtt.client as mqtt

        self.mqtt = mqtt
        self.v5 = v5
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"interop-{'v5' if v5 else 'v311'}-{next(_ids)}",
            protocol=proto,
        )
        self.lock = threading.Lock()
        self.inbox: dict[str, list] = {}
        self.subs: list[tuple[str, str]] = []
        self.c.on_message = self._on_message
        self.acks: dict[int, threading.Event] = {}
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = lambda *a: None
        if v5:
            self.c.connect(host, port, keepalive=60, clean_start=True)
        else:
            self.c.connect(host, port, keepalive=60)
        self.c.loop_start()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self.lock:
            ev = self.acks.setdefault(mid, threading.Event())
        ev.set()

    def _on_message(self, client, userdata, m) -> None:
        got = Got(bytes(m.payload), qos=m.qos, retain=bool(m.retain), topic=m.topic)
        p = getattr(m, "properties", None)
        if self.v5 and p is not None:
            got.content_type = getattr(p, "ContentType", None)
            got.reply_to = getattr(p, "ResponseTopic", None)
            cd = getattr(p, "CorrelationData", None)
            if cd is not None:
                got.correlation_data = bytes(cd)  # type: ignore[attr-defined]
                try:
                    got.correlation_id = bytes(cd).decode("utf-8")
                except UnicodeDecodeError:
                    pass
            mei = getattr(p, "MessageExpiryInterval", None)
            if mei is not None:
                got.ttl_left_ms = mei * 1000
            for k, v in getattr(p, "UserProperty", None) or []:
                got.headers[k] = v
            if "x-kafka-key" in got.headers:
                got.key = got.headers["x-kafka-key"].encode("utf-8")
        with self.lock:
            for handle, filt in self.subs:
                if self.mqtt.topic_matches_sub(filt, m.topic):
                    self.inbox[handle].append(got)

    def subscribe(self, key: str) -> str:
        handle = f"s{next(_ids)}"
        filt = mqtt_topic(key)
        with self.lock:
            self.inbox[handle] = []
            self.subs.append((handle, filt))
        rc, mid = self.c.subscribe(filt, qos=1)
        with self.lock:
            ev = self.acks.setdefault(mid, threading.Event())
        assert ev.wait(10), "no SUBACK"
        return handle

    def publish(self, key: str, out: Out, retain: bool = False) -> None:
        props = None
        if self.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            if out.content_type is not None:
                props.ContentType = out.content_type
            if out.correlation_id is not None:
                props.CorrelationData = out.correlation_id.encode("utf-8")
            if out.reply_to is not None:
                props.ResponseTopic = out.reply_to
            if out.ttl_ms is not None:
                props.MessageExpiryInterval = out.ttl_ms // 1000
            ups = [(k, str(v)) for k, v in out.headers.items()]
            if out.key is not None:
                ups.append(("x-kafka-key", out.key.decode("utf-8")))
            if ups:
                props.UserProperty = ups
        info = self.c.publish(
            mqtt_topic(key), out.body, qos=1 if out.durable else 0, retain=retain, properties=props
        )
        info.wait_for_publish(10)

    def receive(self, handle: str, n: int, timeout: float = 10.0) -> list[Got]:
        return take_from_inbox(self.lock, self.inbox[handle], n, timeout)

    def done(self, handle: str) -> None:
        with self.lock:
            filt = dict(self.subs).pop(handle)
            self.subs = [(h, f) for h, f in self.subs if h != handle]
            del self.inbox[handle]
        if all(f != filt for _h, f in self.subs):
            self.c.unsubscribe(filt)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# -- AMQP 0-9-1 ------------------------------------------------------------------------------


class AmqpClient:
    def __init__(self, host: str, port: int) -> None:
        import pika

        self.pika = pika
        self.conn = pika.BlockingConnection(
            pika.ConnectionParameters(host, port, heartbeat=0, blocked_connection_timeout=30)
        )
        self.ch = self.conn.channel()

    def subscribe(self, key: str, queue: str = "", durable: bool = False) -> str:
        r = self.ch.queue_declare(queue, exclusive=not durable, durable=durable, auto_delete=False)
        q = r.method.queue
        self.ch.queue_bind(q, "amq.topic", key)
        return q

    def publish(self, key: str, out: Out, exchange: str = "amq.topic") -> None:
        headers = dict(out.headers)
        if out.key is not None:
            headers["x-kafka-key"] = out.key.decode("utf-8")
        props = self.pika.BasicProperties(
            content_type=out.content_type,
            content_encoding=out.content_encoding,
            headers=headers or None,
            delivery_mode=2 if out.durable else 1,
            priority=out.priority,
            correlation_id=out.correlation_id,
            reply_to=out.reply_to,
            expiration=None if out.ttl_ms is None else str(out.ttl_ms),
            message_id=out.message_id,
            timestamp=None if out.timestamp_ms is None else out.timestamp_ms // 1000,
            type=out.type,
            user_id=out.user_id,
        )
        self.ch.basic_publish(exchange, key, out.body, props)

    def receive(self, handle: str, n: int, timeout: float = 10.0) -> list[Got]:
        got: list[Got] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            method, p, body = self.ch.basic_get(handle, auto_ack=True)
            if method is None:
                self.conn.sleep(0.02)
                continue
            headers = dict(p.headers or {})
            k = headers.get("x-kafka-key")
            got.append(
                Got(
                    bytes(body),
                    content_type=p.content_type,
                    content_encoding=p.content_encoding,
                    message_id=p.message_id,
                    correlation_id=p.correlation_id,
                    reply_to=p.reply_to,
                    user_id=p.user_id,
                    type=p.type,
                    timestamp_ms=None if p.timestamp is None else p.timestamp * 1000,
                    ttl_left_ms=None if p.expiration is None else int(p.expiration),
                    priority=p.priority,
                    durable=p.delivery_mode == 2,
                    headers=headers,
                    key=k.encode("utf-8") if isinstance(k, str) else k,
                    topic=method.routing_key,
                )
            )
        return got

    def done(self, handle: str) -> None:
        self.ch.queue_delete(handle)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


# -- Kafka -----------------------------------------------------------------------------------


class KafkaClient:
    def __init__(self, host: str, port: int) -> None:
        from confluent_kafka import Producer

        self.bootstrap = f"{host}:{port}"
        self.producer = Producer(
            {"bootstrap.servers": self.bootstrap, "linger.ms": 0, "acks": "all"}
        )
        self.consumers: dict[str, Any] = {}

    def create(self, topic: str) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        fut = admin.create_topics([NewTopic(topic, 1, 1)])[topic]
        try:
            fut.result(10)
        except Exception as e:  # already there is fine
            if "already exists" not in str(e).lower() and "TOPIC_ALREADY_EXISTS" not in str(e):
                raise

    def subscribe(self, key: str, offset: int | None = None) -> str:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.create(key)
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"interop-{next(_ids)}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        c.assign([TopicPartition(key, 0, OFFSET_BEGINNING if offset is None else offset)])
        handle = f"k{next(_ids)}"
        self.consumers[handle] = c
        return handle

    def publish(self, key: str, out: Out) -> None:
        headers = [
            (k, v if isinstance(v, bytes) else str(v).encode("utf-8"))
            for k, v in out.headers.items()
        ]
        # the CloudEvents Kafka binding's header names for the two core fields
        if out.content_type is not None:
            headers.append(("content-type", out.content_type.encode()))
        if out.correlation_id is not None:
            headers.append(("correlation-id", out.correlation_id.encode()))
        kwargs: dict[str, Any] = {"headers": headers}
        if out.timestamp_ms is not None:
            kwargs["timestamp"] = out.timestamp_ms
        self.producer.produce(key, out.body, key=out.key, **kwargs)
        assert self.producer.flush(10) == 0

    def receive(self, handle: str, n: int, timeout: float = 10.0) -> list[Got]:
        c = self.consumers[handle]
        got: list[Got] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.1)
            if m is None or m.error():
                continue
            headers: dict[str, Any] = {}
            for k, v in m.headers() or []:
                headers[k] = v
            content_type = headers.pop("content-type", None)
            correlation_id = headers.pop("correlation-id", None)
            got.append(
                Got(
                    m.value() or b"",
                    key=m.key(),
                    content_type=content_type.decode() if content_type is not None else None,
                    correlation_id=(
                        correlation_id.decode() if correlation_id is not None else None
                    ),
                    headers=headers,
                    timestamp_ms=m.timestamp()[1],
                    topic=m.topic(),
                )
            )
        return got

    def done(self, handle: str) -> None:
        self.consumers.pop(handle).close()

    def close(self) -> None:
        for c in self.consumers.values():
            c.close()
        self.consumers.clear()
        self.producer.flush(5)
        self.producer = None  # destroyed now, while the broker still answers


# -- OpenWire (JMS) --------------------------------------------------------------------------


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode("utf-8") if isinstance(s, str) else s).decode()


def _unb64(s: str) -> str:
    return base64.b64decode(s).decode("utf-8")


def _jms_prop(v: Any) -> str:
    """A property for the Java program; ``(java type, value)`` picks the type explicitly."""
    if isinstance(v, tuple):
        return f"{v[0]}:" + _b64(str(v[1]))
    if isinstance(v, bool):
        return "boolean:" + _b64("true" if v else "false")
    if isinstance(v, int):
        return ("int:" if -(2**31) <= v < 2**31 else "long:") + _b64(str(v))
    if isinstance(v, float):
        return "double:" + _b64(repr(v))
    return "string:" + _b64(str(v))


def _from_java(jtype: str, text: str) -> Any:
    if jtype in ("byte", "short", "int", "long"):
        return int(_unb64(text))
    if jtype in ("float", "double"):
        return float(_unb64(text))
    if jtype == "boolean":
        return _unb64(text) == "true"
    if jtype == "bytes":
        return base64.b64decode(text)
    return _unb64(text)


class JmsClient:
    """The JmsInterop Java program, one JVM and one JMS connection for the whole module."""

    def __init__(self, url: str) -> None:
        classes = jmsrun.classes_once([str(HERE / "JmsInterop.java")])
        self.proc = subprocess.Popen(
            jmsrun.java_cmd(classes, "JmsInterop", url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"JmsInterop did not start: {line!r} {self.proc.stderr.read()}")
        self.last_id: str | None = None

    def cmd(self, *words: str) -> str:
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        if line.startswith("ERR") or not line:
            raise RuntimeError(f"JmsInterop: {' '.join(words)[:200]} -> {line!r}")
        return line

    def subscribe(self, key: str, kind: str = "topic") -> str:
        handle = f"j{next(_ids)}"
        self.cmd("SUB", handle, kind, _b64(key))
        return handle

    def publish(self, key: str, out: Out, kind: str = "topic") -> None:
        if out.jms_map is not None:  # a MapMessage with string entries
            body = ",".join(f"{k}={_b64(v)}" for k, v in out.jms_map.items())
            words = ["SEND", kind, _b64(key), "map", _b64(body)]
        else:
            words = ["SEND", kind, _b64(key), "text" if out.text else "bytes", _b64(out.body)]
        if out.correlation_id is not None:
            words.append("corr=" + _b64(out.correlation_id))
        if out.type is not None:
            words.append("type=" + _b64(out.type))
        if out.reply_to is not None:
            words.append("replyq=" + _b64(out.reply_to))
        if out.priority is not None:
            words.append(f"prio={out.priority}")
        words.append(f"persist={1 if out.durable else 0}")
        if out.ttl_ms is not None:
            words.append(f"ttl={out.ttl_ms}")
        for k, v in out.headers.items():
            words.append(f"p.{k}={_jms_prop(v)}")
        if out.key is not None:
            words.append(f"p.x-kafka-key={_jms_prop(out.key.decode('utf-8'))}")
        reply = self.cmd(*words)
        self.last_id = _unb64(reply.split()[1])

    def receive(self, handle: str, n: int, timeout: float = 10.0) -> list[Got]:
        got: list[Got] = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0:
                break
            line = self.cmd("RECV", handle, str(left))
            if line == "NONE":
                break
            got.append(self._parse(line))
        return got

    @staticmethod
    def _parse(line: str) -> Got:
        f: dict[str, str] = {}
        g = Got(b"")
        for word in line.split()[1:]:
            k, v = word.split("=", 1)
            if k.startswith("p."):
                jtype, text = v.split(":", 1)
                g.headers[k[2:]] = _from_java(jtype, text)
                g.jms_types[k[2:]] = jtype
            else:
                f[k] = v
        g.body = base64.b64decode(f["body"])
        k = g.headers.get("x-kafka-key")
        g.key = k.encode("utf-8") if isinstance(k, str) else k
        g.jms_class = _unb64(f["cls"])
        g.message_id = _unb64(f["id"]) if "id" in f else None
        g.correlation_id = _unb64(f["corr"]) if "corr" in f else None
        g.type = _unb64(f["type"]) if "type" in f else None
        g.reply_to = _unb64(f["replyto"]) if "replyto" in f else None
        g.user_id = _unb64(f["userid"]) if "userid" in f else None
        g.priority = int(_unb64(f["prio"]))
        g.timestamp_ms = int(_unb64(f["ts"])) or None
        exp = int(_unb64(f["exp"]))
        g.ttl_left_ms = exp - int(time.time() * 1000) if exp else None
        g.durable = _unb64(f["persist"]) == "1"
        g.topic = _unb64(f["dest"]) if "dest" in f else None
        return g

    def poison(self, queue: str) -> bool:
        """Take one message from ``queue`` and reject it for good (JMS dead-letters it)."""
        return self.cmd("POISON", _b64(queue)) == "OK"

    def done(self, handle: str) -> None:
        self.cmd("CLOSE", handle)

    def close(self) -> None:
        try:
            self.proc.stdin.write("QUIT\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()


# -- RocketMQ --------------------------------------------------------------------------------


class RocketClient:
    """ali-ons on Node.js: one producer and a push consumer (a new group) per subscription, in
    one long-lived ``rmq.js interop`` process. A key is a RocketMQ topic, so it has no dots."""

    def __init__(self, name_srv: str) -> None:
        from rocketmq_helpers import NODE_DIR, ensure_ali_ons

        ensure_ali_ons()
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "rmq.js"), "interop", name_srv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=NODE_DIR,
        )
        self.lock = threading.Lock()
        self.inbox: dict[str, list[Got]] = {}
        self.replies: queue.Queue = queue.Queue()
        self.seq = 0
        threading.Thread(target=self._read, daemon=True).start()
        first = self.replies.get(timeout=60)
        assert first.get("started"), first

    def _read(self) -> None:
        from polymq_rocketmq.server import SYSTEM_PROPERTIES

        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            m = obj.get("msg")
            if m is None:
                self.replies.put(obj)
                continue
            props = m.get("props") or {}
            keys = props.get("KEYS")
            got = Got(
                base64.b64decode(m["body"]),
                message_id=props.get("UNIQ_KEY"),
                timestamp_ms=m.get("bornTimestamp"),
                # ("": ali-ons reads the separator that ends the properties as an empty one)
                headers={k: v for k, v in props.items() if k and k not in SYSTEM_PROPERTIES},
                key=keys.encode("utf-8") if keys else None,
                topic=m.get("topic"),
                tags=m.get("tags") or None,
            )
            with self.lock:
                if obj["handle"] in self.inbox:
                    self.inbox[obj["handle"]].append(got)
        self.replies.put({"exited": True})

    def cmd(self, op: str, timeout: float = 30.0, **fields: Any) -> dict:
        self.seq += 1
        self.proc.stdin.write(json.dumps({"op": op, "seq": self.seq, **fields}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            assert "error" not in reply and "exited" not in reply, (op, reply)
            if reply.get("seq") == self.seq:
                return reply

    def subscribe(self, key: str) -> str:
        handle = f"r{next(_ids)}"
        with self.lock:
            self.inbox[handle] = []
        self.cmd("subscribe", handle=handle, topic=key)
        return handle

    def publish(self, key: str, out: Out) -> None:
        # property values are strings
        props = {
            k: v.decode("utf-8", "replace")
            if isinstance(v, bytes)
            else ("true" if v else "false")
            if isinstance(v, bool)
            else str(v)
            for k, v in out.headers.items()
        }
        self.cmd(
            "publish",
            topic=key,
            body=base64.b64encode(out.body).decode(),
            tags=out.tags or "",
            keys=out.key.decode("utf-8") if out.key is not None else "",
            props=props,
        )

    def receive(self, handle: str, n: int, timeout: float = 10.0) -> list[Got]:
        return take_from_inbox(self.lock, self.inbox[handle], n, timeout)

    def done(self, handle: str) -> None:
        self.cmd("done", handle=handle)
        with self.lock:
            del self.inbox[handle]

    def close(self) -> None:
        try:
            self.cmd("close", timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
