"""Scheduled delivery through OpenWire, driven by the real ActiveMQ 5.17 JMS client
(tests/java/JmsSchedule.java): AMQ_SCHEDULED_DELAY, _PERIOD, _REPEAT, _CRON, and pending
messages that survive ``kill -9`` of the broker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))

import jmsrun  # noqa: E402

pytestmark = pytest.mark.skipif(jmsrun.missing() is not None, reason=str(jmsrun.missing()))

SOURCES = ["JmsSchedule.java"]


@pytest.fixture(scope="module")
def classes():
    return jmsrun.classes_once(SOURCES)


def url(b) -> str:
    return f"tcp://{b.host}:{b.port('openwire')}"


def test_delay_repeat_cron_and_a_bad_repeat(classes, broker_factory):
    b = broker_factory(adapters=["openwire"], log_level="info")
    # the cron scenario waits for a whole minute: it runs beside the others
    cron = subprocess.Popen(
        jmsrun.java_cmd(classes, "JmsSchedule", url(b), "cron:sched.cron"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        r = jmsrun.run_java(
            classes,
            "JmsSchedule",
            url(b),
            "delay:sched.delay",
            "repeat:sched.repeat",
            "badrepeat:sched.bad",
        )
        r.check(
            "delay.undelayed_first",
            "delay.not_early",
            "delay.arrives",
            "delay.on_time",
            "repeat.three",
            "repeat.distinct_ids",
            "repeat.spacing",
            "repeat.no_more",
            "badrepeat.refused",
            "badrepeat.connection_serves",
        )
        out, err = cron.communicate(timeout=120)
    finally:
        cron.kill()
    jmsrun.JavaResult(out, err, cron.returncode).check("cron.arrives", "cron.on_the_minute")


def test_pending_scheduled_messages_survive_kill9(classes, broker_factory):
    b = broker_factory(adapters=["openwire"], log_level="info")
    r = jmsrun.run_java(classes, "JmsSchedule", url(b), "send_later:sched.later,6000")
    r.check("later.sent")
    sent_ms = int(next(x for x in r.lines if x.startswith("SENT ")).split()[1])
    b.kill9()  # every send was answered: the jobs are on disk
    b.start()
    r = jmsrun.run_java(classes, "JmsSchedule", url(b), "receive_later:sched.later")
    r.check("later.all", "later.no_more")
    arrivals = [int(x.split()[1]) for x in r.lines if x.startswith("GOT ")]
    # not before their time (6 s after the send), and not long after it
    assert min(arrivals) >= sent_ms + 5900, (sent_ms, arrivals)
    assert max(arrivals) <= sent_ms + 6400 + 5000, (sent_ms, arrivals)
    assert time.time() * 1000 >= sent_ms + 6000


def test_expired_messages_go_to_the_dead_letter_queue(classes, broker_factory):
    b = broker_factory(adapters=["openwire"], log_level="info")
    r = jmsrun.run_java(classes, "JmsSchedule", url(b), "expire:exp.q,ActiveMQ.DLQ")
    r.check("expire.gone", "expire.in_dlq", "expire.no_ttl_in_dlq")


def test_individual_dead_letter_strategy(classes, broker_factory):
    b = broker_factory(
        adapters=["openwire"],
        log_level="info",
        settings={"adapters.openwire.dead_letter_strategy": "individual"},
    )
    r = jmsrun.run_java(classes, "JmsSchedule", url(b), "expire:orders,ActiveMQ.DLQ.Queue.orders")
    r.check("expire.gone", "expire.in_dlq")


def test_broker_side_redelivery_with_backoff_then_dlq(classes, broker_factory):
    b = broker_factory(
        adapters=["openwire"],
        log_level="info",
        settings={
            "adapters.openwire.redelivery_maximum": 3,
            "adapters.openwire.redelivery_initial_delay_ms": 300,
            "adapters.openwire.redelivery_backoff_multiplier": 2.0,
            "adapters.openwire.redelivery_max_delay_ms": 1000,
        },
    )
    r = jmsrun.run_java(classes, "JmsSchedule", url(b), "redelivery:poisoned,ActiveMQ.DLQ,3")
    r.check("redelivery.count", "redelivery.in_dlq")
    gaps = [int(x) for x in next(x for x in r.lines if x.startswith("GAPS ")).split()[1:]]
    # delays 300, 600, then 1200 capped at 1000 ms (plus the round trips)
    assert len(gaps) == 3, gaps
    for gap, delay in zip(gaps, (300, 600, 1000), strict=True):
        assert delay - 20 <= gap < delay + 1500, gaps
