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
