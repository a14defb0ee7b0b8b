"""A long soak of one broker: all four protocols under steady load, with connection churn, slow
consumers and garbage clients mixed in. Samples the broker's RSS, open descriptors and each
protocol's delivery latency over time, and at the end counts what every producer had
acknowledged against what its consumer received.

    .venv/bin/python bench/soak.py [--duration 1800] [--rate 200] [--sample 5] [--out DIR]

Load (each at ``--rate`` messages a second, 512-byte bodies): paho QoS 1 to a persistent QoS 1
subscriber; pika with publisher confirms to a durable queue read by a pika consumer with manual
acks; confluent-kafka ``acks=all`` (idempotent) to a topic read by a consumer group; the ActiveMQ
JMS client (persistent synchronous sends to a queue; needs a JDK and Debian libactivemq-java,
left out with a note when missing). Hostile side: every half second a paho client and a pika
connection come and go; an MQTT QoS 0 subscriber and a pika consumer with prefetch 100 never read
or ack; every two seconds random bytes are written to every port.

Writes ``soak.csv`` (one row per sample), ``soak.svg`` (RSS, descriptors and p99 latency per
protocol over time) and ``summary.txt`` into ``--out``; prints the summary. The broker is
started by the script on free loopback ports, with the sqlite store in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from brokerproc import BrokerProcess  # noqa: E402

STAMP = struct.Struct(">qd")  # sequence number, send time (time.time())
PROTOCOLS = ("mqtt", "amqp", "kafka", "openwire")


class Tally:
    """What one protocol's producer had acknowledged and its consumer received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: set[int] = set()
        self.received: set[int] = set()
        self.duplicates = 0
        self.latencies: list[float] = []  # seconds, since the last sample
        self.all_latencies: list[float] = []
        self.errors: list[str] = []

    def ack(self, seq: int) -> None:
        with self.lock:
            self.acked.add(seq)

    def got(self, body: bytes) -> None:
        seq, sent = STAMP.unpack_from(body)
        lat = time.time() - sent
        with self.lock:
            if seq in self.received:
                self.duplicates += 1
            else:
                self.received.add(seq)
            self.latencies.append(lat)

    def take_latencies(self) -> list[float]:
        with self.lock:
            out, self.latencies = self.latencies, []
        self.all_latencies += out
        return out


def body(seq: int, size: int = 512) -> bytes:
    return STAMP.pack(seq, time.time()).ljust(size, b".")


def paced(stop: threading.Event, rate: float):
    """Yields 0, 1, 2 ... at ``rate`` a second until ``stop`` is set."""
    seq = 0
    start = time.monotonic()
    while not stop.is_set():
        due = start + seq / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield seq
        seq += 1


# -- the four workloads ------------------------------------------------------------------------


def mqtt_load(host, port, rate, stop, tally: Tally) -> list:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = "soak/mqtt"
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-sub", clean_session=False)
    sub.on_message = lambda c, u, m: tally.got(m.payload)
    sub.connect(host, port)
    sub.subscribe(topic, 1)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-pub")
    pub.max_inflight_messages_set(100)
    pub.connect(host, port)
    pub.loop_start()

    def run():
        pending = []
        for seq in paced(stop, rate):
            pending.append((seq, pub.publish(topic, body(seq), qos=1)))
            while pending and pending[0][1].is_published():
                tally.ack(pending.pop(0)[0])
        for seq, info in pending:
            info.wait_for_publish(10)
            if info.is_published():
                tally.ack(seq)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return [
        t,
        lambda: (pub.loop_stop(), pub.disconnect()),
        lambda: (sub.loop_stop(), sub.disconnect()),
    ]


def amqp_load(host, port, rate, stop, tally: Tally) -> list:
    import pika

    params = pika.ConnectionParameters(host, port, heartbeat=30)
    setup = pika.BlockingConnection(params)
    ch = setup.channel()
    ch.queue_declare("soak.amqp", durable=True)
    setup.close()

    def produce():
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2)
        for seq in paced(stop, rate):
            try:
                ch.basic_publish("", "soak.amqp", body(seq), props, mandatory=False)
                tally.ack(seq)
            except Exception as e:  # a nack or a closed channel: not acknowledged
                tally.errors.append(f"publish {seq}: {e!r}")
        conn.close()

    consumer_stop = threading.Event()

    def consume():
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=200)
        for method, _, data in ch.consume("soak.amqp", inactivity_timeout=0.5):
            if method is not None:
                tally.got(data)
                ch.basic_ack(method.delivery_tag)
            elif consumer_stop.is_set():
                break
        ch.cancel()
        conn.close()

    tp = threading.Thread(target=produce, daemon=True)
    tc = threading.Thread(target=consume, daemon=True)
    tp.start()
    tc.start()
    return [tp, consumer_stop.set, lambda: tc.join(30)]


def kafka_load(host, port, rate, stop, tally: Tally) -> list:
    from confluent_kafka import Consumer, Producer

    boot = f"{host}:{port}"
    prod = Producer(
        {"bootstrap.servers": boot, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    cons = Consumer(
        {
            "bootstrap.servers": boot,
            "group.id": "soak",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    cons.subscribe(["soak-kafka"])
    consumer_stop = threading.Event()

    def produce():
        for seq in paced(stop, rate):
            prod.produce(
                "soak-kafka",
                body(seq),
                on_delivery=lambda err, msg, s=seq: (
                    tally.ack(s) if err is None else tally.errors.append(str(err))
                ),
            )
            prod.poll(0)
        prod.flush(30)

    def consume():
        while not consumer_stop.is_set():
            m = cons.poll(0.5)
            if m is not None and m.error() is None:
                tally.got(m.value())
        cons.close()

    tp = threading.Thread(target=produce, daemon=True)
    tc = threading.Thread(target=consume, daemon=True)
    tp.start()
    tc.start()
    return [tp, consumer_stop.set, lambda: tc.join(30)]


def openwire_load(host, port, rate, duration, tally: Tally, workdir: Path) -> list:
    """The JMS client (persistent synchronous sends) through polymq compare's OpenWire load
    program; its counts arrive at the end, its latencies from its latency file."""
    import subprocess

    from polymq.plugins.compare.drivers.openwire import classpath, compiled

    cp = str(compiled()) + os.pathsep + classpath()
    url = f"tcp://{host}:{port}"
    lat = workdir / "openwire.lat"

    def jvm(role):
        return subprocess.Popen(
            [
                "java",
                "-Xmx256m",
                "-cp",
                cp,
                "OpenWireLoad",
                role,
                url,
                "queue://soak.openwire",
                "1",
                "0",
                str(duration),
                str(rate),
                "512",
                "persistent",
                str(lat),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )

    consumer = jvm("consumer")
    producer = jvm("producer")
    results: dict = {}

    def read(proc, role):
        for line in proc.stdout:
            if line.startswith("IO"):
                proc.stdin.write("CLOSE\n")
                proc.stdin.flush()
            elif line.startswith("RESULT "):
                results[role] = {
                    k: int(v) for k, v in (kv.split("=", 1) for kv in line[7:].split())
                }
            elif line.startswith("ERROR "):
                tally.errors.append(line.strip())

    threads = [
        threading.Thread(target=read, args=(p, r), daemon=True)
        for p, r in ((producer, "producer"), (consumer, "consumer"))
    ]
    for t in threads:
        t.start()

    def finish():
        producer.wait()
        threads[0].join(10)
        sent = results.get("producer", {}).get("sent", 0)
        consumer.stdin.write(f"EXPECT {sent} 30\n")
        consumer.stdin.flush()
        consumer.wait(120)
        threads[1].join(10)
        got = results.get("consumer", {})
        tally.acked = set(range(sent))
        tally.received = set(range(got.get("unique", 0)))
        tally.duplicates = got.get("duplicates", 0)
        if lat.exists():
            data = lat.read_bytes()
            tally.all_latencies += [
                x / 1e6
                for x in struct.unpack(f">{len(data) // 8}q", data)  # microseconds
            ]

    return [finish]


# -- the hostile side --------------------------------------------------------------------------


def hostile(host, ports: dict, stop: threading.Event, counts: dict) -> list[threading.Thread]:
    import paho.mqtt.client as mqtt
    import pika
    from paho.mqtt.enums import CallbackAPIVersion

    def churn():
        while not stop.wait(0.5):
            try:
                c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"churn-{uuid.uuid4()}")
                c.connect(host, ports["mqtt"])
                c.disconnect()
                pika.BlockingConnection(pika.ConnectionParameters(host, ports["amqp"])).close()
                counts["churn"] += 1
            except Exception:
                counts["churn_failed"] += 1

    def garbage():
        rnd = random.Random(7)
        while not stop.wait(2):
            for port in ports.values():
                try:
                    with socket.create_connection((host, port), timeout=2) as s:
                        s.sendall(rnd.randbytes(rnd.randint(1, 4096)))
                    counts["garbage"] += 1
                except OSError:
                    pass

    # never read: an MQTT QoS 0 subscriber and an AMQP consumer that never acks
    slow = socket.create_connection((host, ports["mqtt"]))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    cid = b"soak-slow"
    connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(cid)) + cid
    slow.sendall(b"\x10" + bytes((len(connect),)) + connect)
    sub = b"\x00\x01" + struct.pack(">H", 6) + b"soak/#" + b"\x00"
    slow.sendall(b"\x82" + bytes((len(sub),)) + sub)
    never_ack = pika.BlockingConnection(pika.ConnectionParameters(host, ports["amqp"]))
    nch = never_ack.channel()
    nch.queue_declare("soak.never-acked")
    nch.queue_bind("soak.never-acked", "amq.topic", "soak.#")
    nch.basic_qos(prefetch_count=100)
    nch.basic_consume("soak.never-acked", lambda *a: None)
    threads = [threading.Thread(target=f, daemon=True) for f in (churn, garbage)]
    for t in threads:
        t.start()
    counts["_keep"] = (slow, never_ack)
    return threads


# -- sampling and output -----------------------------------------------------------------------


def proc_stats(pid: int) -> tuple[float, int]:
    rss = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def svg(rows: list[dict], path: Path) -> None:
    """Three stacked panels over time: RSS (MB), descriptors, p99 latency (ms) per protocol."""
    width, height, left, gap = 760, 150, 60, 40
    panels = [
        ("RSS (MB)", ["rss_mb"]),
        ("open descriptors", ["fds"]),
        ("p99 latency (ms)", [f"{p}_p99_ms" for p in PROTOCOLS]),
    ]
    styles = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    dashes = ["", "6,3", "2,2", "8,3,2,3"]
    total_h = len(panels) * (height + gap) + 20
    t_max = max((r["t"] for r in rows), default=1) or 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" '
        f'height="{total_h}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for i, (title, keys) in enumerate(panels):
        top = 10 + i * (height + gap)
        vals = [r[k] for r in rows for k in keys if r.get(k) is not None]
        vmax = max(vals, default=1) * 1.1 or 1
        out.append(f'<text x="{left}" y="{top - 2}" font-weight="bold">{title}</text>')
        out.append(
            f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" '
            f'stroke="#999"/>'
        )
        for frac in (0, 0.5, 1):
            y = top + height - frac * height
            out.append(
                f'<text x="{left - 4}" y="{y + 4}" text-anchor="end">{vmax * frac:.0f}</text>'
            )
        for j, key in enumerate(keys):
            pts = [
                (left + r["t"] / t_max * width, top + height - r[key] / vmax * height)
                for r in rows
                if r.get(key) is not None
            ]
            if pts:
                d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                out.append(
                    f'<polyline points="{d}" fill="none" stroke="{styles[j]}" '
                    f'stroke-width="1.5" stroke-dasharray="{dashes[j]}"/>'
                )
                label = key.split("_")[0] if len(keys) > 1 else ""
                if label:
                    out.append(
                        f'<text x="{left + width + 8}" y="{top + 14 + 14 * j}" '
                        f'fill="{styles[j]}">{label}</text>'
                    )
        out.append(
            f'<text x="{left + width}" y="{top + height + 14}" text-anchor="end">'
            f"{t_max / 60:.0f} min</text>"
        )
    out.append("</svg>")
    path.write_text("\n".join(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    ap.add_argument("--rate", type=float, default=200.0, help="messages a second per protocol")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--out", default="bench-out/soak")
    ap.add_argument("--no-openwire", action="store_true", help="leave the JMS client out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="polymq-soak-"))
    broker = BrokerProcess(work, adapters=list(PROTOCOLS), log_level="info").start()
    host, ports = broker.host, {p: broker.port(p) for p in PROTOCOLS}
    tallies = {p: Tally() for p in PROTOCOLS}
    stop = threading.Event()
    counts = {"churn": 0, "churn_failed": 0, "garbage": 0}
    finishers = {
        "mqtt": mqtt_load(host, ports["mqtt"], args.rate, stop, tallies["mqtt"]),
        "amqp": amqp_load(host, ports["amqp"], args.rate, stop, tallies["amqp"]),
        "kafka": kafka_load(host, ports["kafka"], args.rate, stop, tallies["kafka"]),
    }
    notes = []
    if not args.no_openwire:
        try:
            finishers["openwire"] = openwire_load(
                host, ports["openwire"], args.rate, args.duration, tallies["openwire"], work
            )
        except Exception as e:
            notes.append(f"openwire left out: {e}")
    hostile(host, ports, stop, counts)
    rows = []
    start = time.monotonic()
    with open(out / "soak.csv", "w") as csv:
        cols = ["t", "rss_mb", "fds"] + [
            f"{p}_{k}" for p in PROTOCOLS for k in ("received", "p50_ms", "p99_ms")
        ]
        csv.write(",".join(cols) + "\n")
        while time.monotonic() - start < args.duration and broker.running:
            time.sleep(args.sample)
            rss, fds = proc_stats(broker.pid)
            row = {"t": time.monotonic() - start, "rss_mb": rss, "fds": fds}
            for p, tally in tallies.items():
                lat = tally.take_latencies()
                row[f"{p}_received"] = len(tally.received)
                p50, p99 = pct(lat, 50), pct(lat, 99)
                row[f"{p}_p50_ms"] = None if p50 is None else p50 * 1000
                row[f"{p}_p99_ms"] = None if p99 is None else p99 * 1000
            rows.append(row)
            csv.write(",".join("" if row.get(c) is None else f"{row[c]:.2f}" for c in cols) + "\n")
            csv.flush()
    stop.set()
    for fs in finishers.values():
        for f in fs:
            f.join(60) if isinstance(f, threading.Thread) else f()
    time.sleep(5)  # last deliveries
    for tally in tallies.values():
        tally.take_latencies()
    alive = broker.running
    lines = [
        f"soak: {args.duration:.0f} s at {args.rate:.0f} msg/s per protocol; broker "
        f"{'running' if alive else 'DIED'} at the end",
        f"churn connections {counts['churn']} (failed {counts['churn_failed']}), garbage "
        f"clients {counts['garbage']}",
    ]
    if rows:
        rss = [r["rss_mb"] for r in rows]
        fds = [r["fds"] for r in rows]
        tenth = max(1, len(rows) // 10)
        lines.append(
            f"RSS MB: first tenth median {statistics.median(rss[:tenth]):.0f}, last "
            f"tenth median {statistics.median(rss[-tenth:]):.0f}, max {max(rss):.0f}"
        )
        lines.append(f"descriptors: min {min(fds)}, max {max(fds)}, last {fds[-1]}")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f}"

    for p, t in tallies.items():
        lost = len(t.acked - t.received)
        lat = t.all_latencies
        p50, p99, p999 = (pct(lat, q) for q in (50, 99, 99.9))
        lines.append(
            f"{p}: acknowledged {len(t.acked)}, received {len(t.received)}, lost "
            f"{lost}, duplicates {t.duplicates}, latency ms p50 {ms(p50)} p99 "
            f"{ms(p99)} p99.9 {ms(p999)}, errors {len(t.errors)}"
        )
    lines += notes
    summary = "\n".join(lines)
    (out / "summary.txt").write_text(summary + "\n")
    svg(rows, out / "soak.svg")
    print(summary)
    broker.stop()
    lost_any = any(t.acked - t.received for t in tallies.values())
    return 0 if alive and not lost_any else 1


if __name__ == "__main__":
    sys.exit(main())
