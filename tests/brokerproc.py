"""Run a real polymq broker as a subprocess, for tests that talk to it over TCP.

Typical use from an adapter test, through the ``broker_factory`` fixture of ``tests/conftest.py``::

    def test_publish(broker_factory):
        broker = broker_factory(adapters=["mqtt"])          # only MQTT listens, on a free port
        client.connect(broker.host, broker.port("mqtt"))
        ...
        broker.restart()                                    # same data dir; ports are re-read
        client.connect(broker.host, broker.port("mqtt"))

Or directly, as a context manager::

    with BrokerProcess(tmp_path, adapters=["amqp", "kafka"], store="sqlite") as broker:
        ...

What it does: ``python -m polymq.core serve`` with the test interpreter, a data dir under
``workdir`` (kept across :meth:`restart`), every listed adapter on ``127.0.0.1`` port 0 (a free
port chosen by the kernel), every other installed adapter disabled, and ``--port-file``; it then
waits (``start_timeout``, 30 s) until the broker has written the port file, i.e. the store is
open and every listener is up. If the broker exits or times out first, :class:`BrokerStartError`
carries the tail of its log. The broker's stdout and stderr go to ``log_path`` (one file per
start: ``broker-1.log``, ``broker-2.log`` ...), logged at debug level by default.

API:
    ``host`` ("127.0.0.1"), ``port(adapter)``, ``ports`` (dict), ``data_dir``, ``log_path``,
    ``log_text()``, ``pid``, ``running``, ``returncode``,
    ``start()``, ``stop(timeout=20) -> exit code`` (SIGTERM and wait; a clean shutdown is 0),
    ``kill9()`` (SIGKILL, no shutdown at all), ``restart()`` (``stop()`` unless already dead,
    then ``start()`` on the same data dir; ports may change, ``port()`` returns the new ones).
    ``settings`` are extra ``--set`` overrides as a dict {"adapters.mqtt.max_inflight": 10, ...};
    values are written as TOML values (strings quoted), so types survive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


class BrokerStartError(RuntimeError):
    pass


def _toml_value(value) -> str:
    from polymq.core.config import _toml_value as toml_value

    return toml_value(value)


_known_adapters: dict[str, list[str]] = {}


def installed_adapters(env: Mapping[str, str] | None = None) -> list[str]:
    """Names of every adapter the installed plugins provide, as a broker started with ``env``
    (e.g. an extra ``PYTHONPATH``) would see them. Cached per ``PYTHONPATH``."""
    child_env = _child_env(env)
    cache_key = child_env.get("PYTHONPATH", "")
    if cache_key not in _known_adapters:
        out = subprocess.run(
            [sys.executable, "-m", "polymq.core", "plugins", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env,
        )
        if out.returncode != 0:
            raise BrokerStartError(f"polymq plugins failed: {out.stderr.strip()}")
        _known_adapters[cache_key] = sorted(json.loads(out.stdout)["adapters"])
    return list(_known_adapters[cache_key])


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYMQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class BrokerProcess:
    """One broker subprocess; see the module docstring."""

    host = HOST

    def __init__(
        self,
        workdir: str | os.PathLike,
        adapters: Iterable[str] = (),
        store: str = "sqlite",
        settings: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Iterable[str] = (),
        log_level: str = "debug",
        start_timeout: float = 30.0,
        config_file: str | os.PathLike | None = None,
        rlimit_nofile: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.adapters = list(adapters)
        self.store = store
        self.settings = dict(settings or {})
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.config_file = config_file
        # the child's soft and hard descriptor limit (descriptor exhaustion tests)
        self.rlimit_nofile = rlimit_nofile
        self.data_dir = self.workdir / "data"
        self.port_file = self.workdir / "ports.json"
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.starts = 0
        self.log_path: Path | None = None
        self._log_fh = None

    # -- command line -----------------------------------------------------------------------

    def command(self) -> list[str]:
        sets: dict[str, object] = {
            "store.backend": self.store,
            "store.data_dir": str(self.data_dir),
        }
        for name in installed_adapters(self.env):
            if name not in self.adapters:
                sets[f"adapters.{name}.enabled"] = False
        for name in self.adapters:
            sets[f"adapters.{name}.enabled"] = True
            sets[f"adapters.{name}.host"] = HOST
            sets[f"adapters.{name}.port"] = 0
            # no WebSocket listener on its fixed default port unless a test asks for one
            sets[f"adapters.{name}.websocket_port"] = -1
        # the management HTTP port on a free port too, unless a test chose one
        sets["management.port"] = 0
        sets.update(self.settings)
        cmd = [sys.executable, "-m", "polymq.core", "serve"]
        if self.config_file is not None:
            cmd += ["--config", str(self.config_file)]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={_toml_value(value)}"]
        cmd += ["--port-file", str(self.port_file), "--log-level", self.log_level]
        return cmd + self.extra_args

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> BrokerProcess:
        if self.running:
            raise RuntimeError("broker already running")
        self._close_log()
        if self.port_file.exists():
            self.port_file.unlink()
        self.starts += 1
        self.log_path = self.workdir / f"broker-{self.starts}.log"
        self._log_fh = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(self.workdir),
            env=_child_env(self.env),
            preexec_fn=self._preexec if self.rlimit_nofile else None,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.port_file.exists():
                try:
                    self.ports = json.loads(self.port_file.read_text())
                    break
                except (OSError, ValueError):
                    pass  # written atomically, but be lenient
            code = self.proc.poll()
            if code is not None:
                raise BrokerStartError(
                    f"broker exited with code {code} before it was ready; log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill9()
                raise BrokerStartError(
                    f"broker not ready after {self.start_timeout}s; log:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        missing = [a for a in self.adapters if a not in self.ports]
        if missing:
            self.stop()
            raise BrokerStartError(f"adapters {missing} did not start; log:\n{self.log_tail()}")
        return self

    def _preexec(self) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (self.rlimit_nofile, self.rlimit_nofile))

    def port(self, adapter: str) -> int:
        try:
            return self.ports[adapter]
        except KeyError:
            raise KeyError(
                f"adapter {adapter!r} is not listening (listening: {sorted(self.ports)})"
            ) from None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; returns the exit code (0 after a clean shutdown)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._close_log()
                raise BrokerStartError(
                    f"broker did not stop within {timeout}s of SIGTERM; log:\n{self.log_tail()}"
                ) from None
        self._close_log()
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL: the broker gets no chance to shut down (crash test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_log()

    def restart(self) -> BrokerProcess:
        """Stop (unless already dead) and start again on the same data dir."""
        self.stop()
        return self.start()

    # -- logs -------------------------------------------------------------------------------

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> BrokerProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill9()

    def __repr__(self) -> str:
        return f"<BrokerProcess pid={self.pid} ports={self.ports} data={self.data_dir}>"
