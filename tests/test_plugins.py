"""Plugin manager, hook registration, default auth, and the service's lifecycle hooks."""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
from twisted.internet import protocol

from polymq.core import plugins as plugins_mod
from polymq.core.auth import Identity, Refusal
from polymq.core.config import load_config
from polymq.core.connection import CONNECTION_DEFAULTS
from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import (
    AdapterSpec,
    PluginError,
    StoreBackendSpec,
    adapter_specs,
    adapter_specs_with_origin,
    get_plugin_manager,
    store_backends,
    store_backends_with_origin,
)

BUILTINS_ONLY = ("polymq.plugins.auth", "polymq.plugins.stores")


def bare_pm():
    return get_plugin_manager(default_plugins=BUILTINS_ONLY, load_entry_points=False)


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class EchoPlugin:
    def __init__(self):
        self.started = []
        self.stopping = []
        self.sections = []

    def build(self, broker, section):
        self.sections.append(section)
        return protocol.ServerFactory.forProtocol(Echo)

    @hookimpl
    def polymq_adapters(self):
        return [AdapterSpec("echo", 7007, self.build, {"banner": "hi"}, "test echo")]

    @hookimpl
    def polymq_broker_started(self, broker):
        self.started.append(broker)

    @hookimpl
    def polymq_broker_stopping(self, broker):
        self.stopping.append(broker)


def test_default_plugins_list_names_every_builtin():
    for name in (
        "polymq.adapters.mqtt.plugin",
        "polymq.adapters.amqp.plugin",
        "polymq.adapters.kafka.plugin",
        "polymq.adapters.openwire.plugin",
        "polymq.plugins.auth",
        "polymq.plugins.stores",
    ):
        assert name in plugins_mod.DEFAULT_PLUGINS


def test_builtin_store_backends_register_through_the_hook():
    pm = bare_pm()
    backends = store_backends_with_origin(pm)
    assert set(backends) == {"memory", "sqlite", "postgres"}
    assert backends["memory"][1] == "polymq (built-in)"
    store = backends["memory"][0].factory({"backend": "memory", "data_dir": "x"})
    assert store.name == "memory"


def test_full_plugin_manager_loads():
    pm = get_plugin_manager()
    assert {"memory", "sqlite"} <= set(store_backends(pm))
    # Whatever built-in adapters exist already come with their standard ports.
    standard = {"amqp": 5672, "mqtt": 1883, "kafka": 9092, "openwire": 61616}
    for name, spec in adapter_specs(pm).items():
        if name in standard:
            assert spec.default_port == standard[name]


def test_runtime_plugin_shows_up_with_origin():
    pm = bare_pm()
    assert "echo" not in adapter_specs(pm)
    pm.register(EchoPlugin(), name="echo-plugin")
    specs = adapter_specs_with_origin(pm)
    spec, origin = specs["echo"]
    assert spec.default_port == 7007
    assert "registered at runtime" in origin and "test_plugins" in origin
    cfg = load_config(pm, environ={}, check_paths=False)
    assert cfg["adapters"]["echo"] == {
        "enabled": True,
        "host": "0.0.0.0",
        "port": 7007,
        **CONNECTION_DEFAULTS,  # a plugin's listener has the contract's keys too
        "tls_port": -1,  # a third-party adapter has no TLS port unless it names one
        "banner": "hi",
    }


def test_duplicate_adapter_name_is_an_error():
    pm = bare_pm()
    pm.register(EchoPlugin(), name="one")
    pm.register(EchoPlugin(), name="two")
    with pytest.raises(PluginError, match="'echo' is contributed twice"):
        adapter_specs(pm)


def test_third_party_store_backend():
    class TapeStore:
        @hookimpl
        def polymq_store_backends(self):
            return [StoreBackendSpec("tape", lambda section: section, {"reel": 1})]

    pm = bare_pm()
    pm.register(TapeStore())
    cfg = load_config(pm, overrides=["store.backend=tape", "store.reel=3"], environ={})
    assert cfg["store"]["reel"] == 3
    assert store_backends(pm)["tape"].factory(cfg["store"])["reel"] == 3


def test_missing_builtin_is_skipped_but_broken_one_is_an_error(tmp_path, monkeypatch):
    pm = get_plugin_manager(
        default_plugins=("polymq.adapters.nonexistent.plugin", *BUILTINS_ONLY),
        load_entry_points=False,
    )
    assert pm.get_plugin("polymq.adapters.nonexistent.plugin") is None
    assert pm.get_plugin("polymq.plugins.auth") is not None
    (tmp_path / "polymq_broken_plugin.py").write_text("import polymq_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="polymq_broken_plugin.*polymq_no_such_dependency"):
        get_plugin_manager(default_plugins=("polymq_broken_plugin",), load_entry_points=False)


@pytest.mark.parametrize(
    "user, password, expected",
    [
        ("guest", "guest", Identity("guest", "amqp")),
        (b"guest", b"guest", Identity("guest", "amqp")),
        # a client without a user name is guest, from loopback only (as RabbitMQ's ANONYMOUS)
        (None, None, Identity("guest", "amqp")),
        ("", None, Identity("guest", "amqp")),
    ],
)
def test_default_auth_lets_guest_and_anonymous_in_from_loopback(user, password, expected):
    pm = bare_pm()
    result = pm.hook.polymq_authenticate(
        protocol="amqp", username=user, password=password, peer=("127.0.0.1", 1), broker=_broker()
    )
    assert result == expected


def _broker():
    """A broker object as the auth hook sees it, without a users file (guest only)."""
    from types import SimpleNamespace

    return SimpleNamespace(config={"store": {"data_dir": "/nonexistent"}}, default_vhost="/")


@pytest.mark.parametrize("user, password", [("guest", "wrong"), ("guest", None), ("bob", "x")])
def test_default_auth_refuses_others(user, password):
    pm = bare_pm()
    hook = pm.hook.polymq_authenticate
    result = hook(
        protocol="mqtt", username=user, password=password, peer=("127.0.0.1", 1), broker=_broker()
    )
    assert isinstance(result, Refusal)
    assert result.reason


def test_third_party_auth_plugin_overrides_default():
    class OnlyAlice:
        @hookimpl
        def polymq_authenticate(self, protocol, username, password, peer):
            if username == "alice" and password == "s3cret":
                return Identity("alice", protocol)
            if username == "guest":
                return Refusal("guest is disabled")
            return None

    pm = bare_pm()
    pm.register(OnlyAlice())

    def hook(**kw):
        return pm.hook.polymq_authenticate(peer=("127.0.0.1", 1), broker=_broker(), **kw)

    assert hook(protocol="kafka", username="alice", password="s3cret") == Identity("alice", "kafka")
    assert hook(protocol="kafka", username="guest", password="guest") == Refusal(
        "guest is disabled"
    )
    # No opinion from the third party: the default plugin still decides.
    assert hook(protocol="kafka", username=None, password=None).user == "guest"


def test_broker_authenticate_goes_through_the_hook():
    from polymq.core.broker import Broker
    from polymq.core.store.memory import MemoryStore

    config = {"store": {"data_dir": "/nonexistent"}}
    broker = Broker(MemoryStore(), plugins=bare_pm(), config=config)
    local = ("127.0.0.1", 5)
    assert broker.authenticate("mqtt", "guest", "guest", local) == Identity("guest", "mqtt")
    assert isinstance(broker.authenticate("mqtt", "mallory", "x", local), Refusal)


@pytest_twisted.ensureDeferred
async def test_service_fires_lifecycle_hooks_and_listens(tmp_path):
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    from polymq.core.service import BrokerService

    pm = bare_pm()
    echo = EchoPlugin()
    pm.register(echo)
    cfg = load_config(
        pm,
        overrides=["store.backend=memory", "adapters.echo.port=0", "adapters.echo.host=127.0.0.1"],
        environ={},
    )
    port_file = tmp_path / "ports.json"
    service = BrokerService(cfg, plugins=pm, reactor=reactor, port_file=str(port_file))
    await service.start()
    assert echo.started == [service.broker]
    assert echo.sections[0]["banner"] == "hi"
    port = service.ports["echo"]
    assert port > 0
    assert json.loads(port_file.read_text()) == {"echo": port}

    def talk():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"ping")
            return s.recv(4)

    assert await deferToThread(talk) == b"ping"
    broker = service.broker
    await service.stop()
    assert echo.stopping == [broker]
    assert not port_file.exists()
    with pytest.raises(OSError):
        await deferToThread(socket.create_connection, ("127.0.0.1", port), 2)


@pytest_twisted.ensureDeferred
async def test_service_reports_port_in_use(tmp_path):
    from twisted.internet import reactor

    from polymq.core.service import BrokerService, StartupError

    pm = bare_pm()
    pm.register(EchoPlugin())
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        taken = blocker.getsockname()[1]
        cfg = load_config(
            pm,
            overrides=[
                "store.backend=memory",
                f"adapters.echo.port={taken}",
                "adapters.echo.host=127.0.0.1",
            ],
            environ={},
        )
        service = BrokerService(cfg, plugins=pm, reactor=reactor)
        with pytest.raises(StartupError, match=f"adapter echo: cannot listen on 127.0.0.1:{taken}"):
            await service.start()
    finally:
        blocker.close()
