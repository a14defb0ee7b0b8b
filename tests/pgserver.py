"""A private PostgreSQL server for tests: ``initdb`` into a temporary directory, ``pg_ctl``.

The server listens on 127.0.0.1 on a free port and on a unix socket in its own directory; it is
started once per test session (fixture ``pg_server``) and stopped at the end. Each test that
needs a clean database takes ``pg_dsn`` (a new database per test)::

    def test_something(pg_dsn):
        store = PostgresStore(dsn=pg_dsn)

    def test_other(pg_server):
        dsn = pg_server.create_database()
        pg_server.terminate_backends(dsn)       # pg_terminate_backend on every session of it

Binaries come from the Debian ``postgresql`` package (``/usr/lib/postgresql/<major>/bin``),
which ``make test`` installs. PostgreSQL refuses to run as root: as root the server runs as the
``postgres`` user the package creates (``runuser``), in a directory under /tmp owned by it.

The superuser is ``polymq`` with password ``polymq-test`` (scram-sha-256 over TCP, trust on the
socket), so tests can also present wrong credentials.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

USER = "polymq"
PASSWORD = "polymq-test"
HOST = "127.0.0.1"

_db_counter = itertools.count(1)


def pg_bindir() -> str | None:
    """The bin directory of the newest PostgreSQL installed, or None."""
    found = []
    for path in glob.glob("/usr/lib/postgresql/*/bin"):
        major = os.path.basename(os.path.dirname(path))
        if major.isdigit() and os.path.exists(os.path.join(path, "pg_ctl")):
            found.append((int(major), path))
    return max(found)[1] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster in ``root`` (see the module docstring)."""

    def __init__(self, bindir: str, root: str | os.PathLike) -> None:
        self.bindir = bindir
        self.root = Path(root)
        self.data = self.root / "data"
        self.sockdir = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.port = 0
        self._as_user: list[str] = []
        self._uid: int | None = None
        self._gid: int | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = self._as_user + [os.path.join(self.bindir, args[0]), *args[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n"
                + self.log_tail()
            )
        return out

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> PgServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._uid is not None:
            for p in (self.root, self.sockdir, pwfile):
                os.chown(p, self._uid, self._gid)
        os.chmod(self.root, 0o700)
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
            "--no-sync",
        )  # fmt: skip
        for attempt in range(5):
            self.port = free_port()
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nlisten_addresses = '{HOST}'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.sockdir}'\n"
                    "max_connections = 200\nfsync = on\nsynchronous_commit = on\n"
                    "log_min_messages = warning\n"
                )
            try:
                self._run(
                    "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                    "-l", str(self.logfile),
                )  # fmt: skip
                return self
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(0.2)  # the port was taken meanwhile: try another
        return self

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def pg_ctl_stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m <mode>`` (immediate: like a crash, no shutdown checkpoint)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w")

    def pg_ctl_start(self) -> None:
        """Start the cluster again after :meth:`pg_ctl_stop` (same port and directories)."""
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.logfile)
        )

    def postmaster_pid(self) -> int:
        """The pid of the running postmaster (first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def reload_with(self, **settings: str) -> None:
        """Append settings to postgresql.conf and reload (for reloadable settings)."""
        with open(self.data / "postgresql.conf", "a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = '{value}'\n")
        self._run("pg_ctl", "reload", "-D", str(self.data))

    def start_standby_of(self, primary: PgServer, name: str) -> PgServer:
        """Make this server a streaming standby of ``primary`` (``pg_basebackup -R``: it
        connects as ``name``, the name ``synchronous_standby_names`` lists) and start it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        if self._uid is not None:
            for p in (self.root, self.sockdir):
                os.chown(p, self._uid, self._gid)
        os.chmod(self.root, 0o700)
        conninfo = (
            f"host={HOST} port={primary.port} user={USER} password={PASSWORD}"
            f" application_name={name}"
        )
        self._run(
            "pg_basebackup", "-D", str(self.data), "-d", conninfo, "-R", "-X", "stream",
            "--checkpoint=fast", "--no-sync",
        )  # fmt: skip
        self.port = free_port()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nunix_socket_directories = '{self.sockdir}'\n"
                "hot_standby = on\n"
            )
        self.pg_ctl_start()
        return self

    def promote(self) -> None:
        """``pg_ctl promote``: a standby becomes a primary (waits until it accepts writes)."""
        self._run("pg_ctl", "promote", "-w", "-t", "60", "-D", str(self.data))

    def dsn(
        self, dbname: str = "postgres", user: str = USER, password: str = PASSWORD, **extra
    ) -> str:
        """A libpq URI for ``dbname`` over TCP."""
        from urllib.parse import quote, urlencode

        query = f"?{urlencode(extra, quote_via=quote)}" if extra else ""
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{HOST}:{self.port}"
            f"/{quote(dbname, safe='')}{query}"
        )

    def sql(self, query: str, params=None, dbname: str = "postgres") -> list[tuple]:
        """Run one statement in autocommit mode; return its rows (empty when it has none)."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database; return its DSN."""
        name = name or f"t{os.getpid()}_{next(_db_counter)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def terminate_backends(self, dbname: str, application_name: str | None = None) -> int:
        """``pg_terminate_backend`` every session connected to ``dbname`` (except this one)."""
        query = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()"
        )
        params: list = [dbname]
        if application_name is not None:
            query += " AND application_name = %s"
            params.append(application_name)
        return self.sql(query, params)[0][0]


@pytest.fixture(scope="session")
def pg_server():
    bindir = pg_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"
            " (Debian package postgresql; `make deb-deps` installs it)"
        )
    root = tempfile.mkdtemp(prefix="polymq-pg-")
    server = PgServer(bindir, root)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server) -> str:
    """A DSN of a new, empty database on the session's server."""
    return pg_server.create_database()
