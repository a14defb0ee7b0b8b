"""The ``[management]`` config section, contributed through ``polymq_config_sections``."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from brokerproc import BrokerProcess
from test_management_support import wait_for

from polymq.core.config import ConfigError, load_config
from polymq.core.plugins import get_plugin_manager
from polymq.plugins.management import DEFAULTS


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager(load_entry_points=False)


def test_section_defaults_and_overrides(pm, tmp_path):
    cfg = load_config(pm, environ={}, check_paths=False)
    assert cfg["management"] == DEFAULTS
    assert cfg["management"]["host"] == "127.0.0.1" and cfg["management"]["port"] == 15672
    cfg = load_config(
        pm,
        overrides=["management.port=15999"],
        environ={"POLYMQ_MANAGEMENT__SYS_INTERVAL": "2"},
        check_paths=False,
    )
    assert cfg["management"]["port"] == 15999
    assert cfg["management"]["sys_interval"] == 2.0
    path = tmp_path / "c.toml"
    path.write_text('[management]\nenabled = false\nhost = "0.0.0.0"\n')
    cfg = load_config(pm, path=str(path), environ={}, check_paths=False)
    assert cfg["management"]["enabled"] is False and cfg["management"]["host"] == "0.0.0.0"


def test_section_is_checked(pm):
    with pytest.raises(ConfigError, match="management.prot: unknown key"):
        load_config(pm, overrides=["management.prot=1"], environ={}, check_paths=False)
    with pytest.raises(ConfigError, match="management.port: must be an integer"):
        load_config(pm, overrides=['management.port="http"'], environ={}, check_paths=False)


def test_disabled_management_opens_no_port(tmp_path):
    # the port stays reserved (bound, not listening) so no other listener of the broker can
    # land on it; a disabled management must not even try it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        b = BrokerProcess(
            tmp_path,
            adapters=["amqp"],
            store="memory",
            log_level="info",
            settings={"management.enabled": False, "management.port": port},
        )
        b.start()
        try:
            log = b.log_text()
            assert "management listening" not in log and str(port) not in log
            with pytest.raises(urllib.error.URLError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=2)
        finally:
            b.stop()
            b.kill9()


def test_busy_port_is_logged_and_clients_still_served(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        b = BrokerProcess(
            tmp_path,
            adapters=["amqp"],
            store="memory",
            log_level="info",
            settings={"management.port": port},
        )
        b.start()
        try:
            wait_for(
                lambda: "management: cannot listen on 127.0.0.1:" in b.log_text(),
                what="the log line",
            )
            with socket.create_connection((b.host, b.port("amqp")), timeout=5) as c:
                c.sendall(b"AMQP\x00\x00\x09\x01")
                assert c.recv(7)[:1] == b"\x01"  # connection.start
        finally:
            b.stop()
            b.kill9()


def test_guest_only_from_loopback():
    import base64

    from twisted.internet.address import IPv4Address
    from twisted.web.test.requesthelper import DummyRequest

    from polymq.core.broker import Broker
    from polymq.plugins.management.api import authenticate, is_loopback

    broker = Broker(plugins=get_plugin_manager(load_entry_points=False))

    def request(host: str, user: str, password: str) -> DummyRequest:
        r = DummyRequest([b"api", b"overview"])
        r.client = IPv4Address("TCP", host, 40000)
        token = base64.b64encode(f"{user}:{password}".encode())
        r.requestHeaders.setRawHeaders(b"authorization", [b"Basic " + token])
        return r

    assert authenticate(broker, request("127.0.0.1", "guest", "guest")).user == "guest"
    assert authenticate(broker, request("127.8.0.3", "guest", "guest")).user == "guest"
    assert authenticate(broker, request("10.1.2.3", "guest", "guest")) is None
    assert authenticate(broker, request("127.0.0.1", "guest", "nope")) is None
    assert authenticate(broker, request("127.0.0.1", "", "")) is None  # no anonymous
    assert is_loopback("::1") and not is_loopback("192.0.2.1") and not is_loopback(None)
