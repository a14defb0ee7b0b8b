"""`polymq compare`: every protocol against an in-test polymq through the real CLI; the JSON,
the HTML report (numbers equal to the JSON) and the table; correctness bookkeeping; bad URLs."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from polymq.plugins.compare import report
from polymq.plugins.compare.common import Tally, now_ns
from polymq.plugins.compare.workload import HEADER, CompareError, make_workload, parse_target

PROTOS = ["mqtt", "amqp", "kafka", "openwire"]


def compare(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polymq.core", "compare", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def urls(broker) -> list[str]:
    p = broker.port
    return [
        "--url",
        f"mqtt=mqtt://127.0.0.1:{p('mqtt')}",
        "--url",
        f"amqp=amqp://guest:guest@127.0.0.1:{p('amqp')}/",
        "--url",
        f"kafka=127.0.0.1:{p('kafka')}",
        "--url",
        f"openwire=tcp://127.0.0.1:{p('openwire')}",
    ]


@pytest.fixture
def broker(broker_factory):
    """polymq with all four adapters on free ports (tests/conftest.py)."""
    return broker_factory(adapters=PROTOS, log_level="info")


def html_cells(html: str) -> dict[tuple[int, str], str]:
    return {
        (int(r), k): v
        for r, k, v in re.findall(r'<td data-run="(\d+)" data-key="([\w.]+)">([^<]*)</td>', html)
    }


def check_report(doc: dict, html: str) -> None:
    """Every number the HTML shows is the JSON's number; the embedded data is the JSON."""
    cells = html_cells(html)
    assert len(cells) == len(doc["results"]) * len(report.COLUMNS)
    for i, r in enumerate(doc["results"]):
        for path, _name, pattern in report.COLUMNS:
            value = report.get(r, path)
            shown = cells[(i, path)]
            if value is None:
                assert shown == "-", (path, shown)
            else:
                assert float(shown.replace(",", "")) == pytest.approx(
                    value, abs=10 ** -_decimals(pattern) / 2 + 1e-9
                ), (r["protocol"], path)
        bar = re.search(rf'<rect [^>]*data-run="{i}" data-msgs-per-s="([\d.e+-]+)"', html)
        assert float(bar.group(1)) == (r["throughput"]["msgs_per_s"] or 0)
        points = re.findall(
            rf'<circle [^>]*data-run="{i}" data-percentile="([\d.]+)" '
            r'data-ms="([\d.e+-]+)"',
            html,
        )
        assert [[float(p), float(v)] for p, v in points] == (
            r["latency"]["curve"] if r["latency"] else []
        )
    embedded = re.search(
        r'<script type="application/json" id="polymq-compare-data">(.*?)'
        r"</script>",
        html,
        re.S,
    ).group(1)
    assert json.loads(embedded.replace("<\\/", "</")) == doc
    # self-contained: no external scripts, styles, images or fonts
    assert not re.search(r"\b(src|href)\s*=", html)
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html


def _decimals(pattern: str) -> int:
    m = re.search(r"\.(\d)f", pattern)
    return int(m.group(1)) if m else 0


def test_all_protocols_report(broker, tmp_path):
    out = tmp_path / "r.json"
    res = compare("--preset", "smoke", *urls(broker), "--json", str(out), "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    # the table
    for proto in PROTOS:
        assert re.search(rf"│ [^│]+│ {proto}\s+│", res.stdout), res.stdout
    assert "p99.9 ms" in res.stdout
    doc = json.loads(out.read_text())
    html = (tmp_path / "r.html").read_text()
    assert [r["protocol"] for r in doc["results"]] == PROTOS
    assert doc["workload"]["count"] == 500
    for r in doc["results"]:
        c = r["counts"]
        assert r["ok"], (r["protocol"], r["failures"])
        assert c["sent"] == c["confirmed"] == c["expected"] == c["unique"] == 500, r
        assert c["lost"] == c["duplicates"] == c["out_of_order"] == 0
        assert r["throughput"]["msgs_per_s"] > 0
        lat = r["latency"]
        assert lat["count"] == 500
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["p99_9_ms"]
        w = r["wire"]
        # at least the body went up once and down once per message
        assert w["producer_up_per_msg"] >= 128 and w["consumer_down_per_msg"] >= 128
        assert r["broker_cpu"]["pid"] == broker.pid
        assert r["broker_cpu_s_per_10k"] is not None
    check_report(doc, html)


def test_queue_pattern_persistent(broker, tmp_path):
    """Competing consumers, two producers, persistent with confirms (MQTT 5 shared
    subscription, AMQP durable queue, Kafka partitions, OpenWire queue)."""
    out = tmp_path / "q.json"
    res = compare(
        "--preset",
        "queue",
        "--count",
        "300",
        "--size",
        "200",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--guarantee",
        "persistent",
        *urls(broker),
        "--json",
        str(out),
        "--html",
        str(tmp_path / "q.html"),
        "--no-progress",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert doc["workload"]["pattern"] == "queue" and doc["workload"]["mqtt_version"] == 5
    for r in doc["results"]:
        assert r["ok"], (r["protocol"], r["failures"])
        assert r["counts"]["sent"] == r["counts"]["unique"] == 600
    check_report(doc, (tmp_path / "q.html").read_text())


def test_fanout_at_most_once_rate(broker, tmp_path):
    """Fan-out to 3 subscribers at a fixed rate, at-most-once, MQTT and AMQP only."""
    p = broker.port
    out = tmp_path / "f.json"
    res = compare(
        "--preset",
        "fanout",
        "--consumers",
        "3",
        "--count",
        "200",
        "--rate",
        "400",
        "--guarantee",
        "at-most-once",
        "--url",
        f"mqtt=mqtt://127.0.0.1:{p('mqtt')}",
        "--url",
        f"amqp@polymq-amqp=amqp://127.0.0.1:{p('amqp')}",
        "--json",
        str(out),
        "--no-progress",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert [r["label"] for r in doc["results"]] == [f"127.0.0.1:{p('mqtt')}", "polymq-amqp"]
    for r in doc["results"]:
        assert r["counts"]["sent"] == 200 and r["counts"]["unique"] == 600, r
        # 200 messages at 400/s take about half a second
        assert r["throughput"]["send_msgs_per_s"] < 600
    check_report(doc, (tmp_path / "f.html").read_text())


def test_wrong_broker_is_a_failed_run(broker, tmp_path):
    """A reachable port that speaks another protocol: that run fails with a clear reason, the
    others still run, the reports are written and the exit code is 1 (no traceback)."""
    p = broker.port
    out = tmp_path / "w.json"
    md = tmp_path / "w.md"
    res = compare(
        "--preset",
        "smoke",
        "--count",
        "50",
        "--url",
        f"amqp@not-amqp=amqp://127.0.0.1:{p('mqtt')}/",
        "--url",
        f"mqtt=mqtt://127.0.0.1:{p('mqtt')}",
        "--json",
        str(out),
        "--markdown",
        str(md),
        "--no-progress",
        timeout=120,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    doc = json.loads(out.read_text())
    bad, good = doc["results"]
    assert not bad["ok"] and "amqp" in bad["failures"][0] and "closed" in bad["failures"][0]
    assert good["ok"] and good["counts"]["unique"] == 50
    assert "not-amqp amqp" in res.stdout.replace("  ", " ")
    table = md.read_text().splitlines()
    assert table[0].startswith("| target | protocol | msgs/s |")
    assert table[2].startswith("| not-amqp | amqp |") and table[2].endswith("FAIL 0/0 |")
    assert "| - | - |" in table[2]  # no throughput for a run that never started
    check_report(doc, (tmp_path / "w.html").read_text())


def test_progress_bar(broker, tmp_path):
    res = compare(
        "--preset",
        "smoke",
        "--count",
        "100",
        "--protocols",
        "mqtt",
        "--url",
        f"mqtt=mqtt://127.0.0.1:{broker.port('mqtt')}",
        "--json",
        str(tmp_path / "p.json"),
        "--progress",
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mqtt @ 127.0.0.1" in res.stdout and "delivered" in res.stdout  # the bar's lines
    assert json.loads((tmp_path / "p.json").read_text())["results"][0]["counts"]["unique"] == 100


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mqtt=mqtt://127.0.0.1:{port}", "not reachable: Connection refused"),
        ("amqp=http://127.0.0.1:5672/", "bad scheme 'http'"),
        ("kafka=kafka://127.0.0.1:notaport", "Port could not be cast"),
        ("nats=tcp://127.0.0.1:4222", "unknown protocol 'nats'"),
        ("openwire", "expected PROTOCOL=URL"),
    ],
)
def test_bad_url(spec, message, tmp_path):
    res = compare(
        "--url", spec.format(port=_closed_port()), "--json", str(tmp_path / "x.json"), timeout=60
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polymq compare: error: ")
    assert message in lines[0]
    assert not (tmp_path / "x.json").exists()


def test_tally_counts_duplicates_and_order():
    t = Tally()
    body = bytearray(32)
    for seq in (0, 1, 3, 2, 3, 4):
        HEADER.pack_into(body, 0, 7, seq, now_ns())
        t.add(bytes(body), now_ns())
    t.add(b"short", now_ns())
    r = t.result()
    assert (r["total"], r["unique"], r["duplicates"], r["out_of_order"], r["malformed"]) == (
        7,
        5,
        1,
        1,
        1,
    )


def test_result_reports_loss_and_disorder():
    from polymq.plugins.compare.brokercpu import BrokerCpu
    from polymq.plugins.compare.common import merge_tallies
    from polymq.plugins.compare.runner import build_result

    wl = make_workload("smoke", count=3, consumers=2)
    t = Tally()
    body = bytearray(128)
    for seq in (1, 0):  # consumer 1 got two of three, out of order; consumer 2 got nothing
        HEADER.pack_into(body, 0, 0, seq, now_ns() - 1000)
        t.add(bytes(body), now_ns())
    cons = merge_tallies([t]) | {"bytes_up": 10, "bytes_down": 300, "cpu_s": 0.0, "errors": []}
    prod = {
        "sent": 3,
        "confirmed": 3,
        "first_ns": now_ns() - 10**6,
        "last_ns": now_ns(),
        "bytes_up": 400,
        "bytes_down": 20,
        "cpu_s": 0.0,
        "errors": [],
    }
    target = parse_target("mqtt=mqtt://127.0.0.1:1883")
    r = build_result(
        target,
        wl,
        "x",
        {"producers": ("ok", prod), "consumers": ("ok", cons)},
        BrokerCpu(None, "none"),
        1.0,
    )
    assert not r["ok"]
    assert "4 of 6 deliveries missing" in r["failures"]
    assert "1 deliveries out of order" in r["failures"]
    assert r["wire"]["producer_up_per_msg"] == pytest.approx(400 / 3, abs=0.1)


def test_workload_presets_and_flags():
    wl = make_workload("latency", rate=50.0)
    assert wl.count is None and wl.duration == 5.0 and wl.rate == 50.0
    wl = make_workload("latency", count=100)
    assert wl.count == 100 and wl.duration is None
    assert make_workload("queue").mqtt_version == 5
    with pytest.raises(CompareError):
        make_workload("throughput", size=8)
    with pytest.raises(CompareError):
        make_workload("nope")


def test_default_preset_is_smoke_and_repeat_shows_the_spread(broker, tmp_path):
    out = tmp_path / "rep.json"
    res = compare(
        "--repeat",
        "3",
        "--url",
        f"mqtt=mqtt://127.0.0.1:{broker.port('mqtt')}",
        "--json",
        str(out),
        "--no-progress",
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert doc["workload"]["name"] == "smoke" and doc["workload"]["count"] == 500
    (r,) = doc["results"]
    rep = r["repeats"]
    assert rep["n"] == 3 and len(set(rep["run_ids"])) == 3
    rates = rep["summary"]["throughput.msgs_per_s"]
    assert len(rates["values"]) == 3
    assert rates["min"] <= rates["median"] <= rates["max"]
    # the run shown is one of the three, the one closest to the medians
    assert r["run_id"] in rep["run_ids"] and r["throughput"]["msgs_per_s"] in rates["values"]
    p50 = rep["summary"]["latency.p50_ms"]
    assert p50["min"] <= r["latency"]["p50_ms"] <= p50["max"]
    assert "3 runs per target" in res.stdout
    assert f"{rates['median']:,.0f}" in res.stdout and f"{rates['max']:,.0f}" in res.stdout
    html = (tmp_path / "rep.html").read_text()
    assert "Repeated runs" in html
    check_report(doc, html)


def run_on_terminal(args: list[str], columns: int, timeout: float = 180) -> tuple[int, str]:
    """Run ``polymq compare`` with its output on a pseudo-terminal ``columns`` wide."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "polymq.core", "compare", *args],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_narrow_terminal_keeps_numbers_whole(broker, tmp_path):
    out = tmp_path / "n.json"
    p = broker.port
    code, text = run_on_terminal(
        [
            "--url",
            f"mqtt=mqtt://127.0.0.1:{p('mqtt')}",
            "--url",
            f"amqp@a-long-label-for-amqp=amqp://127.0.0.1:{p('amqp')}/",
            "--url",
            f"mqtt@second-mqtt=mqtt://127.0.0.1:{p('mqtt')}",
            "--json",
            str(out),
            "--no-progress",
        ],
        columns=60,
    )
    assert code == 0, text
    doc = json.loads(out.read_text())
    table = text[text.index("polymq compare - ") : text.index("JSON: ")]
    assert max(len(line) for line in table.splitlines()) <= 60, table
    for r in doc["results"]:
        for path, _name, pattern in report.COLUMNS:
            shown = report.fmt(report.get(r, path), pattern)
            if shown != "-":
                assert shown in table, (path, shown, table)
    assert "a-long-label-for-amqp" in table


def test_report_chart_and_workload_line(broker, tmp_path):
    out = tmp_path / "c.json"
    p = broker.port
    res = compare(
        "--count",
        "50",
        "--url",
        f"mqtt=mqtt://127.0.0.1:{p('mqtt')}",
        "--url",
        f"amqp=amqp://127.0.0.1:{p('amqp')}/",
        "--json",
        str(out),
        "--no-progress",
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    html = (tmp_path / "c.html").read_text()
    for r in doc["results"]:
        pcts = [pct for pct, _v in r["latency"]["curve"]]
        # 50 samples measure percentiles up to 98; beyond that only the maximum is known
        assert pcts[-1] == 100 and pcts[-2] <= 98 and 99 not in pcts
    assert re.search(r'class="axis">p50</text>', html)
    # the two runs differ by line style and marker shape, not only by colour
    lines = re.findall(r"<polyline [^>]*>", html)
    dashes = {
        (re.search(r'stroke-dasharray="([^"]*)"', line) or re.match("", "")).group(0)
        for line in lines
    }
    assert len(lines) == 2 and len(dashes) == 2, lines
    assert "<circle cx=" in html and "<rect x=" in html and 'class="marker"' in html
    assert "=None" not in html and "duration=" not in html
    assert "smoke: 1 producer -&gt; 1 consumer, fanout, 50 messages of 128 B per producer" in html


def test_unexpected_driver_error_is_one_line_with_the_traceback_apart(tmp_path):
    import multiprocessing
    import queue

    from polymq.plugins.compare.brokercpu import BrokerCpu
    from polymq.plugins.compare.runner import build_result
    from polymq.plugins.compare.side import Shared, side_main

    target = parse_target("mqtt=mqtt://127.0.0.1:1883")
    target.protocol = "nosuchdriver"  # its driver module does not exist: an unexpected error
    results: queue.Queue = queue.Queue()
    side_main(
        "consumers",
        target,
        make_workload("smoke"),
        "x",
        Shared(multiprocessing.get_context("fork")),
        results,
    )
    items = [results.get_nowait() for _ in range(results.qsize())]
    (tb,) = [value for _side, status, value in items if status == "traceback"]
    (error,) = [value for _side, status, value in items if status == "error"]
    assert "\n" not in error and "ModuleNotFoundError" in error
    assert tb.startswith("Traceback")
    r = build_result(
        target,
        make_workload("smoke"),
        "x",
        {"consumers": ("error", error), "producers": ("skipped", None)},
        BrokerCpu(None, "none"),
        1.0,
        [f"consumers:\n{tb}"],
    )
    assert r["failures"] == [error] and r["tracebacks"]
    html = report.render_html(report.document(make_workload("smoke").as_dict(), [r], ["x"]))
    assert re.search(r'<li class="fail">[^<\n]*ModuleNotFoundError[^<\n]*</li>', html)
    assert "<details><summary>" in html and "<pre>consumers:\nTraceback" in html


def test_kafka_without_its_client_is_one_line(tmp_path):
    fake = tmp_path / "confluent_kafka"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('librdkafka missing')\n")
    res = subprocess.run(
        [sys.executable, "-m", "polymq.core", "compare", "--url", "kafka=127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "kafka runs need confluent-kafka" in lines[0], res.stderr
