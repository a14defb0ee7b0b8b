"""OpenWire adapter driven by the real ActiveMQ 5.17 JMS client (tests/java/JmsTest.java).

Each test runs one JVM with several scenarios against a real broker subprocess and checks the
"OK"/"FAIL" lines it prints.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))

import jmsrun  # noqa: E402
from brokerproc import BrokerProcess  # noqa: E402

pytestmark = pytest.mark.skipif(jmsrun.missing() is not None, reason=str(jmsrun.missing()))


@pytest.fixture(scope="module")
def classes():
    return jmsrun.classes_once()


@pytest.fixture(scope="module")
def broker(openwire_broker):
    return openwire_broker


def url(b: BrokerProcess) -> str:
    return f"tcp://{b.host}:{b.port('openwire')}"


def run(classes, b, *scenarios):
    return jmsrun.run_java(classes, "JmsTest", url(b), *scenarios)


def test_handshake_round_trip_and_auth(classes, broker):
    r = run(classes, broker, "basic", "auth_refused")
    r.check("connect", "basic.receive", "close", "auth.refused")


def test_every_message_type_property_type_and_header(classes, broker):
    r = run(classes, broker, "types", "compressed", "headers")
    expected = []
    for prefix in ("queue", "topic", "compressed", "compressed.plain"):
        for kind in ("text", "bytes", "map", "stream", "object", "plain"):
            expected += [
                f"{prefix}.{kind}.type",
                f"{prefix}.{kind}.int",
                f"{prefix}.{kind}.byte",
                f"{prefix}.{kind}.float",
                f"{prefix}.{kind}.string",
            ]
        expected += [
            f"{prefix}.text.body",
            f"{prefix}.bytes.body",
            f"{prefix}.map.c",
            f"{prefix}.stream.1",
            f"{prefix}.object.body",
            f"{prefix}.big",
        ]
    expected += [
        "headers.id",
        "headers.corr",
        "headers.type",
        "headers.replyto",
        "headers.priority",
        "headers.mode",
        "headers.expiration",
        "headers.deliverycount",
        "headers.persistent",
    ]
    r.check(*expected)


def test_client_ack_individual_ack_and_dead_letter_queue(classes, broker):
    r = run(classes, broker, "clientack", "individual", "dlq")
    r.check(
        "clientack.redelivered.body",
        "clientack.redelivered.flag",
        "clientack.deliverycount",
        "clientack.m4.fresh",
        "clientack.empty",
        "clientack.conn.again",
        "individual.rest",
        "dlq.deliveries",
        "dlq.dead",
        "dlq.source.empty",
    )


def test_local_transactions(classes, broker):
    r = run(classes, broker, "tx")
    r.check(
        "tx.invisible.before.commit",
        "tx.only.committed",
        "tx.no.more",
        "tx.rollback.redelivers",
        "tx.rollback.flag",
        "tx.consumed.after.commit",
    )


def test_wildcards_composites_temp_destinations_browsers(classes, broker):
    r = run(classes, broker, "wildcard", "composite", "tempreply", "browser", "nolocal")
    r.check(
        "wildcard.star",
        "wildcard.star.only",
        "wildcard.gt",
        "composite.comp.a",
        "composite.comp.b",
        "composite.topic",
        "tempreply.reply0",
        "tempreply.reply2",
        "tempreply.corr1",
        "tempreply.temptopic",
        "tempreply.delete",
        "browser.all",
        "browser.selector",
        "browser.not.consumed",
        "nolocal.others",
        "nolocal.all",
    )


def test_prefetch_zero_selectors_and_producer_window(classes, broker):
    r = run(classes, broker, "prefetch0", "selector", "producer_window")
    r.check(
        "prefetch0.nowait.empty",
        "prefetch0.timeout.empty",
        "prefetch0.timeout.waited",
        "prefetch0.first",
        "prefetch0.other",
        "prefetch0.third",
        "selector.queue",
        "selector.rest",
        "selector.topic",
        "selector.topic.only",
        "selector.invalid",
        "window.sent",
        "window.received",
    )


def test_durable_subscriber_and_persistent_messages_survive_kill9(classes, tmp_path):
    b = BrokerProcess(tmp_path / "b", adapters=["openwire"], store="sqlite", log_level="info")
    b.start()
    try:
        r = run(classes, b, "durable_subscribe", "persist_send")
        r.check("durable.live", "durable.clientid.unique", "durable.published", "persist.sent")
        b.kill9()  # synchronous persistent sends were answered only once durable
        b.start()
        r = run(classes, b, "durable_resume", "persist_receive")
        r.check("durable.resumed", "durable.unsubscribed", "durable.fresh", "persist.received")
    finally:
        b.stop()
        b.kill9()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failover_transport_reconnects_after_kill9(classes, tmp_path):
    port = _free_port()
    b = BrokerProcess(
        tmp_path / "b",
        adapters=["openwire"],
        store="sqlite",
        log_level="info",
        settings={"adapters.openwire.port": port},
    )
    b.start()
    p = subprocess.Popen(
        jmsrun.java_cmd(classes, "JmsTest", f"tcp://127.0.0.1:{port}", "failover"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip() == "RESTART-ME":
                break
        assert lines and lines[-1].strip() == "RESTART-ME", "".join(lines)
        b.kill9()  # a crash, not a clean stop: acknowledged persistent sends must survive
        b.start()
        assert b.port("openwire") == port
        out, err = p.communicate("go\n", timeout=90)
        r = jmsrun.JavaResult("".join(lines) + out, err, p.returncode)
        r.check("failover.sent.after.restart", "failover.all")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        b.stop()
        b.kill9()
