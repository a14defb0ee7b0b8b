"""The Twisted service that owns the broker core and one listener per enabled adapter."""

from __future__ import annotations

import gc
import json
import os
import tempfile

from twisted.application.service import MultiService
from twisted.internet import defer, error
from twisted.logger import Logger

from .config import enabled_adapters
from .plugins import adapter_specs, get_plugin_manager, store_backends


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

    def __init__(self, config: dict, plugins=None, reactor=None, port_file: str | None = None):
        super().__init__()
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
        backend = store_backends(self.plugins)[store_cfg["backend"]]
        # backends that keep nothing in data_dir (the postgres store names its database itself)
        uses_dir = store_cfg["backend"] not in ("memory", "postgres")
        where = f" in {store_cfg['data_dir']}" if uses_dir else ""
        try:
            if uses_dir:
                os.makedirs(store_cfg["data_dir"], exist_ok=True)
            self.store = backend.factory(dict(store_cfg))
            self.broker = Broker(self.store, plugins=self.plugins, config=cfg, clock=self.reactor)
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
        self.log.info("store {backend} opened{where}", backend=store_cfg["backend"], where=where)
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
            listeners=", ".join(f"{n}={p}" for n, p in self.ports.items()) or "no listeners",
        )

    async def _listen(self) -> None:
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        specs = adapter_specs(self.plugins)
        names = enabled_adapters(self.config)
        if not names:
            self.log.warn("no adapter is enabled; the broker accepts no connections")
        for name in names:
            section = dict(self.config["adapters"][name])
            host, port = section["host"], section["port"]
            try:
                factory = specs[name].build_factory(self.broker, section)
            except Exception as exc:
                raise StartupError(f"adapter {name}: cannot build: {_describe(exc)}") from exc
            tracker = _ConnectionTracker(factory)
            endpoint_class = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
            endpoint = endpoint_class(self.reactor, port, interface=host)
            try:
                listening = await endpoint.listen(factory)
            except error.CannotListenError as exc:
                raise StartupError(
                    f"adapter {name}: cannot listen on {host}:{port}: {_describe(exc.socketError)}"
                ) from exc
            self._listeners[name] = listening
            self._trackers[name] = tracker
            self.ports[name] = listening.getHost().port
            self.log.info(
                "{adapter} listening on {host}:{port}",
                adapter=name,
                host=host,
                port=self.ports[name],
            )

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
        listeners, self._listeners = self._listeners, {}
        await defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in listeners.values()],
            consumeErrors=True,
        )
        timeout = self.config["broker"]["shutdown_timeout"]
        trackers, self._trackers = self._trackers, {}
        await defer.gatherResults(
            [t.close_all(self.reactor, timeout) for t in trackers.values()], consumeErrors=True
        )
        if self._broker_started:
            self._broker_started = False
            await broker.stop()
            self.log.info("broker stopped, store closed")
        self.broker = None
        if self.port_file:
            try:
                os.unlink(self.port_file)
            except OSError:
                pass


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
