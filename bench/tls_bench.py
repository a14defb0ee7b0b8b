#!/usr/bin/env python3
"""TLS against clear text, per protocol, on one polymq broker in one run.

Starts ``polymq serve`` (memory store) with a throw-away CA and certificate, then for MQTT
(raw asyncio client, QoS 0), AMQP (pika, publish then consume) and Kafka (confluent-kafka,
produce then consume) moves ``--count`` messages of ``--size`` bytes through the plain port and
the TLS port and prints messages/s for each, plus the broker's CPU seconds per 10k messages::

    .venv/bin/python bench/tls_bench.py --count 20000 --size 256

Each figure is end to end (the client's work included); the ratio TLS/clear is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_broker(workdir: Path) -> tuple[subprocess.Popen, dict, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "server.pem"))
    cert.private_key_pem.write_to_path(str(workdir / "server.key"))
    port_file = workdir / "ports.json"
    sets = {
        "store.backend": '"memory"',
        "store.data_dir": json.dumps(str(workdir / "data")),
        "tls.certfile": json.dumps(str(workdir / "server.pem")),
        "tls.keyfile": json.dumps(str(workdir / "server.key")),
        "adapters.openwire.enabled": "false",
    }
    for name in ("mqtt", "amqp", "kafka"):
        sets[f"adapters.{name}.host"] = '"127.0.0.1"'
        sets[f"adapters.{name}.port"] = "0"
        sets[f"adapters.{name}.tls_port"] = "0"
    cmd = [sys.executable, "-m", "polymq.core", "serve", "--port-file", str(port_file)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    log = open(workdir / "broker.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"broker did not start; see {workdir / 'broker.log'}")
        time.sleep(0.05)
    time.sleep(0.1)
    return proc, json.loads(port_file.read_text()), workdir / "ca.pem"


# -- MQTT: raw frames, so that the client is not what is measured ---------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _connect(cid: str) -> bytes:
    c = cid.encode()
    return _packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + len(c).to_bytes(2, "big") + c)


async def mqtt_run(port: int, ctx: ssl.SSLContext | None, count: int, size: int) -> float:
    topic = b"bench/tls"
    host = "localhost" if ctx else None
    sr, sw = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    sw.write(_connect("sub") + _packet(0x82, b"\x00\x01" + len(topic).to_bytes(2, "big") + topic
                                       + b"\x00"))  # fmt: skip
    await sw.drain()
    await sr.readexactly(4)  # CONNACK
    await sr.readexactly(5)  # SUBACK
    pr, pw = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    pw.write(_connect("pub"))
    await pw.drain()
    await pr.readexactly(4)
    frame = _packet(0x30, len(topic).to_bytes(2, "big") + topic + b"x" * size)
    started = time.perf_counter()

    async def publish() -> None:
        for _ in range(count // 100):
            pw.write(frame * 100)
            await pw.drain()

    sender = asyncio.ensure_future(publish())
    need = len(frame) * (count // 100 * 100)
    got = 0
    while got < need:
        got += len(await sr.read(1 << 16))
    elapsed = time.perf_counter() - started
    await sender
    for w in (sw, pw):
        w.close()
    return count // 100 * 100 / elapsed


# -- AMQP and Kafka with their usual clients -------------------------------------------------


def amqp_run(port: int, ctx: ssl.SSLContext | None, count: int, size: int) -> float:
    import pika

    opts = pika.SSLOptions(ctx, "localhost") if ctx else None
    conn = pika.BlockingConnection(pika.ConnectionParameters("localhost", port, ssl_options=opts))
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    body = b"x" * size
    started = time.perf_counter()
    for _ in range(count):
        ch.basic_publish("", q, body)
    ch.basic_qos(prefetch_count=1000)
    got = 0
    for _method, _props, _body in ch.consume(q, auto_ack=True):
        got += 1
        if got == count:
            break
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def kafka_run(port: int, cafile: Path | None, count: int, size: int) -> float:
    import uuid

    from confluent_kafka import Consumer, Producer

    conf = {"bootstrap.servers": f"localhost:{port}"}
    if cafile is not None:
        conf.update({"security.protocol": "SSL", "ssl.ca.location": str(cafile)})
    topic = "tls-bench-" + uuid.uuid4().hex[:6]
    p = Producer({**conf, "linger.ms": 5})
    body = b"x" * size
    started = time.perf_counter()
    for _ in range(count):
        while True:
            try:
                p.produce(topic, body)
                break
            except BufferError:
                p.poll(0.01)
    p.flush(60)
    c = Consumer({**conf, "group.id": topic, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 120
    while got < count and time.monotonic() < deadline:
        for m in c.consume(1000, 0.5):
            if m.error() is None:
                got += 1
    elapsed = time.perf_counter() - started
    c.close()
    return got / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20000, help="messages per protocol and run")
    ap.add_argument("--size", type=int, default=256, help="message body bytes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="polymq-tls-bench-") as tmp:
        proc, ports, cafile = start_broker(Path(tmp))
        ctx = ssl.create_default_context(cafile=str(cafile))
        rows = []
        try:
            for proto in ("mqtt", "amqp", "kafka"):
                for mode in ("clear", "tls"):
                    port = ports[proto if mode == "clear" else f"{proto}+tls"]
                    cpu0 = cpu_seconds(proc.pid)
                    if proto == "mqtt":
                        rate = asyncio.run(
                            mqtt_run(port, ctx if mode == "tls" else None, args.count, args.size)
                        )
                    elif proto == "amqp":
                        rate = amqp_run(port, ctx if mode == "tls" else None, args.count, args.size)
                    else:
                        rate = kafka_run(
                            port, cafile if mode == "tls" else None, args.count, args.size
                        )
                    cpu = cpu_seconds(proc.pid) - cpu0
                    rows.append((proto, mode, rate, cpu * 10000 / args.count))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{args.count} messages of {args.size} bytes per run; broker CPU per 10k messages")
    print(f"{'protocol':<9}{'mode':<7}{'msgs/s':>10}{'cpu s/10k':>11}{'tls/clear':>11}")
    for proto, mode, rate, cpu in rows:
        ratio = ""
        if mode == "tls":
            clear = next(r for p, m, r, _ in rows if p == proto and m == "clear")
            ratio = f"{rate / clear:.2f}"
        print(f"{proto:<9}{mode:<7}{rate:>10.0f}{cpu:>11.2f}{ratio:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
