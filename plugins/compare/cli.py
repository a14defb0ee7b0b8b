"""``polymq compare``: one workload over each protocol, side by side.

    polymq compare                                   # polymq on its standard ports, 4 protocols
    polymq compare --preset latency --protocols mqtt,amqp
    polymq compare --url mqtt@mosquitto=mqtt://127.0.0.1:21883 \\
                   --url amqp@rabbitmq=amqp://guest:guest@127.0.0.1:25673/
"""

from __future__ import annotations

import argparse
import sys
import time

from .workload import (
    DEFAULT_PRESET,
    DEFAULT_URLS,
    GUARANTEES,
    PATTERNS,
    PLUGIN_PROTOCOLS,
    PRESET_HELP,
    PRESETS,
    PROTOCOLS,
    CompareError,
    check_reachable,
    make_workload,
    parse_target,
    target_from_url,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser(prog: str = "polymq compare") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run one workload over each protocol against a broker (polymq on its "
        "standard ports unless --url is given) and report throughput, end-to-end latency "
        "percentiles, bytes on the wire and broker CPU per protocol.",
        epilog="presets: " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()),
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help=f"named workload; the flags below override its values ({DEFAULT_PRESET})",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each target N times; report the median, range and spread of "
        "throughput and latency and the run closest to the medians (1)",
    )
    p.add_argument(
        "--protocols",
        default=",".join(PROTOCOLS),
        metavar="LIST",
        help="comma-separated protocols run against polymq's default URLs when no "
        "--url is given (default: all of them)",
    )
    p.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="PROTO[@LABEL]=URL",
        help="a target, repeatable: mqtt=mqtt://H:P, amqp=amqp://user:pw@H:P/vhost, "
        "kafka=H:P, openwire=tcp://H:P, stomp=stomp://user:pw@H:P; LABEL names it in the report",
    )
    w = p.add_argument_group("workload (override the preset)")
    w.add_argument("--producers", type=int, metavar="N")
    w.add_argument("--consumers", type=int, metavar="N")
    w.add_argument("--size", type=int, metavar="BYTES", help="message body size (>= 16)")
    w.add_argument("--count", type=int, metavar="N", help="messages per producer")
    w.add_argument(
        "--duration", type=float, metavar="SECONDS", help="produce for this long instead of --count"
    )
    w.add_argument(
        "--rate",
        type=float,
        metavar="MSGS_PER_S",
        help="fixed publish rate per producer (for latency at a given load)",
    )
    w.add_argument("--guarantee", choices=GUARANTEES)
    w.add_argument(
        "--pattern",
        choices=PATTERNS,
        help="fanout: every consumer gets every message; queue: competing consumers",
    )
    w.add_argument(
        "--mqtt-version",
        type=int,
        choices=(4, 5),
        help="4 = MQTT 3.1.1 (default), 5 = MQTT 5.0 (forced by --pattern queue)",
    )
    w.add_argument(
        "--window",
        type=int,
        metavar="N",
        help="unconfirmed publishes in flight per producer (1000)",
    )
    w.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="give up this long after the last delivery once producers are done (10)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="result file (default compare-<time>.json)")
    o.add_argument("--html", metavar="FILE", help="HTML report (default: the JSON name, .html)")
    o.add_argument("--markdown", metavar="FILE", help="also write the summary as a Markdown table")
    o.add_argument(
        "--broker-pid",
        type=int,
        metavar="PID",
        help="broker process for CPU accounting (default: the local process "
        "listening on each target's port)",
    )
    bar = o.add_mutually_exclusive_group()
    bar.add_argument("--no-progress", action="store_true", help="no progress bar")
    bar.add_argument(
        "--progress",
        action="store_true",
        help="show the progress bar even when stdout is not a terminal",
    )
    return p


def resolve_targets(args) -> list:
    if args.url:
        return [parse_target(spec) for spec in args.url]
    protos = [x.strip().lower() for x in args.protocols.split(",") if x.strip()]
    known = PROTOCOLS + PLUGIN_PROTOCOLS
    bad = [x for x in protos if x not in known]
    if bad or not protos:
        raise CompareError(
            f"--protocols: unknown {', '.join(bad) or '(empty)'} (known: {', '.join(known)})"
        )
    return [target_from_url(x, DEFAULT_URLS[x], "polymq") for x in protos]


def check_kafka_client() -> None:
    """Kafka runs drive librdkafka through confluent-kafka, a dependency of polymq; a broken
    or partial install gets one line instead of a failed run with a traceback."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as e:
        raise CompareError(
            f"kafka runs need confluent-kafka, which cannot be imported ({e}): "
            "pip install 'confluent-kafka>=2.3', or leave kafka out with --protocols"
        ) from None


def main(argv: list[str] | None = None, prog: str = "polymq compare") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    try:
        wl = make_workload(
            args.preset,
            producers=args.producers,
            consumers=args.consumers,
            size=args.size,
            count=args.count,
            duration=args.duration,
            rate=args.rate,
            guarantee=args.guarantee,
            pattern=args.pattern,
            mqtt_version=args.mqtt_version,
            window=args.window,
            drain_timeout=args.drain_timeout,
        )
        if args.repeat < 1:
            raise CompareError("--repeat must be at least 1")
        targets = resolve_targets(args)
        if any(t.protocol == "kafka" for t in targets):
            check_kafka_client()
        for t in targets:
            check_reachable(t)
        return run(args, argv, wl, targets)
    except CompareError as e:
        print(f"polymq compare: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("polymq compare: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(args, argv: list[str], wl, targets: list) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import report
    from .runner import run_target as run_once

    def run_target(target, wl, broker_pid, on_progress=None):
        runs = []
        for i in range(args.repeat):
            if args.repeat > 1 and not show:
                console.print(f"  run {i + 1} of {args.repeat}", highlight=False)
            runs.append(run_once(target, wl, broker_pid, on_progress))
        return runs[0] if len(runs) == 1 else report.summarise_repeats(runs)

    console = Console(force_terminal=True if args.progress else None)
    if not console.is_terminal or args.progress:
        # output to a file or pipe: the one-row-per-run table, whole
        console = Console(width=max(console.width, 170), force_terminal=args.progress or None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = args.json or f"compare-{stamp}.json"
    html_path = (
        args.html or (json_path[:-5] if json_path.endswith(".json") else json_path) + ".html"
    )
    results = []
    show = not args.no_progress and console.is_terminal
    for target in targets:
        desc = f"{target.protocol} @ {target.label}"
        if show:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as prog:
                sent_task = prog.add_task(f"{desc} sent", total=None)
                recv_task = prog.add_task(f"{desc} delivered", total=None)
                sent_total = wl.count * wl.producers if wl.count else None

                def update(
                    sent, received, expected, prog=prog, s=sent_task, r=recv_task, st=sent_total
                ):
                    prog.update(s, completed=sent, total=st)
                    prog.update(r, completed=received, total=expected or None)

                result = run_target(target, wl, args.broker_pid, update)
        else:
            console.print(f"running {desc} ...", highlight=False)
            result = run_target(target, wl, args.broker_pid)
        results.append(result)
        status = "[green]ok[/]" if result["ok"] else "[red]FAIL[/]"
        mps = result["throughput"]["msgs_per_s"]
        console.print(f"{desc}: {status} {mps or 0:,.0f} msgs/s", highlight=False)
    doc = report.document(wl.as_dict(), results, ["polymq", "compare", *argv])
    report.write_json(doc, json_path)
    report.write_html(doc, html_path)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown_table(doc))
    report.print_summary(console, doc)
    console.print(f"JSON: {json_path}\nHTML: {html_path}", highlight=False)
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog="python -m polymq.plugins.compare.cli"))
