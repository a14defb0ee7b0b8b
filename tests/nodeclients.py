"""npm clients for the tests, run on Node.js: ``tests/node/package.json`` is installed with npm
once into ``.venv/npm-clients`` (again when package.json changes), and the scripts in
``tests/node`` run with that ``node_modules`` on ``NODE_PATH``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent / "node"
ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / ".venv" / "npm-clients"


def node_modules() -> Path:
    """The installed ``node_modules`` directory (npm install on first use)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed (Debian packages nodejs and npm)")
    wanted = (HERE / "package.json").read_text()
    stamp = TARGET / "package.json"
    if not stamp.exists() or stamp.read_text() != wanted or not (TARGET / "node_modules").is_dir():
        TARGET.mkdir(parents=True, exist_ok=True)
        stamp.write_text(wanted)
        out = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=TARGET,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode != 0:
            stamp.unlink()
            raise RuntimeError(f"npm install failed: {out.stderr[-2000:]}")
    return TARGET / "node_modules"


def run(script: str, *args: str, timeout: float = 60) -> list[dict]:
    """Run ``tests/node/<script>`` and return the JSON lines it printed."""
    env = dict(os.environ, NODE_PATH=str(node_modules()))
    out = subprocess.run(
        ["node", str(HERE / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0:
        raise AssertionError(
            f"{script} exited with {out.returncode}: {events} {out.stderr[-2000:]}"
        )
    return events
