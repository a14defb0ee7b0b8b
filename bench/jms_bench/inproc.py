"""The OpenWire adapter's CPU per message without sockets: one producer and one consumer
connection, fed the frames a 5.17 JMS client sends (BytesMessage, AUTO_ACKNOWLEDGE: one
standard ack per message), through the real transport, session and core (memory store).

    .venv/bin/python bench/jms_bench/inproc.py [--messages 20000] [--plain] [--profile]

``--plain`` negotiates no marshalling cache (the loose form without cache); ``--profile``
prints the top of a cProfile run. Frames are written the way the Java client writes them
(cached fields as references after their first use). Prints µs of CPU per message.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from openwire_oracle import ClientWriter  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from polymq.adapters.openwire import codec as c  # noqa: E402
from polymq.adapters.openwire.codec import Obj  # noqa: E402
from polymq.adapters.openwire.transport import OpenWireFactory  # noqa: E402
from polymq.core.broker import Broker  # noqa: E402


def connect(factory: OpenWireFactory, cache: bool, name: str):
    p = factory.buildProtocol(None)
    t = StringTransport()
    p.makeConnection(t)
    props = {
        "CacheEnabled": cache,
        "CacheSize": 1024,
        "TightEncodingEnabled": False,
        "MaxInactivityDuration": 0,
    }
    p.dataReceived(c.encode_wireformat(12, props, {}))
    w = ClientWriter(1024, cached=cache)
    conn_id = Obj(c.CONNECTION_ID, value=f"ID:bench-{name}-1")
    p.dataReceived(
        w.sized(
            Obj(
                c.CONNECTION_INFO,
                command_id=1,
                response_required=True,
                connection_id=conn_id,
                client_id=f"ID:bench-{name}",
            )
        )
    )
    sid = Obj(c.SESSION_ID, connection_id=conn_id.value, value=1)
    p.dataReceived(w.sized(Obj(c.SESSION_INFO, command_id=2, session_id=sid)))
    return p, t, w, conn_id


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--default-gc",
        action="store_true",
        help="keep Python's default collector thresholds (the service, and so "
        "every other figure, freezes start-up objects and raises them)",
    )
    ap.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="acks trail the sends by this many messages (the socket bench's "
        "consumer runs behind; past the prefetch of 1000 messages wait in the "
        "queue)",
    )
    ap.add_argument(
        "--memory",
        action="store_true",
        help="bytes held per message waiting for its ack (tracemalloc)",
    )
    ap.add_argument("--gc-off", action="store_true", help="no cyclic collector (diagnostic)")
    ap.add_argument(
        "--callgrind",
        action="store_true",
        help="under valgrind --tool=callgrind --instr-atstart=no: collect only during the "
        "timed runs (instruction counts stay steady on a busy machine)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs; prints each and the median")
    ap.add_argument(
        "--floor",
        action="store_true",
        help="time only the codec work any OpenWire broker does per message "
        "(split the frames, decode the message and its ack, encode the "
        "dispatch): no session, no core",
    )
    args = ap.parse_args()
    cache = not args.plain
    broker = Broker(clock=Clock())
    factory = OpenWireFactory(broker, {})
    dest = Obj(c.QUEUE, physical_name="bench.queue")
    cp, ct, cw, cconn = connect(factory, cache, "c")
    cid = Obj(c.CONSUMER_ID, connection_id=cconn.value, session_id=1, value=1)
    cp.dataReceived(
        cw.sized(
            Obj(
                c.CONSUMER_INFO,
                command_id=3,
                response_required=True,
                consumer_id=cid,
                destination=dest,
                prefetch_size=1000,
                priority=0,
                dispatch_async=True,
            )
        )
    )
    pp, pt, pw, pconn = connect(factory, cache, "p")
    pid = Obj(c.PRODUCER_ID, connection_id=pconn.value, value=1, session_id=1)
    pp.dataReceived(
        pw.sized(
            Obj(
                c.PRODUCER_INFO,
                command_id=3,
                response_required=True,
                producer_id=pid,
                destination=dest,
            )
        )
    )
    cs = next(iter(cp.session.consumers.values()))
    body = b"\x00" * 256

    def frames(n: int, first: int, seq0: int) -> list[tuple[bytes, bytes]]:
        """Message and ack frames, written ahead (the broker numbers messages in order)."""
        out = []
        for i, k in enumerate(range(first, first + n)):
            mid = Obj(c.MESSAGE_ID, producer_id=pid, producer_sequence_id=k)
            m = Obj(
                c.BYTES_MESSAGE,
                command_id=k + 10,
                producer_id=pid,
                destination=dest,
                message_id=mid,
                priority=4,
                timestamp=1_700_000_000_000 + k,
                content=body,
            )
            ack_mid = Obj(
                c.MESSAGE_ID, producer_id=pid, producer_sequence_id=k, broker_sequence_id=seq0 + i
            )
            ack = Obj(
                c.MESSAGE_ACK,
                command_id=k + 10,
                destination=dest,
                consumer_id=cid,
                ack_type=2,
                first_message_id=ack_mid,
                last_message_id=ack_mid,
                message_count=1,
            )
            out.append((pw.sized(m), cw.sized(ack)))
        return out

    def run(batch: list[tuple[bytes, bytes]]) -> None:
        lag = args.backlog
        for k, (mf, _) in enumerate(batch):
            pp.dataReceived(mf)
            if k >= lag:
                cp.dataReceived(batch[k - lag][1])
            if k % 256 == 0:
                ct.clear()
                pt.clear()
        for _, af in batch[max(0, len(batch) - lag) :]:
            cp.dataReceived(af)

    warm = frames(1, 1, 0)
    pp.dataReceived(warm[0][0])
    seq = next(reversed(cs.dispatched))
    cp.dataReceived(frames(1, 1, seq)[0][1])
    run(frames(2000, 2, seq + 1))
    seq += 2001
    if not args.default_gc:  # as core/service.py does at start-up
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    if args.gc_off:
        gc.disable()
    if args.memory:
        import tracemalloc

        n = 4000  # past the prefetch (1000): both dispatched and queued messages
        batch = frames(n, 5_000, seq)
        tracemalloc.start()
        m0 = tracemalloc.get_traced_memory()[0]
        for mf, _ in batch:
            pp.dataReceived(mf)
        ct.clear()
        pt.clear()
        m1 = tracemalloc.get_traced_memory()[0]
        if os.environ.get("INPROC_TOP"):
            for st in tracemalloc.take_snapshot().statistics("lineno")[:12]:
                print(f"{st.size / n:7.0f} B/msg  {st.traceback}")
        tracemalloc.stop()
        print(
            f"{(m1 - m0) / n:.0f} bytes held per unacknowledged message ({n} sent, "
            f"{len(cs.dispatched)} dispatched)"
        )
        return
    if args.floor:
        floor(
            frames(args.messages, 10_000, seq),
            cs.head,
            cache,
            args.repeat,
            pp.session.ucache,
            cp.session.ucache,
        )
        return
    results = []
    first = 10_000
    for _ in range(args.repeat):
        batch = frames(args.messages, first, seq)
        first += args.messages
        seq += args.messages
        if args.callgrind:
            callgrind_collect(True)
        t0 = time.process_time()
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
        run(batch)
        if args.profile:
            prof.disable()
        if args.callgrind:
            callgrind_collect(False)
        cpu = time.process_time() - t0
        assert not cs.dispatched, "acks did not settle"
        results.append(cpu / args.messages * 1e6)
        print(
            f"{'plain' if args.plain else 'cached'} form: {results[-1]:.1f} µs CPU "
            f"per message (publish + dispatch + ack), pid {os.getpid()}"
        )
    if args.repeat > 1:
        print(
            f"median of {args.repeat}: {statistics.median(results):.1f} µs, "
            f"min {min(results):.1f} µs"
        )
    if args.profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def callgrind_collect(on: bool) -> None:
    """Switch callgrind's collection of this process on or off (callgrind_control)."""
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
        check=True,
        capture_output=True,
    )


def floor(
    batch: list[tuple[bytes, bytes]],
    head: bytes,
    cache: bool,
    repeat: int,
    producer_cache: list | None,
    consumer_cache: list | None,
) -> None:
    """µs per message of the codec steps alone, each timed on its own (median of ``repeat``).
    The frames are decoded with (copies of) the caches of the connections that sent them, so
    their references resolve to the objects the client stored, as in a real run."""
    n = len(batch)
    stream = b"".join(mf for mf, _ in batch)

    def split() -> None:
        pos, end = 0, len(stream)
        unpack = c._I.unpack_from
        while pos < end:
            size = unpack(stream, pos)[0]
            stream[pos + 4 : pos + 4 + size]
            pos += 4 + size

    def decode_messages() -> None:
        uc = list(producer_cache) if cache else None
        for mf, _ in batch:
            c.decode_command(mf[4:], uc)

    def decode_acks() -> None:
        uc = list(consumer_cache) if cache else None
        for _, af in batch:
            c.decode_command(af[4:], uc)

    uc = list(producer_cache) if cache else None
    decoded = [c.decode_command(mf[4:], uc) for mf, _ in batch]

    def encode_dispatches() -> None:
        for i, m in enumerate(decoded):
            c.encode_dispatch_raw(head, c.reencode_message(m, i, cache), 0)

    steps = [
        ("split frames", split),
        ("decode message", decode_messages),
        ("decode ack", decode_acks),
        ("encode dispatch", encode_dispatches),
    ]
    total = 0.0
    for name, fn in steps:
        times = []
        for _ in range(repeat):
            t0 = time.process_time()
            fn()
            times.append((time.process_time() - t0) / n * 1e6)
        med = statistics.median(times)
        total += med
        print(f"{name:16} {med:5.2f} µs per message")
    print(f"{'codec floor':16} {total:5.2f} µs per message (median of {repeat} runs each)")


if __name__ == "__main__":
    main()
