"""Broker configuration: TOML, every key with a default, overridable from env and command line.

Precedence, lowest first: built-in defaults, the config file, ``POLYMQ_<SECTION>__<KEY>``
environment variables, ``--set section.key=value`` options. The effective config is a plain
dict of dicts, validated before anything starts. Validation goes on past the first problem: one
:class:`ConfigError` lists every problem found, one line each, naming the key and where its value
came from (the file, an environment variable or ``--set``).
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import tomllib
from collections.abc import Iterable, Mapping

from .plugins import AdapterSpec, StoreBackendSpec, adapter_specs, store_backends

ENV_PREFIX = "POLYMQ_"
ENV_SEPARATOR = "__"
ADAPTER_COMMON_KEYS = ("enabled", "host", "port")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

# Sections whose keys are fixed by polymq itself. ``adapters`` and ``store`` also take keys
# contributed by plugins; ``plugins`` is free-form (one table per plugin, unchecked).
BASE_DEFAULTS: dict[str, dict] = {
    "broker": {
        "default_vhost": "/",
        # vhosts created at start besides default_vhost (more through the management API)
        "vhosts": [],
        "max_deliveries": 0,
        "shutdown_timeout": 10.0,
        # scheduled delivery (core/scheduler.py): jobs kept in memory with a store that pages
        "scheduled_max_in_memory": 100_000,
    },
    "store": {
        "backend": "sqlite",
        "data_dir": "./polymq-data",
        # paging and stream retention (docs/storage.md)
        "paging": True,
        "queue_max_in_memory_length": 4096,
        "queue_max_in_memory_bytes": 8 * 1024 * 1024,
        "stream_max_in_memory_bytes": 4 * 1024 * 1024,
        "retention_bytes": -1,
        "retention_ms": -1,
        "retention_check_ms": 10000,
    },
    "limits": {
        "max_message_size": 16 * 1024 * 1024,
        # connections of every protocol together (0: no limit but the process's descriptors)
        "max_connections": 0,
        # bytes all connections together may hold in frames they have not finished sending;
        # the connection that asks for more is closed (0: no bound)
        "max_partial_frame_bytes": 256 * 1024 * 1024,
        # the resource alarm (docs/storage.md): a fraction of the machine's memory, or bytes
        "memory_high_watermark": 0.4,
        "disk_free_limit": 50 * 1000 * 1000,
        "alarm_check_ms": 1000,
    },
    "log": {
        "level": "info",
        "format": "text",
    },
    "plugins": {},
}


def _ha_defaults() -> dict[str, dict]:
    from .ha import HA_DEFAULTS

    return {"ha": copy.deepcopy(HA_DEFAULTS)}


def _security_defaults() -> dict[str, dict]:
    from .security.manager import SECURITY_DEFAULTS
    from .security.tls import TLS_DEFAULTS

    return {"security": copy.deepcopy(SECURITY_DEFAULTS), "tls": copy.deepcopy(TLS_DEFAULTS)}


class ConfigError(Exception):
    """A bad configuration; ``str()`` is one line per problem, each naming its key.

    ``key`` and ``message`` describe the first problem; ``problems`` holds every one of them as
    ``(key, message)`` pairs.
    """

    def __init__(
        self, key: str | None, message: str, more: Iterable[tuple[str | None, str]] = ()
    ) -> None:
        self.key = key
        self.message = message
        self.problems: list[tuple[str | None, str]] = [(key, message), *more]
        super().__init__("\n".join(_error_line(k, m) for k, m in self.problems))


def _error_line(key: str | None, message: str) -> str:
    return f"config error: {key}: {message}" if key else f"config error: {message}"


class _Problems:
    """Collects every problem of one validation run, each told with the source of its value."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources = sources
        self.found: list[tuple[str | None, str]] = []

    def add(self, key: str | None, message: str) -> None:
        source = self.sources.get(key) if key else None
        if source is None and key:
            # an unknown table such as adapters.nope gets the source of a key inside it
            source = next((src for k, src in self.sources.items() if k.startswith(key + ".")), None)
        self.found.append((key, f"{message} (from {source})" if source else message))

    def error(self, exc: ConfigError) -> None:
        for key, message in exc.problems:
            self.add(key, message)

    def raise_if_any(self) -> None:
        if self.found:
            (key, message), *more = self.found
            raise ConfigError(key, message, more)


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'port'?)`` for a close match among ``known``, else an empty string."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def default_config(plugins) -> dict:
    """The full default configuration for the adapters and backends the plugins provide."""
    cfg = copy.deepcopy(BASE_DEFAULTS)
    cfg.update(_security_defaults())
    cfg.update(_ha_defaults())
    specs = adapter_specs(plugins)
    cfg["adapters"] = {name: _adapter_defaults(specs[name]) for name in sorted(specs)}
    for sections in plugins.hook.polymq_config_sections():
        for name, defaults in (sections or {}).items():
            cfg.setdefault(name, copy.deepcopy(dict(defaults)))
    return cfg


def _adapter_defaults(spec: AdapterSpec) -> dict:
    from .connection import CONNECTION_DEFAULTS

    # every listener has the connection contract's keys; an adapter may override any default
    from .security.tls import DEFAULT_TLS_PORTS

    section = {"enabled": True, "host": "0.0.0.0", "port": spec.default_port}
    section.update(CONNECTION_DEFAULTS)
    # the TLS listener's port (-1: none); it listens only when [tls] certfile is set
    section["tls_port"] = DEFAULT_TLS_PORTS.get(spec.name, -1)
    section.update(copy.deepcopy(spec.default_config))
    return section


def _typename(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _coerce(key: str, default, value, raw: str | None = None):
    """Check ``value`` against the type of ``default``; ``raw`` is the unparsed override text."""
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if raw is not None:  # --set broker.default_vhost=1 means the string "1"
            return raw
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ConfigError(key, f"must be {_typename(default)}, got {value!r}")


def parse_value(text: str):
    """Parse an override value as a TOML value, falling back to the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(item: str) -> tuple[list[str], object, str]:
    """Split ``a.b.c=value`` into (["a","b","c"], parsed value, raw text)."""
    if "=" not in item:
        raise ConfigError(None, f"--set {item!r}: expected KEY=VALUE, e.g. adapters.mqtt.port=1883")
    key, raw = item.split("=", 1)
    path = [part.strip() for part in key.strip().split(".")]
    if len(path) < 2 or not all(path):
        raise ConfigError(key.strip() or None, "expected a dotted key such as adapters.mqtt.port")
    return path, parse_value(raw.strip()), raw.strip()


def env_overrides(environ: Mapping[str, str]) -> list[tuple[list[str], object, str, str]]:
    """``POLYMQ_ADAPTERS__MQTT__PORT=1`` -> (["adapters","mqtt","port"], 1, "1", env name)."""
    found = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR)]
        if not all(path):
            raise ConfigError(name, "empty key part in environment override")
        raw = environ[name]
        found.append((path, parse_value(raw), raw, name))
    return found


def _set_path(cfg: dict, path: list[str], value, raw: str | None, raws: dict) -> None:
    node = cfg
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(path), f"{part!r} is not a table")
        node = child
    node[path[-1]] = value
    raws[".".join(path)] = raw


def _merge(target: dict, source: Mapping, prefix: str = "") -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value, f"{prefix}{key}.")
        else:
            target[key] = copy.deepcopy(value) if isinstance(value, dict | list) else value


def _leaf_keys(data: Mapping, prefix: str = "") -> Iterable[str]:
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def read_file(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(None, f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(None, f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(None, f"{path} is not valid TOML: {exc}") from None


def load_config(
    plugins,
    path: str | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    check_paths: bool = True,
    sources: dict[str, str] | None = None,
) -> dict:
    """Effective, validated config: defaults < file < environment < ``--set`` overrides.

    ``sources``, when given, is filled with where each key that is not a default came from
    ("file polymq.toml", "environment POLYMQ_...", "--set").
    """
    environ = os.environ if environ is None else environ
    sources = {} if sources is None else sources
    problems = _Problems(sources)
    raw_cfg: dict = {}
    raws: dict[str, str | None] = {}
    if path is not None:
        raw_cfg = read_file(path)
        for key in _leaf_keys(raw_cfg):
            sources[key] = f"file {path}"
    try:
        found_env = env_overrides(environ)
    except ConfigError as exc:
        problems.error(exc)
        found_env = []
    for env_path, value, raw, name in found_env:
        try:
            _set_path(raw_cfg, env_path, value, raw, raws)
            sources[".".join(env_path)] = f"environment {name}"
        except ConfigError as exc:
            problems.error(exc)
    for item in overrides:
        try:
            set_path, value, raw = parse_set(item)
            _set_path(raw_cfg, set_path, value, raw, raws)
            sources[".".join(set_path)] = "--set"
        except ConfigError as exc:
            problems.error(exc)
    try:
        cfg = validate(raw_cfg, plugins, raws=raws, check_paths=check_paths, sources=sources)
    except ConfigError as exc:
        problems.found.extend(exc.problems)  # already told with their sources
    problems.raise_if_any()
    return cfg


def validate(
    user: Mapping,
    plugins,
    raws: Mapping | None = None,
    check_paths: bool = True,
    sources: Mapping[str, str] | None = None,
) -> dict:
    """Merge ``user`` over the defaults, checking every key and type; return the result.

    Every problem found is reported in one :class:`ConfigError`.
    """
    raws = raws or {}
    problems = _Problems(sources or {})
    specs = adapter_specs(plugins)
    backends = store_backends(plugins)
    cfg = default_config(plugins)

    for section, value in user.items():
        if section not in cfg:
            problems.add(
                section,
                f"unknown section{did_you_mean(section, cfg)} (known: {', '.join(sorted(cfg))})",
            )
        elif not isinstance(value, Mapping):
            problems.add(section, f"must be a table, got {value!r}")

    def user_table(section: str) -> Mapping:
        value = user.get(section, {})
        return value if isinstance(value, Mapping) else {}

    for section in ("broker", "limits", "log", "security", "tls"):
        _check_section(section, cfg[section], user_table(section), raws, problems)
    for section in sorted(set(cfg) - set(BASE_DEFAULTS) - {"adapters"}):  # plugins' sections
        _check_section(section, cfg[section], user_table(section), raws, problems)

    # Store: common keys plus the chosen backend's own keys.
    store_user = dict(user_table("store"))
    backend = store_user.get("backend", cfg["store"]["backend"])
    try:
        backend = _coerce("store.backend", "", backend, raws.get("store.backend"))
    except ConfigError as exc:
        problems.error(exc)
        backend = cfg["store"]["backend"]
    spec: StoreBackendSpec | None = backends.get(backend)
    if spec is None:
        problems.add(
            "store.backend",
            f"unknown store backend {backend!r}{did_you_mean(backend, backends)} "
            f"(known: {', '.join(sorted(backends)) or 'none'})",
        )
        store_user.pop("backend", None)
        # the backend's own keys cannot be checked without it: only the common ones are
        store_user = {k: v for k, v in store_user.items() if k in cfg["store"]}
    else:
        cfg["store"].update(copy.deepcopy(spec.default_config))
    _check_section("store", cfg["store"], store_user, raws, problems)

    # Adapters.
    adapters_user = user_table("adapters")
    for name, section in adapters_user.items():
        if name not in specs:
            problems.add(
                f"adapters.{name}",
                f"unknown adapter {name!r}{did_you_mean(name, specs)} "
                f"(known: {', '.join(sorted(specs)) or 'none'})",
            )
        elif not isinstance(section, Mapping):
            problems.add(f"adapters.{name}", f"must be a table, got {section!r}")
        else:
            _check_section(f"adapters.{name}", cfg["adapters"][name], section, raws, problems)

    plugins_user = user_table("plugins")
    for name, section in plugins_user.items():
        if not isinstance(section, Mapping):
            problems.add(f"plugins.{name}", f"must be a table, got {section!r}")
        else:
            cfg["plugins"][name] = copy.deepcopy(dict(section))

    _check_values(cfg, problems)
    if spec is not None and spec.check is not None:
        for key, message in spec.check(dict(cfg["store"])):
            problems.add(f"store.{key}", message)
    if check_paths and spec is not None:
        try:
            check_store_paths(cfg, backend)
        except ConfigError as exc:
            problems.error(exc)
    problems.raise_if_any()
    return cfg


# keys that moved: the old spelling is refused with the new one named
MOVED_KEYS = {
    "adapters.amqp.memory_high_watermark": "limits.memory_high_watermark (a fraction of "
    "memory, or bytes of the broker's resident memory; one alarm for every protocol)",
}


def _check_section(
    name: str, defaults: dict, user: Mapping, raws: Mapping, problems: _Problems
) -> None:
    for key, value in user.items():
        full = f"{name}.{key}"
        if full in MOVED_KEYS:
            problems.add(full, f"this setting moved to {MOVED_KEYS[full]}")
            continue
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            problems.add(
                full, f"unknown key{did_you_mean(key, defaults)} (known keys in [{name}]: {known})"
            )
            continue
        try:
            defaults[key] = _coerce(full, defaults[key], value, raws.get(full))
        except ConfigError as exc:
            problems.error(exc)


def _check_values(cfg: dict, problems: _Problems) -> None:
    used: dict[tuple[str, int], str] = {}
    for name, section in cfg["adapters"].items():
        port = section["port"]
        if not 0 <= port <= 65535:
            problems.add(f"adapters.{name}.port", f"must be 0-65535, got {port}")
        tls_port = section.get("tls_port", -1)
        if not -1 <= tls_port <= 65535:
            problems.add(f"adapters.{name}.tls_port", f"must be 0-65535 (-1: none), got {tls_port}")
        ws_port = section.get("websocket_port", -1)
        if not -1 <= ws_port <= 65535:
            problems.add(
                f"adapters.{name}.websocket_port", f"must be 0-65535 (-1: none), got {ws_port}"
            )
        if not section["host"]:
            problems.add(f"adapters.{name}.host", "must not be empty")
        if section["enabled"] and port:
            other = used.get((section["host"], port))
            if other:
                problems.add(
                    f"adapters.{name}.port", f"port {port} is already used by adapters.{other}"
                )
            used[(section["host"], port)] = name
    from .security.tls import check_tls_section

    for key, message in check_tls_section(cfg["tls"]):
        problems.add(f"tls.{key}", message)
    size = cfg["limits"]["max_message_size"]
    if size <= 0:
        problems.add("limits.max_message_size", f"must be a positive integer, got {size}")
    timeout = cfg["broker"]["shutdown_timeout"]
    if not math.isfinite(timeout) or timeout < 0:
        problems.add("broker.shutdown_timeout", f"must be >= 0 seconds, got {timeout}")
    if cfg["broker"]["max_deliveries"] < 0:
        problems.add("broker.max_deliveries", "must be >= 0 (0 means no limit)")
    if not cfg["broker"]["default_vhost"]:
        problems.add("broker.default_vhost", "must not be empty")
    if cfg["log"]["level"] not in LOG_LEVELS:
        problems.add("log.level", f"must be one of {', '.join(LOG_LEVELS)}")
    if cfg["log"]["format"] not in ("text", "json"):
        problems.add("log.format", "must be text or json")
    if not cfg["store"]["data_dir"]:
        problems.add("store.data_dir", "must not be empty")
    from .ha import check as check_ha

    for key, message in check_ha(cfg["ha"]):
        problems.add(f"ha.{key}", message)
    if cfg["ha"]["enabled"] and cfg["store"]["backend"] != "postgres":
        problems.add("ha.enabled", 'needs store.backend = "postgres" (the shared store)')


def check_store_paths(cfg: dict, backend: str | None = None) -> None:
    """Check that ``store.data_dir`` is (or can become) a readable, writable directory.

    A directory that does not exist yet is created and removed again: permission bits alone
    do not tell whether a directory can be made there (root may "write" to /proc).
    """
    backend = backend or cfg["store"]["backend"]
    if backend == "memory":
        return
    data_dir = os.path.abspath(cfg["store"]["data_dir"])
    if os.path.exists(data_dir):
        if not os.path.isdir(data_dir):
            raise ConfigError("store.data_dir", f"{data_dir} exists and is not a directory")
        if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigError("store.data_dir", f"{data_dir} is not readable and writable")
        return
    missing = data_dir
    parent = os.path.dirname(missing)
    while not os.path.exists(parent):
        missing, parent = parent, os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(
            "store.data_dir", f"cannot create {data_dir}: {parent} is not a directory"
        )
    try:
        os.mkdir(missing)
    except OSError as exc:
        raise ConfigError(
            "store.data_dir", f"cannot create {data_dir}: {exc.strerror or exc}"
        ) from None
    try:
        os.rmdir(missing)
    except OSError:
        pass


def enabled_adapters(cfg: dict) -> list[str]:
    return [name for name, section in cfg["adapters"].items() if section["enabled"]]


# -- TOML output ----------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return _toml_value(key)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        out = value.replace("\\", "\\\\").replace('"', '\\"')
        out = out.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
        return f'"{out}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + (f" {items} " if items else "") + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(cfg: Mapping, sources: Mapping[str, str] | None = None) -> str:
    """Write a config dict as TOML (tables of scalars and nested tables).

    ``sources`` maps dotted keys to where their value came from; each such key gets a
    ``# from ...`` comment on its line.
    """
    sources = sources or {}
    lines: list[str] = []

    def table(prefix: list[str], data: Mapping) -> None:
        scalars = [(k, v) for k, v in data.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in data.items() if isinstance(v, Mapping)]
        if prefix and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in prefix) + "]")
        for key, value in scalars:
            line = f"{_toml_key(key)} = {_toml_value(value)}"
            source = sources.get(".".join([*prefix, key]))
            lines.append(f"{line}  # from {source}" if source else line)
        for key, value in tables:
            table([*prefix, key], value)

    table([], cfg)
    return "\n".join(lines) + "\n"
