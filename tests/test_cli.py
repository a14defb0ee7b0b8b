"""The ``polymq`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from brokerproc import BrokerProcess

ROOT = Path(__file__).resolve().parent.parent


def polymq(*args, env=None, cwd=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("POLYMQ_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "polymq.core", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def test_version():
    out = polymq("--version")
    assert out.returncode == 0
    assert out.stdout.strip().startswith("polymq ")
    assert out.stdout.split()[1][0].isdigit()


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "polymq"
    assert script.exists()
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "polymq" in out.stdout


def test_config_show_is_effective_toml(tmp_path):
    out = polymq(
        "config",
        "show",
        "--set",
        "store.backend=memory",
        "--set",
        "limits.max_message_size=4096",
        env={"POLYMQ_BROKER__DEFAULT_VHOST": "prod"},
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    cfg = tomllib.loads(out.stdout)
    assert cfg["store"]["backend"] == "memory"
    assert cfg["limits"]["max_message_size"] == 4096
    assert cfg["broker"]["default_vhost"] == "prod"
    for name, section in cfg["adapters"].items():
        assert {"enabled", "host", "port"} <= set(section), name


def test_config_show_reads_file(tmp_path):
    conf = tmp_path / "polymq.toml"
    conf.write_text('[store]\nbackend = "memory"\ndata_dir = "/srv/q"\n')
    out = polymq("config", "show", "--config", str(conf))
    assert out.returncode == 0, out.stderr
    assert tomllib.loads(out.stdout)["store"] == {"backend": "memory", "data_dir": "/srv/q"}


def test_plugins_lists_adapters_and_backends():
    out = polymq("plugins")
    assert out.returncode == 0, out.stderr
    assert "store backends:" in out.stdout
    assert "memory" in out.stdout and "sqlite" in out.stdout
    assert "polymq (built-in)" in out.stdout
    data = json.loads(polymq("plugins", "--json").stdout)
    assert data["store_backends"]["sqlite"]["origin"] == "polymq (built-in)"
    for name, info in data["adapters"].items():
        assert info["origin"] and isinstance(info["default_port"], int), name


@pytest.mark.parametrize(
    "args, needle",
    [
        (["serve", "--set", "adapters.nosuch.port=1"], "adapters.nosuch: unknown adapter"),
        (["serve", "--set", "store.backend=tape"], "store.backend: unknown store backend"),
        (["serve", "--set", "limits.max_message_size=big"], "limits.max_message_size: must be"),
        (["config", "show", "--set", "broker.nokey=1"], "broker.nokey: unknown key"),
        (["serve", "--config", "/nonexistent/polymq.toml"], "does not exist"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(args, needle, tmp_path):
    out = polymq(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]


def test_bad_port_from_env_is_reported(tmp_path):
    out = polymq("serve", env={"POLYMQ_STORE__BACKEND": "memory", "POLYMQ_LOG__LEVEL": "loud"})
    assert out.returncode == 2
    assert "log.level" in out.stderr and "Traceback" not in out.stderr


def test_unusable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = polymq("serve", "--set", f"store.data_dir={blocker}/data", cwd=tmp_path)
    assert out.returncode == 2
    assert "store.data_dir" in out.stderr and "Traceback" not in out.stderr


def test_store_that_cannot_open_is_one_line(tmp_path):
    """A data dir held by another broker: the sqlite store refuses to open it."""
    first = BrokerProcess(tmp_path / "a", store="sqlite")
    first.start()
    try:
        out = polymq(
            "serve",
            "--set",
            f"store.data_dir={first.data_dir}",
            *[a for name in _adapters() for a in ("--set", f"adapters.{name}.enabled=false")],
            cwd=tmp_path,
        )
        assert out.returncode in (1, 2)
        assert "Traceback" not in out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("polymq:")]
        assert len(errors) == 1 and "cannot open store" in errors[0], out.stderr
    finally:
        first.stop()


def _adapters():
    from brokerproc import installed_adapters

    return installed_adapters()


def test_serve_and_sigterm_exit_cleanly(tmp_path):
    broker = BrokerProcess(tmp_path, store="sqlite", log_level="info")
    broker.start()
    assert broker.running
    assert broker.data_dir.is_dir()
    assert broker.stop() == 0
    log = broker.log_text()
    assert "Received SIGTERM" in log
    assert "broker stopped, store closed" in log
    assert "Traceback" not in log
    assert not broker.port_file.exists()


def test_serve_sigint_and_restart(tmp_path):
    broker = BrokerProcess(tmp_path, store="sqlite")
    broker.start()
    broker.proc.send_signal(signal.SIGINT)
    assert broker.proc.wait(20) == 0
    broker.start()  # same data dir opens again after a clean stop
    assert broker.running and broker.starts == 2
    broker.kill9()
    broker.restart()  # ... and after a kill -9
    assert broker.running
    assert broker.stop() == 0


def test_serve_listens_on_port_zero_and_reports_it(tmp_path):
    adapters = _adapters()
    assert adapters, "no adapter is installed"
    name = adapters[0]
    broker = BrokerProcess(tmp_path, adapters=[name], store="memory")
    with broker:
        port = broker.port(name)
        assert port > 0
        import socket

        with socket.create_connection((broker.host, port), timeout=5):
            pass
        assert f"{name} listening on 127.0.0.1:{port}" in broker.log_text()
        assert list(broker.ports) == [name]
    assert not broker.running


def test_twist_polymq_after_pip_install(tmp_path):
    """``pip install .`` ships twisted/plugins/polymq_plugin.py so ``twist polymq`` works."""
    target = tmp_path / "site"
    source = tmp_path / "src"  # build from a copy: pip must not write build/ into the repo
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "examples")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for name in ("core", "adapters", "plugins", "twisted"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    build = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--target", str(target), str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert (target / "twisted" / "plugins" / "polymq_plugin.py").exists()
    assert (target / "polymq" / "core" / "service.py").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYMQ_")}
    env["PYTHONPATH"] = str(target)
    twist = [sys.executable, "-c", "from twisted.application.twist._twist import Twist; "
             "Twist.main()"]  # fmt: skip
    port_file = tmp_path / "ports.json"
    args = [
        *twist, "polymq", "--set", "store.backend=memory", "--port-file", str(port_file),
        *[a for name in _adapters() for a in ("--set", f"adapters.{name}.enabled=false")],
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "twist polymq did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "broker stopped, store closed" in output
    assert "Traceback" not in output


def test_config_check_reports_every_problem_with_its_source(tmp_path):
    out = polymq(
        "config",
        "check",
        "--set",
        "store.synchronous=sometimes",
        "--set",
        "store.data_dir=/proc/polymq-test",
        "--set",
        "adapters.amqp.prot=5673",
        env={"POLYMQ_LOG__LEVEL": "loud"},
        cwd=tmp_path,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 4, out.stderr
    assert all(line.startswith("polymq: config error: ") for line in lines)
    assert "store.synchronous: must be one of" in out.stderr
    assert "store.data_dir: cannot create /proc/polymq-test" in out.stderr
    assert "did you mean 'port'?" in out.stderr
    assert "(from environment POLYMQ_LOG__LEVEL)" in out.stderr


def test_config_show_names_the_source_of_each_changed_value(tmp_path):
    conf = tmp_path / "polymq.toml"
    conf.write_text("[adapters.mqtt]\nport = 2883\n")
    out = polymq(
        "config",
        "show",
        "--config",
        str(conf),
        "--set",
        "adapters.amqp.port=2672",
        env={"POLYMQ_LOG__LEVEL": "debug"},
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert f"port = 2883  # from file {conf}" in out.stdout
    assert "port = 2672  # from --set" in out.stdout
    assert 'level = "debug"  # from environment POLYMQ_LOG__LEVEL' in out.stdout
    assert tomllib.loads(out.stdout)["adapters"]["mqtt"]["port"] == 2883
