"""The README's "Connect" examples, run as a reader would run them, against a fresh broker.

Every fenced block of that section is extracted; the default ports in it are replaced by the
test broker's. Python blocks run with this interpreter, the Java block is saved as the file the
README names, shell blocks run with bash. What a block prints must match the README's own
``# prints: ...`` / ``print(...)  # ...`` comments.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import module_broker

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))

import jmsrun  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEFAULT_PORTS = {"amqp": 5672, "mqtt": 1883, "kafka": 9092, "openwire": 61616}
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def connect_blocks() -> list[tuple[str, str]]:
    return [
        (m.group(1), m.group(2)) for m in FENCE.finditer(section(README.read_text(), "Connect"))
    ]


def expected_output(lang: str, code: str) -> list[str]:
    """The output the README promises, from its comments, in order."""
    if lang == "python":
        return [m.group(1) for m in re.finditer(r"^\s*print\(.*\)  # (.+)$", code, re.M)]
    if lang == "sh":
        return [m.group(1) for m in re.finditer(r"# prints: (.+)$", code, re.M)]
    return []


def with_ports(code: str, ports: dict[str, int]) -> str:
    for name, default in DEFAULT_PORTS.items():
        code = re.sub(rf"localhost(:|\", ){default}\b", rf"127.0.0.1\g<1>{ports[name]}", code)
    assert "localhost" not in code, code
    return code


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory, "readme", list(DEFAULT_PORTS)) as b:
        yield b


def test_the_connect_section_has_one_example_per_protocol():
    blocks = connect_blocks()
    langs = [lang for lang, _ in blocks]
    assert langs.count("python") == 4 and langs.count("java") == 1 and langs.count("sh") == 2
    text = "\n".join(code for _, code in blocks)
    for needle in ("paho.mqtt", "import pika", "confluent_kafka", "kcat", "ActiveMQConnection"):
        assert needle in text
    for lang, code in blocks:
        if lang != "java":
            assert expected_output(lang, code), f"no expected output in:\n{code}"


@pytest.mark.parametrize("index", range(4))
def test_python_example(broker, tmp_path, index):
    code = [code for lang, code in connect_blocks() if lang == "python"][index]
    out = subprocess.run(
        [sys.executable, "-c", with_ports(code, broker.ports)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected_output("python", code), out.stderr


def run_shell(code: str, ports: dict[str, int], cwd: Path) -> list[str]:
    out = subprocess.run(
        ["bash", "-e", "-c", with_ports(code, ports)],
        capture_output=True, text=True, timeout=180, cwd=cwd,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_kcat_example(broker, tmp_path):
    (code,) = [code for lang, code in connect_blocks() if lang == "sh" and "kcat" in code]
    assert run_shell(code, broker.ports, tmp_path) == expected_output("sh", code)


def test_jms_example(broker, tmp_path):
    blocks = connect_blocks()
    (java,) = [code for lang, code in blocks if lang == "java"]
    (shell,) = [code for lang, code in blocks if lang == "sh" and "java " in code]
    name = re.search(r"public class (\w+)", java).group(1)
    assert f"{name}.java" in shell
    (tmp_path / f"{name}.java").write_text(with_ports(java, broker.ports))
    # the README's classpath must be the one the JMS tests use (Debian libactivemq-java)
    jars = re.search(r"^CP=(.+)$", shell, re.M).group(1).replace("$J", str(jmsrun.JAR_DIR))
    assert jars.split(os.pathsep) == jmsrun.classpath().split(os.pathsep)
    assert run_shell(shell, broker.ports, tmp_path) == expected_output("sh", shell)


def test_make_install_links_the_command(tmp_path):
    bin_dir = tmp_path / "bin"
    out = subprocess.run(
        ["make", "--no-print-directory", "install", f"BIN_DIR={bin_dir}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"{bin_dir} is not on your PATH" in out.stdout
    linked = bin_dir / "polymq"
    assert linked.is_symlink()
    version = subprocess.run([str(linked), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("polymq ")
