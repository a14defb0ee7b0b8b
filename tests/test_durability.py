"""Crash and restart tests: what was acknowledged durable survives ``kill -9`` and restarts.

The crash tests run a writer in a subprocess that prints what it was told is durable, kill it
with SIGKILL at a random moment under load, reopen the data directory and check that
``acknowledged - stored == ∅`` (duplicates are allowed: at-least-once).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from polymq.core.broker import Broker
from polymq.core.message import Message
from polymq.core.store.sqlite import SqliteStore

REPO = str(Path(__file__).resolve().parent.parent)

STORE_WRITER = """
import random
import sys

sys.path.insert(0, {repo!r})
from twisted.internet import reactor

from polymq.core.store.sqlite import SqliteStore

store = SqliteStore(sys.argv[1]{opts})
state = {{"seq": 0}}


def acked(lo, hi):
    print("A", lo, hi, flush=True)


def pump():
    lo = state["seq"] + 1
    for _ in range(random.randint(1, 150)):
        state["seq"] += 1
        seq = state["seq"]
        store.put_message("/", "q", seq, b"m%d." % seq * random.randint(1, 40), 0)
        if seq % 5 == 0:
            victim = seq - random.randint(0, 3)
            print("D", victim, flush=True)  # announced before it is issued
            store.delete_message("/", "q", victim)
    hi = state["seq"]
    store.after_durable(lambda: acked(lo, hi))
    reactor.callLater(0, pump)


store.open().addCallback(lambda _: pump())
reactor.run()
"""

STREAM_WRITER = """
import random
import sys

sys.path.insert(0, {repo!r})
from twisted.internet import reactor

from polymq.core.store.sqlite import SqliteStore

# small segments: rolls (a new file and a directory fsync) happen under load too
store = SqliteStore(sys.argv[1], segment_mb=0.25)
nxt = {{}}  # (stream, partition) -> next offset
state = {{"seq": 0, "inflight": 0, "paused": False}}
LIMIT = 8 << 20  # bytes not yet acknowledged: pause (bounded memory on a slow, shared disk)


def payload(s, p, off):
    unit = b"%s/%d/%d;" % (s.encode(), p, off)
    return unit * random.choice((1, 10, 300, 3000))  # up to ~40 KB: torn writes are likely


def acked(ranges, n, size):
    print("A", 1, n, flush=True)
    for s, p, lo, hi in ranges:
        print("S", s, p, lo, hi, flush=True)
    state["inflight"] -= size
    if state["paused"] and state["inflight"] < LIMIT:
        state["paused"] = False
        reactor.callLater(0, pump)


def pump():
    ranges = []
    n = size = 0
    for s, p in random.sample([("s1", 0), ("s1", 1), ("s2", 0)], random.randint(1, 3)):
        lo = nxt.get((s, p), 0)
        for _ in range(random.randint(1, 30)):
            off = nxt.get((s, p), 0)
            cnt = random.randint(1, 3)
            data = payload(s, p, off)
            store.append_stream("/", s, p, off, cnt, off, "kafka.v2", data)
            nxt[(s, p)] = off + cnt
            n += 1
            size += len(data)
        ranges.append((s, p, lo, nxt[(s, p)] - 1))
    if random.random() < 0.5:  # the database part of the group commit too
        state["seq"] += 1
        store.put_message("/", "q", state["seq"], b"m", 0)
    state["inflight"] += size
    store.after_durable(lambda: acked(ranges, n, size))
    if state["inflight"] >= LIMIT:
        state["paused"] = True
    else:
        reactor.callLater(0, pump)


store.open().addCallback(lambda _: pump())
reactor.run()
"""

BROKER_WRITER = """
import random
import sys

sys.path.insert(0, {repo!r})
from twisted.internet import reactor

from polymq.core.broker import Broker
from polymq.core.message import Message
from polymq.core.store.sqlite import SqliteStore

broker = Broker(SqliteStore(sys.argv[1]), clock=reactor)
state = {{"n": 0}}


def confirmed(lo, hi):
    print("A", lo, hi, flush=True)


def pump():
    vh = broker.vhost("/")
    lo = state["n"] + 1
    for _ in range(random.randint(1, 100)):
        state["n"] += 1
        vh.publish("", "q", Message(b"%d" % state["n"], durable=True))
    hi = state["n"]
    broker.when_durable(lambda: confirmed(lo, hi))
    q = vh.get_queue("q")
    for _ in range(random.randint(0, 40)):
        d = q.get(no_ack=False)
        if d is None:
            break
        print("C", int(d.message.body), flush=True)  # announced before the ack is issued
        q.ack(d)
    reactor.callLater(0, pump)


def started(_):
    broker.vhost("/").declare_queue("q", durable=True)
    pump()


broker.start().addCallback(started)
reactor.run()
"""


def run_and_kill(script: str, data_dir: Path, min_acks: int) -> list[list[str]]:
    """Run ``script``; SIGKILL it at a random moment after ``min_acks`` acknowledgements.

    Returns every complete line it printed (what it printed was acknowledged to it).
    """
    err_path = data_dir.parent / "writer.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
        )
    lines: list[list[str]] = []
    acks = 0
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        while acks < min_acks:
            raw = proc.stdout.readline()
            if not raw.endswith(b"\n"):  # EOF: the writer died on its own
                proc.wait()
                pytest.fail(f"writer exited ({proc.returncode}): {err_path.read_text()[-2000:]}")
            lines.append(raw.decode().split())
            if lines[-1][0] == "A":
                acks += int(lines[-1][2]) - int(lines[-1][1]) + 1
            assert time.monotonic() < deadline, "writer too slow"
        time.sleep(random.uniform(0, 0.05))  # let it run on: kill at a random moment
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # same buffered reader: nothing read so far is skipped
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for raw in rest.split(b"\n")[:-1]:  # the last piece is empty or an incomplete line
        lines.append(raw.decode().split())
    return lines


def acknowledged(lines: list[list[str]]) -> set[int]:
    out: set[int] = set()
    for line in lines:
        if line[0] == "A":
            out.update(range(int(line[1]), int(line[2]) + 1))
    return out


@pytest.mark.parametrize("attempt", range(3))
@pytest.mark.parametrize(
    "opts",
    ["", ", checkpoint_mb=0.05", ", lazy_flush_ms=0"],
    ids=["default", "checkpointer", "eager"],
)
@pytest_twisted.inlineCallbacks
def test_store_kill9_loses_no_acknowledged_write(tmp_path, attempt, opts):
    """Also with the checkpointer thread folding the WAL back while the writer commits."""
    data_dir = tmp_path / "data"
    script = STORE_WRITER.format(repo=REPO, opts=opts)
    lines = run_and_kill(script, data_dir, min_acks=random.randint(300, 5000))
    acked = acknowledged(lines)
    deleted = {int(line[1]) for line in lines if line[0] == "D"}
    assert len(acked) >= 300

    store = SqliteStore(str(data_dir))
    snap = yield store.open()
    yield store.close()
    rows = snap.messages.get(("/", "q"), [])
    stored = {seq for seq, _, _ in rows}
    for seq, data, count in rows:  # nothing torn or mixed up
        assert data.startswith(b"m%d." % seq) and count == 0
    assert [seq for seq, _, _ in rows] == sorted(stored)
    missing = (acked - deleted) - stored
    assert missing == set(), f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:10]}"


@pytest.mark.parametrize("attempt", range(3))
@pytest_twisted.inlineCallbacks
def test_store_kill9_stream_appends(tmp_path, attempt):
    """Stream entries in segment files: every acknowledged entry is there, intact, after
    ``kill -9``; nothing torn is returned; offsets are contiguous (no hole before a later
    entry) and appending goes on after the reopen."""
    data_dir = tmp_path / "data"
    script = STREAM_WRITER.format(repo=REPO)
    lines = run_and_kill(script, data_dir, min_acks=random.randint(300, 3000))
    acked: dict[tuple[str, int], int] = {}  # highest acknowledged offset
    for line in lines:
        if line[0] == "S":
            key = (line[1], int(line[2]))
            acked[key] = max(acked.get(key, -1), int(line[4]))
    assert acked

    store = SqliteStore(str(data_dir))
    snap = yield store.open()
    got = {}
    for (vhost, s, p), entries in snap.stream_entries.items():
        assert vhost == "/"
        expect = 0
        for off, cnt, ts, fmt, data in entries:
            assert off == expect and ts == off and fmt == "kafka.v2" and 1 <= cnt <= 3
            unit = b"%s/%d/%d;" % (s.encode(), p, off)
            assert data == unit * (len(data) // len(unit)) and len(data) % len(unit) == 0
            expect = off + cnt
        got[(s, p)] = expect - 1
    for key, hi in acked.items():
        assert got.get(key, -1) >= hi, f"{key}: acknowledged up to {hi}, stored {got.get(key)}"
    # the log goes on from where it was cut
    for (s, p), last in got.items():
        store.append_stream("/", s, p, last + 1, 1, last + 1, "kafka.v2", b"x")
    d = defer.Deferred()
    store.after_durable(lambda: d.callback(None))
    yield d
    yield store.close()
    store = SqliteStore(str(data_dir))
    snap = yield store.open()
    yield store.close()
    for (s, p), last in got.items():
        assert snap.stream_entries[("/", s, p)][-1] == (last + 1, 1, last + 1, "kafka.v2", b"x")


@pytest.mark.parametrize("attempt", range(3))
@pytest_twisted.inlineCallbacks
def test_broker_kill9_loses_no_confirmed_message(tmp_path, attempt):
    data_dir = tmp_path / "data"
    script = BROKER_WRITER.format(repo=REPO)
    lines = run_and_kill(script, data_dir, min_acks=random.randint(300, 5000))
    confirmed = acknowledged(lines)
    consumed = {int(line[1]) for line in lines if line[0] == "C"}
    assert len(confirmed) >= 300

    broker = Broker(SqliteStore(str(data_dir)))
    yield broker.start()
    q = broker.vhost("/").get_queue("q")
    assert q.durable
    received = []
    while (d := q.get(no_ack=True)) is not None:
        received.append(int(d.message.body))
    yield broker.stop()
    assert received == sorted(received)  # FIFO order kept across the restart
    missing = (confirmed - consumed) - set(received)
    assert missing == set(), f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:10]}"


@pytest_twisted.inlineCallbacks
def test_clean_restart_keeps_durable_state_only(tmp_path):
    data_dir = str(tmp_path / "data")
    broker = Broker(SqliteStore(data_dir))
    yield broker.start()
    vh = broker.vhost("/")
    vh.declare_exchange("logs", "topic", durable=True)
    vh.declare_exchange("scratch", "fanout", durable=False)
    dq = vh.declare_queue("dq", durable=True)
    vh.declare_queue("tq", durable=False)
    vh.bind_queue("dq", "logs", "a.#")
    for i in range(10):
        vh.publish("", "dq", Message(b"p%d" % i, durable=True))
        vh.publish("", "dq", Message(b"t%d" % i, durable=False))
        vh.publish("", "tq", Message(b"x%d" % i, durable=True))
    # consume and ack the first three persistent messages (and the transients between them)
    acked = []
    while len([b for b in acked if b.startswith(b"p")]) < 3:
        d = dq.get(no_ack=False)
        acked.append(d.message.body)
        dq.ack(d)
    unacked = dq.get(no_ack=False)  # taken but never acked: must come back
    assert unacked is not None
    done = []
    broker.when_durable(lambda: done.append(True))
    yield broker.stop()
    assert done == [True]

    broker2 = Broker(SqliteStore(data_dir))
    yield broker2.start()
    vh2 = broker2.vhost("/")
    # the durable binding came back: a publish to logs reaches dq
    assert vh2.publish("logs", "a.b", Message(b"routed", durable=False)) == (1, 0)
    assert "logs" in vh2.exchanges and "scratch" not in vh2.exchanges
    assert "dq" in vh2.queues and "tq" not in vh2.queues
    q = vh2.get_queue("dq")
    bodies = []
    while (d := q.get(no_ack=True)) is not None:
        bodies.append(d.message.body)
    yield broker2.stop()
    expected = [b"p%d" % i for i in range(10) if b"p%d" % i not in acked] + [b"routed"]
    assert bodies == expected  # acked stay acked, transients gone, order kept
