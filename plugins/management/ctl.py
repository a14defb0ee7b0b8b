"""``polymq ctl``: operate a running broker through its management HTTP API.

Tables (rich) by default, ``--json`` for scripts; every error is one line on stderr with an
exit code: 1 the broker refused or does not know it, 2 bad usage, 3 the broker cannot be
reached, 4 not authorized.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4

DEFAULT_URL = "http://127.0.0.1:15672"

# what `list` shows: endpoint and the columns of its table
LISTS: dict[str, tuple[str, list[str]]] = {
    "connections": (
        "connections",
        [
            "id",
            "protocol",
            "client_id",
            "user",
            "peer",
            "tls",
            "messages_in",
            "messages_out",
            "bytes_in",
            "bytes_out",
        ],
    ),
    "queues": (
        "queues",
        [
            "vhost",
            "name",
            "type",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
            "durable",
        ],
    ),
    "exchanges": ("exchanges", ["vhost", "name", "type", "durable", "bindings"]),
    "bindings": ("bindings", ["vhost", "source", "destination", "destination_type", "routing_key"]),
    "consumers": (
        "consumers",
        [
            "queue",
            "consumer_tag",
            "protocol",
            "prefetch_count",
            "credit",
            "unacknowledged",
            "connection",
        ],
    ),
    "topics": ("streams", ["vhost", "name", "partition_count", "messages", "bytes", "groups"]),
    "groups": (
        "groups",
        [
            "group",
            "state",
            "members",
            "topic",
            "partition",
            "current_offset",
            "log_end_offset",
            "lag",
        ],
    ),
    "sessions": ("mqtt/sessions", ["client_id", "connected", "protocol_version", "subscriptions"]),
    "channels": ("channels", ["connection", "number", "protocol", "consumer_count"]),
}


class CtlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Client:
    def __init__(self, url: str, user: str, password: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        h = dict(self.headers, **(headers or {}))
        if data is not None:
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(f"{self.url}/api/{path}", data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                text = res.read()
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("reason", e.reason)
            except ValueError:
                reason = e.reason
            code = EXIT_UNAUTHORIZED if e.code == 401 else EXIT_REFUSED
            raise CtlError(f"{method} {path}: {e.code} {reason}", code) from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", e)
            raise CtlError(f"cannot reach {self.url}: {why}", EXIT_UNREACHABLE) from None
        return json.loads(text) if text else None


def v(name: str) -> str:
    return quote(name, safe="")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polymq ctl", description="Operate a running polymq broker over its management API."
    )
    p.add_argument(
        "--url",
        default=os.environ.get("POLYMQ_MGMT_URL", DEFAULT_URL),
        help=f"management URL (env POLYMQ_MGMT_URL, default {DEFAULT_URL})",
    )
    p.add_argument("-u", "--user", default=os.environ.get("POLYMQ_MGMT_USER", "guest"))
    p.add_argument("-p", "--password", default=os.environ.get("POLYMQ_MGMT_PASSWORD", "guest"))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = sub.add_parser("list", help="list " + "|".join(LISTS))
    ls.add_argument("what", choices=sorted(LISTS))
    sub.add_parser("overview", help="version, totals and rates")
    purge = sub.add_parser("purge", help="drop the ready messages of a queue")
    purge.add_argument("queue")
    purge.add_argument("--vhost", default="/")
    delete = sub.add_parser("delete", help="delete a queue, exchange or topic")
    delete.add_argument("kind", choices=("queue", "exchange", "topic"))
    delete.add_argument("name")
    delete.add_argument("--vhost", default="/")
    delete.add_argument("--if-empty", action="store_true")
    delete.add_argument("--if-unused", action="store_true")
    add_vhost = sub.add_parser("add_vhost", help="create a vhost")
    add_vhost.add_argument("vhost")
    delete_vhost = sub.add_parser(
        "delete_vhost", help="delete a vhost: its connections are closed, its queues deleted"
    )
    delete_vhost.add_argument("vhost")
    close = sub.add_parser("close", help="close a connection (name or id from list)")
    close.add_argument("connection")
    close.add_argument("--reason", default="closed by polymq ctl")
    export = sub.add_parser("export", help="export definitions as JSON")
    export.add_argument("file", nargs="?", help="write here instead of stdout")
    imp = sub.add_parser("import", help="import definitions from a JSON file ('-': stdin)")
    imp.add_argument("file")
    mem = sub.add_parser(
        "set-memory-high-watermark",
        help="memory alarm threshold: a fraction of memory (<= 1.0) or bytes",
    )
    mem.add_argument("value", type=float)
    disk = sub.add_parser("set-disk-free-limit", help="disk alarm threshold in bytes (0: off)")
    disk.add_argument("value", type=int)
    sub.add_parser("limits", help="alarm thresholds and current usage")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    client = Client(args.url, args.user, args.password)
    try:
        return run(client, args)
    except CtlError as e:
        print(f"polymq ctl: {e}", file=sys.stderr)
        return e.code


def run(client: Client, args: argparse.Namespace) -> int:
    if args.verb == "list":
        endpoint, columns = LISTS[args.what]
        rows = client.call("GET", endpoint)
        if args.what == "groups" and not args.json:
            rows = _group_rows(rows)  # a table row per partition, as kafka-consumer-groups
        _print(rows, columns, args.json, args.what)
        return EXIT_OK
    if args.verb == "overview":
        ov = client.call("GET", "overview")
        if args.json:
            print(json.dumps(ov, indent=2))
        else:
            flat = {
                "version": ov["polymq_version"],
                "uptime_s": ov["uptime"] // 1000,
                **{f"total_{k}": n for k, n in ov["object_totals"].items()},
                **ov["queue_totals"],
                "publish_rate": round(ov["message_stats"]["publish_details"]["rate"], 2),
            }
            rows = [{"key": k, "value": val} for k, val in flat.items()]
            _print(rows, ["key", "value"], False, "overview")
        return EXIT_OK
    if args.verb == "purge":
        client.call("DELETE", f"queues/{v(args.vhost)}/{v(args.queue)}/contents")
        _done(args, f"purged {args.queue}")
        return EXIT_OK
    if args.verb == "delete":
        base = {"queue": "queues", "exchange": "exchanges", "topic": "streams"}[args.kind]
        flags = [
            f
            for f, on in (("if-empty=true", args.if_empty), ("if-unused=true", args.if_unused))
            if on
        ]
        query = "?" + "&".join(flags) if flags else ""
        client.call("DELETE", f"{base}/{v(args.vhost)}/{v(args.name)}{query}")
        _done(args, f"deleted {args.kind} {args.name}")
        return EXIT_OK
    if args.verb in ("add_vhost", "delete_vhost"):
        adding = args.verb == "add_vhost"
        client.call("PUT" if adding else "DELETE", f"vhosts/{v(args.vhost)}")
        _done(args, f"{'created' if adding else 'deleted'} vhost {args.vhost}")
        return EXIT_OK
    if args.verb == "close":
        client.call(
            "DELETE", f"connections/{v(args.connection)}", headers={"X-Reason": args.reason}
        )
        _done(args, f"closed {args.connection}")
        return EXIT_OK
    if args.verb == "export":
        data = client.call("GET", "definitions")
        text = json.dumps(data, indent=2) + "\n"
        if args.file:
            with open(args.file, "w") as fh:
                fh.write(text)
            _done(args, f"exported to {args.file}")
        else:
            sys.stdout.write(text)
        return EXIT_OK
    if args.verb == "import":
        try:
            if args.file == "-":
                data = json.load(sys.stdin)
            else:
                with open(args.file) as fh:
                    data = json.load(fh)
        except OSError as e:
            raise CtlError(f"cannot read {args.file}: {e.strerror}", EXIT_USAGE) from None
        except ValueError as e:
            raise CtlError(f"{args.file} is not JSON: {e}", EXIT_USAGE) from None
        counts = client.call("POST", "definitions", data)
        if args.json:
            print(json.dumps(counts))
        else:
            ignored = counts.pop("ignored", [])
            print("imported " + ", ".join(f"{n} {k}" for k, n in counts.items()))
            if ignored:
                print("not imported (not supported): " + ", ".join(ignored))
        return EXIT_OK
    if args.verb in ("set-memory-high-watermark", "set-disk-free-limit", "limits"):
        if args.verb == "limits":
            limits = client.call("GET", "limits")
        else:
            key = args.verb.removeprefix("set-").replace("-", "_")
            limits = client.call("PUT", "limits", {key: args.value})
        if args.json:
            print(json.dumps(limits))
        else:
            rows = [{"key": k, "value": val} for k, val in limits.items()]
            _print(rows, ["key", "value"], False, "limits")
        return EXIT_OK
    raise CtlError(f"unknown verb {args.verb}", EXIT_USAGE)


def _group_rows(groups: list[dict]) -> list[dict]:
    rows = []
    for g in groups:
        base = {"group": g["group"], "state": g["state"], "members": len(g["members"])}
        for p in g["partitions"] or [{}]:
            rows.append(
                dict(
                    base,
                    **{
                        k: p.get(k)
                        for k in ("topic", "partition", "current_offset", "log_end_offset", "lag")
                    },
                )
            )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return value.get("name", json.dumps(value))
    if isinstance(value, list):
        return ", ".join(
            f"{x['filter']} (QoS {x['qos']})" if isinstance(x, dict) and "filter" in x else _cell(x)
            for x in value
        )
    return str(value)


def _print(rows: list[dict], columns: list[str], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    Console(width=max(100, Console().width)).print(table)


def _done(args: argparse.Namespace, message: str) -> None:
    if args.json:
        print(json.dumps({"ok": True, "message": message}))
    else:
        print(message)
