"""Compile and run the Java programs of tests/java against the Debian ActiveMQ 5.17 jars.

Used by tests/test_openwire_*.py and bench/jms_bench: ``compile_java(outdir)`` once per test
session, then ``run_java(classes, "JmsTest", url, scenario, ...)`` parses the "OK name" /
"FAIL name detail" lines the programs print.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
JAR_DIR = Path("/usr/share/java")
JARS = [
    "activemq-client.jar",
    "geronimo-jms_1.1_spec.jar",
    "hawtbuf.jar",
    "slf4j-api.jar",
    "slf4j-nop.jar",
    "geronimo-j2ee-management-1.1-spec.jar",
]


def classpath(extra: str | os.PathLike | None = None) -> str:
    parts = [str(JAR_DIR / j) for j in JARS]
    if extra is not None:
        parts.insert(0, str(extra))
    return os.pathsep.join(parts)


def missing() -> str | None:
    """Why Java tests cannot run here, or None."""
    if shutil.which("javac") is None or shutil.which("java") is None:
        return "no JDK (javac/java) on PATH"
    for j in JARS:
        if not (JAR_DIR / j).exists():
            return f"{JAR_DIR / j} missing (Debian package libactivemq-java)"
    return None


def compile_java(outdir: str | os.PathLike, sources: list[str] | None = None) -> Path:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = [str(HERE / s) for s in (sources or ["JmsTest.java"])]
    files.append(str(HERE / "JmsChecks.java"))  # the scenario programs' shared base class
    subprocess.run(
        ["javac", "-nowarn", "-cp", classpath(), "-d", str(outdir), *files],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return outdir


_compiled: dict[tuple[str, ...], Path] = {}


def classes_once(sources: list[str] | None = None) -> Path:
    """Compile once per test session (per process) into a temporary directory."""
    import atexit
    import tempfile

    key = tuple(sources or ["JmsTest.java"])
    if key not in _compiled:
        outdir = Path(tempfile.mkdtemp(prefix="polymq-jms-"))
        atexit.register(shutil.rmtree, outdir, True)
        _compiled[key] = compile_java(outdir, list(key))
    return _compiled[key]


class JavaResult:
    def __init__(self, stdout: str, stderr: str, returncode: int) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.returncode = returncode
        self.ok: list[str] = []
        self.failed: list[str] = []
        self.lines = stdout.splitlines()
        for line in self.lines:
            if line.startswith("OK "):
                self.ok.append(line[3:].strip())
            elif line.startswith("FAIL "):
                self.failed.append(line[5:].strip())
        self.done = "DONE" in self.lines

    def check(self, *expected: str) -> None:
        """No FAIL line, DONE printed, and every expected check reported OK."""
        detail = f"\nstdout:\n{self.stdout}\nstderr (tail):\n{self.stderr[-3000:]}"
        assert not self.failed, f"failed checks: {self.failed}{detail}"
        assert self.done, f"program did not finish{detail}"
        absent = [e for e in expected if e not in self.ok]
        assert not absent, f"checks not reported: {absent}{detail}"


def java_cmd(classes: str | os.PathLike, main: str, *args: str) -> list[str]:
    return ["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", classpath(classes),
            main, *args]


def run_java(classes: str | os.PathLike, main: str, *args: str, timeout: float = 150
             ) -> JavaResult:
    p = subprocess.run(java_cmd(classes, main, *args), capture_output=True, text=True,
                       timeout=timeout)
    return JavaResult(p.stdout, p.stderr, p.returncode)
