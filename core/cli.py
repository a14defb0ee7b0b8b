"""The ``polymq`` command: ``serve``, ``config show``, ``config check``, ``plugins``, ``users``."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys

from .config import LOG_LEVELS, ConfigError, dump_toml, load_config
from .plugins import (
    PluginError,
    adapter_specs_with_origin,
    get_plugin_manager,
    store_backends_with_origin,
)
from .security.users import UsersFileError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def version() -> str:
    try:
        return importlib.metadata.version("polymq")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. adapters.mqtt.port=11883 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polymq",
        description="polymq: one broker for AMQP, MQTT, Kafka and OpenWire clients.",
    )
    parser.add_argument("--version", action="version", version=f"polymq {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the broker")
    _add_config_options(serve)
    serve.add_argument(
        "--log-level", choices=LOG_LEVELS, default=None, help="overrides log.level (info)"
    )
    serve.add_argument(
        "--log-format", choices=("text", "json"), default=None, help="overrides log.format"
    )
    serve.add_argument(
        "--port-file",
        metavar="FILE",
        help='write {"adapter": port, ...} as JSON here once every listener is up',
    )

    config = sub.add_parser("config", help="show or check the effective configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = config_sub.add_parser("show", help="print the effective config as TOML")
    _add_config_options(show)
    check = config_sub.add_parser("check", help="validate the config and exit")
    _add_config_options(check)

    sub.add_parser(
        "compare", help="compare the protocols on one workload (polymq compare -h)", add_help=False
    )

    from .security.cli import add_parser as add_users_parser

    add_users_parser(sub, _add_config_options)
    sub.add_parser("ctl", help="operate a running broker (polymq ctl -h)", add_help=False)

    status = sub.add_parser(
        "status", help="which node is active (shared-store HA), since when, and the epoch"
    )
    _add_config_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    plugins = sub.add_parser("plugins", help="list adapters and store backends found")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _error(message: str) -> None:
    for line in message.splitlines() or [""]:
        print(f"polymq: {line}", file=sys.stderr)


def _load(args, check_paths: bool, sources: dict[str, str] | None = None):
    pm = get_plugin_manager()
    cfg = load_config(
        pm,
        path=args.config,
        overrides=args.overrides,
        check_paths=check_paths,
        sources=sources,
    )
    return pm, cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from polymq.plugins.compare.cli import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["ctl"]:
        from polymq.plugins.management.ctl import main as ctl_main

        return ctl_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "config":
            if args.config_command == "show":
                sources: dict[str, str] = {}
                _, cfg = _load(args, check_paths=False, sources=sources)
                print("# effective polymq config; a value without a '# from' comment is a default")
                sys.stdout.write(dump_toml(cfg, sources))
                return EXIT_OK
            if args.config_command == "check":
                _load(args, check_paths=True)
                print("config ok")
                return EXIT_OK
            parser.parse_args(["config", "--help"])
        if args.command == "plugins":
            return list_plugins(args)
        if args.command == "status":
            from .ha import status_command

            _, cfg = _load(args, check_paths=False)
            return status_command(cfg, args.json)
        if args.command == "users":
            from .security.cli import run as users_run

            if args.users_command is None:
                parser.parse_args(["users", "--help"])
            _, cfg = _load(args, check_paths=False)
            return users_run(args, cfg)
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_CONFIG
    except PluginError as exc:
        _error(str(exc))
        return EXIT_FAILURE
    except UsersFileError as exc:
        _error(str(exc))
        return EXIT_FAILURE


def list_plugins(args) -> int:
    pm = get_plugin_manager()
    adapters = adapter_specs_with_origin(pm)
    backends = store_backends_with_origin(pm)
    if args.json:
        data = {
            "adapters": {
                name: {
                    "default_port": spec.default_port,
                    "origin": origin,
                    "description": spec.description,
                }
                for name, (spec, origin) in sorted(adapters.items())
            },
            "store_backends": {
                name: {"origin": origin, "description": spec.description}
                for name, (spec, origin) in sorted(backends.items())
            },
        }
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print("adapters:")
    if not adapters:
        print("  (none)")
    for name, (spec, origin) in sorted(adapters.items()):
        desc = f"  {spec.description}" if spec.description else ""
        print(f"  {name:<12} port {spec.default_port:<6} from {origin}{desc}")
    print("store backends:")
    for name, (spec, origin) in sorted(backends.items()):
        desc = f"  {spec.description}" if spec.description else ""
        print(f"  {name:<12} from {origin}{desc}")
    return EXIT_OK


def start_logging(level: str, fmt: str, stream=None) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        PredicateResult,
        globalLogBeginner,
        jsonFileLogObserver,
        textFileLogObserver,
    )

    from .service import is_port_noise

    def drop_port_noise(event: dict) -> PredicateResult:
        return PredicateResult.no if is_port_noise(event) else PredicateResult.maybe

    stream = stream or sys.stderr
    observer = jsonFileLogObserver(stream) if fmt == "json" else textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [drop_port_noise, predicate])], redirectStandardIO=False
    )


def describe_sources(path: str | None, sources: dict[str, str]) -> str:
    """``file polymq.toml, 2 keys from the environment, 1 from --set`` for the start banner."""
    parts = [f"file {path}"] if path else ["built-in defaults"]
    from_env = sum(1 for src in sources.values() if src.startswith("environment "))
    from_set = sum(1 for src in sources.values() if src == "--set")
    if from_env:
        parts.append(f"{from_env} key{'s' if from_env > 1 else ''} from the environment")
    if from_set:
        parts.append(f"{from_set} from --set")
    return ", ".join(parts)


def serve(args) -> int:
    overrides = list(args.overrides)
    if args.log_level:
        overrides.append(f"log.level={args.log_level}")
    if args.log_format:
        overrides.append(f"log.format={args.log_format}")
    sources: dict[str, str] = {}
    pm, cfg = _load(argparse.Namespace(config=args.config, overrides=overrides), True, sources)

    from .reactor import install

    reactor = install()

    from .service import BrokerService, StartupError

    start_logging(cfg["log"]["level"], cfg["log"]["format"])
    service = BrokerService(
        cfg,
        plugins=pm,
        reactor=reactor,
        port_file=args.port_file,
        config_source=describe_sources(args.config, sources),
    )
    outcome = {"code": EXIT_OK}

    def started_failed(failure):
        exc = failure.value
        if isinstance(exc, StartupError | ConfigError):
            _error(str(exc))
            outcome["code"] = EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILURE
        else:
            from twisted.logger import Logger

            Logger(namespace="polymq").failure("unexpected error during start", failure)
            _error(f"cannot start: {type(exc).__name__}: {exc}")
            outcome["code"] = EXIT_FAILURE
        if reactor.running:
            reactor.stop()

    def stop_failed(failure):
        _error(f"error during shutdown: {type(failure.value).__name__}: {failure.value}")
        outcome["code"] = EXIT_FAILURE

    def run():
        service.start().addErrback(started_failed)

    def shutdown():
        return service.stop().addErrback(stop_failed)

    reactor.callWhenRunning(run)
    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.run()
    return outcome["code"]
