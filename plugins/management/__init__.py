"""The management plugin: HTTP API, web console, Prometheus ``/metrics`` and MQTT ``$SYS``.

Registered like any third-party plugin (``DEFAULT_PLUGINS``): it contributes the
``[management]`` config section and starts its HTTP listener and timers in
``polymq_broker_started``; ``polymq_broker_stopping`` stops them. Everything runs on the broker's
reactor and reads broker state when asked; nothing is added to the path of a message.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from twisted.internet import error
from twisted.logger import Logger

from polymq.core.hookspecs import hookimpl

log = Logger(namespace="polymq.management")

DEFAULTS: dict[str, Any] = {
    "enabled": True,
    # loopback only by default: the API can delete queues and close connections
    "host": "127.0.0.1",
    "port": 15672,
    # seconds between statistics samples (rates, the console's chart); 0 disables them
    "stats_interval": 5.0,
    # seconds between MQTT $SYS/broker/... publications; 0 disables them
    "sys_interval": 10.0,
    # write {"management": port} here once listening (useful with port 0)
    "port_file": "",
}

_running: dict[int, Management] = {}


@hookimpl
def polymq_config_sections() -> dict[str, dict]:
    return {"management": dict(DEFAULTS)}


@hookimpl
def polymq_broker_started(broker: Any) -> None:
    section = dict(DEFAULTS, **(broker.config.get("management") or {}))
    if not section["enabled"]:
        return
    mgmt = Management(broker, section)
    mgmt.start()
    _running[id(broker)] = mgmt


@hookimpl
def polymq_broker_stopping(broker: Any) -> None:
    mgmt = _running.pop(id(broker), None)
    if mgmt is not None:
        mgmt.stop()


def running(broker: Any) -> Management | None:
    """The management instance of a started broker (tests, in-process benchmarks)."""
    return _running.get(id(broker))


class Management:
    def __init__(self, broker: Any, section: dict) -> None:
        from .state import Sampler, State

        self.broker = broker
        self.section = section
        self.clock = broker.clock
        self.sampler = Sampler(broker, self.clock)
        self.state = State(broker, broker.config, self.sampler)
        self.port: Any = None
        self._stats = None
        self._sys = None

    def start(self) -> None:
        from twisted.internet.task import LoopingCall
        from twisted.web.server import Site

        from .api import LimitedRequest, ManagementApi, Metrics, Root
        from .metrics import MetricsRenderer
        from .sys_topics import SysPublisher, publish_safely

        api = ManagementApi(self.broker, self.state, self.section)
        root = Root(api, Metrics(self.broker, MetricsRenderer(self.state)))
        site = Site(root, requestFactory=LimitedRequest)
        site.noisy = False
        site.log = _no_access_log  # the console polls every few seconds: no line per request
        site.displayTracebacks = False
        host, port = self.section["host"], self.section["port"]
        try:
            self.port = self.clock.listenTCP(port, site, interface=host)
        except error.CannotListenError as exc:
            # the broker serves its clients without management rather than not at all
            log.error(
                "management: cannot listen on {host}:{port}: {error}",
                host=host,
                port=port,
                error=exc.socketError,
            )
            return
        bound = self.port.getHost().port
        log.info("management listening on http://{host}:{port}/", host=host, port=bound)
        self.sampler.sample()
        interval = float(self.section["stats_interval"])
        if interval > 0:
            self._stats = LoopingCall(self.sampler.sample)
            self._stats.clock = self.clock
            self._stats.start(interval, now=False)
        sys_interval = float(self.section["sys_interval"])
        if sys_interval > 0:
            publisher = SysPublisher(self.state)
            self._sys = LoopingCall(publish_safely, publisher, log)
            self._sys.clock = self.clock
            self._sys.start(sys_interval, now=True)
        if self.section["port_file"]:
            _write_json(self.section["port_file"], {"management": bound})

    def stop(self) -> None:
        for name in ("_stats", "_sys"):
            call = getattr(self, name)
            if call is not None and call.running:
                call.stop()
            setattr(self, name, None)
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        if self.section["port_file"]:
            try:
                os.unlink(self.section["port_file"])
            except OSError:
                pass


def _no_access_log(request: Any) -> None:
    pass


def _write_json(path: str, data: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mgmt-port-", dir=directory)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
