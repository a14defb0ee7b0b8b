"""The broker-wide memory and disk alarm (core/alarms.py)."""

from __future__ import annotations

import os
import re
import time

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.task import Clock

from polymq.core.alarms import ResourceAlarm, machine_memory, memory_limit, process_memory
from polymq.core.broker import Broker


def vm_rss() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def test_process_memory_follows_real_usage_within_20_percent():
    before = process_memory()
    assert 0 < before <= vm_rss()
    block = bytearray(300 * 1024 * 1024)  # zero pages are not resident until written
    for i in range(0, len(block), 4096):
        block[i] = 1
    grown = process_memory() - before
    assert abs(grown - len(block)) <= 0.2 * len(block)
    # and what it measures is within 20 % of the whole resident set
    assert process_memory() >= 0.8 * vm_rss() - 64 * 1024 * 1024
    del block


def test_watermark_fraction_or_bytes():
    assert abs(memory_limit(0.5) - machine_memory() / 2) <= 1
    assert memory_limit(300_000_000) == 300_000_000


def test_memory_alarm_sets_and_clears_with_hysteresis():
    used = [100]
    alarm = ResourceAlarm(Clock(), memory_high_watermark=1000, memory_probe=lambda: used[0])
    seen = []
    alarm.add_observer(lambda blocked, reason: seen.append((blocked, reason)))
    alarm.check_memory()
    assert not alarm.blocked and seen == []
    used[0] = 1001
    alarm.check_memory()
    assert alarm.blocked and alarm.reason == "memory"
    assert seen == [(True, "memory")]
    used[0] = 950  # under the watermark but above 90 % of it: still set
    alarm.check_memory()
    assert alarm.blocked and len(seen) == 1
    used[0] = 800
    alarm.check_memory()
    assert not alarm.blocked and alarm.reason == ""
    assert seen == [(True, "memory"), (False, "")]


def test_disk_and_memory_reasons_combine_and_observers_can_leave():
    used = [0]
    alarm = ResourceAlarm(
        Clock(), memory_high_watermark=1000, disk_free_limit=500, memory_probe=lambda: used[0]
    )
    seen = []

    def obs(blocked, reason):
        seen.append((blocked, reason))

    alarm.add_observer(obs)
    alarm.set_disk_free(100)
    assert alarm.blocked and alarm.reason == "disk"
    used[0] = 2000
    alarm.check_memory()
    assert alarm.reason == "memory, disk"
    alarm.set_disk_free(10_000)
    assert alarm.blocked and alarm.reason == "memory"
    alarm.remove_observer(obs)
    used[0] = 0
    alarm.check_memory()
    assert not alarm.blocked
    assert seen == [(True, "disk"), (True, "memory, disk"), (True, "memory")]


@pytest_twisted.inlineCallbacks
def test_broker_checks_real_free_space_of_its_data_dir_on_a_timer(tmp_path):
    from polymq.core.store.sqlite import SqliteStore

    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    store = SqliteStore(str(tmp_path), paging=True)
    # a limit above what is free: the disk alarm sets at the first check
    broker = Broker(
        store=store,
        config={"limits": {"disk_free_limit": free * 2, "alarm_check_ms": 50}},
    )
    assert broker.alarm.data_dir == str(tmp_path)
    seen = []
    broker.alarm.add_observer(lambda blocked, reason: seen.append((blocked, reason)))
    yield broker.start()
    for _ in range(200):
        if seen:
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    assert seen and seen[0] == (True, "disk")
    assert broker.alarm.disk_free is not None and broker.alarm.disk_free < free * 2
    broker.alarm.disk_free_limit = 1  # an operator lowering it: clears at the next check
    for _ in range(200):
        if not broker.alarm.blocked:
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    assert not broker.alarm.blocked and seen[-1] == (False, "")
    yield broker.stop()


def test_broker_process_logs_the_memory_alarm(broker_factory):
    # a watermark of 1 MB is below any Python process: the alarm sets at once, and says so
    b = broker_factory(
        adapters=["amqp"], log_level="info", settings={"limits.memory_high_watermark": 1_000_000.0}
    )
    for _ in range(100):
        if "memory alarm set" in b.log_text():
            break
        time.sleep(0.05)
    assert "memory alarm set" in b.log_text()


def test_near_the_watermark_freed_memory_is_trimmed_before_judging():
    clock = Clock()
    held = [950]  # above 90 % of the watermark, and all of it "freed but kept"
    trims = []

    def trim():
        trims.append(clock.seconds())
        held[0] = 100

    alarm = ResourceAlarm(clock, memory_high_watermark=1000, memory_probe=lambda: held[0])
    alarm._trim = trim
    held[0] = 1200
    alarm.check_memory()
    assert trims == [0] and not alarm.blocked and alarm.memory_used == 100
    held[0] = 1200  # again within 10 s: no second trim, the alarm sets
    clock.advance(5)
    alarm.check_memory()
    assert trims == [0] and alarm.blocked
    clock.advance(6)
    alarm.check_memory()  # trims again, usage drops under the clear ratio
    assert trims == [0, 11] and not alarm.blocked
