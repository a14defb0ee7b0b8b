"""Outputs of ``polymq compare``: the rich terminal table, the JSON result file and a
self-contained HTML report (inline SVG charts, no scripts, no network)."""

from __future__ import annotations

import html
import json
import math
import os
import platform
import time

COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
# runs are told apart by line style and marker shape too, not by colour alone
DASHES = ["", "6 3", "2 3", "8 3 2 3", "12 4", "4 2 4 6"]
MARKERS = ["circle", "square", "triangle", "diamond", "cross", "triangle-down"]

# (json path, column title, HTML/terminal format) of the summary columns
COLUMNS = [
    ("throughput.msgs_per_s", "msgs/s", "{:,.0f}"),
    ("throughput.mb_per_s", "MB/s", "{:.2f}"),
    ("latency.p50_ms", "p50 ms", "{:.3f}"),
    ("latency.p90_ms", "p90 ms", "{:.3f}"),
    ("latency.p99_ms", "p99 ms", "{:.3f}"),
    ("latency.p99_9_ms", "p99.9 ms", "{:.3f}"),
    ("wire.client_to_broker_per_msg", "B/msg up", "{:.1f}"),
    ("wire.broker_to_client_per_msg", "B/msg down", "{:.1f}"),
    ("broker_cpu_s_per_10k", "broker CPU s/10k", "{:.3f}"),
]


def get(record: dict, path: str):
    cur = record
    for part in path.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            return None
        cur = cur[part]
    return cur


def fmt(value, pattern: str) -> str:
    if value is None:
        return "-"
    return pattern.format(value)


def document(workload: dict, results: list[dict], argv: list[str]) -> dict:
    try:
        from polymq.core.cli import version

        ver = version()
    except Exception:  # pragma: no cover - version lookup never matters for the result
        ver = "unknown"
    return {
        "tool": "polymq compare",
        "polymq_version": ver,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": argv,
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "workload": workload,
        "results": results,
    }


def write_json(doc: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# terminal
# ---------------------------------------------------------------------------------------------


def _title(doc: dict) -> str:
    from .workload import describe_workload

    return "polymq compare - " + describe_workload(doc["workload"])


def _check(r: dict) -> str:
    c = r["counts"]
    mark = "[green]ok[/]" if r["ok"] else "[red]FAIL[/]"
    return f"{mark} {c['unique']}/{c['expected']}"


def _width(cells: list[str]) -> int:
    from rich.text import Text

    return max(Text.from_markup(c).cell_len for c in cells)


def rich_table(doc: dict):
    """One row per run, one column per measure."""
    from rich.table import Table

    table = Table(title=_title(doc))
    table.add_column("target", no_wrap=True)
    table.add_column("protocol", no_wrap=True)
    for _path, name, _f in COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("check", no_wrap=True)
    for r in doc["results"]:
        table.add_row(
            r["label"], r["protocol"], *[fmt(get(r, p), f) for p, _n, f in COLUMNS], _check(r)
        )
    return table


def _wide_width(doc: dict) -> int:
    """Columns the one-row-per-run table needs with every cell whole."""
    results = doc["results"]
    columns = [
        ["target", *[r["label"] for r in results]],
        ["protocol", *[r["protocol"] for r in results]],
        *[[name, *[fmt(get(r, p), f) for r in results]] for p, name, f in COLUMNS],
        ["check", *[_check(r) for r in results]],
    ]
    return sum(_width(c) + 3 for c in columns) + 1


def narrow_tables(doc: dict, width: int) -> list:
    """The same figures with the runs as columns, as many runs per table as fit ``width``."""
    from rich.table import Table

    results = doc["results"]
    names = ["protocol", *[n for _p, n, _f in COLUMNS], "check"]
    label_width = _width(names) + 3
    run_cells = [
        [r["protocol"], *[fmt(get(r, p), f) for p, _n, f in COLUMNS], _check(r)] for r in results
    ]
    run_widths = [
        max(_width(cells), _width([r["label"]])) + 3
        for cells, r in zip(run_cells, results, strict=True)
    ]
    tables, start = [], 0
    while start < len(results):
        end, used = start + 1, label_width + run_widths[start] + 1
        while end < len(results) and used + run_widths[end] <= width:
            used += run_widths[end]
            end += 1
        table = Table(title=_title(doc) if not tables else None)
        table.add_column("", no_wrap=True)
        for r in results[start:end]:
            table.add_column(r["label"], justify="right", no_wrap=True)
        for row, name in enumerate(names):
            table.add_row(name, *[cells[row] for cells in run_cells[start:end]])
        tables.append(table)
        start = end
    return tables


def markdown_table(doc: dict) -> str:
    """The summary as a Markdown table (same columns and formats as the terminal and HTML)."""
    head = ["target", "protocol", *[n for _p, n, _f in COLUMNS], "check"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["results"]:
        c = r["counts"]
        check = f"{'ok' if r['ok'] else 'FAIL'} {c['unique']}/{c['expected']}"
        cells = [r["label"], r["protocol"], *[fmt(get(r, p), f) for p, _n, f in COLUMNS], check]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def repeat_table(doc: dict):
    """Median and spread of the repeated runs (``--repeat N``), or None after single runs.

    One row per run and measure, so that the numbers stay whole on a narrow terminal (only the
    run's name wraps)."""
    from rich.table import Table

    results = [r for r in doc["results"] if r.get("repeats")]
    if not results:
        return None
    n = results[0]["repeats"]["n"]
    table = Table(title=f"{n} runs per target; spread = (highest - lowest) / median")
    table.add_column("run")
    table.add_column("measure", no_wrap=True)
    for name in ("median", "lowest", "highest", "spread"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in results:
        for number, (key, name, pattern) in enumerate(REPEAT_MEASURES):
            s = r["repeats"]["summary"].get(key)
            figures = (
                ["-"] * 4
                if not s
                else [
                    pattern.format(s["median"]),
                    pattern.format(s["min"]),
                    pattern.format(s["max"]),
                    f"{s['spread_pct']:.0f}%",
                ]
            )
            table.add_row(_name(r) if number == 0 else "", name, *figures)
    return table


def print_summary(console, doc: dict) -> None:
    if _wide_width(doc) <= console.width:
        console.print(rich_table(doc))
    else:
        for table in narrow_tables(doc, console.width):
            console.print(table)
    repeats = repeat_table(doc)
    if repeats is not None:
        console.print(repeats)
    for r in doc["results"]:
        for text in r["failures"]:
            console.print(f"[red]{r['label']} {r['protocol']}: {text}[/]", highlight=False)
        if r.get("tracebacks"):
            console.print(
                f"[red]{r['label']} {r['protocol']}: the traceback is in the JSON "
                "and HTML reports[/]",
                highlight=False,
            )
        for text in r["warnings"]:
            console.print(f"[yellow]{r['label']} {r['protocol']}: {text}[/]", highlight=False)


# measures summarised over repeated runs: (key in a run's record, title, format)
REPEAT_MEASURES = [
    ("throughput.msgs_per_s", "msgs/s", "{:,.0f}"),
    ("latency.p50_ms", "p50 ms", "{:.3f}"),
    ("latency.p99_ms", "p99 ms", "{:.3f}"),
]


def summarise_repeats(runs: list[dict]) -> dict:
    """The most typical run (closest to the medians of the repeated measures), carrying every
    run's figures under ``repeats``."""
    import statistics

    summary = {}
    for key, _name, _f in REPEAT_MEASURES:
        values = [v for v in (get(r, key) for r in runs) if v is not None]
        if not values:
            continue
        median = statistics.median(values)
        summary[key] = {
            "values": values,
            "median": median,
            "min": min(values),
            "max": max(values),
            "spread_pct": round(100.0 * (max(values) - min(values)) / median, 1) if median else 0,
        }

    def distance(r: dict) -> float:
        """How far a run is from the medians, as the sum of log ratios (rates and latencies
        weigh alike whatever their units)."""
        total = 0.0
        for key, s in summary.items():
            value = get(r, key)
            if value and s["median"]:
                total += abs(math.log(value / s["median"]))
            else:
                total += 10.0  # a run without the figure is the least typical
        return total

    chosen = dict(min(runs, key=distance))
    failures = [f"run {i + 1}: {text}" for i, r in enumerate(runs) for text in r["failures"]]
    chosen.update(
        ok=all(r["ok"] for r in runs),
        failures=failures,
        warnings=[f"run {i + 1}: {t}" for i, r in enumerate(runs) for t in r["warnings"]],
        tracebacks=[t for r in runs for t in r.get("tracebacks", [])],
        repeats={"n": len(runs), "run_ids": [r["run_id"] for r in runs], "summary": summary},
    )
    return chosen


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _name(r: dict) -> str:
    return f"{r['protocol']} @ {r['label']}"


def throughput_svg(results: list[dict]) -> str:
    bar_h, gap, left, width = 22, 8, 230, 420
    values = [get(r, "throughput.msgs_per_s") or 0 for r in results]
    top = max(values + [1])
    h = len(results) * (bar_h + gap) + 40
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{left + width + 140}"'
        f' height="{h}" role="img" aria-label="throughput">'
    ]
    out.append(f'<text x="{left}" y="14" class="axis">delivered msgs/s (MB/s)</text>')
    for i, (r, v) in enumerate(zip(results, values, strict=True)):
        y = 24 + i * (bar_h + gap)
        w = 0 if not top else width * v / top
        color = COLORS[i % len(COLORS)]
        mb = get(r, "throughput.mb_per_s")
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{_e(_name(r))}</text>')
        out.append(
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" '
            f'fill="{color}" data-run="{i}" data-msgs-per-s="{v}"><title>'
            f"{_e(_name(r))}: {v} msgs/s</title></rect>"
        )
        out.append(
            f'<text x="{left + w + 6:.1f}" y="{y + 16}" class="val" data-run="{i}" '
            f'data-key="throughput.msgs_per_s">{fmt(v, "{:,.0f}")} '
            f"({fmt(mb, '{:.2f}')})</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _xpos(p: float) -> float:
    """HDR-style percentile axis: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9, 4 at p99.99;
    the maximum (p100) is drawn at 5."""
    if p >= 100:
        return 5.0
    return min(4.5, math.log10(100.0 / (100.0 - p)))


def latency_svg(results: list[dict]) -> str:
    left, top, width, height = 70, 20, 620, 300
    curves = [(i, r["latency"]["curve"]) for i, r in enumerate(results) if r.get("latency")]
    values = [v for _i, c in curves for _p, v in c if v > 0]
    lo = 10 ** math.floor(math.log10(min(values))) if values else 0.01
    hi = 10 ** math.ceil(math.log10(max(values))) if values else 1.0
    if hi <= lo:
        hi = lo * 10

    def sx(p: float) -> float:
        return left + width * _xpos(p) / 5.0

    def sy(v: float) -> float:
        v = max(v, lo)
        return top + height * (
            1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        )

    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{left + width + 200}"'
        f' height="{top + height + 50}" role="img" aria-label="latency percentiles">'
    ]
    decade = lo
    while decade <= hi * 1.0001:
        y = sy(decade)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" class="grid"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">'
            f"{decade:g} ms</text>"
        )
        decade *= 10
    for p, label in (
        (0, "p0"),
        (50, "p50"),
        (90, "p90"),
        (99, "p99"),
        (99.9, "p99.9"),
        (99.99, "p99.99"),
        (100, "max"),
    ):
        x = sx(p)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + height}" class="grid"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top + height + 16}" text-anchor="middle" '
            f'class="axis">{label}</text>'
        )
    out.append(
        f'<text x="{left + width / 2}" y="{top + height + 38}" text-anchor="middle" '
        'class="axis">percentile (end-to-end latency, log scale)</text>'
    )
    for n, (i, curve) in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        dash = DASHES[i % len(DASHES)]
        marker = MARKERS[i % len(MARKERS)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        pts = " ".join(f"{sx(p):.1f},{sy(v):.1f}" for p, v in curve)
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"'
            f'{dash_attr} data-run="{i}"/>'
        )
        for p, v in curve:
            x, y = sx(p), sy(v)
            out.append(_marker(marker, x, y, color))
            # the data point itself, transparent: it carries the value and the tooltip
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color}" '
                f'fill-opacity="0" data-run="{i}" data-percentile="{p}" data-ms="{v}">'
                f"<title>{_e(_name(results[i]))} p{p:g}: {v} ms</title></circle>"
            )
        ly = top + 10 + n * 18
        lx = left + width + 14
        out.append(
            f'<line x1="{lx}" y1="{ly - 3}" x2="{lx + 28}" y2="{ly - 3}" '
            f'stroke="{color}" stroke-width="2"{dash_attr}/>'
        )
        out.append(_marker(marker, lx + 14, ly - 3, color))
        out.append(f'<text x="{lx + 36}" y="{ly + 1}">{_e(_name(results[i]))}</text>')
    out.append("</svg>")
    return "".join(out)


def _marker(shape: str, x: float, y: float, color: str) -> str:
    """A marker of ``shape`` centred on (x, y)."""
    s = 3.5
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{s}" fill="{color}" class="marker"/>'
    if shape == "square":
        return (
            f'<rect x="{x - s:.1f}" y="{y - s:.1f}" width="{2 * s}" height="{2 * s}" '
            f'fill="{color}" class="marker"/>'
        )
    points = {
        "triangle": [(0, -1.2), (1.1, 0.9), (-1.1, 0.9)],
        "triangle-down": [(0, 1.2), (1.1, -0.9), (-1.1, -0.9)],
        "diamond": [(0, -1.3), (1.3, 0), (0, 1.3), (-1.3, 0)],
    }.get(shape)
    if points is not None:
        pts = " ".join(f"{x + dx * s:.1f},{y + dy * s:.1f}" for dx, dy in points)
        return f'<polygon points="{pts}" fill="{color}" class="marker"/>'
    return (
        f'<path d="M{x - s:.1f},{y - s:.1f}L{x + s:.1f},{y + s:.1f}M{x - s:.1f},{y + s:.1f}'
        f'L{x + s:.1f},{y - s:.1f}" stroke="{color}" stroke-width="2" class="marker"/>'
    )


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child,td.l{text-align:left}
.ok{color:#2a7d2a;font-weight:bold}.fail{color:#c62828;font-weight:bold}
svg.chart{font-size:12px;background:#fafafa;border:1px solid #ddd;margin:8px 0}
svg .grid{stroke:#ddd;stroke-width:1}svg .axis{fill:#555}svg .val{fill:#222}
code,pre{background:#f3f3f3;padding:2px 4px}pre{padding:8px;overflow:auto}
"""


def render_html(doc: dict) -> str:
    wl = doc["workload"]
    results = doc["results"]
    rows = []
    for i, r in enumerate(results):
        c = r["counts"]
        cells = "".join(
            f'<td data-run="{i}" data-key="{p}">{fmt(get(r, p), f)}</td>' for p, _n, f in COLUMNS
        )
        status = '<span class="ok">ok</span>' if r["ok"] else '<span class="fail">FAIL</span>'
        rows.append(
            f'<tr><td class="l">{_e(r["label"])}</td><td class="l">{_e(r["protocol"])}</td>'
            f"{cells}<td>{c['sent']}</td><td>{c['unique']}/{c['expected']}</td>"
            f"<td>{c['duplicates']}</td><td>{c['out_of_order']}</td><td>{status}</td></tr>"
        )
    head = "".join(f"<th>{_e(n)}</th>" for _p, n, _f in COLUMNS)
    problems = []
    for r in results:
        for text in r["failures"]:
            problems.append(f'<li class="fail">{_e(_name(r))}: {_e(text)}</li>')
        for tb in r.get("tracebacks", []):
            problems.append(
                f"<li><details><summary>{_e(_name(r))}: traceback</summary>"
                f"<pre>{_e(tb)}</pre></details></li>"
            )
        for text in r["warnings"]:
            problems.append(f"<li>{_e(_name(r))}: {_e(text)}</li>")
    detail = []
    for r in results:
        lat = r.get("latency") or {}
        wire = r.get("wire") or {}
        cpu = r.get("broker_cpu") or {}
        detail.append(
            f"<tr><td class='l'>{_e(_name(r))}</td>"
            f"<td>{fmt(get(r, 'throughput.send_msgs_per_s'), '{:,.0f}')}</td>"
            f"<td>{fmt(lat.get('min_ms'), '{:.3f}')}</td><td>{fmt(lat.get('mean_ms'), '{:.3f}')}"
            f"</td><td>{fmt(lat.get('max_ms'), '{:.3f}')}</td>"
            f"<td>{fmt(wire.get('producer_up_per_msg'), '{:.1f}')}</td>"
            f"<td>{fmt(wire.get('producer_down_per_msg'), '{:.1f}')}</td>"
            f"<td>{fmt(wire.get('consumer_down_per_msg'), '{:.1f}')}</td>"
            f"<td>{fmt(wire.get('consumer_up_per_msg'), '{:.1f}')}</td>"
            f"<td class='l'>{_e(cpu.get('process', '-'))} {_e(cpu.get('pid', ''))}</td>"
            f"<td>{fmt(cpu.get('cpu_s'), '{:.2f}')}</td>"
            f"<td>{fmt(get(r, 'client_cpu_s.producers'), '{:.2f}')} / "
            f"{fmt(get(r, 'client_cpu_s.consumers'), '{:.2f}')}</td>"
            f"<td>{fmt(get(r, 'throughput.seconds'), '{:.2f}')}</td></tr>"
        )
    from .workload import describe_workload

    wl_text = describe_workload(wl) + (
        f"; window {wl['window']}, drain timeout {wl['drain_timeout']:g} s"
    )
    data = json.dumps(doc).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>polymq compare - {_e(wl["name"])}</title>
<style>{CSS}</style></head><body>
<h1>polymq compare</h1>
<p>{_e(doc["created"])} &middot; polymq {_e(doc["polymq_version"])} &middot;
{_e(doc["host"]["platform"])}, {_e(doc["host"]["cpus"])} CPUs</p>
<p><b>workload</b>: {_e(wl_text)}</p>
<p><b>command</b>: <code>{_e(" ".join(doc["command"]))}</code></p>
<h2>Summary</h2>
<table id="summary"><tr><th>target</th><th>protocol</th>{head}<th>sent</th>
<th>delivered/expected</th><th>dups</th><th>out of order</th><th>check</th></tr>
{"".join(rows)}</table>
{"<ul>" + "".join(problems) + "</ul>" if problems else ""}
{repeat_html(results)}
<h2>Throughput</h2>
{throughput_svg(results)}
<h2>Latency percentiles</h2>
{latency_svg(results)}
<h2>Details</h2>
<table><tr><th>run</th><th>send msgs/s</th><th>min ms</th><th>mean ms</th><th>max ms</th>
<th>producer B/msg out</th><th>producer B/msg in</th><th>consumer B/msg in</th>
<th>consumer B/msg out</th><th>broker process</th><th>broker CPU s</th>
<th>client CPU s (producers / consumers)</th><th>measured s</th></tr>
{"".join(detail)}</table>
<p>Throughput: unique deliveries / (last delivery - first send). Latency: consumer receive time
- send time carried in the body (CLOCK_MONOTONIC, same machine), HDR histogram. Bytes: kernel TCP
counters of the load clients' sockets (<code>ss -ti</code>), handshakes included; "up" is client
to broker per message sent (producers + consumers' acks), "down" broker to client per message
sent (deliveries to every consumer + confirms). Broker CPU: utime+stime of the broker process
(/proc/PID/stat) during the run, per 10,000 messages sent.</p>
<script type="application/json" id="polymq-compare-data">{data}</script>
</body></html>
"""


def repeat_html(results: list[dict]) -> str:
    rows = []
    for r in results:
        if not r.get("repeats"):
            continue
        cells = []
        for key, _title_text, pattern in REPEAT_MEASURES:
            s = r["repeats"]["summary"].get(key)
            cells.append(
                "<td>-</td>"
                if not s
                else (
                    f"<td>{pattern.format(s['median'])} [{pattern.format(s['min'])} &ndash; "
                    f"{pattern.format(s['max'])}], spread {s['spread_pct']:.0f}%</td>"
                )
            )
        rows.append(f"<tr><td class='l'>{_e(_name(r))}</td>{''.join(cells)}</tr>")
    if not rows:
        return ""
    n = results[0]["repeats"]["n"] if results[0].get("repeats") else ""
    head = "".join(f"<th>{_e(name)}</th>" for _k, name, _f in REPEAT_MEASURES)
    return (
        f"<h2>Repeated runs</h2><p>{n} runs per target: median [lowest &ndash; highest] and "
        "spread ((highest - lowest) / median). The summary above shows the run closest to "
        f"these medians.</p><table id='repeats'><tr><th>run</th>{head}</tr>"
        f"{''.join(rows)}</table>"
    )


def write_html(doc: dict, path: str) -> None:
    with open(path, "w") as f:
        f.write(render_html(doc))
