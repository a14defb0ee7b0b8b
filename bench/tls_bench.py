#!/usr/bin/env python3
"""TLS against clear text, per protocol, on polymq and on the brokers users compare it with.

Starts ``polymq serve`` (memory store) with a throw-away CA and certificate, and with
``--peers`` (default: every one installed) a Mosquitto, a RabbitMQ node (with its MQTT plugin)
and an ActiveMQ 5.17 of its own, each given a clear and a TLS listener in a temporary directory.
Then, one broker at a time, it moves ``--count`` messages of ``--size`` bytes through each
workload, in clear and over TLS:

- MQTT, QoS 0, raw frames from an asyncio client: polymq, Mosquitto, RabbitMQ, ActiveMQ;
- AMQP 0-9-1 with pika (publish, then consume): polymq, RabbitMQ;
- OpenWire, the JMS benchmark's "queue non-persistent 1p/1c" (bench/jms_bench): polymq,
  ActiveMQ;
- Kafka with confluent-kafka (produce, then consume): polymq.

It prints messages/s and the broker's CPU seconds per 10k messages (from /proc: user + system
of the broker process) for each, in one table::

    .venv/bin/python bench/tls_bench.py --count 20000 --size 256
    .venv/bin/python bench/tls_bench.py --peers none        # polymq only

Mosquitto, RabbitMQ and ActiveMQ come from Debian (``apt-get install mosquitto rabbitmq-server
activemq libactivemq-java``); a peer that is not installed is left out with a note. Each figure is
end to end (the client's work included); compare the CPU columns across brokers and the
TLS/clear ratio within one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOREPASS = "changeit"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_pki(workdir: Path) -> None:
    """ca.pem, server.pem/.key for localhost and 127.0.0.1; for the JVMs also server.p12 (the
    broker's key store) and trust.p12 (the client's trust store)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "server.pem"))
    cert.private_key_pem.write_to_path(str(workdir / "server.key"))
    if shutil.which("openssl") and shutil.which("keytool"):
        subprocess.run(
            ["openssl", "pkcs12", "-export", "-in", str(workdir / "server.pem"),
             "-inkey", str(workdir / "server.key"), "-out", str(workdir / "server.p12"),
             "-passout", f"pass:{STOREPASS}", "-name", "server"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["keytool", "-importcert", "-noprompt", "-alias", "ca", "-storetype", "PKCS12",
             "-keystore", str(workdir / "trust.p12"), "-storepass", STOREPASS,
             "-file", str(workdir / "ca.pem")],
            check=True, capture_output=True,
        )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, what: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not open port {port}; see {log}") from None
            time.sleep(0.2)


def start_broker(workdir: Path) -> tuple[subprocess.Popen, dict, Path]:
    port_file = workdir / "ports.json"
    sets = {
        "store.backend": '"memory"',
        "store.data_dir": json.dumps(str(workdir / "data")),
        "tls.certfile": json.dumps(str(workdir / "server.pem")),
        "tls.keyfile": json.dumps(str(workdir / "server.key")),
    }
    for name in ("mqtt", "amqp", "kafka", "openwire"):
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
    last = started
    while got < need:
        try:
            chunk = await asyncio.wait_for(sr.read(1 << 16), 10)
        except TimeoutError:
            break  # the broker dropped some (QoS 0 may be dropped): rate of what arrived
        if not chunk:
            break
        got += len(chunk)
        last = time.perf_counter()
    await sender
    for w in (sw, pw):
        w.close()
    received = got // len(frame)
    if received < count // 100 * 100:
        print(f"  note: {count // 100 * 100 - received} of {count // 100 * 100} QoS 0 messages "
              "dropped by the broker", file=sys.stderr)  # fmt: skip
    return received / (last - started)


# -- AMQP and Kafka with their usual clients -------------------------------------------------


def amqp_run(port: int, ctx: ssl.SSLContext | None, count: int, size: int) -> float:
    import pika

    opts = pika.SSLOptions(ctx, "localhost") if ctx else None
    conn = pika.BlockingConnection(
        pika.ConnectionParameters("localhost", port, ssl_options=opts, connection_attempts=3)
    )
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


def jms_run(url: str, count: int, size: int, classes: Path, pid: int) -> tuple[float, float]:
    """The JMS benchmark's "queue non-persistent 1p/1c": (messages/s, broker CPU s per 10k)."""
    sys.path.insert(0, str(ROOT / "bench" / "jms_bench"))
    from common import run_bench

    res = run_bench(classes, url, "queue", False, 1, 1, count, size, warmup=count // 4,
                    broker_pid=pid)  # fmt: skip
    return res["received"] / res["total_s"], res["broker_us"] * 10000 / 1e6


# -- the brokers ------------------------------------------------------------------------------


@dataclass
class Target:
    """One broker under test: its process (for CPU), ports by workload+mode, how to stop it."""

    name: str
    pid: int
    ports: dict[str, int]
    stop: object
    procs: list = field(default_factory=list)


def _popen(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, **kw)


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def start_mosquitto(tmp: Path) -> Target:
    d = tmp / "mosquitto"
    d.mkdir()
    clear, tls = free_port(), free_port()
    (d / "mosquitto.conf").write_text(
        "user root\nallow_anonymous true\npersistence false\nlog_type error\n"
        f"listener {clear} 127.0.0.1\n"
        f"listener {tls} 127.0.0.1\ncafile {tmp / 'ca.pem'}\n"
        f"certfile {tmp / 'server.pem'}\nkeyfile {tmp / 'server.key'}\n"
    )
    proc = _popen(["mosquitto", "-c", str(d / "mosquitto.conf")], d / "log")
    for port in (clear, tls):
        wait_port(port, "mosquitto", proc, d / "log", 30)
    return Target("mosquitto", proc.pid, {"mqtt": clear, "mqtt+tls": tls},
                  lambda: _terminate(proc))  # fmt: skip


def _stop_beam(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, 15)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass


def _beam_pid(marker: str) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        if b"beam" in cmdline.split(b"\0")[0] and marker.encode() in cmdline:
            return int(entry)
    return None


def start_rabbitmq(tmp: Path) -> Target:
    d = tmp / "rabbitmq"
    d.mkdir()
    ports = {k: free_port() for k in ("amqp", "amqp+tls", "mqtt", "mqtt+tls", "dist")}
    (d / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{ports['amqp']}\n"
        f"listeners.ssl.default = 127.0.0.1:{ports['amqp+tls']}\n"
        f"mqtt.listeners.tcp.default = 127.0.0.1:{ports['mqtt']}\n"
        f"mqtt.listeners.ssl.default = 127.0.0.1:{ports['mqtt+tls']}\n"
        f"ssl_options.cacertfile = {tmp / 'ca.pem'}\n"
        f"ssl_options.certfile = {tmp / 'server.pem'}\n"
        f"ssl_options.keyfile = {tmp / 'server.key'}\n"
        "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n"
        "management_agent.disable_metrics_collector = true\n"
    )
    (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
    (d / "rabbitmq-env.conf").write_text("")
    node = f"polymqtls{os.getpid()}@localhost"
    env = dict(
        os.environ,
        HOME=str(d),
        RABBITMQ_NODENAME=node,
        RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
        RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
        RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
        RABBITMQ_LOG_BASE=str(d / "log"),
        RABBITMQ_PID_FILE=str(d / "pid"),
        RABBITMQ_DIST_PORT=str(ports.pop("dist")),
    )
    proc = _popen(["/usr/lib/rabbitmq/bin/rabbitmq-server"], d / "out.log", env=env, cwd=d)
    # the Erlang VM runs beside the start script; its command line names our HOME
    pid = None
    try:
        for key in ("amqp", "amqp+tls", "mqtt", "mqtt+tls"):
            wait_port(ports[key], "rabbitmq", proc, d / "out.log", 120)
        pid = _beam_pid(str(d))
        if pid is None:
            raise RuntimeError(f"no beam process of node {node} found")
    except BaseException:
        _stop_beam(_beam_pid(str(d)))
        _terminate(proc)
        raise

    def stop() -> None:
        subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", node, "stop"], env=env,
                       capture_output=True, timeout=60)  # fmt: skip
        _stop_beam(pid)
        _terminate(proc)

    return Target("rabbitmq", pid, ports, stop)


def start_activemq(tmp: Path) -> Target:
    d = tmp / "activemq"
    (d / "conf").mkdir(parents=True)
    (d / "lib").mkdir()
    for jar in ("mqtt-client", "hawtdispatch", "hawtdispatch-transport"):
        shutil.copy(Path("/usr/share/java") / f"{jar}.jar", d / "lib")  # MQTT connector's codec
    ports = {k: free_port() for k in ("openwire", "openwire+tls", "mqtt", "mqtt+tls")}
    uris = {"openwire": "tcp", "openwire+tls": "ssl", "mqtt": "mqtt", "mqtt+tls": "mqtt+ssl"}
    connectors = "".join(
        f'<transportConnector name="{k}" uri="{uris[k]}://127.0.0.1:{p}"/>'
        for k, p in ports.items()
    )
    (d / "conf" / "activemq.xml").write_text(f"""<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans
  http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="tlsbench"
          persistent="false" dataDirectory="{d / 'data'}">
    <sslContext><sslContext keyStore="file:{tmp / 'server.p12'}" keyStorePassword="{STOREPASS}"
      keyStoreType="pkcs12"/></sslContext>
    <transportConnectors>{connectors}</transportConnectors>
  </broker>
</beans>
""")  # fmt: skip
    proc = _popen(
        ["java", "-Xms512M", "-Xmx512M", f"-Dactivemq.base={d}",
         "-Dactivemq.home=/usr/share/activemq", f"-Dactivemq.conf={d / 'conf'}",
         f"-Dactivemq.data={d / 'data'}", "-jar", "/usr/share/activemq/bin/activemq.jar",
         "start", f"xbean:file:{d / 'conf' / 'activemq.xml'}"],
        d / "out.log",
    )  # fmt: skip
    for port in ports.values():
        wait_port(port, "activemq", proc, d / "out.log", 120)
    return Target("activemq", proc.pid, ports, lambda: _terminate(proc))


PEERS = {
    "mosquitto": (start_mosquitto, lambda: shutil.which("mosquitto")),
    "rabbitmq": (start_rabbitmq, lambda: os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server")),
    "activemq": (start_activemq, lambda: os.path.exists("/usr/share/activemq/bin/activemq.jar")
                 and os.path.exists("/usr/share/java/mqtt-client.jar")),
}  # fmt: skip


def measure(target: Target, workload: str, mode: str, args, tmp: Path, classes) -> tuple:
    port = target.ports[workload if mode == "clear" else f"{workload}+tls"]
    tls = mode == "tls"
    ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem")) if tls else None
    cpu0 = cpu_seconds(target.pid)
    if workload == "mqtt":
        rate = asyncio.run(mqtt_run(port, ctx, args.count, args.size))
    elif workload == "amqp":
        rate = amqp_run(port, ctx, args.count, args.size)
    elif workload == "kafka":
        rate = kafka_run(port, tmp / "ca.pem" if tls else None, args.count, args.size)
    else:
        url = f"{'ssl' if tls else 'tcp'}://localhost:{port}"
        return jms_run(url, args.count, args.size, classes, target.pid)
    return rate, (cpu_seconds(target.pid) - cpu0) * 10000 / args.count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20000, help="messages per workload and run")
    ap.add_argument("--size", type=int, default=256, help="message body bytes")
    ap.add_argument("--peers", default="all",
                    help="comma-separated of mosquitto,rabbitmq,activemq; 'all' (those "
                         "installed) or 'none'")  # fmt: skip
    args = ap.parse_args()
    wanted = list(PEERS) if args.peers == "all" else [] if args.peers == "none" else [
        p.strip() for p in args.peers.split(",") if p.strip()
    ]  # fmt: skip
    workloads = {
        "polymq": ["mqtt", "amqp", "openwire", "kafka"],
        "mosquitto": ["mqtt"],
        "rabbitmq": ["mqtt", "amqp"],
        "activemq": ["mqtt", "openwire"],
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="polymq-tls-bench-") as name:
        tmp = Path(name)
        make_pki(tmp)
        classes = None
        if (tmp / "trust.p12").exists() and shutil.which("javac"):
            sys.path.insert(0, str(ROOT / "bench" / "jms_bench"))
            from common import compile_bench

            classes = compile_bench(tmp / "jms")
            # the JMS client's trust store (and hostname check against the test certificate)
            os.environ["JAVA_TOOL_OPTIONS"] = (
                f"-Djavax.net.ssl.trustStore={tmp / 'trust.p12'} "
                f"-Djavax.net.ssl.trustStorePassword={STOREPASS} "
                "-Djavax.net.ssl.trustStoreType=PKCS12"
            )
        starters: list = [("polymq", None)]
        for peer in wanted:
            start, installed = PEERS[peer]
            if installed():
                starters.append((peer, start))
            else:
                print(f"note: {peer} is not installed; left out", file=sys.stderr)
        for broker, start in starters:
            if start is None:
                proc, ports, _ = start_broker(tmp)
                target = Target("polymq", proc.pid, ports, lambda p=proc: _terminate(p))
            else:
                try:
                    target = start(tmp)
                except (RuntimeError, OSError) as e:
                    print(f"note: {broker} did not start ({e}); left out", file=sys.stderr)
                    continue
            try:
                for workload in workloads[broker]:
                    if workload == "openwire" and classes is None:
                        continue
                    for mode in ("clear", "tls"):
                        print(f"{broker} {workload} {mode} ...", file=sys.stderr)
                        rate, cpu = measure(target, workload, mode, args, tmp, classes)
                        rows.append((workload, broker, mode, rate, cpu))
            finally:
                target.stop()
    print(f"{args.count} messages of {args.size} bytes per run; broker CPU (user + system) "
          "seconds per 10k messages")  # fmt: skip
    print(f"{'workload':<10}{'broker':<11}{'mode':<7}{'msgs/s':>10}{'cpu s/10k':>11}"
          f"{'tls/clear':>11}")  # fmt: skip
    for workload, broker, mode, rate, cpu in sorted(rows, key=lambda r: (r[0], r[1] != "polymq")):
        ratio = ""
        if mode == "tls":
            clear = [r for w, b, m, r, _ in rows if (w, b, m) == (workload, broker, "clear")]
            ratio = f"{rate / clear[0]:.2f}" if clear else ""
        print(f"{workload:<10}{broker:<11}{mode:<7}{rate:>10.0f}{cpu:>11.2f}{ratio:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
