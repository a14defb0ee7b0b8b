"""Broker configuration: TOML, every key with a default, overridable from env and command line.

Precedence, lowest first: built-in defaults, the config file, ``POLYMQ_<SECTION>__<KEY>``
environment variables, ``--set section.key=value`` options. The effective config is a plain
dict of dicts, validated before anything starts; every problem is a :class:`ConfigError` whose
one-line message names the offending key.
"""

from __future__ import annotations

import copy
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
        "max_deliveries": 0,
        "shutdown_timeout": 10.0,
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


class ConfigError(Exception):
    """A bad configuration; ``str()`` is one line naming the key."""

    def __init__(self, key: str | None, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"config error: {key}: {message}" if key else f"config error: {message}")


def default_config(plugins) -> dict:
    """The full default configuration for the adapters and backends the plugins provide."""
    cfg = copy.deepcopy(BASE_DEFAULTS)
    specs = adapter_specs(plugins)
    cfg["adapters"] = {name: _adapter_defaults(specs[name]) for name in sorted(specs)}
    return cfg


def _adapter_defaults(spec: AdapterSpec) -> dict:
    section = {"enabled": True, "host": "0.0.0.0", "port": spec.default_port}
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
) -> dict:
    """Effective, validated config: defaults < file < environment < ``--set`` overrides."""
    environ = os.environ if environ is None else environ
    raw_cfg: dict = {}
    raws: dict[str, str | None] = {}
    if path is not None:
        raw_cfg = read_file(path)
    for env_path, value, raw, _name in env_overrides(environ):
        _set_path(raw_cfg, env_path, value, raw, raws)
    for item in overrides:
        set_path, value, raw = parse_set(item)
        _set_path(raw_cfg, set_path, value, raw, raws)
    return validate(raw_cfg, plugins, raws=raws, check_paths=check_paths)


def validate(user: Mapping, plugins, raws: Mapping | None = None, check_paths: bool = True) -> dict:
    """Merge ``user`` over the defaults, checking every key and type; return the result."""
    raws = raws or {}
    specs = adapter_specs(plugins)
    backends = store_backends(plugins)
    cfg = default_config(plugins)

    for section, value in user.items():
        if section not in cfg:
            raise ConfigError(section, f"unknown section (known: {', '.join(sorted(cfg))})")
        if not isinstance(value, Mapping):
            raise ConfigError(section, f"must be a table, got {value!r}")

    for section in ("broker", "limits", "log"):
        _check_section(section, cfg[section], user.get(section, {}), raws)

    # Store: common keys plus the chosen backend's own keys.
    store_user = dict(user.get("store", {}))
    backend = store_user.get("backend", cfg["store"]["backend"])
    backend = _coerce("store.backend", "", backend, raws.get("store.backend"))
    if backend not in backends:
        raise ConfigError(
            "store.backend",
            f"unknown store backend {backend!r} (known: {', '.join(sorted(backends)) or 'none'})",
        )
    spec: StoreBackendSpec = backends[backend]
    cfg["store"].update(copy.deepcopy(spec.default_config))
    _check_section("store", cfg["store"], store_user, raws)

    # Adapters.
    adapters_user = user.get("adapters", {})
    for name, section in adapters_user.items():
        if name not in specs:
            raise ConfigError(
                f"adapters.{name}",
                f"unknown adapter {name!r} (known: {', '.join(sorted(specs)) or 'none'})",
            )
        if not isinstance(section, Mapping):
            raise ConfigError(f"adapters.{name}", f"must be a table, got {section!r}")
        _check_section(f"adapters.{name}", cfg["adapters"][name], section, raws)

    plugins_user = user.get("plugins", {})
    for name, section in plugins_user.items():
        if not isinstance(section, Mapping):
            raise ConfigError(f"plugins.{name}", f"must be a table, got {section!r}")
        cfg["plugins"][name] = copy.deepcopy(dict(section))

    _check_values(cfg)
    if check_paths:
        check_store_paths(cfg, backend)
    return cfg


def _check_section(name: str, defaults: dict, user: Mapping, raws: Mapping) -> None:
    for key, value in user.items():
        full = f"{name}.{key}"
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(full, f"unknown key (known keys in [{name}]: {known})")
        defaults[key] = _coerce(full, defaults[key], value, raws.get(full))


def _check_values(cfg: dict) -> None:
    used: dict[tuple[str, int], str] = {}
    for name, section in cfg["adapters"].items():
        port = section["port"]
        if not 0 <= port <= 65535:
            raise ConfigError(f"adapters.{name}.port", f"must be 0-65535, got {port}")
        if not section["host"]:
            raise ConfigError(f"adapters.{name}.host", "must not be empty")
        if section["enabled"] and port:
            other = used.get((section["host"], port))
            if other:
                raise ConfigError(
                    f"adapters.{name}.port", f"port {port} is already used by adapters.{other}"
                )
            used[(section["host"], port)] = name
    size = cfg["limits"]["max_message_size"]
    if size <= 0:
        raise ConfigError("limits.max_message_size", f"must be a positive integer, got {size}")
    timeout = cfg["broker"]["shutdown_timeout"]
    if not math.isfinite(timeout) or timeout < 0:
        raise ConfigError("broker.shutdown_timeout", f"must be >= 0 seconds, got {timeout}")
    if cfg["broker"]["max_deliveries"] < 0:
        raise ConfigError("broker.max_deliveries", "must be >= 0 (0 means no limit)")
    if not cfg["broker"]["default_vhost"]:
        raise ConfigError("broker.default_vhost", "must not be empty")
    if cfg["log"]["level"] not in LOG_LEVELS:
        raise ConfigError("log.level", f"must be one of {', '.join(LOG_LEVELS)}")
    if cfg["log"]["format"] not in ("text", "json"):
        raise ConfigError("log.format", "must be text or json")
    if not cfg["store"]["data_dir"]:
        raise ConfigError("store.data_dir", "must not be empty")


def check_store_paths(cfg: dict, backend: str | None = None) -> None:
    """Check that ``store.data_dir`` is (or can become) a readable, writable directory."""
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
    parent = os.path.dirname(data_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(
            "store.data_dir", f"cannot create {data_dir}: {parent} is not a directory"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError("store.data_dir", f"cannot create {data_dir}: {parent} is not writable")


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


def dump_toml(cfg: Mapping) -> str:
    """Write a config dict as TOML (tables of scalars and nested tables)."""
    lines: list[str] = []

    def table(prefix: list[str], data: Mapping) -> None:
        scalars = [(k, v) for k, v in data.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in data.items() if isinstance(v, Mapping)]
        if prefix and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in prefix) + "]")
        for key, value in scalars:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in tables:
            table([*prefix, key], value)

    table([], cfg)
    return "\n".join(lines) + "\n"
