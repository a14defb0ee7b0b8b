"""The plugin manager: built-in plugins first, then third-party ones from entry points.

Built-in adapters, stores and the default auth plugin register through exactly the hooks a
third-party package uses (the ``DEFAULT_PLUGINS`` pattern of datasette). Third-party packages
declare an entry point in the ``polymq`` group naming a module (or object) with hook
implementations.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy
from twisted.logger import Logger

from . import hookspecs
from .hookspecs import hookimpl

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "AdapterSpec",
    "PluginError",
    "StoreBackendSpec",
    "adapter_specs",
    "get_plugin_manager",
    "hookimpl",
    "plugin_origin",
    "store_backends",
]

log = Logger(namespace="polymq.plugins")

ENTRY_POINT_GROUP = "polymq"
BUILTIN_ORIGIN = "polymq (built-in)"

DEFAULT_PLUGINS = (
    "polymq.adapters.mqtt.plugin",
    "polymq.adapters.amqp.plugin",
    "polymq.adapters.kafka.plugin",
    "polymq.adapters.openwire.plugin",
    "polymq.adapters.any.plugin",
    "polymq.plugins.auth",
    "polymq.plugins.stores",
    "polymq.plugins.management",
)


class PluginError(Exception):
    """A plugin could not be loaded or contributed something inconsistent."""


@dataclass
class AdapterSpec:
    """A wire protocol contributed by a plugin through ``polymq_adapters``.

    ``build_factory(broker, section)`` returns a ``twisted.internet.protocol.ServerFactory``;
    ``section`` is the effective ``[adapters.<name>]`` config table. ``default_config`` holds
    the adapter's own keys with their defaults (their types are enforced by config validation);
    it may also set ``enabled`` (built-in adapters are on unless disabled, a plugin may choose
    ``"enabled": False`` so that it only listens when the config turns it on).
    """

    name: str
    default_port: int
    build_factory: Callable[[Any, dict], Any]
    default_config: dict = field(default_factory=dict)
    description: str = ""
    # looks_like(first_bytes) -> True (this protocol), False (not it) or None (more bytes
    # needed): lets the any-protocol listener hand a connection to this adapter, and a
    # listener tell a client that it speaks another protocol on the wrong port
    looks_like: Callable[[bytes], bool | None] | None = None


@dataclass
class StoreBackendSpec:
    """A storage backend contributed through ``polymq_store_backends``.

    ``factory(section)`` receives the ``[store]`` config table and returns an unopened IStore.
    ``default_config`` lists the backend-specific keys accepted in ``[store]`` and their defaults.
    ``check(section)``, if given, returns ``(key, message)`` for every value the backend would
    refuse, so that ``polymq config check`` rejects what ``serve`` would.
    """

    name: str
    factory: Callable[[dict], Any]
    default_config: dict = field(default_factory=dict)
    description: str = ""
    check: Callable[[dict], list[tuple[str, str]]] | None = None


def _is_missing(module: str, exc: ModuleNotFoundError) -> bool:
    """True when ``exc`` says ``module`` itself (or one of its packages) does not exist."""
    missing = exc.name or ""
    return missing == module or (missing.startswith("polymq.") and module.startswith(missing + "."))


def get_plugin_manager(
    default_plugins: tuple[str, ...] | list[str] = DEFAULT_PLUGINS,
    load_entry_points: bool = True,
) -> pluggy.PluginManager:
    """Build a plugin manager with the built-in plugins and the installed third-party ones.

    A built-in module that does not exist (yet) is skipped with a debug log line; any other
    import error is raised as :class:`PluginError` with a one-line explanation.
    """
    pm = pluggy.PluginManager("polymq")
    pm.add_hookspecs(hookspecs)
    pm.polymq_origins = {}  # plugin object -> "distribution version" or BUILTIN_ORIGIN
    for module_name in default_plugins:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if _is_missing(module_name, exc):
                log.debug("built-in plugin {module} not present, skipped", module=module_name)
                continue
            raise PluginError(f"cannot load built-in plugin {module_name}: {exc}") from exc
        except Exception as exc:
            raise PluginError(f"cannot load built-in plugin {module_name}: {exc!r}") from exc
        pm.register(module, name=module_name)
        pm.polymq_origins[module] = BUILTIN_ORIGIN
    if load_entry_points:
        _load_entry_points(pm)
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            dist = ep.dist.name if ep.dist else "?"
            raise PluginError(
                f"cannot load plugin {ep.name!r} ({ep.value}) from {dist}: {exc!r}"
            ) from exc
        pm.register(plugin, name=ep.name)
        if ep.dist is not None:
            pm.polymq_origins[plugin] = f"{ep.dist.name} {ep.dist.version}"
        else:
            pm.polymq_origins[plugin] = ep.value


def plugin_origin(pm: pluggy.PluginManager, plugin: object) -> str:
    """Where a registered plugin came from: a distribution and version, or "polymq (built-in)"."""
    origins = getattr(pm, "polymq_origins", {})
    if plugin in origins:
        return origins[plugin]
    if isinstance(plugin, type(importlib)):
        module = plugin.__name__
    else:
        module = getattr(plugin, "__module__", None) or type(plugin).__module__
    return f"registered at runtime ({module})"


def _collect(pm: pluggy.PluginManager, hook_name: str, kind: str) -> dict[str, tuple[Any, str]]:
    """Call ``hook_name`` on each plugin separately so each contribution keeps its origin."""
    found: dict[str, tuple[Any, str]] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):  # registration order
        origin = plugin_origin(pm, impl.plugin)
        for spec in impl.function() or ():
            if spec.name in found:
                raise PluginError(
                    f"{kind} {spec.name!r} is contributed twice: by {found[spec.name][1]} "
                    f"and by {origin}"
                )
            found[spec.name] = (spec, origin)
    return found


def adapter_specs(pm: pluggy.PluginManager) -> dict[str, AdapterSpec]:
    """Every adapter the registered plugins contribute, by name."""
    return {name: spec for name, (spec, _) in adapter_specs_with_origin(pm).items()}


def adapter_specs_with_origin(pm: pluggy.PluginManager) -> dict[str, tuple[AdapterSpec, str]]:
    return _collect(pm, "polymq_adapters", "adapter")


def store_backends(pm: pluggy.PluginManager) -> dict[str, StoreBackendSpec]:
    """Every store backend the registered plugins contribute, by name."""
    return {name: spec for name, (spec, _) in store_backends_with_origin(pm).items()}


def store_backends_with_origin(
    pm: pluggy.PluginManager,
) -> dict[str, tuple[StoreBackendSpec, str]]:
    return _collect(pm, "polymq_store_backends", "store backend")
