"""Kafka SASL/SCRAM-SHA-256/512 and PLAIN with librdkafka and kafka-python, over TLS and in
clear, and topic permissions (TOPIC_AUTHORIZATION_FAILED)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import trustme
from confluent_kafka import Consumer, KafkaError, Producer
from conftest import running_broker

from polymq.core.cli import main


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("kpki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    return d


@pytest.fixture(scope="module")
def broker(tmp_path_factory, pki):
    d = tmp_path_factory.mktemp("ksec")
    users = d / "users.toml"
    where = ["--set", f"security.users_file={json.dumps(str(users))}"]
    assert main(["users", "add", "alice", "--password", "alice-pw", *where,
                 "--configure", ".*", "--write", ".*", "--read", ".*"]) == 0  # fmt: skip
    bob = "^bob\\."
    assert main(["users", "add", "bob", "--password", "bob-pw", *where,
                 "--configure", bob, "--write", bob, "--read", bob]) == 0  # fmt: skip
    # carol reads every topic and group but writes only carol.* (and carol.* transactional ids)
    carol = "^carol\\."
    assert main(["users", "add", "carol", "--password", "carol-pw", *where,
                 "--configure", carol, "--write", carol, "--read", ".*"]) == 0  # fmt: skip
    with running_broker(d, ["kafka"], store="memory", log_level="info", settings={
        "adapters.kafka.sasl": True,
        "adapters.kafka.tls_port": 0,
        "tls.certfile": str(pki / "server.pem"),
        "tls.keyfile": str(pki / "server.key"),
        "security.users_file": str(users),
    }) as b:  # fmt: skip
        yield b


def conf(broker, pki, mechanism, user, password, tls=True) -> dict:
    c = {
        "bootstrap.servers": f"localhost:{broker.port('kafka+tls' if tls else 'kafka')}",
        "security.protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }
    if tls:
        c["ssl.ca.location"] = str(pki / "ca.pem")
    return c


def produce(c: dict, topic: str, value: bytes) -> list:
    errors: list = []
    delivered: list = []
    p = Producer({**c, "error_cb": errors.append, "message.timeout.ms": 8000})
    p.produce(topic, value, on_delivery=lambda err, msg: delivered.append(err))
    p.flush(15)
    return delivered + errors


def consume_one(c: dict, topic: str, group: str) -> bytes | None:
    consumer = Consumer({**c, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    deadline = time.monotonic() + 20
    value = None
    while value is None and time.monotonic() < deadline:
        m = consumer.poll(0.3)
        if m is not None and m.error() is None:
            value = m.value()
    consumer.close()
    return value


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_confluent_scram_over_tls(broker, pki, mechanism):
    c = conf(broker, pki, mechanism, "alice", "alice-pw")
    topic = "scram-" + uuid.uuid4().hex[:8]
    assert produce(c, topic, b"scram secret") == [None]
    assert consume_one(c, topic, "g-" + topic) == b"scram secret"


def test_confluent_scram_wrong_password_refused(broker, pki):
    out = produce(conf(broker, pki, "SCRAM-SHA-256", "alice", "nope"), "scram-x", b"x")
    assert any(getattr(e, "code", lambda: None)() == KafkaError._AUTHENTICATION for e in out), out
    out = produce(conf(broker, pki, "SCRAM-SHA-512", "nobody", "nope"), "scram-x", b"x")
    assert any(getattr(e, "code", lambda: None)() == KafkaError._AUTHENTICATION for e in out), out


def test_plain_only_over_tls(broker, pki):
    topic = "plain-" + uuid.uuid4().hex[:8]
    assert produce(conf(broker, pki, "PLAIN", "alice", "alice-pw"), topic, b"p") == [None]
    out = produce(conf(broker, pki, "PLAIN", "alice", "alice-pw", tls=False), topic, b"p")
    assert out and out[0] is not None  # mechanism not offered without TLS
    # SCRAM sends no password: it is offered on the plain port too
    c = conf(broker, pki, "SCRAM-SHA-256", "alice", "alice-pw", tls=False)
    assert produce(c, topic, b"q") == [None]


def test_kafka_python_scram(broker, pki):
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=f"localhost:{broker.port('kafka')}",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="alice",
        sasl_plain_password="alice-pw",
    )
    md = p.send("kp-" + uuid.uuid4().hex[:8], b"v").get(timeout=20)
    assert md.offset == 0
    p.close()


def test_topic_permissions(broker, pki):
    c = conf(broker, pki, "SCRAM-SHA-256", "bob", "bob-pw")
    assert produce(c, "bob.mine", b"ok") == [None]
    # a topic that exists, but bob may not write to it: the Produce is refused
    alice = conf(broker, pki, "SCRAM-SHA-256", "alice", "alice-pw")
    assert produce(alice, "alice-only", b"hers") == [None]
    out = produce(c, "alice-only", b"forged")
    assert out and out[0] is not None
    assert out[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, out
    # a topic bob may not create: the Metadata answer refuses it rather than "unknown"
    out = produce(c, "nobody-" + uuid.uuid4().hex[:6], b"forged")
    assert out and out[0] is not None
    assert out[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, out
    # bob reads his topic (the group is checked too: "^bob\\." grants no group "g-x")
    assert consume_one(c, "bob.mine", "bob.group") == b"ok"


def test_cluster_and_describe_permissions(broker, pki):
    """Describe is implied by read, write or configure; cluster-level operations need configure
    on the resource ``cluster`` named ``kafka-cluster`` (alice's ``.*`` has it, bob's not)."""
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    alice = conf(broker, pki, "SCRAM-SHA-256", "alice", "alice-pw")
    bob = conf(broker, pki, "SCRAM-SHA-256", "bob", "bob-pw")
    hidden = "hidden-" + uuid.uuid4().hex[:6]
    assert produce(alice, hidden, b"x") == [None]
    assert produce(bob, "bob.seen", b"x") == [None]
    a, b = AdminClient(alice), AdminClient(bob)
    # Metadata for all topics leaves out what bob may not describe
    assert hidden in a.list_topics(timeout=15).topics
    bob_topics = b.list_topics(timeout=15).topics
    assert "bob.seen" in bob_topics and hidden not in bob_topics
    # broker configs: CLUSTER_AUTHORIZATION_FAILED for bob, an answer for alice
    broker_res = ConfigResource(ConfigResource.Type.BROKER, "1")
    assert a.describe_configs([broker_res])[broker_res].result(15)
    with pytest.raises(Exception) as refused:
        b.describe_configs([broker_res])[broker_res].result(15)
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    # a topic's configs need configure on the topic
    topic_res = ConfigResource(ConfigResource.Type.TOPIC, hidden)
    with pytest.raises(Exception) as refused:
        b.describe_configs([topic_res])[topic_res].result(15)
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    mine = ConfigResource(ConfigResource.Type.TOPIC, "bob.seen")
    assert b.describe_configs([mine])[mine].result(15)
    # CreateTopics: configure on the cluster (alice) or on the topic (bob.*), else refused
    made = "made-" + uuid.uuid4().hex[:6]
    assert a.create_topics([NewTopic(made, 1)])[made].result(15) is None
    with pytest.raises(Exception) as refused:
        b.create_topics([NewTopic("nope-" + made, 1)])["nope-" + made].result(15)
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert b.create_topics([NewTopic("bob." + made, 1)])["bob." + made].result(15) is None
    # groups: bob lists and describes only the groups he may read
    assert consume_one(alice, hidden, "alice-group") == b"x"
    assert consume_one(bob, "bob.seen", "bob.g1") == b"x"
    listed = {g.group_id for g in b.list_consumer_groups().result(15).valid}
    assert "bob.g1" in listed and "alice-group" not in listed
    described = b.describe_consumer_groups(["alice-group"])["alice-group"]
    with pytest.raises(Exception) as refused:
        described.result(15)
    assert refused.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED


def test_transactional_permissions(broker, pki):
    """Transactions need write on the transactional id (Kafka's TransactionalId Write): bob may
    use ``bob.*`` ids, not others; alice's ``.*`` may use any."""
    from confluent_kafka import KafkaException

    def transactional(c: dict, tid: str) -> Producer:
        return Producer({**c, "transactional.id": tid, "transaction.timeout.ms": 10000})

    bob = conf(broker, pki, "SCRAM-SHA-256", "bob", "bob-pw")
    p = transactional(bob, "alice.tx-" + uuid.uuid4().hex[:6])
    with pytest.raises(KafkaException) as refused:
        p.init_transactions(15)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    p = transactional(bob, "bob.tx-" + uuid.uuid4().hex[:6])
    p.init_transactions(15)
    p.begin_transaction()
    p.produce("bob.txn", b"in a transaction")
    p.commit_transaction(15)
    assert consume_one(bob, "bob.txn", "bob.txg") == b"in a transaction"
    # a topic carol may read but not write, inside her transaction: AddPartitionsToTxn refuses
    alice = conf(broker, pki, "SCRAM-SHA-256", "alice", "alice-pw")
    theirs = "theirs-" + uuid.uuid4().hex[:6]
    assert produce(alice, theirs, b"x") == [None]
    carol = conf(broker, pki, "SCRAM-SHA-256", "carol", "carol-pw")
    p = transactional(carol, "carol.tx-" + uuid.uuid4().hex[:6])
    p.init_transactions(15)
    p.begin_transaction()
    p.produce(theirs, b"forged")
    with pytest.raises(KafkaException) as refused:
        p.commit_transaction(15)
    assert "TOPIC_AUTHORIZATION_FAILED" in str(refused.value) or (
        refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    ), refused.value
