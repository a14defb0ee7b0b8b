"""TLS listeners with real clients: paho (MQTT), pika (AMQP), confluent-kafka (librdkafka) and the
ActiveMQ JMS client on ssl://; client-certificate identities; bad input on the TLS ports;
certificates replaced while the broker runs."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
import trustme
from conftest import module_broker
from java import jmsrun

from polymq.core.cli import main as main_cli

ADAPTERS = ["mqtt", "amqp", "kafka", "openwire"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA, the broker's certificate (localhost, 127.0.0.1) and client certificates."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(d / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(d / "server.key"))
    for who in ("alice", "mallory"):
        client = ca.issue_cert(f"{who}@example.org", common_name=who)
        client.cert_chain_pems[0].write_to_path(str(d / f"{who}.pem"))
        client.private_key_pem.write_to_path(str(d / f"{who}.key"))
    return d


def tls_settings(pki, **more) -> dict:
    settings = {
        "tls.certfile": str(pki / "server.pem"),
        "tls.keyfile": str(pki / "server.key"),
        "tls.handshake_timeout": 1.0,
        "tls.reload_interval": 0.3,
    }
    for name in ADAPTERS:
        settings[f"adapters.{name}.tls_port"] = 0
    settings.update(more)
    return settings


@pytest.fixture(scope="module")
def broker(tmp_path_factory, pki):
    with module_broker(
        tmp_path_factory,
        "tls-broker",
        ADAPTERS,
        store="memory",
        log_level="info",
        settings=tls_settings(pki),
    ) as b:
        yield b


def mqtt_client(pki, cert: str | None = None, **kw) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", **kw)
    if cert is None:
        c.tls_set(ca_certs=str(pki / "ca.pem"))
    else:
        c.tls_set(
            ca_certs=str(pki / "ca.pem"),
            certfile=str(pki / f"{cert}.pem"),
            keyfile=str(pki / f"{cert}.key"),
        )
    return c


def mqtt_connect(c: mqtt.Client, port: int, timeout: float = 10.0):
    """Connect and wait for CONNACK; returns the reason code (0 = accepted)."""
    result: list = []
    c.on_connect = lambda client, userdata, flags, rc, props=None: result.append(rc)
    c.connect("localhost", port, keepalive=30)
    c.loop_start()
    deadline = time.monotonic() + timeout
    while not result and time.monotonic() < deadline:
        time.sleep(0.02)
    return result[0] if result else None


def test_banner_names_every_tls_listener(broker):
    log = broker.log_text()
    for name in ADAPTERS:
        port = broker.port(f"{name}+tls")
        assert port != broker.port(name)
        assert f"{name} listening on 127.0.0.1:{port}: TLS (client certificates: none)" in log


def test_mqtt_paho_over_tls_round_trip(broker, pki):
    got: list[bytes] = []
    sub = mqtt_client(pki)
    sub.on_message = lambda client, userdata, msg: got.append(msg.payload)
    assert mqtt_connect(sub, broker.port("mqtt+tls")) == 0
    subscribed: list = []
    sub.on_subscribe = lambda *a: subscribed.append(1)
    sub.subscribe("tls/test", qos=1)
    deadline = time.monotonic() + 10
    while not subscribed and time.monotonic() < deadline:
        time.sleep(0.02)
    pub = mqtt_client(pki)
    assert mqtt_connect(pub, broker.port("mqtt+tls")) == 0
    pub.publish("tls/test", b"secret payload", qos=1).wait_for_publish(10)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert got == [b"secret payload"]
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


def test_mqtt_client_refuses_a_broker_it_does_not_trust(broker, pki, tmp_path):
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.tls_set(ca_certs=str(tmp_path / "other.pem"))
    with pytest.raises(ssl.SSLCertVerificationError):
        c.connect("localhost", broker.port("mqtt+tls"))


def test_amqp_pika_over_tls(broker, pki):
    import pika

    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    params = pika.ConnectionParameters(
        "localhost", broker.port("amqp+tls"), ssl_options=pika.SSLOptions(ctx, "localhost")
    )
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("tls-q")
    ch.basic_publish("", "tls-q", b"over amqps")
    body = None
    for _ in range(100):
        _, _, body = ch.basic_get("tls-q", auto_ack=True)
        if body is not None:
            break
        time.sleep(0.05)
    assert body == b"over amqps"
    conn.close()


def test_kafka_confluent_over_ssl(broker, pki):
    from confluent_kafka import Consumer, Producer

    conf = {
        "bootstrap.servers": f"localhost:{broker.port('kafka+tls')}",
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki / "ca.pem"),
    }
    p = Producer(dict(conf))
    delivered: list = []
    p.produce("tls-topic", b"over ssl", on_delivery=lambda err, msg: delivered.append(err))
    p.flush(20)
    assert delivered == [None]
    c = Consumer(dict(conf, **{"group.id": "g-tls", "auto.offset.reset": "earliest"}))
    c.subscribe(["tls-topic"])
    value = None
    deadline = time.monotonic() + 30
    while value is None and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            value = m.value()
    c.close()
    assert value == b"over ssl"


def test_jms_client_on_ssl_url(broker, pki, tmp_path):
    why = jmsrun.missing()
    if why:
        pytest.skip(why)
    store = tmp_path / "trust.jks"
    subprocess.run(
        ["keytool", "-importcert", "-noprompt", "-alias", "polymq-test-ca", "-file",
         str(pki / "ca.pem"), "-keystore", str(store), "-storepass", "changeit"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    classes = jmsrun.classes_once()
    cmd = jmsrun.java_cmd(
        classes, "JmsTest", f"ssl://localhost:{broker.port('openwire+tls')}", "basic"
    )
    cmd[1:1] = [
        f"-Djavax.net.ssl.trustStore={store}",
        "-Djavax.net.ssl.trustStorePassword=changeit",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    jmsrun.JavaResult(p.stdout, p.stderr, p.returncode).check("connect", "basic.receive", "close")


def published(c: mqtt.Client, topic: str) -> bool:
    info = c.publish(topic, b"x", qos=1)
    info.wait_for_publish(10)
    return info.is_published()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_garbage_before_the_handshake_closes_that_connection_only(broker, pki):
    bystander = mqtt_client(pki)
    assert mqtt_connect(bystander, broker.port("mqtt+tls")) == 0
    for name in ADAPTERS:
        s = socket.create_connection(("127.0.0.1", broker.port(f"{name}+tls")))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 4)
        assert _closed_within(s, 10), name
        s.close()
    # the broker still serves: the old TLS client publishes, a new one connects
    assert published(bystander, "still/here")
    late = mqtt_client(pki)
    assert mqtt_connect(late, broker.port("mqtt+tls")) == 0
    for c in (bystander, late):
        c.disconnect()
        c.loop_stop()


def test_unfinished_handshake_is_closed_after_the_timeout(broker, pki):
    for name in ADAPTERS:
        silent = socket.create_connection(("127.0.0.1", broker.port(f"{name}+tls")))
        # a ClientHello cut short: the handshake can never finish
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            obj.do_handshake()
        hello = outgoing.read()
        silent.sendall(hello[: len(hello) // 2])
        # tls.handshake_timeout is 1 s; the wait below only bounds a hang
        assert _closed_within(silent, 15), name
        silent.close()
    assert "no TLS handshake within 1 s" in broker.log_text()
    c = mqtt_client(pki)
    assert mqtt_connect(c, broker.port("mqtt+tls")) == 0
    c.disconnect()
    c.loop_stop()


# -- client certificates --------------------------------------------------------------------


@pytest.fixture
def mtls_broker(broker_factory, pki, tmp_path):
    from polymq.core.cli import main

    users = tmp_path / "users.toml"
    where = f"security.users_file={json.dumps(str(users))}"
    assert main(["users", "add", "alice", "--password", "pw-alice", "--set", where]) == 0
    return broker_factory(
        adapters=["mqtt"],
        store="memory",
        log_level="info",
        settings=tls_settings(
            pki,
            **{
                "adapters.mqtt.tls_port": 0,
                "tls.cafile": str(pki / "ca.pem"),
                "tls.verify_client": "required",
                "tls.cert_login": "common_name",
                "security.users_file": str(users),
            },
        ),
    )


def test_client_certificate_names_the_user(mtls_broker, pki):
    port = mtls_broker.port("mqtt+tls")
    # alice's certificate logs her in without a password
    alice = mqtt_client(pki, cert="alice")
    assert mqtt_connect(alice, port) == 0
    alice.disconnect()
    alice.loop_stop()
    # a certificate the CA signed for someone who is not a user is refused by the login
    mallory = mqtt_client(pki, cert="mallory")
    assert mqtt_connect(mallory, port) not in (None, 0)
    mallory.loop_stop()
    # without a client certificate the TLS handshake fails (verify_client = required): with
    # TLS 1.3 the client learns it on its first read, never getting a CONNACK
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    payload = b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x"
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"\x10" + bytes([len(payload)]) + payload)
            answer = s.recv(16)
        except (ssl.SSLError, ConnectionResetError):
            pass
    assert answer == b""
    assert "certificate identity 'mallory' is not a known user" in mtls_broker.log_text()


def test_certificate_replaced_while_running(broker_factory, pki, tmp_path):
    import shutil

    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki / "server.pem", certfile)
    shutil.copy(pki / "server.key", keyfile)
    b = broker_factory(
        adapters=["mqtt"],
        store="memory",
        log_level="info",
        settings=tls_settings(pki, **{"tls.certfile": str(certfile), "tls.keyfile": str(keyfile)}),
    )
    port = b.port("mqtt+tls")
    before = mqtt_client(pki)
    assert mqtt_connect(before, port) == 0
    new_ca = trustme.CA()
    new_cert = new_ca.issue_cert("localhost", "127.0.0.1")
    new_ca.cert_pem.write_to_path(str(tmp_path / "new-ca.pem"))
    # key first, then certificate: a reader in between gets a mismatched pair and keeps the old
    new_cert.private_key_pem.write_to_path(str(keyfile))
    new_cert.cert_chain_pems[0].write_to_path(str(certfile))
    deadline = time.monotonic() + 15
    while "TLS certificate reloaded" not in b.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "TLS certificate reloaded" in b.log_text()
    after = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    after.tls_set(ca_certs=str(tmp_path / "new-ca.pem"))
    assert mqtt_connect(after, port) == 0
    old_trust = mqtt_client(pki)
    with pytest.raises(ssl.SSLCertVerificationError):
        old_trust.connect("localhost", port)
    # the connection made before the reload lives on
    assert published(before, "x/y")
    for c in (before, after):
        c.disconnect()
        c.loop_stop()


def test_amqp_external_login_with_a_client_certificate(broker_factory, pki, tmp_path):
    import pika

    users = tmp_path / "users.toml"
    where = f"security.users_file={json.dumps(str(users))}"
    assert main_cli(["users", "add", "alice", "--password", "unused", "--set", where,
                     "--configure", ".*", "--write", ".*", "--read", ".*"]) == 0  # fmt: skip
    b = broker_factory(
        adapters=["amqp"],
        store="memory",
        log_level="info",
        settings=tls_settings(
            pki,
            **{
                "tls.cafile": str(pki / "ca.pem"),
                "tls.verify_client": "optional",
                "tls.cert_login": "common_name",
                "security.users_file": str(users),
            },
        ),
    )

    def params(cert: str | None, credentials) -> pika.ConnectionParameters:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if cert is not None:
            ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
        return pika.ConnectionParameters(
            "localhost",
            b.port("amqp+tls"),
            credentials=credentials,
            ssl_options=pika.SSLOptions(ctx, "localhost"),
            connection_attempts=1,
        )

    external = pika.credentials.ExternalCredentials()
    conn = pika.BlockingConnection(params("alice", external))
    ch = conn.channel()
    ch.queue_declare("alice.q")
    ch.basic_publish("", "alice.q", b"via EXTERNAL")
    got: list = []
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        body = ch.basic_get("alice.q", auto_ack=True)[2]
        if body is not None:
            got.append(body)
    assert got == [b"via EXTERNAL"]
    conn.close()
    # EXTERNAL without a certificate is refused; a password login still works without one
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params(None, external))
    pika.BlockingConnection(params(None, pika.PlainCredentials("guest", "guest"))).close()
    # a certificate of someone who is not a user: refused
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params("mallory", external))


def test_tls_and_plain_listeners_share_mqtt_sessions(broker, pki):
    """A persistent session started on the plain port is resumed over TLS, with what was
    queued for it meanwhile: both listeners serve the same MQTT sessions."""
    cid = f"shared-{uuid.uuid4().hex[:8]}"
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    done: list = []
    plain.on_subscribe = lambda *a: done.append(1)
    plain.connect(broker.host, broker.port("mqtt"))
    plain.loop_start()
    plain.subscribe("shared/s", qos=1)
    deadline = time.monotonic() + 10
    while not done and time.monotonic() < deadline:
        time.sleep(0.02)
    plain.disconnect()
    plain.loop_stop()
    pub = mqtt_client(pki)
    assert mqtt_connect(pub, broker.port("mqtt+tls")) == 0
    pub.publish("shared/s", b"kept for you", qos=1).wait_for_publish(10)
    got: list = []
    flags: list = []
    resumed = mqtt_client(pki, clean_session=False)
    resumed._client_id = cid.encode()
    resumed.on_message = lambda client, userdata, msg: got.append(msg.payload)
    resumed.on_connect = lambda client, userdata, f, rc, props=None: flags.append(f)
    resumed.connect("localhost", broker.port("mqtt+tls"), keepalive=30)
    resumed.loop_start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flags and flags[0].session_present
    assert got == [b"kept for you"]
    for c in (pub, resumed):
        c.disconnect()
        c.loop_stop()
