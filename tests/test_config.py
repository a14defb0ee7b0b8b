"""Config: defaults, file, environment and --set precedence, and every validation error."""

from __future__ import annotations

import tomllib

import pytest

from polymq.core.config import ConfigError, dump_toml, load_config, parse_value
from polymq.core.connection import CONNECTION_DEFAULTS
from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec, get_plugin_manager


class FakeAdapters:
    @hookimpl
    def polymq_adapters(self):
        return [
            AdapterSpec("mqtt", 1883, lambda broker, section: None, {"max_inflight": 20}),
            AdapterSpec("amqp", 5672, lambda broker, section: None),
            AdapterSpec("extra", 7000, lambda b, s: None, {"enabled": False, "ratio": 0.5}),
        ]


@pytest.fixture
def pm():
    pm = get_plugin_manager(
        default_plugins=("polymq.plugins.auth", "polymq.plugins.stores"), load_entry_points=False
    )
    pm.register(FakeAdapters(), name="fake")
    return pm


def load(pm, tmp_path, text=None, sets=(), env=None, check_paths=True):
    path = None
    if text is not None:
        path = tmp_path / "polymq.toml"
        path.write_text(text)
    return load_config(pm, path=path, overrides=sets, environ=env or {}, check_paths=check_paths)


def error_of(pm, tmp_path, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load(pm, tmp_path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults(pm, tmp_path):
    cfg = load(pm, tmp_path)
    assert cfg["store"] == {
        "backend": "sqlite",
        "data_dir": "./polymq-data",
        "synchronous": "FULL",
        "busy_timeout_ms": 5000,
        "lazy_flush_ms": 20,
        "lazy_flush_ops": 10000,
        "checkpoint_mb": 0,
        "segment_mb": 64,
        "paging": True,
        "queue_max_in_memory_length": 4096,
        "queue_max_in_memory_bytes": 8 * 1024 * 1024,
        "stream_max_in_memory_bytes": 4 * 1024 * 1024,
        "retention_bytes": -1,
        "retention_ms": -1,
        "retention_check_ms": 10000,
    }
    # every listener has the connection contract's keys besides its own
    assert cfg["adapters"]["mqtt"] == {
        "enabled": True,
        "host": "0.0.0.0",
        "port": 1883,
        **CONNECTION_DEFAULTS,
        "tls_port": 8883,
        "max_inflight": 20,
    }
    assert cfg["adapters"]["amqp"]["port"] == 5672
    assert cfg["adapters"]["extra"]["enabled"] is False  # a plugin may default to off
    assert cfg["limits"]["max_message_size"] == 16 * 1024 * 1024
    assert cfg["broker"]["default_vhost"] == "/"


def test_file_overrides_defaults(pm, tmp_path):
    cfg = load(
        pm,
        tmp_path,
        text='[store]\nbackend = "memory"\n[adapters.mqtt]\nport = 2883\nenabled = false\n',
    )
    assert cfg["store"]["backend"] == "memory"
    assert cfg["adapters"]["mqtt"]["port"] == 2883
    assert cfg["adapters"]["mqtt"]["enabled"] is False
    assert cfg["adapters"]["mqtt"]["host"] == "0.0.0.0"  # untouched keys keep defaults


def test_precedence_file_env_set(pm, tmp_path):
    text = "[adapters.mqtt]\nport = 2000\n[adapters.amqp]\nport = 2001\n"
    env = {"POLYMQ_ADAPTERS__MQTT__PORT": "3000", "POLYMQ_ADAPTERS__AMQP__PORT": "3001"}
    cfg = load(pm, tmp_path, text=text, env=env, sets=["adapters.mqtt.port=4000"])
    assert cfg["adapters"]["mqtt"]["port"] == 4000  # --set beats env
    assert cfg["adapters"]["amqp"]["port"] == 3001  # env beats file


def test_env_override_types_and_unrelated_vars(pm, tmp_path):
    env = {
        "POLYMQ_ADAPTERS__MQTT__ENABLED": "false",
        "POLYMQ_LIMITS__MAX_MESSAGE_SIZE": "1024",
        "POLYMQ_STORE__DATA_DIR": str(tmp_path / "d"),
        "POLYMQ_SOMETHING": "not a config override (no __)",
    }
    cfg = load(pm, tmp_path, env=env)
    assert cfg["adapters"]["mqtt"]["enabled"] is False
    assert cfg["limits"]["max_message_size"] == 1024
    assert cfg["store"]["data_dir"] == str(tmp_path / "d")


def test_set_values_parse_as_toml_with_string_fallback(pm, tmp_path):
    cfg = load(
        pm,
        tmp_path,
        sets=[
            "adapters.mqtt.host=127.0.0.1",
            "broker.default_vhost=1",
            "adapters.extra.ratio=2",
            'store.data_dir="/tmp/with space"',
        ],
        check_paths=False,
    )
    assert cfg["adapters"]["mqtt"]["host"] == "127.0.0.1"
    assert cfg["broker"]["default_vhost"] == "1"  # a string key keeps the raw text
    assert cfg["adapters"]["extra"]["ratio"] == 2.0
    assert cfg["store"]["data_dir"] == "/tmp/with space"
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("true") is True
    assert parse_value("hello world") == "hello world"


def test_port_zero_allowed_and_shared(pm, tmp_path):
    cfg = load(pm, tmp_path, sets=["adapters.mqtt.port=0", "adapters.amqp.port=0"])
    assert cfg["adapters"]["mqtt"]["port"] == 0


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"text": "[adapters.nope]\nport = 1\n"}, "adapters.nope: unknown adapter 'nope'"),
        ({"sets": ["adapters.mqtt.port=70000"]}, "adapters.mqtt.port: must be 0-65535"),
        ({"sets": ["adapters.mqtt.port=-1"]}, "adapters.mqtt.port: must be 0-65535"),
        ({"sets": ["adapters.mqtt.port=abc"]}, "adapters.mqtt.port: must be an integer"),
        ({"env": {"POLYMQ_ADAPTERS__MQTT__PORT": "x"}}, "adapters.mqtt.port: must be an integer"),
        ({"sets": ["adapters.mqtt.enabled=yes"]}, "adapters.mqtt.enabled: must be a boolean"),
        ({"sets": ["adapters.mqtt.colour=red"]}, "adapters.mqtt.colour: unknown key"),
        ({"text": "[bogus]\nx = 1\n"}, "bogus: unknown section"),
        ({"text": '[store]\nbackend = "tape"\n'}, "store.backend: unknown store backend 'tape'"),
        ({"text": "[store]\nwhatever = 1\n"}, "store.whatever: unknown key"),
        ({"text": "[limits]\nmax_message_size = 0\n"}, "limits.max_message_size: must be"),
        ({"text": "[adapters]\nmqtt = 5\n"}, "adapters.mqtt: must be a table"),
        (
            {"sets": ["adapters.mqtt.port=5672"]},
            "adapters.mqtt.port: port 5672 is already used by adapters.amqp",
        ),
        ({"sets": ["noequals"]}, "expected KEY=VALUE"),
        ({"text": "this is = = not toml"}, "is not valid TOML"),
        ({"sets": ["log.level=loud"]}, "log.level: must be one of"),
    ],
)
def test_validation_errors_name_the_key(pm, tmp_path, kw, expected):
    message = error_of(pm, tmp_path, **kw)
    assert message.startswith("config error: ")
    assert expected in message


def test_missing_config_file(pm, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(pm, path=str(tmp_path / "nope.toml"), environ={})


def test_data_dir_checks(pm, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    msg = error_of(pm, tmp_path, sets=[f"store.data_dir={afile}"])
    assert "store.data_dir" in msg and "not a directory" in msg
    msg = error_of(pm, tmp_path, sets=[f"store.data_dir={afile}/sub"])
    assert "store.data_dir" in msg and "cannot create" in msg
    # The memory store does not need a data dir at all.
    cfg = load(pm, tmp_path, sets=["store.backend=memory", f"store.data_dir={afile}"])
    assert cfg["store"]["backend"] == "memory"
    # A missing data dir under a writable parent is fine (created at start).
    cfg = load(pm, tmp_path, sets=[f"store.data_dir={tmp_path}/new/deeper"])
    assert cfg["store"]["data_dir"].endswith("new/deeper")


def test_plugins_section_is_free_form(pm, tmp_path):
    cfg = load(pm, tmp_path, text='[plugins.myauth]\nusers = ["a", "b"]\n')
    assert cfg["plugins"]["myauth"] == {"users": ["a", "b"]}


def test_dump_toml_round_trips(pm, tmp_path):
    cfg = load(
        pm,
        tmp_path,
        text='[plugins.x]\nname = "q\\"uote"\nlist = [1, 2.5, true]\n',
        sets=["adapters.mqtt.port=1999"],
    )
    assert tomllib.loads(dump_toml(cfg)) == cfg


def test_every_problem_in_one_error_with_its_source(pm, tmp_path):
    with pytest.raises(ConfigError) as info:
        load(
            pm,
            tmp_path,
            text="[adapters.mqtt]\nprot = 1\n",
            env={"POLYMQ_LOG__LEVEL": "loud"},
            sets=["limits.max_message_size=0", "adapters.amqp.port=abc"],
        )
    lines = str(info.value).splitlines()
    assert len(lines) == 4, lines
    assert all(line.startswith("config error: ") for line in lines)
    text = "\n".join(lines)
    assert "adapters.mqtt.prot: unknown key; did you mean 'port'?" in text
    assert f"(from file {tmp_path / 'polymq.toml'})" in text
    assert "log.level: must be one of" in text and "(from environment POLYMQ_LOG__LEVEL)" in text
    assert "limits.max_message_size: must be a positive integer, got 0 (from --set)" in text
    assert "adapters.amqp.port: must be an integer" in text
    assert {key for key, _ in info.value.problems} == {
        "log.level",
        "limits.max_message_size",
        "adapters.mqtt.prot",
        "adapters.amqp.port",
    }


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["brokr.default_vhost=x"], "brokr: unknown section; did you mean 'broker'?"),
        (["adapters.mqt.port=1"], "adapters.mqt: unknown adapter 'mqt'; did you mean 'mqtt'?"),
        (["store.backend=sqlit"], "store.backend: unknown store backend 'sqlit'; did you mean"),
        (["broker.max_delivery=1"], "did you mean 'max_deliveries'?"),
        (
            ["adapters.amqp.memory_high_watermark=1000"],
            "adapters.amqp.memory_high_watermark: this setting moved to "
            "limits.memory_high_watermark",
        ),
    ],
)
def test_did_you_mean(pm, tmp_path, sets, expected):
    assert expected in error_of(pm, tmp_path, sets=sets)


def test_no_suggestion_for_a_far_name(pm, tmp_path):
    assert "did you mean" not in error_of(pm, tmp_path, sets=["broker.zzzzzz=1"])


def test_sources_of_values(pm, tmp_path):
    sources: dict[str, str] = {}
    path = tmp_path / "polymq.toml"
    path.write_text("[adapters.mqtt]\nport = 2000\n")
    load_config(
        pm,
        path=str(path),
        overrides=["adapters.amqp.port=2001"],
        environ={"POLYMQ_LOG__LEVEL": "debug"},
        sources=sources,
    )
    assert sources == {
        "adapters.mqtt.port": f"file {path}",
        "adapters.amqp.port": "--set",
        "log.level": "environment POLYMQ_LOG__LEVEL",
    }


def test_sqlite_synchronous_checked_before_start(pm, tmp_path):
    msg = error_of(pm, tmp_path, sets=["store.synchronous=sometimes"])
    assert "store.synchronous: must be one of OFF, NORMAL, FULL, EXTRA" in msg
    cfg = load(pm, tmp_path, sets=["store.synchronous=normal"])  # sqlite takes any case
    assert cfg["store"]["synchronous"] == "normal"


def test_data_dir_that_cannot_be_made(pm, tmp_path):
    # /proc refuses new directories even to root, whose permission bits say writable
    msg = error_of(pm, tmp_path, sets=["store.data_dir=/proc/polymq-test/data"])
    assert msg.startswith("config error: store.data_dir: cannot create /proc/polymq-test/data")
    assert not (tmp_path / "new").exists()
    load(pm, tmp_path, sets=[f"store.data_dir={tmp_path}/new/deeper"])
    assert not (tmp_path / "new").exists()  # the check leaves nothing behind
