"""Persistent messaging on the postgres store vs the sqlite store vs ActiveMQ 5.17 over JDBC.

    .venv/bin/python bench/pg/pg_bench.py [--seconds 8] [--records 50000] [--jms-scale 1]
        [--only amqp,kafka,openwire] [--no-activemq] [--pg-dsn postgresql://...]

Starts a private PostgreSQL (initdb + pg_ctl in a temporary directory, fsync on, default
settings; or uses ``--pg-dsn``, where it creates one database per run), then for each workload
a fresh polymq broker subprocess on the sqlite store and one on the postgres store, and, for
OpenWire, ActiveMQ 5.17 (Debian ``activemq``) with its JDBC persistence adapter on the same
PostgreSQL (bench/pg/activemq-jdbc.xml). Workloads:

  amqp      bench/amqp_bench.py "persistent": 1 publisher with confirms (window 1000), 1
            consumer with manual acks (prefetch 200), 100-byte bodies, --seconds long
  kafka     confluent-kafka producer, acks=all, --records 1 KB records (bench/kafka_bench.py)
  openwire  bench/jms_bench JmsBench: persistent queue, synchronous sends, 1p/1c and 16p/2c

For every run it prints the message rate, the commits the store made (polymq: the count its
store logs at close; ActiveMQ: ``xact_commit`` of its database in pg_stat_database, which counts
read-only transactions too), commits per second, messages per commit and, on PostgreSQL, the
server's WAL syncs (``pg_stat_wal.wal_sync``: the durable flushes, PostgreSQL 14+) and messages
per WAL sync. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "jms_bench"))

import amqp_bench  # noqa: E402
import kafka_bench  # noqa: E402
from brokerproc import BrokerProcess  # noqa: E402
from common import compile_bench, run_bench  # noqa: E402
from pgserver import PASSWORD, USER, PgServer, free_port, pg_bindir  # noqa: E402

ACTIVEMQ_HOME = Path("/usr/share/activemq")
ACTIVEMQ_JARS = ("postgresql.jar", "commons-dbcp2.jar", "commons-pool2.jar")
# (label, producers, consumers, messages per producer, body bytes)
JMS_RUNS = [
    ("persistent queue 1p/1c", 1, 1, 2000, 256),
    ("persistent queue 16p/2c", 16, 2, 250, 256),
]
_COMMITS = re.compile(r"store .* closed \((\d+) commits")


class Postgres:
    """The PostgreSQL every postgres-backed run uses: private (PgServer) or given by DSN."""

    def __init__(self, dsn: str | None) -> None:
        self.server = None
        self.base_dsn = dsn
        if dsn is None:
            bindir = pg_bindir()
            if bindir is None:
                sys.exit("PostgreSQL not installed (Debian package postgresql)")
            self.root = tempfile.mkdtemp(prefix="polymq-pg-bench-")
            self.server = PgServer(bindir, self.root).start()
            self.base_dsn = self.server.dsn()

    def sql(self, query: str, params=None, dbname: str | None = None) -> list:
        import psycopg
        from psycopg.conninfo import make_conninfo

        dsn = self.base_dsn if dbname is None else make_conninfo(self.base_dsn, dbname=dbname)
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def new_database(self, prefix: str) -> tuple[str, str]:
        from psycopg.conninfo import make_conninfo

        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name, make_conninfo(self.base_dsn, dbname=name)

    def counters(self, dbname: str) -> tuple[int, int]:
        """(transactions committed in ``dbname``, WAL syncs of the whole server)."""
        time.sleep(1.2)  # backends report their statistics at most once a second
        self.sql("SELECT pg_stat_clear_snapshot()")
        xacts = self.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [dbname])
        return xacts[0][0], self.sql("SELECT wal_sync FROM pg_stat_wal")[0][0]

    def version(self) -> str:
        return self.sql("SHOW server_version")[0][0]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            shutil.rmtree(self.root, ignore_errors=True)


def dbname_of(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(dsn)["dbname"]


def start_polymq(tmp: Path, backend: str, adapters: list[str], pg: Postgres) -> BrokerProcess:
    settings = {}
    if backend == "postgres":
        _, dsn = pg.new_database("polymq")
        settings["store.dsn"] = dsn
    broker = BrokerProcess(
        tmp / f"{backend}-{uuid.uuid4().hex[:6]}", adapters=adapters, store=backend,
        settings=settings, log_level="info",
    )  # fmt: skip
    return broker.start()


def stop_polymq(broker: BrokerProcess) -> int:
    """Stop the broker; return the commits its store logged at close."""
    broker.stop()
    m = _COMMITS.search(broker.log_text())
    if not m:
        raise RuntimeError(f"no store close line in the broker log:\n{broker.log_tail()}")
    return int(m.group(1))


# ------------------------------------------------------------------ workloads


def amqp_workload(host: str, port: int, args) -> tuple[float, int, float]:
    """(messages/s, messages, seconds): confirmed persistent publishes, consumed with acks."""
    opts = types.SimpleNamespace(
        seconds=args.seconds, publishers=1, consumers=1, size=100, prefetch=200, ack_every=1,
        window=1000,
    )  # fmt: skip
    r = amqp_bench.run_scenario("persistent", host, port, opts)
    if r["errors"]:
        print(f"  amqp errors: {r['errors']}", file=sys.stderr)
    n = int(r["confirmed/s"] * args.seconds)
    return r["confirmed/s"], n, args.seconds


def kafka_workload(host: str, port: int, args) -> tuple[float, int, float]:
    bootstrap = f"{host}:{port}"
    topic = f"pgbench-{uuid.uuid4().hex[:6]}"
    kafka_bench.create_topic(bootstrap, topic, 1)
    _, rate = kafka_bench.bench_produce(bootstrap, topic, args.records, 1024, "all")
    return rate, args.records, args.records / rate


def jms_workload(url: str, classes: Path, run: tuple, args, pid=None) -> tuple[float, int, float]:
    _, p, c, n, size = run
    n = max(50, int(n * args.jms_scale))
    r = run_bench(classes, url, "queue", True, p, c, n, size, 0, pid)
    return r["send_rate"], int(r["sent"]), r["sent"] / r["send_rate"]


# ------------------------------------------------------------------ ActiveMQ over JDBC


class ActiveMQJdbc:
    """ActiveMQ 5.17 (Debian) with the JDBC persistence adapter on a fresh database."""

    def __init__(self, tmp: Path, pg: Postgres) -> None:
        self.pg = pg
        self.base = tmp / f"activemq-{uuid.uuid4().hex[:6]}"
        self.dbname, dsn = pg.new_database("activemq")
        self.port = free_port()
        for d in ("conf", "data", "lib"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        for jar in ACTIVEMQ_JARS:
            src = Path("/usr/share/java") / jar
            if not src.exists():
                raise RuntimeError(f"{src} missing (Debian libpostgresql-jdbc-java etc.)")
            os.symlink(src, self.base / "lib" / jar)
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
        host = info.get("host", "127.0.0.1")
        url = f"jdbc:postgresql://{host}:{info.get('port', 5432)}/{self.dbname}"
        xml = (Path(__file__).parent / "activemq-jdbc.xml").read_text()
        values = {
            "jdbc_url": url, "user": info.get("user", USER),
            "password": info.get("password", PASSWORD), "data_dir": self.base / "data",
            "port": self.port,
        }  # fmt: skip
        for key, value in values.items():
            xml = xml.replace("{" + key + "}", str(value))
        (self.base / "conf" / "activemq.xml").write_text(xml)
        log4j = Path("/etc/activemq/instances-available/main/log4j2.properties")
        if log4j.exists():
            shutil.copy(log4j, self.base / "conf")
        self.log = open(self.base / "out.log", "wb")
        self.proc = subprocess.Popen(
            ["java", "-Xms512M", "-Xmx512M", f"-Dactivemq.base={self.base}",
             f"-Dactivemq.home={ACTIVEMQ_HOME}", f"-Dactivemq.conf={self.base / 'conf'}",
             f"-Dactivemq.data={self.base / 'data'}", "-jar",
             str(ACTIVEMQ_HOME / "bin" / "activemq.jar"), "start",
             f"xbean:file:{self.base / 'conf' / 'activemq.xml'}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        import socket

        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = (self.base / "out.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"ActiveMQ did not start:\n{tail}") from None
                time.sleep(0.5)
        self.url = f"tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------ main


def row(
    workload: str, target: str, rate: float, n: int, secs: float, commits: int, syncs: int | None
) -> list:
    """A result row; ``syncs``: WAL syncs of the PostgreSQL server (None: not on PostgreSQL)."""
    return [
        workload, target, f"{rate:,.0f}", f"{n:,}", f"{commits:,}",
        f"{commits / secs:,.0f}" if secs > 0 else "-", f"{n / commits:,.1f}" if commits else "-",
        "-" if syncs is None else f"{syncs:,}", "-" if not syncs else f"{n / syncs:,.1f}",
    ]  # fmt: skip


def polymq_case(tmp: Path, pg: Postgres, backend: str, adapter: str, work):
    """A run on a fresh polymq broker: (rate, messages, seconds, commits)."""

    def run() -> tuple:
        b = start_polymq(tmp, backend, [adapter], pg)
        dbname = dbname_of(b.settings["store.dsn"]) if backend == "postgres" else None
        before = pg.counters(dbname)[1] if dbname else None
        try:
            rate, n, secs = work(b)
        except BaseException:
            b.stop()
            raise
        commits = stop_polymq(b)
        syncs = pg.counters(dbname)[1] - before if dbname else None
        return rate, n, secs, commits, syncs

    return run


def activemq_case(tmp: Path, pg: Postgres, classes: Path, jms_run: tuple, args):
    """A run on a fresh ActiveMQ with a fresh JDBC database: (rate, messages, seconds, commits)."""

    def run() -> tuple:
        amq = ActiveMQJdbc(tmp, pg)
        try:
            xacts, syncs = pg.counters(amq.dbname)
            rate, n, secs = jms_workload(amq.url, classes, jms_run, args, amq.proc.pid)
            xacts2, syncs2 = pg.counters(amq.dbname)
            return rate, n, secs, xacts2 - xacts, syncs2 - syncs
        finally:
            amq.stop()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="AMQP run length")
    ap.add_argument("--records", type=int, default=50000, help="Kafka records (1 KB)")
    ap.add_argument("--jms-scale", type=float, default=1.0, help="multiply the JMS message counts")
    ap.add_argument("--only", default="amqp,kafka,openwire")
    ap.add_argument("--no-activemq", action="store_true")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per workload and broker, interleaved; the median is reported",
    )
    ap.add_argument("--pg-dsn", help="a superuser DSN of the PostgreSQL to use (default: private)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    pg = Postgres(args.pg_dsn)
    print(f"PostgreSQL {pg.version()}; {os.cpu_count()} CPUs", flush=True)
    rows: list[list] = []
    try:
        classes = compile_bench(tmp) if "openwire" in only else None
        # workload -> [(target, run)]
        cases: dict[str, list] = {}
        for backend in ("sqlite", "postgres"):
            target = f"polymq {backend}"
            if "amqp" in only:
                cases.setdefault("AMQP persistent, confirms + manual acks", []).append(
                    (target, polymq_case(tmp, pg, backend, "amqp",
                                         lambda b: amqp_workload(b.host, b.port("amqp"), args)))
                )  # fmt: skip
            if "kafka" in only:
                cases.setdefault("Kafka produce acks=all, 1 KB", []).append(
                    (target, polymq_case(tmp, pg, backend, "kafka",
                                         lambda b: kafka_workload(b.host, b.port("kafka"), args)))
                )  # fmt: skip
            if "openwire" in only:
                for jr in JMS_RUNS:

                    def work(b, jr=jr):
                        url = f"tcp://{b.host}:{b.port('openwire')}"
                        return jms_workload(url, classes, jr, args, b.pid)

                    cases.setdefault(f"OpenWire {jr[0]}", []).append(
                        (target, polymq_case(tmp, pg, backend, "openwire", work))
                    )
        if "openwire" in only and not args.no_activemq:
            for jr in JMS_RUNS:
                cases[f"OpenWire {jr[0]}"].append(
                    ("ActiveMQ 5.17 JDBC", activemq_case(tmp, pg, classes, jr, args))
                )
        for workload, targets in cases.items():
            results: dict[str, list] = {t: [] for t, _ in targets}
            for rep in range(args.repeat):
                k = rep % len(targets)
                for target, run in targets[k:] + targets[:k]:
                    try:
                        r = run()
                    except RuntimeError as e:
                        print(f"{workload} | {target} | error: {str(e)[-500:]}", file=sys.stderr)
                        continue
                    results[target].append(r)
                    print(" | ".join(row(workload, target, *r)), flush=True)
            for target, _ in targets:
                rs = sorted(results[target], key=lambda r: r[0])
                if rs:
                    rows.append(row(workload, target, *rs[(len(rs) - 1) // 2]))
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmedian of {args.repeat} run(s) by rate")
    print(
        "| workload | broker | msg/s | messages | commits | commits/s | msg/commit"
        " | WAL syncs | msg/WAL sync |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
