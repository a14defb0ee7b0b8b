"""What only the sqlite store has: its file and paging, open errors, write errors, statements,
checkpoints, the lazy flush on an injected clock, stream segments, migrations, and a model
test (hypothesis). The IStore contract (round trips, delete semantics, after_durable order,
group commit, close) runs on sqlite and postgres in test_store_contract.py."""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.python import failure
from zope.interface.verify import verifyObject

try:
    from polymq.core.store.interfaces import IPagingStore, IStore
    from polymq.core.store.sqlite import FILENAME, SqliteStore, StoreOpenError
except ImportError:  # running from the source tree without an install
    from core.store.interfaces import IPagingStore, IStore
    from core.store.sqlite import FILENAME, SqliteStore, StoreOpenError


def turn() -> defer.Deferred:
    """Let the reactor run one turn (the store flushes on callLater(0))."""
    return task.deferLater(reactor, 0, lambda: None)


def durable(store: SqliteStore) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    store.after_durable(lambda: d.callback(None))
    return d


def open_store(path, **kw) -> tuple[SqliteStore, defer.Deferred]:
    store = SqliteStore(str(path), **kw)
    return store, store.open()


@pytest_twisted.inlineCallbacks
def test_paging_interface_and_file(tmp_path):
    """What only sqlite has (the IStore contract itself is in test_store_contract.py)."""
    store, d = open_store(tmp_path / "data")
    snap = yield d
    assert verifyObject(IStore, store)
    assert verifyObject(IPagingStore, store)  # sqlite pages bodies and stream entries
    assert store.name == "sqlite"
    assert snap.queues == [] and snap.messages == {} and snap.kv == {}
    assert os.path.exists(tmp_path / "data" / FILENAME)
    con = sqlite3.connect(tmp_path / "data" / FILENAME)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == 4  # 4: scheduled messages
    con.close()
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_after_durable_with_only_inflight_writes(tmp_path):
    """A callback registered with no new write but a batch in flight waits for that batch."""
    gate = threading.Event()

    class Gated(SqliteStore):
        def _execute(self, conn, batches):
            gate.wait(5)
            return super()._execute(conn, batches)

    store = Gated(str(tmp_path), lazy_flush_ms=0)
    yield store.open()
    store.put_message("/", "q", 1, b"a", 0)
    yield turn()  # flushed, writer blocked on the gate
    order = []
    store.after_durable(lambda: order.append("cb"))
    assert order == []
    yield turn()
    assert order == []
    gate.set()
    yield durable(store)
    assert order == ["cb"]
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_group_commit_merges_reactor_turns(tmp_path):
    """Batches queued while the writer is busy share one transaction (one fsync)."""
    gate = threading.Event()

    class Gated(SqliteStore):
        def _execute(self, conn, batches):
            gate.wait(5)
            return super()._execute(conn, batches)

    store = Gated(str(tmp_path), lazy_flush_ms=0)
    yield store.open()
    acks = []
    for seq in range(50):  # 50 reactor turns while the first commit is held
        store.put_message("/", "q", seq, b"m", 0)
        store.after_durable(lambda seq=seq: acks.append(seq))
        yield turn()
    assert store.flushes == 50
    assert acks == []
    gate.set()
    yield durable(store)
    assert acks == list(range(50))
    assert store.commits <= 2  # (the first batch, then) all the others together
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_put_delete_across_batches(tmp_path):
    """A delete in a later batch than its put is not cancelled away: the row goes."""
    store, d = open_store(tmp_path, lazy_flush_ms=0)
    yield d
    store.put_message("/", "q", 1, b"a", 0)
    store.put_message("/", "q", 2, b"a", 0)
    yield turn()
    store.delete_message("/", "q", 1)
    store.put_message("/", "q", 1, b"b", 0)  # same seq again (re-declared queue)
    store.delete_message("/", "q", 1)
    store.put_message("/", "q", 2, b"a", 1)  # delivery-count update, then ack, same batch
    store.delete_message("/", "q", 2)
    yield store.close()
    store2, d2 = open_store(tmp_path)
    snap = yield d2
    yield store2.close()
    assert snap.messages == {}


@pytest_twisted.inlineCallbacks
def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    store = SqliteStore(str(blocker / "data"))
    with pytest.raises(StoreOpenError, match="cannot create data directory"):
        yield store.open()
    yield store.close()

    if os.geteuid() != 0:  # root ignores directory permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(StoreOpenError):
                yield SqliteStore(str(ro)).open()
        finally:
            ro.chmod(0o700)


@pytest_twisted.inlineCallbacks
def test_corrupt_file(tmp_path):
    (tmp_path / FILENAME).write_bytes(b"this is not an sqlite database" * 100)
    store = SqliteStore(str(tmp_path))
    with pytest.raises(StoreOpenError, match="corrupt"):
        yield store.open()
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_newer_schema_refused(tmp_path):
    store, d = open_store(tmp_path)
    yield d
    yield store.close()
    con = sqlite3.connect(tmp_path / FILENAME)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(StoreOpenError, match="schema version 99"):
        yield SqliteStore(str(tmp_path)).open()


@pytest_twisted.inlineCallbacks
def test_data_dir_in_use(tmp_path):
    store, d = open_store(tmp_path)
    yield d
    other = SqliteStore(str(tmp_path))
    with pytest.raises(StoreOpenError, match="in use"):
        yield other.open()
    yield store.close()
    third, d3 = open_store(tmp_path)  # lock released by close
    yield d3
    yield third.close()


@pytest_twisted.inlineCallbacks
def test_write_error_never_reports_durable(tmp_path):
    class Broken(SqliteStore):
        fail = False

        def _execute(self, conn, batches):
            if self.fail:
                raise sqlite3.OperationalError("disk I/O error")
            return super()._execute(conn, batches)

    fatal = []
    store = Broken(str(tmp_path), on_fatal=fatal.append, retries=1)
    yield store.open()
    store.put_message("/", "q", 1, b"ok", 0)
    yield durable(store)
    store.fail = True
    calls = []
    store.put_message("/", "q", 2, b"lost", 0)
    store.after_durable(lambda: calls.append("bad"))
    for _ in range(50):
        yield task.deferLater(reactor, 0.02, lambda: None)
        if fatal:
            break
    assert len(fatal) == 1 and isinstance(fatal[0], sqlite3.OperationalError)
    assert calls == []
    store.put_message("/", "q", 3, b"after", 0)  # dropped
    store.after_durable(lambda: calls.append("bad2"))
    yield turn()
    assert calls == []
    with pytest.raises(Exception, match="disk I/O error"):
        yield store.close()
    store2, d2 = open_store(tmp_path)
    snap = yield d2
    yield store2.close()
    assert snap.messages == {("/", "q"): [(1, b"ok", 0)]}


@pytest_twisted.inlineCallbacks
def test_multi_row_statements(tmp_path):
    """Runs of puts and deletes (several queues, repeated keys, odd sizes) keep their meaning."""
    store, d = open_store(tmp_path, lazy_flush_ms=0)
    yield d
    expect: dict[tuple[str, str], dict[int, tuple[bytes, int]]] = {}
    for n in (1, 2, 3, 129, 300):
        for seq in range(n):
            q = ("/", f"q{seq % 3}") if n > 3 else ("v", "x")
            store.put_message(*q, seq, b"%d-%d" % (n, seq), n)
            expect.setdefault(q, {})[seq] = (b"%d-%d" % (n, seq), n)
        yield turn()  # flushed: the deletes below are a run of their own in the next batch
        for seq in range(0, n, 2):
            q = ("/", f"q{seq % 3}") if n > 3 else ("v", "x")
            store.delete_message(*q, seq)
            store.delete_message(*q, seq)  # twice: harmless
            expect[q].pop(seq, None)
        yield durable(store)
    yield store.close()
    store2, d2 = open_store(tmp_path)
    snap = yield d2
    yield store2.close()
    got = {q: {s: (b, c) for s, b, c in rows} for q, rows in snap.messages.items()}
    assert got == {q: m for q, m in expect.items() if m}


@pytest_twisted.inlineCallbacks
def test_background_checkpoints(tmp_path):
    """The WAL is folded back by the checkpointer thread, not inside the commits."""
    store, d = open_store(tmp_path, checkpoint_mb=0.25)
    yield d
    wal = tmp_path / (FILENAME + "-wal")
    body = os.urandom(20000)
    sizes = []
    for seq in range(200):  # 4 MB through a 0.25 MB checkpoint threshold
        store.put_message("/", "q", seq, body, 0)
        yield durable(store)
        if seq % 2:
            store.delete_message("/", "q", seq)
        sizes.append(os.path.getsize(wal))
    for _ in range(100):
        if store.checkpoints >= 3:
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    assert store.checkpoints >= 3
    assert max(sizes) < 4 << 20  # the WAL was reset and reused, not grown to hold everything
    yield store.close()
    store2, d2 = open_store(tmp_path)
    snap = yield d2
    yield store2.close()
    assert [(s, b == body) for s, b, _ in snap.messages[("/", "q")]] == [
        (s, True) for s in range(0, 200, 2)
    ]


def test_flush_uses_injected_clock(tmp_path):
    clock = task.Clock()
    store = SqliteStore(str(tmp_path), clock=clock, lazy_flush_ms=0)
    store.put_kv("ns", "k", b"v")
    store.put_kv("ns", "k2", b"v")
    assert len(clock.getDelayedCalls()) == 1  # one flush per turn, not per write
    clock.advance(0)
    assert store.flushes == 1
    assert clock.getDelayedCalls() == []


def test_lazy_flush_of_writes_nobody_waits_for(tmp_path):
    """Writes without a callback wait lazy_flush_ms; a callback takes them along at once."""
    clock = task.Clock()
    store = SqliteStore(str(tmp_path), clock=clock, lazy_flush_ms=20)
    store.delete_message("/", "q", 1)  # a consumer ack: nobody waits for it
    store.put_kv("ns", "k", b"v")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert store.flushes == 0
    clock.advance(0.019)
    assert store.flushes == 0
    clock.advance(0.001)
    assert store.flushes == 1 and clock.getDelayedCalls() == []
    # a callback registered while a lazy flush is pending: flushed this turn, one batch
    store.delete_message("/", "q", 2)
    clock.advance(0.005)
    store.put_message("/", "q", 3, b"m", 0)
    store.after_durable(lambda: None)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [clock.seconds()]
    clock.advance(0)
    assert store.flushes == 2 and clock.getDelayedCalls() == []
    (ops, callbacks, _) = store._q.get_nowait()  # the second batch (the first is also queued)
    (ops, callbacks, _) = store._q.get_nowait()
    assert [op[0] for op in ops] == [7, 6] and len(callbacks) == 1
    # too many pending lazy writes: flushed on the next turn
    store.lazy_flush_ops = 3
    for seq in range(3):
        store.delete_message("/", "q", seq)
    clock.advance(0)
    assert store.flushes == 3 and clock.getDelayedCalls() == []


# ---------------------------------------------------------------- model-based (hypothesis)

names = st.sampled_from(["a", "b"])
vhosts = st.sampled_from(["/", "v"])
message_ops = st.one_of(
    st.tuples(
        st.just("put_message"),
        st.just("/"),
        st.just("a"),
        st.integers(0, 1),
        st.binary(max_size=4),
        st.integers(0, 3),
    ),
    st.tuples(st.just("delete_message"), st.just("/"), st.just("a"), st.integers(0, 1)),
    st.tuples(st.just("turn")),
)
other_ops = st.one_of(
    st.tuples(st.just("put_exchange"), vhosts, names, st.dictionaries(names, st.integers(0, 3))),
    st.tuples(st.just("delete_exchange"), vhosts, names),
    st.tuples(st.just("put_queue"), vhosts, names, st.dictionaries(names, st.integers(0, 3))),
    st.tuples(st.just("delete_queue"), vhosts, names),
    st.tuples(
        st.just("put_binding"),
        vhosts,
        names,
        st.sampled_from(["queue", "exchange"]),
        names,
        st.sampled_from(["", "k"]),
        st.dictionaries(names, st.integers(0, 1), max_size=2),
    ),
    st.tuples(
        st.just("delete_binding"),
        vhosts,
        names,
        st.sampled_from(["queue", "exchange"]),
        names,
        st.sampled_from(["", "k"]),
        st.dictionaries(names, st.integers(0, 1), max_size=2),
    ),
    st.tuples(
        st.just("put_message"),
        vhosts,
        names,
        st.integers(0, 2),
        st.binary(max_size=8),
        st.integers(0, 3),
    ),
    st.tuples(st.just("delete_message"), vhosts, names, st.integers(0, 2)),
    st.tuples(
        st.just("append_stream"),
        vhosts,
        names,
        st.integers(0, 1),
        st.integers(0, 9),
        st.integers(1, 3),
        st.integers(0, 10**12),
        st.sampled_from(["f", "g"]),
        st.binary(max_size=8),
    ),
    st.tuples(st.just("trim_stream"), vhosts, names, st.integers(0, 1), st.integers(0, 10)),
    st.tuples(st.just("put_kv"), names, names, st.binary(max_size=4)),
    st.tuples(st.just("delete_kv"), names, names),
    st.tuples(st.just("turn")),
    st.tuples(st.just("reopen")),
)
# half of the operations hit two message keys, so put/turn/put/delete patterns are common
ops_strategy = st.sampled_from([message_ops, other_ops]).flatmap(lambda strategy: strategy)


class Model:
    def __init__(self) -> None:
        self.exchanges: dict = {}
        self.queues: dict = {}
        self.bindings: set = set()
        self.messages: dict = {}
        self.streams: dict = {}
        self.next: dict = {}  # (vhost, stream, partition) -> next offset
        self.kv: dict = {}

    @staticmethod
    def _bkey(v, s, k, d, key, args):
        return (v, s, k, d, key, tuple(sorted(args.items())))

    def apply(self, op):
        name, *a = op
        if name == "put_exchange":
            self.exchanges[(a[0], a[1])] = a[2]
        elif name == "delete_exchange":
            v, n = a
            self.exchanges.pop((v, n), None)
            self.bindings = {
                b
                for b in self.bindings
                if not (b[0] == v and (b[1] == n or (b[2] == "exchange" and b[3] == n)))
            }
        elif name == "put_queue":
            self.queues[(a[0], a[1])] = a[2]
        elif name == "delete_queue":
            v, n = a
            self.queues.pop((v, n), None)
            self.messages = {k: m for k, m in self.messages.items() if k[:2] != (v, n)}
            self.streams = {k: e for k, e in self.streams.items() if k[:2] != (v, n)}
            self.next = {k: o for k, o in self.next.items() if k[:2] != (v, n)}
            self.bindings = {
                b for b in self.bindings if not (b[0] == v and b[2] == "queue" and b[3] == n)
            }
        elif name == "put_binding":
            self.bindings.add(self._bkey(*a))
        elif name == "delete_binding":
            self.bindings.discard(self._bkey(*a))
        elif name == "put_message":
            v, q, seq, data, dc = a
            self.messages[(v, q, seq)] = (data, dc)
        elif name == "delete_message":
            self.messages.pop(tuple(a), None)
        elif name == "append_stream":
            v, s, p, off, cnt, ts, fmt, data = a
            self.streams[(v, s, p, off)] = (cnt, ts, fmt, data)
            self.next[(v, s, p)] = off + cnt
        elif name == "trim_stream":
            v, s, p, before = a
            self.streams = {
                k: e for k, e in self.streams.items() if not (k[:3] == (v, s, p) and k[3] < before)
            }
        elif name == "put_kv":
            self.kv[(a[0], a[1])] = a[2]
        elif name == "delete_kv":
            self.kv.pop((a[0], a[1]), None)

    def check(self, snap) -> None:
        assert {(v, n): r for v, n, r in snap.exchanges} == self.exchanges
        assert {(v, n): r for v, n, r in snap.queues} == self.queues
        assert {self._bkey(*b) for b in snap.bindings} == self.bindings
        assert len(snap.bindings) == len(self.bindings)
        got_msgs = {}
        for (v, q), lst in snap.messages.items():
            assert [s for s, _, _ in lst] == sorted(s for s, _, _ in lst)
            for seq, data, dc in lst:
                got_msgs[(v, q, seq)] = (data, dc)
        assert got_msgs == self.messages
        got_streams = {}
        for (v, s, p), lst in snap.stream_entries.items():
            assert [e[0] for e in lst] == sorted(e[0] for e in lst)
            for off, cnt, ts, fmt, data in lst:
                got_streams[(v, s, p, off)] = (cnt, ts, fmt, data)
        assert got_streams == self.streams
        got_kv = {(ns, k): v for ns, d in snap.kv.items() for k, v in d.items()}
        assert got_kv == self.kv


class ThreadClock(task.Clock):
    """A deterministic clock whose callFromThread queues calls for :meth:`wait` to run."""

    def __init__(self) -> None:
        super().__init__()
        self.thread_calls: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kw) -> None:  # noqa: N802 (Twisted API name)
        self.thread_calls.put((f, args, kw))

    def wait(self, d: defer.Deferred, timeout: float = 10.0):
        """Pump flushes and writer-thread results until ``d`` fires; return its result."""
        results: list = []
        d.addBoth(results.append)
        deadline = time.monotonic() + timeout
        while not results:
            self.advance(0)
            try:
                f, args, kw = self.thread_calls.get(timeout=0.01)
            except queue.Empty:
                assert time.monotonic() < deadline, "store did not answer"
                continue
            f(*args, **kw)
        if isinstance(results[0], failure.Failure):
            results[0].raiseException()
        return results[0]


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(ops_strategy, min_size=8, max_size=60))
def test_model(tmp_path_factory, ops):
    """Arbitrary operation sequences, flushed and reopened at arbitrary points, match a model."""
    data_dir = str(tmp_path_factory.mktemp("model"))
    clock = ThreadClock()
    model = Model()
    seg = {"segment_mb": 0.0001}  # ~100 bytes: a few entries per segment, trims drop files
    store = SqliteStore(data_dir, clock=clock, **seg)
    clock.wait(store.open())
    for op in ops:
        if op[0] == "turn":
            d: defer.Deferred = defer.Deferred()
            store.after_durable(lambda d=d: d.callback(None))
            clock.wait(d)
        elif op[0] in ("append_stream", "trim_stream"):
            # a log: offsets grow (the drawn one is a gap), and retention trims below the end
            v, s, p, n = op[1:5]
            nxt = model.next.get((v, s, p), 0)
            off = nxt + n if op[0] == "append_stream" else min(n, nxt)
            op = (op[0], v, s, p, off, *op[5:])
            getattr(store, op[0])(*op[1:])
            model.apply(op)
        elif op[0] == "reopen":
            clock.wait(store.close())
            store = SqliteStore(data_dir, clock=clock, **seg)
            model.check(clock.wait(store.open()))
        else:
            getattr(store, op[0])(*op[1:])
            model.apply(op)
    clock.wait(store.close())
    store = SqliteStore(data_dir, clock=clock)
    snap = clock.wait(store.open())
    clock.wait(store.close())
    model.check(snap)


# ------------------------------------------------------------------ stream segment files


def seg_files(root) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".seg")]
    return sorted(out)


def part_dir(tmp_path, vhost, stream, partition):
    from polymq.core.store.sqlite import escape_name

    return tmp_path / "streams" / escape_name(vhost) / escape_name(stream) / str(partition)


@pytest_twisted.inlineCallbacks
def test_stream_torn_tail_is_truncated_at_open(tmp_path):
    store, d = open_store(tmp_path)
    yield d
    for off in range(5):
        store.append_stream("/", "s", 0, off, 1, 100 + off, "f", b"entry%d" % off * 50)
    yield durable(store)
    yield store.close()
    (seg,) = seg_files(tmp_path / "streams")
    assert os.path.basename(seg) == f"{0:020d}.seg"
    full = os.path.getsize(seg)
    # a half-written last record: its header made it, part of its payload did not
    with open(seg, "r+b") as f:
        f.truncate(full - 7)
    store, d = open_store(tmp_path)
    snap = yield d
    assert [e[0] for e in snap.stream_entries[("/", "s", 0)]] == [0, 1, 2, 3]
    assert snap.stream_entries[("/", "s", 0)][3] == (3, 1, 103, "f", b"entry3" * 50)
    assert store.segments_truncated == 1
    # appending goes on after the cut
    store.append_stream("/", "s", 0, 4, 2, 200, "g", b"again")
    yield durable(store)
    yield store.close()
    # a flipped payload byte (crc mismatch) in the middle: cut there
    with open(seg, "r+b") as f:
        f.seek(os.path.getsize(seg) - 3)
        f.write(b"X")
    store, d = open_store(tmp_path)
    snap = yield d
    yield store.close()
    assert [e[0] for e in snap.stream_entries[("/", "s", 0)]] == [0, 1, 2, 3]
    # garbage after the last record (a torn header)
    with open(seg, "ab") as f:
        f.write(b"\x01\x02\x03")
    store, d = open_store(tmp_path)
    snap = yield d
    yield store.close()
    assert len(snap.stream_entries[("/", "s", 0)]) == 4


@pytest_twisted.inlineCallbacks
def test_stream_torn_segment_drops_later_segments(tmp_path):
    store, d = open_store(tmp_path, segment_mb=0.0005)  # ~500 bytes per segment
    yield d
    for off in range(20):
        store.append_stream("/", "s", 0, off, 1, 0, "f", b"%03d" % off * 40)
    yield durable(store)
    yield store.close()
    segs = seg_files(tmp_path / "streams")
    assert len(segs) >= 5
    with open(segs[2], "r+b") as f:  # torn: everything from there on was never acknowledged
        f.truncate(os.path.getsize(segs[2]) - 1)
    store, d = open_store(tmp_path, segment_mb=0.0005)
    snap = yield d
    offsets = [e[0] for e in snap.stream_entries[("/", "s", 0)]]
    assert offsets == list(range(len(offsets))) and 0 < len(offsets) < 20
    assert seg_files(tmp_path / "streams") == segs[:3]
    nxt = offsets[-1] + 1
    store.append_stream("/", "s", 0, nxt, 1, 0, "f", b"new")
    yield durable(store)
    yield store.close()
    store, d = open_store(tmp_path)
    snap = yield d
    yield store.close()
    assert [e[0] for e in snap.stream_entries[("/", "s", 0)]] == [*offsets, nxt]


@pytest_twisted.inlineCallbacks
def test_stream_segments_roll_and_trim_deletes_whole_segments(tmp_path):
    store, d = open_store(tmp_path, segment_mb=0.001)  # ~1 KB segments
    yield d
    for off in range(0, 60, 2):
        store.append_stream("/", "s", 1, off, 2, off, "f", b"x" * 200)
    yield durable(store)
    pdir = part_dir(tmp_path, "/", "s", 1)
    before = sorted(os.listdir(pdir))
    assert len(before) >= 5
    bases = [int(n[:-4]) for n in before]
    store.trim_stream("/", "s", 1, 31)  # entries starting below 31 go
    yield durable(store)
    after = sorted(int(n[:-4]) for n in os.listdir(pdir))
    assert after == [b for i, b in enumerate(bases) if i + 1 == len(bases) or bases[i + 1] > 31]
    assert after[0] <= 31 < (after[1] if len(after) > 1 else 10**9)
    yield store.close()
    store, d = open_store(tmp_path, segment_mb=0.001)
    snap = yield d
    offs = [e[0] for e in snap.stream_entries[("/", "s", 1)]]
    assert offs == list(range(32, 60, 2))  # below the log start in a kept segment: skipped
    # trimming everything deletes the last segment too; appends start a new one
    store.trim_stream("/", "s", 1, 60)
    yield durable(store)
    assert os.listdir(pdir) == []
    store.append_stream("/", "s", 1, 60, 1, 0, "f", b"z")
    yield durable(store)
    assert os.listdir(pdir) == [f"{60:020d}.seg"]
    yield store.close()
    store, d = open_store(tmp_path)
    snap = yield d
    yield store.close()
    assert snap.stream_entries == {("/", "s", 1): [(60, 1, 0, "f", b"z")]}


@pytest_twisted.inlineCallbacks
def test_stream_delete_queue_removes_directory(tmp_path):
    store, d = open_store(tmp_path)
    yield d
    store.put_queue("/", "s", {"type": "stream"})
    for p in range(3):
        store.append_stream("/", "s", p, 0, 1, 0, "f", b"old")
    store.append_stream("/", "keep", 0, 0, 1, 0, "f", b"k")
    yield durable(store)
    sdir = part_dir(tmp_path, "/", "s", 0).parent
    assert sdir.is_dir()
    store.delete_queue("/", "s")
    yield durable(store)
    assert not sdir.exists()
    assert os.listdir(tmp_path / "streams" / ".trash") == []
    # deleted and re-created in one batch: only the new entries
    store.append_stream("/", "s", 0, 0, 1, 0, "f", b"gone")
    store.delete_queue("/", "s")
    store.append_stream("/", "s", 0, 0, 1, 0, "f", b"new")
    yield durable(store)
    yield store.close()
    store, d = open_store(tmp_path)
    snap = yield d
    yield store.close()
    assert snap.stream_entries == {
        ("/", "s", 0): [(0, 1, 0, "f", b"new")],
        ("/", "keep", 0): [(0, 1, 0, "f", b"k")],
    }


NASTY_NAMES = [
    "..",
    ".",
    "../x",
    "a/b",
    "/abs",
    "",
    "=x",
    "#y",
    "%2F",
    "\x00nul",
    "é→☃",
    "x" * 300,
    "y" * 100 + "/" * 50,
]


@pytest_twisted.inlineCallbacks
def test_stream_names_are_escaped(tmp_path):
    from polymq.core.store.sqlite import escape_name

    for name in NASTY_NAMES:
        esc = escape_name(name)
        assert "/" not in esc and "\x00" not in esc and esc not in (".", "..", "")
        assert len(esc) <= 120
    assert len({escape_name(n) for n in NASTY_NAMES}) == len(NASTY_NAMES)
    data_dir = tmp_path / "data"
    store, d = open_store(data_dir)
    yield d
    expect = {}
    for i, name in enumerate(NASTY_NAMES):
        vhost = NASTY_NAMES[-1 - i]
        store.append_stream(vhost, name, 0, 0, 1, i, "f", b"%d" % i)
        expect[(vhost, name, 0)] = [(0, 1, i, "f", b"%d" % i)]
    yield durable(store)
    yield store.close()
    # nothing escaped the streams directory
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert sorted(os.listdir(data_dir)) == ["polymq.lock", "polymq.sqlite3", "streams"]
    for path in seg_files(data_dir):
        assert os.path.realpath(path).startswith(str(data_dir / "streams") + os.sep)
        assert len(os.path.relpath(path, data_dir / "streams")) < 300
    store, d = open_store(data_dir)
    snap = yield d
    assert snap.stream_entries == expect
    for i, name in enumerate(NASTY_NAMES):
        store.delete_queue(NASTY_NAMES[-1 - i], name)
    yield durable(store)
    yield store.close()
    assert seg_files(data_dir) == []


@pytest_twisted.inlineCallbacks
def test_migration_from_schema_1_moves_stream_rows_to_segments(tmp_path):
    from polymq.core.store import sqlite_sql as mod

    con = sqlite3.connect(tmp_path / FILENAME)
    con.executescript(mod._SCHEMA_V1)
    con.execute("PRAGMA user_version = 1")
    rows = [
        ("/", "s", p, off, 2, 1000 + off, "kafka.v2", b"b%d-%d" % (p, off))
        for p in range(2)
        for off in range(0, 20, 2)
    ]
    con.executemany("INSERT INTO stream_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.execute("INSERT INTO queues VALUES ('/', 's', ?)", (mod._pack({"type": "stream"}),))
    con.commit()
    con.close()
    expect = {("/", "s", p): [r[3:] for r in rows if r[2] == p] for p in range(2)}
    store, d = open_store(tmp_path)
    snap = yield d
    assert snap.stream_entries == expect
    assert snap.queues == [("/", "s", {"type": "stream"})]
    store.append_stream("/", "s", 0, 20, 1, 5, "f", b"after")
    yield durable(store)
    yield store.close()
    con = sqlite3.connect(tmp_path / FILENAME)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 4
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "stream_entries" not in tables and "stream_starts" in tables
    assert "scheduled" in tables
    con.close()
    assert len(seg_files(tmp_path / "streams")) == 2
    store, d = open_store(tmp_path)
    snap = yield d
    yield store.close()
    expect[("/", "s", 0)].append((20, 1, 5, "f", b"after"))
    assert snap.stream_entries == expect


@pytest_twisted.inlineCallbacks
def test_migration_from_schema_2_fills_message_levels_for_paging(tmp_path):
    from polymq.core.message import Message
    from polymq.core.store.sqlite_sql import _MIGRATIONS, _SCHEMA_V1

    con = sqlite3.connect(tmp_path / FILENAME)
    for script in (_SCHEMA_V1, _MIGRATIONS[1]):
        for stmt in script.split(";"):
            if stmt.strip():
                con.execute(stmt)
    pack = __import__("msgpack").packb
    con.execute(
        "INSERT INTO queues VALUES ('/', 'pq', ?)",
        (pack({"type": "classic", "arguments": {"x-max-priority": 5}}),),
    )
    con.execute("INSERT INTO queues VALUES ('/', 'q', ?)", (pack({"type": "classic"}),))
    rows = [
        ("/", "pq", 1, Message(b"low", priority=1).to_bytes(), 0),
        ("/", "pq", 2, Message(b"top", priority=9).to_bytes(), 2),
        ("/", "q", 7, Message(b"exp", expiration=1234, priority=4).to_bytes(), 0),
    ]
    con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", rows)
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    store, d = open_store(tmp_path, paging=True)
    snap = yield d
    assert snap.messages == {}
    assert snap.queue_levels == {
        ("/", "pq"): [(1, 1, 3, 1), (5, 1, 3, 2)],  # priority 9 counts as the top level, 5
        ("/", "q"): [(0, 1, 3, 7)],  # no x-max-priority: one level
    }
    got = defer.Deferred()
    store.read_messages("/", "pq", 5, 0, 10, got.callback)
    rows = yield got
    assert [(seq, Message.from_bytes(data).body, dc) for seq, data, dc, _ in rows] == [
        (2, b"top", 2)
    ]
    got = defer.Deferred()
    store.read_messages("/", "q", 0, 0, 10, got.callback)
    assert [(seq, exp) for seq, _, _, exp in (yield got)] == [(7, 1234)]
    yield store.close()
