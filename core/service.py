"""The Twisted service that owns the broker core and one listener per enabled adapter."""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import socket
import tempfile

from twisted.application.service import MultiService
from twisted.internet import defer, error
from twisted.logger import Logger

from . import __version__
from .config import enabled_adapters
from .plugins import BUILTIN_ORIGIN, adapter_specs, get_plugin_manager, store_backends

# Other brokers that listen on the standard ports by default: named in a port clash's hint.
USUAL_OCCUPANTS = {5672: "RabbitMQ", 1883: "Mosquitto", 9092: "Kafka", 61616: "ActiveMQ"}

# Twisted's own lines for every listening port ("MqttFactory starting on 1883",
# "(TCP Port 1883 Closed)"); the banner and the shutdown line say the same once.
_PORT_NOISE = re.compile(r"^(\S+( \(TLS\))? starting on \d+|\((TCP|UDP|UNIX) Port \S+ Closed\))$")


def is_port_noise(event: dict) -> bool:
    """True for Twisted's per-port start and close log events, which polymq replaces."""
    if event.get("log_namespace") != "log_legacy":
        return False
    text = event.get("log_text")
    if text is None:
        message = event.get("message") or ()
        text = " ".join(str(part) for part in message)
    return bool(_PORT_NOISE.match(text))


# A TLS listener's name: the adapter's name with this suffix ("mqtt+tls"), in the port file too.
TLS_SUFFIX = "+tls"
WS_SUFFIX = "+ws"  # the WebSocket listener of an adapter (core/websocket.py)


class StartupError(Exception):
    """The broker could not start (store did not open, a port could not be bound ...)."""


class _ConnectionTracker:
    """Knows the live connections of one listener so shutdown can close them.

    Only ``buildProtocol`` and ``connectionLost`` are wrapped, once per connection; nothing is
    added to the per-byte path.
    """

    def __init__(self, factory) -> None:
        self.factory = factory
        self.protocols: set = set()
        self._waiters: list[defer.Deferred] = []
        original = factory.buildProtocol

        def buildProtocol(addr):
            proto = original(addr)
            if proto is not None:
                self._track(proto)
            return proto

        factory.buildProtocol = buildProtocol

    def _track(self, proto) -> None:
        self.protocols.add(proto)
        lost = proto.connectionLost

        def connectionLost(reason):
            try:
                return lost(reason)
            finally:
                self.protocols.discard(proto)
                if not self.protocols:
                    waiters, self._waiters = self._waiters, []
                    for d in waiters:
                        d.callback(None)

        proto.connectionLost = connectionLost

    def close_all(self, clock, timeout: float) -> defer.Deferred:
        """Close every connection (flushing writes); abort what is still open after ``timeout``."""
        if not self.protocols:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        for proto in list(self.protocols):
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.loseConnection()

        def abort():
            for proto in list(self.protocols):
                transport = getattr(proto, "transport", None)
                if transport is not None and hasattr(transport, "abortConnection"):
                    transport.abortConnection()

        call = clock.callLater(timeout, abort)

        def cancel(result):
            if call.active():
                call.cancel()
            return result

        d.addBoth(cancel)
        return d


class BrokerService(MultiService):
    """Builds the store and the :class:`~polymq.core.broker.Broker` from an effective config,
    starts it, then listens on every enabled adapter's port.

    ``start()`` returns a Deferred that fails with :class:`StartupError` (or a ConfigError) when
    the broker cannot start; ``startService`` (used by ``twist``) logs such a failure and stops
    the reactor. ``ports`` maps adapter names to the ports actually bound (useful with port 0).
    """

    log = Logger(namespace="polymq.service")

    def __init__(
        self,
        config: dict,
        plugins=None,
        reactor=None,
        port_file: str | None = None,
        config_source: str = "",
    ):
        super().__init__()
        self.config_source = config_source
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.plugins = plugins if plugins is not None else get_plugin_manager()
        self.port_file = port_file
        self.broker = None
        self.store = None
        self.ports: dict[str, int] = {}
        self._listeners: dict[str, object] = {}
        self._trackers: dict[str, _ConnectionTracker] = {}
        self._starting: defer.Deferred | None = None
        self._stopping: defer.Deferred | None = None
        self._broker_started = False
        self.security = None
        self.tls_creator = None
        self.ha = None  # the HaNode when ha.enabled (core/ha.py)

    # -- start ----------------------------------------------------------------------------

    def startService(self):
        super().startService()
        # Under twist the service starts before the reactor runs and installs its signal
        # handlers: start (and announce readiness through the port file) only once it runs,
        # so that a SIGTERM right after the port file appears still shuts down cleanly.
        self.reactor.callWhenRunning(self._start_as_service)

    def _start_as_service(self) -> None:
        d = self.start()

        def failed(failure):
            self.log.critical("polymq failed to start: {error}", error=_describe(failure.value))
            if self.reactor.running:
                self.reactor.stop()

        d.addErrback(failed)

    def start(self) -> defer.Deferred:
        if self._starting is None:
            self._starting = defer.ensureDeferred(self._start())
        return self._starting

    async def _start(self) -> None:
        from .broker import Broker

        cfg = self.config
        store_cfg = cfg["store"]
        self.log.info(
            "polymq {version} starting; config: {source}",
            version=__version__,
            source=self.config_source or "built-in defaults",
        )
        self._check_ports()
        if cfg["ha"]["enabled"] and not await self._wait_for_lease():
            return  # stopped while standby
        backend = store_backends(self.plugins)[store_cfg["backend"]]
        # backends that keep nothing in data_dir (the postgres store names its database itself)
        uses_dir = store_cfg["backend"] not in ("memory", "postgres")
        data_dir = os.path.abspath(store_cfg["data_dir"])
        where = f" in {data_dir}" if uses_dir else ""
        try:
            if uses_dir:
                os.makedirs(data_dir, exist_ok=True)
            self.store = backend.factory(dict(store_cfg))
            if self.ha is not None:
                self.ha.install(self.store)
                self.store.on_fatal = lambda exc: self._lease_lost(f"store write failed: {exc}")
            self.broker = Broker(self.store, plugins=self.plugins, config=cfg, clock=self.reactor)
            self.broker.ha = self.ha
        except Exception as exc:
            raise StartupError(
                f"cannot open store {store_cfg['backend']!r}{where}: {_describe(exc)}"
            ) from exc
        try:
            await self.broker.start()
        except Exception as exc:
            try:
                await defer.maybeDeferred(self.store.close)
            except Exception:
                pass
            raise StartupError(
                f"cannot open store {store_cfg['backend']!r}{where}: {_describe(exc)}"
            ) from exc
        self._broker_started = True
        try:
            self._install_security()
        except Exception as exc:
            await self._shutdown()
            raise StartupError(_describe(exc)) from exc
        self._limit_descriptors()
        if store_cfg["backend"] == "memory":
            self.log.info("store: memory (nothing is kept across restarts)")
        elif not uses_dir:
            self.log.info("store: {backend}", backend=store_cfg["backend"])
        else:
            self.log.info(
                "store: {backend}, data in {data_dir}",
                backend=store_cfg["backend"],
                data_dir=data_dir,
            )
        self.log.info("auth: {policy}", policy=self._auth_policy())
        try:
            await self._listen()
        except BaseException:
            await self._shutdown()
            raise
        self._write_port_file()
        _tune_gc()
        self.plugins.hook.polymq_broker_started(broker=self.broker)
        self.log.info(
            "polymq ready: {listeners}",
            listeners=", ".join(f"{n} {self._address(n)}" for n in self.ports) or "no listeners",
        )

    async def _wait_for_lease(self) -> bool:
        """Standby until this node holds the lease (client ports stay closed); False when the
        service was stopped first."""
        from .ha import HaNode

        store_cfg = self.config["store"]
        self.ha = HaNode(
            self.config["ha"],
            store_cfg["dsn"],
            store_cfg.get("schema", "polymq"),
            reactor=self.reactor,
            on_lost=self._lease_lost,
            openwire_url=self._openwire_url(),
        )
        self.log.info(
            "ha: node {node} is standby until it holds the lease; client ports stay closed",
            node=self.ha.node_id,
        )
        epoch = await self.ha.acquire()
        return epoch is not None

    def _openwire_url(self) -> str | None:
        """Where OpenWire clients reach this node (told to them by the active node)."""
        section = self.config["adapters"].get("openwire")
        if not section or not section["enabled"] or not section["port"]:
            return None
        host = self.config["ha"]["advertised_host"] or section["host"]
        if host in ("", "0.0.0.0", "::"):
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"tcp://{host}:{section['port']}"

    def _lease_lost(self, reason: str) -> None:
        """Another node is (or may be) active: stop serving at once, then restart as standby
        (or exit, ``ha.on_lease_lost``). Nothing here waits: what this node holds in memory
        may already be stale, and the store refuses its writes (fencing)."""
        import sys

        from .ha import EXIT_LEASE_LOST

        for port in self._listeners.values():
            try:
                port.stopListening()
            except Exception:
                pass
        aborted = 0
        for tracker in self._trackers.values():
            for proto in list(tracker.protocols):
                transport = getattr(proto, "transport", None)
                if transport is not None and hasattr(transport, "abortConnection"):
                    transport.abortConnection()
                    aborted += 1
        if self.port_file:
            try:
                os.unlink(self.port_file)
            except OSError:
                pass
        how = self.config["ha"]["on_lease_lost"]
        self.log.critical(
            "ha: stepping down ({reason}); listeners closed, {n} connections aborted; {how}",
            reason=reason,
            n=aborted,
            how="restarting as standby" if how == "restart" else "exiting",
        )
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if how == "restart":
            argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
            os.execv(sys.executable, [sys.executable, *argv[1:]])
        os._exit(EXIT_LEASE_LOST)

    def _limit_descriptors(self) -> None:
        from .registry import descriptor_limits, registry_of

        registry = registry_of(self.broker)
        alarm = getattr(self.broker, "alarm", None)
        if alarm is not None:
            # the memory and disk alarm holds publishers of every protocol back
            alarm.add_observer(
                lambda blocked, reason: registry.set_publishing_blocked(
                    blocked, reason, source="resource alarm"
                )
            )
        if hasattr(self.store, "on_availability"):
            # a store whose database is away answers writes negatively: hold publishers back
            self.store.on_availability = lambda available, reason: registry.set_publishing_blocked(
                not available, reason, source="store"
            )
        before, now, budget = descriptor_limits()
        registry.descriptor_budget = budget
        self.log.info(
            "file descriptors: soft limit {before} raised to {now} (hard limit); up to {budget} "
            "connections, the rest kept for the store",
            before=before,
            now=now,
            budget=budget,
        )

    def _install_security(self) -> None:
        """Users, permissions and TLS certificates, loaded before any listener opens (a bad
        users file or certificate stops the start with the reason)."""
        from .security import security_of
        from .security.tls import ReloadingServerCreator

        manager = security_of(self.broker)
        manager.start(self.reactor)
        self.security = manager
        self.tls_creator = None
        if self.config["tls"]["certfile"]:
            self.tls_creator = ReloadingServerCreator(self.config["tls"])
            self.tls_creator.start(self.reactor)

    def _address(self, name: str) -> str:
        host = self.config["adapters"][_base_name(name)]["host"]
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.ports[name]}"

    def _auth_policy(self) -> str:
        """Who may log in, as far as the registered auth plugins tell."""
        origins = getattr(self.plugins, "polymq_origins", {})
        others = [
            origins.get(impl.plugin, getattr(impl.plugin, "__name__", repr(impl.plugin)))
            for impl in self.plugins.hook.polymq_authenticate.get_hookimpls()
            if origins.get(impl.plugin) != BUILTIN_ORIGIN
        ]
        sec = self.config["security"]
        manager = getattr(self, "security", None)
        where = manager.path if manager is not None else "the users file"
        exists = manager is not None and os.path.exists(manager.path)
        anonymous = (
            "clients without a user name are let in from every address"
            if sec["allow_anonymous"]
            else f"clients without a user name log in as {sec['anonymous_user']!r} (loopback only)"
            if sec["anonymous_user"]
            else "a user name is required"
        )
        loopback = ", ".join(sec["loopback_users"]) or "nobody"
        builtin = (
            f"users of {where}{'' if exists else ' (not created yet: guest/guest only)'}; "
            f"loopback only: {loopback}; {anonymous}"
        )
        if not others:
            return builtin
        return f"asked first: {', '.join(others)}; then the {builtin}"

    def _login(self, name: str, section: dict) -> str:
        if name == "kafka" and not section.get("sasl", True):
            return "no SASL (adapters.kafka.sasl = false: every client is one without a user name)"
        if name == "kafka":
            plain = (
                "PLAIN"
                if self.config["security"]["sasl_plain_without_tls"]
                else "PLAIN over TLS only"
            )
            return f"SASL SCRAM-SHA-256/512, {plain}, checked by the auth policy"
        return "login checked by the auth policy"

    def _check_ports(self) -> None:
        """Bind each listener's address briefly before anything opens, so that every clash is
        reported at once, with the setting that moves it, instead of the first one only."""
        clashes = []
        tls_on = bool(self.config["tls"]["certfile"])
        for name, host, port in self._listen_addresses(tls_on):
            if not port:
                continue
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            probe = socket.socket(family, socket.SOCK_STREAM)
            try:
                # as Twisted's listening sockets do, so a port in TIME_WAIT is no clash
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            except OSError as exc:
                base = _base_name(name)
                text = _clash(base, host, port, exc)
                if name.endswith(WS_SUFFIX):
                    text = _websocket_clash(text, base)
                elif base != name:
                    text = text.replace(f"{base}.port=", f"{base}.tls_port=").replace(
                        f"__{base.upper()}__PORT", f"__{base.upper()}__TLS_PORT"
                    )
                clashes.append(text)
            finally:
                probe.close()
        if clashes:
            raise StartupError("\n".join(clashes))

    def _listen_addresses(self, tls_on: bool) -> list[tuple[str, str, int]]:
        """(listener name, host, port) of every plain and TLS listener that will open."""
        out = []
        for name in enabled_adapters(self.config):
            section = self.config["adapters"][name]
            out.append((name, section["host"], section["port"]))
            if tls_on and section.get("tls_port", -1) >= 0:
                out.append((name + TLS_SUFFIX, section["host"], section["tls_port"]))
            if section.get("websocket_port", -1) >= 0:
                out.append((name + WS_SUFFIX, section["host"], section["websocket_port"]))
        return out

    async def _listen(self) -> None:
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        specs = adapter_specs(self.plugins)
        names = enabled_adapters(self.config)
        if not names:
            self.log.warn("no adapter is enabled; the broker accepts no connections")
        failures = []
        from .connection import registry_of

        registry = registry_of(self.broker)
        for spec_name, spec in specs.items():
            if spec.looks_like is not None:
                registry.looks_like[spec_name] = spec.looks_like
        for name in names:
            section = dict(self.config["adapters"][name])
            host, port = section["host"], section["port"]
            if self.config["ha"]["advertised_host"]:
                section["advertised_host"] = self.config["ha"]["advertised_host"]
            try:
                factory = specs[name].build_factory(self.broker, section)
            except Exception as exc:
                failures.append(f"adapter {name}: cannot build: {_describe(exc)}")
                continue
            registry.factories[name] = factory
            factory.noisy = False  # no "Starting factory <... object at 0x...>" lines
            tracker = _ConnectionTracker(factory)
            endpoint_class = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
            backlog = int(section.get("listen_backlog") or 128)
            endpoint = endpoint_class(self.reactor, port, backlog=backlog, interface=host)
            try:
                listening = await endpoint.listen(factory)
            except error.CannotListenError as exc:
                failures.append(_clash(name, host, port, exc.socketError))
                continue
            self._listeners[name] = listening
            registry.watch_listener(listening)
            self._trackers[name] = tracker
            self.ports[name] = listening.getHost().port
            registry.ports[name] = self.ports[name]
            tls_note = "TLS off" if self.tls_creator is None else "TLS on its own port"
            has_tls = self.tls_creator is not None and section.get("tls_port", -1) >= 0
            if self.tls_creator is not None and not has_tls:
                tls_note = f"TLS off (adapters.{name}.tls_port = -1)"
            self.log.info(
                "{adapter} listening on {address}: plain TCP ({tls}), {login}",
                adapter=name,
                address=self._address(name),
                tls=tls_note,
                login=self._login(name, section),
            )
            if has_tls:
                failure = await self._listen_tls(name, section, specs[name])
                if failure:
                    failures.append(failure)
            if section.get("websocket_port", -1) >= 0:
                failure = await self._listen_websocket(name, section, specs[name])
                if failure:
                    failures.append(failure)
        if failures:
            raise StartupError("\n".join(failures))

    async def _listen_tls(self, name: str, section: dict, spec) -> str | None:
        """The TLS listener of adapter ``name``; an error text when it cannot open."""
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        from .connection import registry_of
        from .security.tls import TLSListenerFactory

        tls_cfg = self.config["tls"]
        inner_section = dict(section, tls=True, cert_login=tls_cfg["cert_login"])
        inner_section["listener_name"] = name + TLS_SUFFIX
        host, port = section["host"], section["tls_port"]
        try:
            plain = registry_of(self.broker).factories.get(name)
            if plain is not None and hasattr(plain, "sibling"):
                # the same adapter state (MQTT sessions, Kafka groups) as the plain listener
                inner = plain.sibling(inner_section)
            else:
                inner = spec.build_factory(self.broker, inner_section)
        except Exception as exc:
            return f"adapter {name}: cannot build its TLS listener: {_describe(exc)}"
        inner.noisy = False
        factory = TLSListenerFactory(self.tls_creator, inner, self.reactor)
        tracker = _ConnectionTracker(factory)
        endpoint_class = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        backlog = int(section.get("listen_backlog") or 128)
        endpoint = endpoint_class(self.reactor, port, backlog=backlog, interface=host)
        try:
            listening = await endpoint.listen(factory)
        except error.CannotListenError as exc:
            return _clash(name, host, port, exc.socketError).replace(".port=", ".tls_port=")
        listener = name + TLS_SUFFIX
        self._listeners[listener] = listening
        registry_of(self.broker).watch_listener(listening)
        self._trackers[listener] = tracker
        self.ports[listener] = listening.getHost().port
        verify = tls_cfg["verify_client"]
        self.log.info(
            "{adapter} listening on {address}: TLS (client certificates: {verify}{login}), {auth}",
            adapter=name,
            address=self._address(listener),
            verify=verify,
            login=f", user from {tls_cfg['cert_login']}" if tls_cfg["cert_login"] else "",
            auth=self._login(name, section),
        )
        return None

    async def _listen_websocket(self, name: str, section: dict, spec) -> str | None:
        """The WebSocket listener of adapter ``name`` (core/websocket.py); an error text when
        it cannot open. Its connections are the adapter's own, on a sibling of the plain
        listener (shared adapter state), so limits, login and liveness apply as on TCP."""
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        from .connection import registry_of
        from .websocket import WebSocketListenerFactory

        listener = name + WS_SUFFIX
        inner_section = dict(section, listener_name=listener)
        host, port = section["host"], section["websocket_port"]
        try:
            plain = registry_of(self.broker).factories.get(name)
            if plain is not None and hasattr(plain, "sibling"):
                inner = plain.sibling(inner_section)
            else:
                inner = spec.build_factory(self.broker, inner_section)
        except Exception as exc:
            return f"adapter {name}: cannot build its WebSocket listener: {_describe(exc)}"
        inner.noisy = False
        factory = WebSocketListenerFactory(inner, self.reactor)
        tracker = _ConnectionTracker(factory)
        endpoint_class = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        backlog = int(section.get("listen_backlog") or 128)
        endpoint = endpoint_class(self.reactor, port, backlog=backlog, interface=host)
        try:
            listening = await endpoint.listen(factory)
        except error.CannotListenError as exc:
            return _websocket_clash(_clash(name, host, port, exc.socketError), name)
        self._listeners[listener] = listening
        registry_of(self.broker).watch_listener(listening)
        self._trackers[listener] = tracker
        self.ports[listener] = listening.getHost().port
        self.log.info(
            "{adapter} listening on {address}: WebSocket, path {path}, subprotocols {subs}",
            adapter=name,
            address=self._address(listener),
            path=section.get("websocket_path") or "(any)",
            subs=", ".join(section.get("websocket_subprotocols") or []) or "(any)",
        )
        return None

    def _write_port_file(self) -> None:
        if not self.port_file:
            return
        directory = os.path.dirname(os.path.abspath(self.port_file))
        fd, tmp = tempfile.mkstemp(prefix=".ports-", dir=directory)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.ports, fh)
        os.replace(tmp, self.port_file)

    # -- stop -----------------------------------------------------------------------------

    def stopService(self):
        super().stopService()
        return self.stop()

    def stop(self) -> defer.Deferred:
        if self._stopping is None:
            self._stopping = defer.ensureDeferred(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        if self.ha is not None and self.ha.role != "active":
            self.ha.stop(release=False)  # a standby: acquire() fires with None
        if self._starting is not None:
            try:
                await self._starting
            except Exception:
                return  # a failed start has already cleaned up after itself
        await self._shutdown()

    async def _shutdown(self) -> None:
        broker = self.broker
        if broker is None:
            return
        if self._broker_started:
            try:
                self.plugins.hook.polymq_broker_stopping(broker=broker)
            except Exception:
                self.log.failure("a polymq_broker_stopping hook failed")
        for tracker in self._trackers.values():
            # contract listeners let each session say goodbye in its protocol (MQTT 5 0x8B)
            shutting_down = getattr(tracker.factory, "shutting_down", None)
            if shutting_down is not None:
                try:
                    shutting_down()
                except Exception:
                    self.log.failure("a listener's shutdown notice failed")
        listeners, self._listeners = self._listeners, {}
        if listeners:
            self.log.info("polymq stopping: closing {names}", names=", ".join(listeners))
        await defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in listeners.values()],
            consumeErrors=True,
        )
        timeout = self.config["broker"]["shutdown_timeout"]
        trackers, self._trackers = self._trackers, {}
        await defer.gatherResults(
            [t.close_all(self.reactor, timeout) for t in trackers.values()], consumeErrors=True
        )
        for part in (getattr(self, "security", None), getattr(self, "tls_creator", None)):
            if part is not None:
                part.stop()
        if self._broker_started:
            self._broker_started = False
            await broker.stop()
            self.log.info("broker stopped, store closed")
        self.broker = None
        if self.ha is not None:
            await self.ha.stop(release=True)  # the store is closed: a standby may take over
        if self.port_file:
            try:
                os.unlink(self.port_file)
            except OSError:
                pass


def _base_name(listener: str) -> str:
    """The adapter a listener belongs to: ``mqtt+tls`` and ``mqtt+ws`` are MQTT's."""
    return listener.removesuffix(TLS_SUFFIX).removesuffix(WS_SUFFIX)


def _websocket_clash(text: str, name: str) -> str:
    """A clash line of adapter ``name`` rewritten for its WebSocket listener's settings."""
    return (
        text.replace(f"{name}.port=", f"{name}.websocket_port=")
        .replace(f"__{name.upper()}__PORT", f"__{name.upper()}__WEBSOCKET_PORT")
        .replace(
            f"turn the adapter off with --set adapters.{name}.enabled=false",
            f"turn its WebSocket listener off with --set adapters.{name}.websocket_port=-1",
        )
        .replace(f"adapter {name}: cannot listen", f"adapter {name}: WebSocket: cannot listen")
    )


def _clash(name: str, host: str, port: int, exc: BaseException | None) -> str:
    """One line for a listener that cannot bind, naming the setting that moves it."""
    reason = _describe(exc) if exc is not None else "cannot listen"
    hint = ""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        occupant = USUAL_OCCUPANTS.get(port)
        who = f" (perhaps {occupant}; `ss -ltnp` shows which)" if occupant else ""
        hint = (
            f"; another program listens there{who}. Choose another port with "
            f"--set adapters.{name}.port=N (or POLYMQ_ADAPTERS__{name.upper()}__PORT=N), "
            f"or turn the adapter off with --set adapters.{name}.enabled=false"
        )
    elif isinstance(exc, OSError) and exc.errno == errno.EACCES:
        hint = f"; ports below 1024 need privileges: --set adapters.{name}.port=N with N >= 1024"
    elif isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        hint = f"; no interface has that address: --set adapters.{name}.host=0.0.0.0"
    return f"adapter {name}: cannot listen on {host}:{port}: {reason}{hint}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    text = str(exc)
    if isinstance(exc, StartupError | defer.FirstError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tune_gc() -> None:
    """Collect less often: queued messages are many small objects that live until consumed,
    and the default thresholds run full collections over them many times a second under load.
    Everything allocated during start-up (modules, config, restored state) is frozen out of
    collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
