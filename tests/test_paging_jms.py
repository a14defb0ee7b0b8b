"""A JMS QueueBrowser (the ActiveMQ 5.17 client) sees the messages of a queue that are paged
out to the store, not only those in memory, with and without a selector."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))
import jmsrun  # noqa: E402

pytestmark = pytest.mark.skipif(jmsrun.missing() is not None, reason=str(jmsrun.missing()))


def test_browser_sees_paged_out_messages(broker_factory):
    # 20 messages in memory; the other 580 are only in the store
    b = broker_factory(adapters=["openwire"], settings={"store.queue_max_in_memory_length": 20})
    classes = jmsrun.classes_once(["JmsBrowse.java"])
    url = f"tcp://{b.host}:{b.port('openwire')}"
    result = jmsrun.run_java(classes, "JmsBrowse", url, "paged.browse", "600", timeout=180)
    assert result.done, result.stdout + result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.lines if " " in line)
    # at most 400 (ActiveMQ's maxBrowsePageSize), in order, reaching well past memory
    assert lines["ALL"] == "400 m0 m399"
    # the selector matches only messages that are paged out
    assert lines["SEL"] == "50 m550 m599"
