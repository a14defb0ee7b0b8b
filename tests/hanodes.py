"""Shared-store HA helpers for tests/test_ha_*.py and bench/ha_bench.py.

``HaNode`` is a :class:`~brokerproc.BrokerProcess` with ``ha.enabled`` on fixed ports (a standby
has no port file: the ports must be known before it becomes active). ``launch()`` starts the
process without waiting (a standby never becomes ready on its own); ``wait_active()`` waits until
it has taken over and opened its listeners.

The load functions drive one real client each and record what the broker acknowledged, so a test
can compare it with what is consumed afterwards:

* ``amqp_publish``: pika ``BlockingConnection`` over both nodes' parameters, confirms on,
  persistent messages on a durable queue; reconnects (pika does not) and resends what was not
  confirmed.
* ``mqtt_publish``: paho QoS 1 with a persistent session; on a disconnect or a failed connect
  the client is pointed at the other node (paho has no host list), its in-flight messages are
  resent by paho itself.
* ``kafka_produce``: confluent-kafka ``acks=all``, idempotent, bootstrap list naming both nodes.
* ``jms_send`` (tests/java/JmsHa.java): persistent sync sends over ``failover:(tcp://a,tcp://b)``.

Payloads are ``m-<i>``; consumers return the list of ``i`` received (duplicates kept).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from brokerproc import HOST, BrokerProcess, _child_env
from pgserver import free_port

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "java"))

ADAPTERS = ("amqp", "mqtt", "kafka", "openwire")


class HaNode(BrokerProcess):
    """One HA node (see the module docstring)."""

    def __init__(
        self,
        workdir,
        dsn: str,
        node_id: str,
        adapters: Sequence[str] = ADAPTERS,
        lease_s: float = 5.0,
        renew_s: float = 1.0,
        settings: dict | None = None,
        **kw,
    ) -> None:
        self.fixed_ports = {a: free_port() for a in adapters}
        sets: dict[str, object] = {
            "store.dsn": dsn,
            "ha.enabled": True,
            "ha.node_id": node_id,
            "ha.lease_s": lease_s,
            "ha.renew_s": renew_s,
            "ha.advertised_host": HOST,  # what Kafka Metadata and OpenWire BrokerInfo name
        }
        for a, p in self.fixed_ports.items():
            sets[f"adapters.{a}.port"] = p
        sets.update(settings or {})
        kw.setdefault("log_level", "info")
        super().__init__(workdir, adapters, store="postgres", settings=sets, **kw)
        self.node_id = node_id

    def launch(self) -> HaNode:
        """Start the process; do not wait (a standby opens no port)."""
        self._close_log()
        if self.port_file.exists():
            self.port_file.unlink()
        self.starts += 1
        self.log_path = self.workdir / f"broker-{self.starts}.log"
        self._log_fh = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(self.workdir),
            env=_child_env(self.env),
        )
        return self

    def wait_active(self, timeout: float = 30.0) -> HaNode:
        """Wait until this node writes its port file (holds the lease, listeners open)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists():
                try:
                    self.ports = json.loads(self.port_file.read_text())
                    return self
                except (OSError, ValueError):
                    pass
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"node {self.node_id} exited:\n{self.log_tail()}")
            time.sleep(0.01)
        raise AssertionError(f"node {self.node_id} not active after {timeout}s:\n{self.log_tail()}")

    def address(self, adapter: str) -> tuple[str, int]:
        return HOST, self.fixed_ports[adapter]

    def open_ports(self) -> list[str]:
        """The adapters whose port accepts a TCP connection now."""
        out = []
        for a, p in self.fixed_ports.items():
            with socket.socket() as s:
                s.settimeout(1.0)
                if s.connect_ex((HOST, p)) == 0:
                    out.append(a)
        return out


def make_nodes(pg_server, root, count: int = 2, **kw) -> tuple[str, list[HaNode]]:
    """A fresh database and ``count`` nodes on it (not started)."""
    dsn = pg_server.create_database()
    names = "abcdefgh"
    return dsn, [HaNode(Path(root) / names[i], dsn, names[i], **kw) for i in range(count)]


def _indexes(bodies) -> list[int]:
    out = []
    for b in bodies:
        text = b.decode() if isinstance(b, bytes | bytearray) else str(b)
        out.append(int(text.rsplit("-", 1)[1]))
    return out


def _pace(started: float, i: int, rate: float) -> None:
    """Sleep so that message ``i`` goes no sooner than ``i / rate`` seconds after ``started``."""
    if rate > 0:
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Load:
    """One protocol's producer in a thread: ``acked`` grows as the broker acknowledges."""

    def __init__(self, name: str, target: Callable, *args) -> None:
        self.name = name
        self.acked: list[int] = []
        self.ack_times: list[float] = []  # time.monotonic() of each acknowledgement
        self.stop = threading.Event()  # ends the load early (the benchmark's rounds)
        self.errors: list[str] = []
        self.done = threading.Event()
        self.reconnects = 0

        def run():
            try:
                target(self, *args)
            except Exception as e:  # reported by the test
                self.errors.append(f"{type(e).__name__}: {e}")
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, name=f"load-{name}", daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    def wait(self, timeout: float) -> None:
        self.done.wait(timeout)


# -- AMQP (pika) ---------------------------------------------------------------------------


def amqp_publish(load: Load, nodes: Sequence[tuple[str, int]], queue: str, count: int,
                 rate: float = 0, deadline_s: float = 90.0) -> None:  # fmt: skip
    import pika

    params = [
        pika.ConnectionParameters(h, p, connection_attempts=1, socket_timeout=2, heartbeat=10)
        for h, p in nodes
    ]
    i = 0
    started = time.monotonic()
    deadline = started + deadline_s
    while i < count and time.monotonic() < deadline and not load.stop.is_set():
        conn = None
        try:
            conn = pika.BlockingConnection(params)
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(queue, durable=True)
            while i < count and not load.stop.is_set():
                _pace(started, i, rate)
                ch.basic_publish(
                    "", queue, f"m-{i}".encode(), pika.BasicProperties(delivery_mode=2)
                )
                load.acked.append(i)  # basic_publish returned: confirmed
                load.ack_times.append(time.monotonic())
                i += 1
            conn.close()
        except (pika.exceptions.AMQPError, OSError):
            load.reconnects += 1
            time.sleep(0.1)
            if conn is not None and conn.is_open:
                try:
                    conn.close()
                except Exception:
                    pass


def amqp_drain(node: tuple[str, int], queue: str, idle_s: float = 2.0) -> list[int]:
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters(*node))
    ch = conn.channel()
    got = []
    for _method, _props, body in ch.consume(queue, inactivity_timeout=idle_s):
        if body is None:
            break
        got.append(body)
        ch.basic_ack(_method.delivery_tag)
    ch.cancel()
    conn.close()
    return _indexes(got)


# -- MQTT (paho) ---------------------------------------------------------------------------


def _paho(client_id: str):
    import paho.mqtt.client as mqtt

    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )


def _fail_over(client, nodes: Sequence[tuple[str, int]]) -> None:
    """Point ``client`` at the next node: paho reconnects to client.host/port."""
    i = (nodes.index((client.host, client.port)) + 1) % len(nodes)
    # paho 2.x's public host/port setters refuse while the socket is being released, which is
    # when on_disconnect runs; the next (automatic) reconnect reads these two
    client._host, client._port = nodes[i]


def mqtt_subscribe(node: tuple[str, int], client_id: str, topic: str) -> None:
    """Create the persistent session that receives ``topic`` (QoS 1) while nobody is there."""
    c = _paho(client_id)
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(*node)
    c.loop_start()
    c.subscribe(topic, qos=1)
    if not subscribed.wait(10):
        raise AssertionError("no SUBACK")
    c.disconnect()
    c.loop_stop()


def mqtt_publish(load: Load, nodes: Sequence[tuple[str, int]], client_id: str, topic: str,
                 count: int, rate: float = 0, deadline_s: float = 90.0) -> None:  # fmt: skip
    c = _paho(client_id)
    c.reconnect_delay_set(0.05, 0.5)
    c.max_inflight_messages_set(20)
    c.on_disconnect = lambda client, *a: _fail_over(client, nodes)
    c.on_connect_fail = lambda client, *a: _fail_over(client, nodes)
    pubacks = [0]
    acked_mids: set[int] = set()  # fewer than 65535 messages: a mid names one message

    def on_publish(client, userdata, mid, rc, props):
        load.ack_times.append(time.monotonic())
        acked_mids.add(mid)
        pubacks[0] += 1

    c.on_publish = on_publish
    c.connect(*nodes[0])
    c.loop_start()
    infos = []
    started = time.monotonic()
    deadline = started + deadline_s
    for i in range(count):
        if load.stop.is_set():
            break
        _pace(started, i, rate)
        infos.append(c.publish(topic, f"m-{i}".encode(), qos=1))
        while len(infos) - pubacks[0] > 40 and time.monotonic() < deadline:
            time.sleep(0.002)  # a bounded window, as a real publisher keeps
        load.acked[:] = range(pubacks[0])  # progress only; the exact list is set below
    while pubacks[0] < len(infos) and time.monotonic() < deadline:
        time.sleep(0.01)
    # is_published() raises for a message queued while disconnected (paho resends it anyway)
    load.acked[:] = [i for i, info in enumerate(infos) if info.mid in acked_mids]
    c.disconnect()
    c.loop_stop()


def mqtt_drain(node: tuple[str, int], client_id: str, idle_s: float = 2.0) -> list[int]:
    c = _paho(client_id)
    got = []
    last = [time.monotonic()]

    def on_message(client, userdata, msg):
        got.append(msg.payload)
        last[0] = time.monotonic()

    c.on_message = on_message
    c.connect(*node)
    c.loop_start()
    while time.monotonic() - last[0] < idle_s:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    return _indexes(got)


# -- Kafka (confluent-kafka) ---------------------------------------------------------------


def kafka_bootstrap(nodes: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{p}" for h, p in nodes)


def kafka_produce(load: Load, nodes: Sequence[tuple[str, int]], topic: str, count: int,
                  rate: float = 0, deadline_s: float = 90.0) -> None:  # fmt: skip
    from confluent_kafka import KafkaException, Producer

    fatal: list[str] = []

    def on_error(err):
        if err.fatal():
            fatal.append(str(err))

    p = Producer(
        {
            "bootstrap.servers": kafka_bootstrap(nodes),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "message.timeout.ms": int(deadline_s * 1000),
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "error_cb": on_error,
        }
    )

    def delivered(err, msg):
        if err is None:
            load.acked.append(int(msg.value().decode().rsplit("-", 1)[1]))
            load.ack_times.append(time.monotonic())

    started = time.monotonic()
    deadline = started + deadline_s
    for i in range(count):
        if load.stop.is_set():
            break
        _pace(started, i, rate)
        while True:
            try:
                p.produce(topic, f"m-{i}".encode(), callback=delivered)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        if fatal or time.monotonic() > deadline:
            break
    p.flush(max(1.0, deadline - time.monotonic()))
    if fatal:
        raise KafkaException(f"fatal producer error: {fatal[0]}")


def kafka_drain(nodes: Sequence[tuple[str, int]], topic: str, idle_s: float = 3.0) -> list[int]:
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap(nodes),
            "group.id": f"drain-{os.getpid()}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    got = []
    last = time.monotonic()
    started = last
    while time.monotonic() - last < idle_s or (not got and time.monotonic() - started < 20):
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        got.append(m.value())
        last = time.monotonic()
    c.close()
    return _indexes(got)


# -- OpenWire (ActiveMQ JMS client) ----------------------------------------------------------


def failover_url(nodes: Sequence[tuple[str, int]]) -> str:
    inner = ",".join(f"tcp://{h}:{p}" for h, p in nodes)
    return (
        f"failover:({inner})?randomize=false&initialReconnectDelay=50"
        "&maxReconnectDelay=500&useExponentialBackOff=false"
    )


def jms_classes():
    import jmsrun

    return jmsrun.classes_once(["JmsHa.java"])


def jms_send(load: Load, nodes: Sequence[tuple[str, int]], queue: str, count: int,
             pause_ms: int = 0, deadline_s: float = 90.0) -> None:  # fmt: skip
    import jmsrun

    cmd = jmsrun.java_cmd(
        jms_classes(), "JmsHa", "send", failover_url(nodes), queue, str(count), str(pause_ms)
    )
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(deadline_s, p.kill)
    timer.start()
    stopper = threading.Thread(target=lambda: load.stop.wait() and p.poll() is None and p.kill())
    stopper.daemon = True
    stopper.start()
    try:
        for line in p.stdout:
            if line.startswith("ACK "):
                load.acked.append(int(line[4:]))
                load.ack_times.append(time.monotonic())
        p.wait()
    finally:
        timer.cancel()
    if p.returncode != 0 and not load.stop.is_set():
        load.errors.append(f"JmsHa send exited {p.returncode}: {p.stderr.read()[-2000:]}")


def jms_drain(
    nodes: Sequence[tuple[str, int]], queue: str, idle_ms: int = 3000, info: dict | None = None
) -> list[int]:
    """Consume ``queue``; ``info["broker_url"]`` is what the node's BrokerInfo said."""
    import jmsrun

    r = jmsrun.run_java(jms_classes(), "JmsHa", "recv", failover_url(nodes), queue, str(idle_ms))
    if not r.done:
        raise AssertionError(f"JmsHa recv failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    if info is not None:
        info["broker_url"] = next(x[7:] for x in r.lines if x.startswith("BROKER "))
    return _indexes(line[5:] for line in r.lines if line.startswith("RECV "))


# -- a TCP relay that can lose the broker's answers ----------------------------------------


class ReplyCutter:
    """A TCP relay on loopback between clients and one node. ``hold_replies()`` drops what the
    node sends from then on (what the client sends still arrives): the node stores a message
    but its answer never reaches the client, as when the node dies between its commit and its
    reply. ``close()`` resets every relayed connection and stops listening, so the client's
    failover finds the relay gone."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.holding = threading.Event()
        self.closed = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self.socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if replies and self.holding.is_set():
                continue
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            _shut(s)

    def hold_replies(self) -> None:
        self.holding.set()

    def close(self) -> None:
        self.closed.set()
        for s in [self.listener, *self.socks]:
            _shut(s)


def _shut(s: socket.socket) -> None:
    """Shut down, then close: a close alone leaves the connection open while another thread
    still waits in recv() or accept() on the socket."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
