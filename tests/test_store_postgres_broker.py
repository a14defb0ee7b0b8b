"""The postgres backend under the real broker and real clients.

* Connection cuts: pika publishes persistent messages with confirms (and a second channel
  consumes with manual acks) into a broker subprocess on the postgres backend while a thread
  keeps killing the broker's database session (``pg_terminate_backend``); then the broker is
  killed (-9) and restarted, and every confirmed, unacknowledged message must be there.
* Database down: PostgreSQL is stopped (``pg_ctl stop -m immediate``) under load from pika and
  confluent-kafka; the writes in flight are answered negatively, the broker keeps serving and
  recovers when PostgreSQL is started again; every acknowledged message is consumed.
* The kill -9 durability tests of test_durability.py and test_amqp_durability.py, and the
  interop matrix's persistence cell (test_interop_matrix.py), run unchanged on postgres: the
  same test functions are called with the store swapped (their writer scripts import
  ``PostgresStore`` instead of ``SqliteStore``; their brokers start with
  ``store.backend = "postgres"``), so both backends are held to one set of assertions.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pika
import pika.exceptions as pe
import psycopg
import pytest
import pytest_twisted
import test_amqp_durability as amqp_durability
import test_durability as durability
from brokerproc import BrokerProcess
from pgserver import PgServer, pg_bindir

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))
import jmsrun  # noqa: E402

from polymq.core.store.postgres import PostgresStore


def dbname(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]


def pg_script(script: str) -> str:
    """A writer script of test_durability.py, on the postgres store (argv[1]: a DSN file)."""
    out = script.replace(
        "from polymq.core.store.sqlite import SqliteStore",
        "from polymq.core.store.postgres import PostgresStore",
    ).replace("SqliteStore(sys.argv[1]", "PostgresStore(open(sys.argv[1]).read()")
    assert "SqliteStore" not in out
    return out


@pytest.fixture
def pg_durability(monkeypatch, tmp_path, pg_dsn):
    """test_durability.py's module, switched to postgres for one test."""
    (tmp_path / "data").write_text(pg_dsn)  # the "data dir" argument names the DSN file
    for name in ("STORE_WRITER", "STREAM_WRITER", "BROKER_WRITER"):
        monkeypatch.setattr(durability, name, pg_script(getattr(durability, name)))
    monkeypatch.setattr(
        durability, "SqliteStore", lambda path, **kw: PostgresStore(open(path).read(), **kw)
    )
    return durability


@pytest.mark.parametrize("attempt", range(2))
@pytest.mark.parametrize("opts", ["", ", lazy_flush_ms=0"], ids=["default", "eager"])
@pytest_twisted.inlineCallbacks
def test_store_kill9_loses_no_acknowledged_write(pg_durability, tmp_path, attempt, opts):
    yield pg_durability.test_store_kill9_loses_no_acknowledged_write(tmp_path, attempt, opts)


@pytest.mark.parametrize("attempt", range(2))
@pytest_twisted.inlineCallbacks
def test_store_kill9_stream_appends(pg_durability, tmp_path, attempt):
    yield pg_durability.test_store_kill9_stream_appends(tmp_path, attempt)


@pytest.mark.parametrize("attempt", range(2))
@pytest_twisted.inlineCallbacks
def test_broker_kill9_loses_no_confirmed_message(pg_durability, tmp_path, attempt):
    yield pg_durability.test_broker_kill9_loses_no_confirmed_message(tmp_path, attempt)


@pytest_twisted.inlineCallbacks
def test_clean_restart_keeps_durable_state_only(pg_durability, tmp_path):
    yield pg_durability.test_clean_restart_keeps_durable_state_only(tmp_path)


@pytest.fixture
def pg_broker_factory(broker_factory, pg_dsn):
    """``broker_factory`` whose brokers use the postgres store on a fresh database."""

    def start(adapters=(), settings=None, **kwargs):
        sets = {"store.dsn": pg_dsn, **(settings or {})}
        return broker_factory(adapters=adapters, store="postgres", settings=sets, **kwargs)

    return start


def test_amqp_confirmed_persistent_message_survives_kill9(pg_broker_factory):
    amqp_durability.test_confirmed_persistent_message_survives_kill9(pg_broker_factory)


def test_amqp_no_confirmed_message_lost_when_killed_under_load(pg_broker_factory):
    amqp_durability.test_no_confirmed_message_lost_when_killed_under_load(pg_broker_factory)


def test_interop_persistence_cell_on_postgres(monkeypatch, tmp_path, pg_dsn):
    """The matrix's persistence cell: persistent messages from each protocol, broker killed
    and restarted, consumed by another protocol, with the store in PostgreSQL."""
    matrix = pytest.importorskip("test_interop_matrix")
    monkeypatch.setattr(
        matrix,
        "BrokerProcess",
        functools.partial(BrokerProcess, store="postgres", settings={"store.dsn": pg_dsn}),
    )
    matrix.test_persistent_messages_survive_restart_across_protocols(tmp_path)


def test_pika_confirms_through_connection_cuts(pg_server, pg_dsn, pg_broker_factory):
    """Every confirm is for a committed message although the database session is killed again
    and again under load; consumers' acks go on too; kill -9 and restart lose nothing."""
    broker = pg_broker_factory(adapters=["amqp"], log_level="info")
    params = pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    conn = pika.BlockingConnection(params)
    pub = conn.channel()
    pub.queue_declare("cut-q", durable=True)
    pub.confirm_delivery()
    sub = conn.channel()
    stop = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        while not stop.wait(0.15):
            kills.append(pg_server.terminate_backends(dbname(pg_dsn), "polymq"))

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    confirmed: list[int] = []
    acked: set[int] = set()
    deadline = time.monotonic() + 6
    try:
        i = 0
        while time.monotonic() < deadline and i < 20000:
            pub.basic_publish(
                "", "cut-q", str(i).encode(), pika.BasicProperties(delivery_mode=2)
            )  # returns once confirmed (raises on a nack)
            confirmed.append(i)
            i += 1
            if i % 10 == 0:
                method, _, body = sub.basic_get("cut-q", auto_ack=False)
                if method is not None:
                    sub.basic_ack(method.delivery_tag)
                    acked.add(int(body))
    finally:
        stop.set()
        t.join()
    assert sum(kills) >= 10, kills  # the writer's session really was cut many times
    assert len(confirmed) >= 200
    conn.close()
    log = broker.log_text()
    assert "reconnected" in log and "giving up" not in log
    broker.kill9()
    broker.start()
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    )
    ch = conn.channel()
    received: set[int] = set()
    while True:
        method, _, body = ch.basic_get("cut-q", auto_ack=True)
        if method is None:
            break
        received.add(int(body))
    conn.close()
    missing = set(confirmed) - acked - received
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"


@pytest.fixture
def own_pg():
    """A PostgreSQL of this test alone, which it may stop and start (in /tmp: the server's
    user must reach its directory)."""
    root = tempfile.mkdtemp(prefix="polymq-pg-")
    server = PgServer(pg_bindir(), root)
    try:
        yield server.start()
    finally:
        try:
            server.stop()
        except (RuntimeError, OSError, subprocess.SubprocessError):
            pass
        shutil.rmtree(root, ignore_errors=True)


def _pika_publisher(host, port, queue, stop, acked, nacked, errors):
    """Publish persistent messages with confirms until ``stop``; sort each id by its answer."""
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(host, port, connection_attempts=1, heartbeat=0)
    )
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    i = 0
    try:
        while not stop.is_set():
            try:
                ch.basic_publish("", queue, str(i).encode(), pika.BasicProperties(delivery_mode=2))
                acked.append(i)
            except pe.NackError:
                nacked.append(i)
            i += 1
    except Exception as e:  # a broken connection: counted, the test decides
        errors.append(repr(e))
    finally:
        try:
            conn.close()
        except Exception:
            pass


def _kafka_producer(bootstrap, topic, stop, acked, nacked, errors, sent=None):
    """acks=all without retries, so a negative answer reaches the delivery report;
    ``sent[0]``: how many records were handed to the client so far."""
    from confluent_kafka import KafkaError, Producer

    p = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "retries": 0, "linger.ms": 5,
         "enable.idempotence": False, "message.timeout.ms": 60000}
    )  # fmt: skip

    def report(err, msg):
        n = int(msg.value())
        if err is None:
            acked.append(n)
        elif err.code() == KafkaError.KAFKA_STORAGE_ERROR:
            nacked.append(n)
        else:
            errors.append(str(err))

    i = 0
    while not stop.is_set():
        try:
            p.produce(topic, str(i).encode(), on_delivery=report)
            i += 1
            if sent is not None:
                sent[0] = i
        except BufferError:
            pass
        p.poll(0.002)
    p.flush(60)


def _mqtt_publisher(host, port, stop, acked, disconnects, errors):
    """QoS 1 publishes, one at a time, with a persistent session and automatic reconnects:
    a message counts as acknowledged once paho saw its PUBACK."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="negacks-pub", clean_session=False)
    c.on_disconnect = lambda *args: disconnects.append(time.monotonic())
    c.reconnect_delay_set(0.1, 0.5)
    c.connect(host, port, keepalive=60)
    c.loop_start()
    i = 0
    try:
        while not stop.is_set():
            info = c.publish("negacks/m", str(i).encode(), qos=1)
            try:
                info.wait_for_publish(timeout=30)
            except (RuntimeError, ValueError) as e:
                errors.append(repr(e))
            if info.is_published():
                acked.append(i)
            i += 1
    finally:
        c.disconnect()
        c.loop_stop()


class _JmsPublisher:
    """tests/java/JmsOutage.java: persistent sync sends until stop(); ACK/NACK per message."""

    def __init__(self, broker, queue: str) -> None:
        classes = jmsrun.classes_once(["JmsOutage.java"])
        self.proc = subprocess.Popen(
            ["java", "-cp", jmsrun.classpath(classes), "JmsOutage",
             f"tcp://{broker.host}:{broker.port('openwire')}", queue],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.acked: list[int] = []
        self.nacked: list[str] = []
        self.other: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "ACK":
                self.acked.append(int(rest))
            elif kind == "NACK":
                self.nacked.append(rest)
            elif kind != "DONE":
                self.other.append(line)

    def stop(self) -> str:
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(10)
        return self.proc.stderr.read()[-2000:]


def _consume_kafka(bootstrap, topic, expect_at_least):
    from confluent_kafka import Consumer

    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"check-{topic}",
         "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )  # fmt: skip
    c.subscribe([topic])
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            if len(seen) >= expect_at_least and time.monotonic() - idle_since > 2:
                break
            continue
        idle_since = time.monotonic()
        seen.add(int(m.value()))
    c.close()
    return seen


def _drain(broker, queue: str) -> set[int]:
    """The ids of every message in an AMQP queue (consumed)."""
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    )
    ch = conn.channel()
    got: set[int] = set()
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.add(int(body))
    conn.close()
    return got


def _restart_and_check_all_consumed(broker, queue, topic, amqp_acked, kafka_acked):
    """kill -9 and restart the broker; every acknowledged AMQP message and Kafka record must
    then be consumed (duplicates allowed: at least once)."""
    broker.kill9()
    broker.start()
    lost = set(amqp_acked) - _drain(broker, queue)
    assert not lost, f"{len(lost)} confirmed AMQP messages lost, e.g. {sorted(lost)[:5]}"
    seen = _consume_kafka(f"{broker.host}:{broker.port('kafka')}", topic, len(set(kafka_acked)))
    lost = set(kafka_acked) - seen
    assert not lost, f"{len(lost)} acknowledged Kafka records lost, e.g. {sorted(lost)[:5]}"


def test_negative_answers_while_the_database_is_down(own_pg, broker_factory):
    """PostgreSQL is stopped (-m immediate) under load from pika (confirms), confluent-kafka
    (acks=all), paho (QoS 1) and the ActiveMQ JMS client (persistent sync sends): past
    store.reconnect_timeout_s the writes in flight are answered negatively (basic.nack,
    KAFKA_STORAGE_ERROR, the MQTT connection closed instead of a PUBACK, a JMSException from
    send()), the broker keeps serving, holds publishers back and recovers once
    PostgreSQL is started again. After a kill -9 and restart of the broker,
    every acknowledged message is consumed."""
    dsn = own_pg.create_database("negacks")
    broker = broker_factory(
        adapters=["amqp", "kafka", "mqtt", "openwire"], store="postgres", log_level="info",
        settings={"store.dsn": dsn, "store.reconnect_timeout_s": 1.5,
                  "store.retry_interval_s": 0.2},
    )  # fmt: skip
    bootstrap = f"{broker.host}:{broker.port('kafka')}"
    topic = "negacks-topic"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    # MQTT publishes reach this durable queue through amq.topic
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port("amqp"), connection_attempts=1)
    )
    conn.channel().queue_declare("negacks-mqtt", durable=True)
    conn.channel().queue_bind("negacks-mqtt", "amq.topic", "negacks.#")
    conn.close()
    stop = threading.Event()
    a_ok, a_nack, a_err, k_ok, k_nack, k_err = [], [], [], [], [], []
    m_ok, m_closed, m_err = [], [], []
    threads = [
        threading.Thread(
            target=_pika_publisher,
            args=(broker.host, broker.port("amqp"), "negacks-q", stop, a_ok, a_nack, a_err),
        ),
        threading.Thread(
            target=_mqtt_publisher,
            args=(broker.host, broker.port("mqtt"), stop, m_ok, m_closed, m_err),
        ),
        threading.Thread(
            target=_kafka_producer, args=(bootstrap, topic, stop, k_ok, k_nack, k_err)
        ),
    ]
    jms = _JmsPublisher(broker, "negacks-jms")
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while not jms.acked and time.monotonic() < deadline:  # the JVM is up and sending
            time.sleep(0.1)
        time.sleep(1.0)
        before = (len(a_ok), len(k_ok), len(m_ok), len(jms.acked))
        own_pg.pg_ctl_stop("immediate")
        time.sleep(5.0)
        down = (len(a_ok), len(k_ok), len(m_ok), len(jms.acked))
        closed_while_down = len(m_closed)
        assert broker.running
        own_pg.pg_ctl_start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            len(a_ok) <= down[0] + 50
            or len(k_ok) <= down[1] + 50
            or len(m_ok) <= down[2] + 20
            or len(jms.acked) <= down[3] + 20
        ):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        jms_stderr = jms.stop()
    log = broker.log_text()
    print(
        f"amqp acked {len(a_ok)} nacked {len(a_nack)} errors {a_err}; before/down {before} {down}"
    )
    print(f"kafka acked {len(k_ok)} nacked {len(k_nack)} errors {k_err[:3]}")
    print(f"mqtt acked {len(m_ok)} connections closed {len(m_closed)} errors {m_err}")
    print(f"jms acked {len(jms.acked)} refused {len(jms.nacked)}: {jms.nacked[:1]}")
    assert min(before) > 0
    assert a_nack and k_nack, "no negative answer while the database was down"
    assert closed_while_down >= 1, "MQTT: no connection closed instead of a PUBACK"
    assert jms.nacked and "could not make this durable" in jms.nacked[0], jms_stderr
    assert not jms.other, jms.other[:3]
    assert len(a_ok) > down[0] + 50 and len(k_ok) > down[1] + 50, "no recovery"
    assert len(m_ok) > down[2] + 20, "no MQTT recovery"
    assert len(jms.acked) > down[3] + 20, "no JMS recovery"
    assert not a_err and not k_err and not m_err
    assert "the database is unavailable" in log and "the database is back" in log
    assert broker.running
    _restart_and_check_all_consumed(broker, "negacks-q", topic, a_ok, k_ok)
    lost = set(m_ok) - _drain(broker, "negacks-mqtt")
    assert not lost, f"{len(lost)} MQTT messages PUBACKed but lost, e.g. {sorted(lost)[:5]}"
    lost = set(jms.acked) - _drain(broker, "negacks-jms")
    assert not lost, f"{len(lost)} JMS sends accepted but lost, e.g. {sorted(lost)[:5]}"
