"""What run.py and cpu.py share: compiling JmsBench.java and running it once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "java"))

import jmsrun  # noqa: E402


def compile_bench(out: Path) -> Path:
    """JmsBench compiled against the Debian ActiveMQ 5.17 jars into ``out``/classes."""
    classes = out / "classes"
    classes.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "javac",
            "-nowarn",
            "-cp",
            jmsrun.classpath(),
            "-d",
            str(classes),
            str(Path(__file__).parent / "JmsBench.java"),
        ],
        check=True,
    )
    return classes


def run_bench(
    classes: Path,
    url: str,
    kind: str,
    persistent: bool,
    producers: int,
    consumers: int,
    per_producer: int,
    size: int,
    warmup: int = 0,
    broker_pid: int | None = None,
) -> dict:
    """One JmsBench run (a fresh JVM; ``warmup`` messages per producer first, not timed).
    Returns its RESULT fields as floats, plus the CPU per message of the timed run:
    ``broker_us`` / ``broker_sys_us`` (when ``broker_pid`` is given) and ``client_us``.
    Raises RuntimeError with the client's error output when it printed no result."""
    # the JVM's default compilers (the tests' java_cmd stops at C1 for a quick start, which
    # would leave a client slower than any real one)
    cmd = [
        "java",
        "-cp",
        jmsrun.classpath(classes),
        "JmsBench",
        url,
        kind,
        str(persistent).lower(),
        str(producers),
        str(consumers),
        str(per_producer),
        str(size),
        str(warmup),
    ]
    if broker_pid:
        cmd.append(str(broker_pid))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = re.search(r"RESULT .*", out.stdout)
    if not m:
        raise RuntimeError(out.stderr[-2000:] or out.stdout[-2000:])
    res: dict = {}
    for kv in m.group().split()[1:]:
        k, v = kv.split("=")
        res[k] = v == "true" if v in ("true", "false") else float(v)
    n = res["sent"]
    res["broker_us"] = (res["broker_user_s"] + res["broker_sys_s"]) / n * 1e6
    res["broker_sys_us"] = res["broker_sys_s"] / n * 1e6
    res["client_us"] = res["client_cpu_s"] / n * 1e6
    return res
