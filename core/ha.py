"""Shared-store high availability: one active node, standbys waiting, leadership in PostgreSQL.

Every node points at the same PostgreSQL store (``store.backend = "postgres"``, same ``store.dsn``
and ``store.schema``). Leadership is kept in two one-row tables, stamped with the **database**
clock (``clock_timestamp()``, so node clocks do not matter):

* ``<schema>.ha_lease``, the fencing row: ``holder`` (node id), ``epoch`` (the fencing token, +1
  at every takeover) and ``since``. It changes only at a takeover.
* ``<schema>.ha_renewal``, the liveness row: the same holder and epoch, ``expires_at``, and
  ``holder_pid``/``holder_backend_start`` (the holder's lease session). A row of its own so that
  renewals never wait for the store's writers, which hold the fencing row ``FOR SHARE``.
* A standby polls every ``ha.poll_s``; a takeover is one transaction that updates the liveness
  row when the lease expired, when nobody holds it (clean stop), or when the holder's lease
  session no longer exists (a killed process: its backend ends within milliseconds, so a
  ``kill -9`` is taken over in well under a second instead of after a whole lease), then the
  fencing row.
* The active renews every ``ha.renew_s`` (``UPDATE ... WHERE epoch = mine``). Its own local
  deadline is the monotonic time *before* the last successful renew was sent plus ``lease_s``
  minus one renew period: past it without a renewal, or when a renewal finds another epoch, the
  lease is lost.
* Fencing: every write transaction of the store starts with ``SELECT <schema>.ha_fence(epoch)``
  (installed through the store's ``_write_guard``). The function reads the lease row ``FOR
  SHARE`` and raises unless the epoch is still ours, so a node that was paused or cut off can
  never commit after a takeover; the takeover's UPDATE of the fencing row waits for writers
  already past the check.
  It also counts commits per epoch in ``<schema>.ha_commits`` (epoch, commits, first and last
  commit time), which tells afterwards who wrote when.
* The new active ends every other session that still holds the store's schema lock (the
  deposed node's writer, e.g. a paused process whose sessions stay open) so its own store can
  open, then loads the state and opens its listeners.

Why a lease row rather than a session advisory lock: advisory locks are not replicated (after a
PostgreSQL failover both nodes would "hold" it), do not survive a pooler, and a paused holder
keeps its session; the row and its epoch stay true in all three cases. The session check above
gives the advisory lock's speed for the common case (a dead process) without relying on it.

Why a deposed node restarts itself (``ha.on_lease_lost = "restart"``, the default) instead of
going back to standby in place: everything it holds in memory (queues, sessions, unacked
deliveries) may be stale the moment another node took over. It closes its listeners and every
client connection at once, then re-executes its own command line and comes back as a standby
with a clean state. ``"exit"`` ends the process (exit code 3) for a supervisor to restart.

The lease thread never runs on the reactor; it reports to the reactor with ``callFromThread``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

log = Logger(namespace="polymq.ha")

HA_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    # this node's name in the lease; "" = the host name and the process id
    "node_id": "",
    # a lease nobody renewed for this long is taken over (a paused or cut-off active)
    "lease_s": 5.0,
    # the active renews this often; a standby polls this often for the lease
    "renew_s": 1.0,
    "poll_s": 0.25,
    # what a node that lost the lease does after closing every listener and connection
    "on_lease_lost": "restart",
    # the host name clients are told (Kafka Metadata, OpenWire BrokerInfo); "" = the listener's
    "advertised_host": "",
}

ON_LEASE_LOST = ("restart", "exit")
EXIT_LEASE_LOST = 3

STANDBY, ACTIVE, LOST, STOPPED = "standby", "active", "lost", "stopped"


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def check(section: dict) -> list[tuple[str, str]]:
    """(key, problem) for the ``[ha]`` section, found without connecting anywhere."""
    problems = []
    lease, renew = float(section["lease_s"]), float(section["renew_s"])
    if renew <= 0 or float(section["poll_s"]) <= 0:
        problems.append(("renew_s", "renew_s and poll_s must be positive"))
    elif lease < 2 * renew:
        problems.append(("lease_s", f"must be at least twice ha.renew_s ({renew}), got {lease}"))
    if section["on_lease_lost"] not in ON_LEASE_LOST:
        problems.append(("on_lease_lost", f"must be one of {', '.join(ON_LEASE_LOST)}"))
    return problems


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _schema_sql(s: str) -> list[str]:
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        # the fencing row: changes only at a takeover; every store write reads it FOR SHARE
        f"""CREATE TABLE IF NOT EXISTS {s}.ha_lease (
            id integer PRIMARY KEY CHECK (id = 1),
            holder text, epoch bigint NOT NULL DEFAULT 0, since timestamptz)""",
        f"INSERT INTO {s}.ha_lease (id) VALUES (1) ON CONFLICT DO NOTHING",
        # the liveness row, renewed every ha.renew_s: a row of its own, so that a renewal never
        # waits for the store's writers (which hold the fencing row FOR SHARE)
        f"""CREATE TABLE IF NOT EXISTS {s}.ha_renewal (
            id integer PRIMARY KEY CHECK (id = 1),
            holder text, epoch bigint NOT NULL DEFAULT 0, expires_at timestamptz,
            holder_pid integer, holder_backend_start timestamptz)""",
        f"INSERT INTO {s}.ha_renewal (id) VALUES (1) ON CONFLICT DO NOTHING",
        # every node's last word, for `polymq status` (the lease alone names only the active)
        f"""CREATE TABLE IF NOT EXISTS {s}.ha_nodes (
            node_id text PRIMARY KEY, role text NOT NULL, since timestamptz NOT NULL,
            seen_at timestamptz NOT NULL)""",
        # where OpenWire clients reach each node (the active tells them: ConnectionControl)
        f"ALTER TABLE {s}.ha_nodes ADD COLUMN IF NOT EXISTS openwire_url text",
        f"""CREATE TABLE IF NOT EXISTS {s}.ha_commits (
            epoch bigint PRIMARY KEY, holder text, commits bigint NOT NULL,
            first_at timestamptz NOT NULL, last_at timestamptz NOT NULL)""",
        # FOR SHARE conflicts with the takeover's UPDATE: a takeover waits for writers that
        # passed the check, and writers after it see the new epoch and fail
        f"""CREATE OR REPLACE FUNCTION {s}.ha_fence(mine bigint, me text) RETURNS void
            LANGUAGE plpgsql AS $$
            DECLARE current bigint;
            BEGIN
                SELECT epoch INTO current FROM {s}.ha_lease WHERE id = 1 FOR SHARE;
                IF current IS DISTINCT FROM mine THEN
                    RAISE EXCEPTION 'polymq fenced: epoch % is not the lease epoch %', mine, current
                        USING ERRCODE = 'P0001';
                END IF;
                INSERT INTO {s}.ha_commits AS c VALUES
                    (mine, me, 1, clock_timestamp(), clock_timestamp())
                ON CONFLICT (epoch) DO UPDATE
                    SET commits = c.commits + 1, last_at = clock_timestamp();
            END $$""",
    ]


# the lease may be taken: expired, handed back (NULL), or its holder's session is gone
_LAPSED = """
r.expires_at IS NULL OR r.expires_at < clock_timestamp()
OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
               WHERE a.pid = r.holder_pid AND a.backend_start = r.holder_backend_start)
"""

_MY_SESSION = """holder_pid = pg_backend_pid(),
    holder_backend_start = (SELECT backend_start FROM pg_stat_activity
                            WHERE pid = pg_backend_pid())"""

_TAKEABLE = "SELECT 1 FROM {s}.ha_renewal AS r WHERE r.id = 1 AND (" + _LAPSED + ")"

# a takeover is one transaction: the liveness row first (a renewal of the old holder waits
# for it, then finds another epoch), then the fencing row (waits for writers in flight)
_ACQUIRE = (
    """
UPDATE {s}.ha_renewal AS r SET holder = %(me)s, epoch = r.epoch + 1,
    expires_at = clock_timestamp() + %(ttl)s * interval '1 second', """
    + _MY_SESSION
    + """
WHERE r.id = 1 AND ("""
    + _LAPSED
    + """)
RETURNING r.epoch
"""
)

_ACQUIRE_FENCE = """
UPDATE {s}.ha_lease SET holder = %(me)s, epoch = %(epoch)s, since = clock_timestamp()
WHERE id = 1 RETURNING since
"""

_RENEW = (
    """
UPDATE {s}.ha_renewal SET expires_at = clock_timestamp() + %(ttl)s * interval '1 second', """
    + _MY_SESSION
    + """
WHERE id = 1 AND epoch = %(epoch)s AND holder = %(me)s
  AND EXISTS (SELECT 1 FROM {s}.ha_lease WHERE id = 1 AND epoch = %(epoch)s)
RETURNING epoch
"""
)

_RELEASE = """
UPDATE {s}.ha_renewal SET expires_at = NULL, holder_pid = NULL
WHERE id = 1 AND epoch = %(epoch)s AND holder = %(me)s
"""

# sessions other than ours that hold the store's schema lock (see PostgresStore._lock): the
# deposed active's writer; ended so that our store can open and the old one cannot write
_FENCE_OLD_WRITERS = """
SELECT pid, pg_terminate_backend(pid) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND ((classid::int8 << 32) | objid::int8) = hashtextextended(%(key)s, 0)
  AND pid <> pg_backend_pid()
  AND pid NOT IN (SELECT pid FROM pg_stat_activity WHERE application_name = %(app)s)
"""

_SEEN = """
INSERT INTO {s}.ha_nodes AS n (node_id, role, since, seen_at, openwire_url)
VALUES (%(me)s, %(role)s, clock_timestamp(), clock_timestamp(), %(openwire)s)
ON CONFLICT (node_id) DO UPDATE SET seen_at = clock_timestamp(), role = excluded.role,
    openwire_url = excluded.openwire_url,
    since = CASE WHEN n.role = excluded.role THEN n.since ELSE clock_timestamp() END
"""

# the OpenWire addresses of the nodes alive lately (a standby is seen every poll_s), this
# node's first: what ActiveMQ's updateClusterClients names in ConnectionControl
_CLUSTER = """
SELECT openwire_url FROM {s}.ha_nodes
WHERE openwire_url IS NOT NULL AND role IN ('active', 'standby')
  AND seen_at > clock_timestamp() - %(fresh)s * interval '1 second'
ORDER BY node_id <> %(me)s, node_id
"""

_STATUS = """
SELECT l.holder, l.epoch, l.since, r.expires_at, r.expires_at > clock_timestamp() AS valid,
    EXISTS (SELECT 1 FROM pg_stat_activity a
            WHERE a.pid = r.holder_pid AND a.backend_start = r.holder_backend_start) AS alive,
    clock_timestamp() AS now
FROM {s}.ha_lease AS l JOIN {s}.ha_renewal AS r ON r.id = l.id AND r.epoch = l.epoch
WHERE l.id = 1
"""


def lease_status(dsn: str, schema: str = "polymq", connect_timeout: int = 5) -> dict[str, Any]:
    """The lease row as a dict (blocking; for ``polymq status`` and tests, not the reactor)."""
    import psycopg

    s = _quote(schema)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", [f"{s}.ha_lease"]).fetchone()[0]
        if exists is None:
            return {"holder": None, "epoch": 0, "active": False}
        row = conn.execute(_STATUS.format(s=s)).fetchone()
        if row is None:  # a takeover between its two statements: not committed yet
            row = (None, 0, None, None, False, False, None)
        nodes = conn.execute(
            f"SELECT node_id, role, since, extract(epoch FROM clock_timestamp() - seen_at)"
            f" FROM {s}.ha_nodes ORDER BY node_id"
        ).fetchall()
    holder, epoch, since, expires, valid, alive, now = row
    return {
        "nodes": [
            {"node_id": n, "role": r, "since": t.isoformat(), "seen_s_ago": float(ago)}
            for n, r, t, ago in nodes
        ],
        "holder": holder,
        "epoch": epoch,
        "since": since.isoformat() if since else None,
        "expires_at": expires.isoformat() if expires else None,
        "active": bool(holder and valid and alive),
        "database_time": now.isoformat(),
    }


def status_command(cfg: dict, as_json: bool = False) -> int:
    """``polymq status``: the lease and every node as the shared store sees them.

    Reads the database named by the config, so it answers the same on every node, standby or
    not, and with no node running. Exit code 0 when a node is active, 1 otherwise, 2 when the
    config names no shared store."""
    import json
    import sys

    store = cfg["store"]
    if store["backend"] != "postgres" or not store.get("dsn"):
        print(
            'polymq: status reads the shared store: set store.backend = "postgres" and store.dsn',
            file=sys.stderr,
        )
        return 2
    try:
        status = lease_status(store["dsn"], store.get("schema", "polymq"))
    except Exception as exc:  # psycopg's errors: unreachable, refused ...
        print(f"polymq: cannot read the lease: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status, indent=2))
    elif status["active"]:
        print(
            f"active: {status['holder']} since {status['since']}, epoch {status['epoch']}"
            f" (lease until {status['expires_at']})"
        )
    else:
        print(f"active: none (last holder {status['holder']}, epoch {status['epoch']})")
    if not as_json:
        for node in status.get("nodes", []):
            print(
                f"node {node['node_id']}: {node['role']} since {node['since']},"
                f" last seen {node['seen_s_ago']:.1f}s ago"
            )
    return 0 if status["active"] else 1


class HaNode:
    """This node's side of the lease: wait for it, hold it, fence the store, report its loss.

    ``acquire()`` fires (reactor thread) once this node holds the lease; from then on
    ``write_guard`` is the store's fencing statement and ``on_lost(reason)`` is called (reactor
    thread, once) if the lease is lost. ``status()`` is what ``/api/ha`` shows.
    """

    def __init__(
        self,
        section: dict,
        dsn: str,
        schema: str = "polymq",
        reactor: Any = None,
        on_lost: Callable[[str], None] | None = None,
        openwire_url: str | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.node_id = section["node_id"] or default_node_id()
        self.lease_s = float(section["lease_s"])
        self.renew_s = float(section["renew_s"])
        self.poll_s = float(section["poll_s"])
        self.schema = schema
        self.application_name = f"polymq-ha:{self.node_id}"[:63]
        self.dsn = with_application_name(dsn, self.application_name)
        self.on_lost = on_lost
        self._s = _quote(schema)
        self.role = STANDBY
        self.epoch: int | None = None
        self.since: str | None = None
        self.standby_since = time.time()
        self.renewals = 0
        self.last_holder: str | None = None
        self._acquired: defer.Deferred | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._valid_until = 0.0
        self._lost_reported = False
        self._release = False
        # this node's address for OpenWire clients, and every live node's (this one first),
        # kept up to date while active; listeners (the OpenWire adapter) hear of changes
        self.openwire_url = openwire_url
        self.openwire_urls: list[str] = []
        self.cluster_listeners: list[Callable[[list[str]], None]] = []
        self._cluster_seen: list[str] | None = None

    # -- reactor side ----------------------------------------------------------------------

    def acquire(self) -> defer.Deferred:
        """Start the lease thread; the Deferred fires with the epoch once this node is active."""
        self._acquired = defer.Deferred()
        self._thread = threading.Thread(target=self._run, name="polymq-ha-lease", daemon=True)
        self._thread.start()
        return self._acquired

    def write_guard(self) -> list[tuple[str, list]]:
        """The store's fencing statement (called in the store's writer thread)."""
        return [(f"SELECT {self._s}.ha_fence(%s, %s)", [self.epoch, self.node_id])]

    def install(self, store: Any) -> None:
        """Fence every write transaction of ``store`` with this node's epoch."""
        store._write_guard = self.write_guard
        store.dsn = with_application_name(store.dsn, self.application_name)

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "node_id": self.node_id,
            "epoch": self.epoch,
            "since": self.since,
            "standby_since": _iso(self.standby_since) if self.role == STANDBY else None,
            "lease_s": self.lease_s,
            "renew_s": self.renew_s,
            "renewals": self.renewals,
            "holder_seen": self.last_holder,
        }

    def stop(self, release: bool = True) -> defer.Deferred:
        """End the lease thread; an active node hands the lease back at once (clean stop)."""
        self._release = release and self.role == ACTIVE
        self._stop.set()
        if self.role != ACTIVE:
            self.role = STOPPED
        d, self._acquired = self._acquired, None
        if d is not None and not d.called:
            d.callback(None)
        thread = self._thread
        if thread is None:
            return defer.succeed(None)
        from twisted.internet.threads import deferToThread

        return deferToThread(thread.join, self.renew_s + 5)

    def _won(self, epoch: int, since: str) -> None:
        if self.role == STOPPED:
            return
        self.role = ACTIVE
        self.epoch = epoch
        self.since = since
        log.info(
            "ha: node {node} is active with epoch {epoch} (lease {lease}s, renewed every {renew}s)",
            node=self.node_id,
            epoch=epoch,
            lease=self.lease_s,
            renew=self.renew_s,
        )
        d, self._acquired = self._acquired, None
        if d is not None:
            d.callback(epoch)

    def _cluster_changed(self, urls: list[str]) -> None:
        if self.role != ACTIVE:
            return
        self.openwire_urls = urls
        log.info("ha: nodes for OpenWire clients: {urls}", urls=", ".join(urls))
        for listener in list(self.cluster_listeners):
            try:
                listener(urls)
            except Exception:
                log.failure("ha: a cluster listener failed")

    def _lost(self, reason: str) -> None:
        if self._lost_reported or self.role == STOPPED:
            return
        self._lost_reported = True
        self.role = LOST
        log.critical(
            "ha: node {node} lost the lease (epoch {epoch}): {reason}",
            node=self.node_id,
            epoch=self.epoch,
            reason=reason,
        )
        if self.on_lost is not None:
            self.on_lost(reason)

    # -- lease thread ----------------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=max(1, int(self.lease_s / 2)),
            keepalives=1,
            keepalives_idle=max(1, int(self.lease_s)),
            keepalives_interval=1,
            keepalives_count=2,
        )
        # a renewal that cannot finish within the lease is as good as lost
        conn.execute(f"SET statement_timeout = {int(self.renew_s * 1000)}")
        conn.execute("SET lock_timeout = 0")
        return conn

    def _close_if_broken(self) -> None:
        """After an error: keep a healthy connection (a statement timeout, a lock wait), since
        a new one would change the session a standby checks the holder by."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _run(self) -> None:
        try:
            epoch = self._standby()
            if epoch is None:
                return
            self._active(epoch)
        except Exception as e:  # a bug: never keep a lease we stopped renewing
            log.failure("ha: lease thread failed")
            if self.role == ACTIVE:
                self.reactor.callFromThread(self._lost, f"lease thread failed: {e!r}")
        finally:
            if self._stop.is_set():  # a clean stop: say so in ha_nodes
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    self._seen(STOPPED)
                except Exception:
                    pass
            if self._release and self.epoch is not None:
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    self._conn.execute(
                        _RELEASE.format(s=self._s), {"epoch": self.epoch, "me": self.node_id}
                    )
                    log.info("ha: lease released (epoch {epoch})", epoch=self.epoch)
                except Exception as e:
                    log.warn("ha: could not release the lease: {e}", e=e)
            self._close()

    def _standby(self) -> int | None:
        """Poll until the lease is ours; return the epoch (None when stopped first)."""
        announced = False
        problem = None
        while not self._stop.is_set():
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    with self._conn.transaction():
                        self._conn.execute(
                            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                            [f"polymq.migrate:{self.schema}"],
                        )
                        for stmt in _schema_sql(self._s):
                            self._conn.execute(stmt)
                row = None
                if self._conn.execute(_TAKEABLE.format(s=self._s)).fetchone():
                    # the deposed active's writer may sit in a transaction that read the lease
                    # FOR SHARE (paused process): end it, or the takeover would wait for it
                    self._fence_old_writers()
                    sent = time.monotonic()
                    with self._conn.transaction():
                        row = self._conn.execute(
                            _ACQUIRE.format(s=self._s), {"me": self.node_id, "ttl": self.lease_s}
                        ).fetchone()
                        if row is not None:
                            (since,) = self._conn.execute(
                                _ACQUIRE_FENCE.format(s=self._s),
                                {"me": self.node_id, "epoch": row[0]},
                            ).fetchone()
                            row = (row[0], since)
                if row is not None:
                    epoch, since = row
                    self._valid_until = sent + self.lease_s - self.renew_s
                    self._fence_old_writers()  # one that reconnected meanwhile
                    self.reactor.callFromThread(self._won, epoch, since.isoformat())
                    return epoch
                self._seen(STANDBY)
                if not announced:
                    holder = self._conn.execute(
                        f"SELECT holder, epoch FROM {self._s}.ha_lease WHERE id = 1"
                    ).fetchone()
                    self.last_holder = holder[0]
                    log.info(
                        "ha: node {node} is standby; {holder} is active (epoch {epoch})",
                        node=self.node_id,
                        holder=holder[0],
                        epoch=holder[1],
                    )
                    announced = True
                problem = None
            except Exception as e:
                self._close_if_broken()
                text = " ".join(str(e).split()) or type(e).__name__
                if text != problem:
                    log.warn("ha: standby cannot reach the lease: {e}", e=text)
                    problem = text
            self._stop.wait(self.poll_s)
        return None

    def _fence_old_writers(self) -> None:
        ended = self._conn.execute(
            _FENCE_OLD_WRITERS,
            {"key": f"polymq.store:{self.schema}", "app": self.application_name},
        ).fetchall()
        if ended:
            log.warn(
                "ha: ended {n} session(s) of the previous active that still held the store"
                " (pids {pids})",
                n=len(ended),
                pids=", ".join(str(r[0]) for r in ended),
            )

    def _seen(self, role: str) -> None:
        self._conn.execute(
            _SEEN.format(s=self._s),
            {"me": self.node_id, "role": role, "openwire": self.openwire_url},
        )

    def _refresh_cluster(self) -> None:
        """Read the live nodes' OpenWire addresses; tell the reactor when they changed."""
        if self.openwire_url is None:  # no OpenWire listener here
            return
        fresh = max(15.0, 3 * self.lease_s)
        rows = self._conn.execute(
            _CLUSTER.format(s=self._s), {"fresh": fresh, "me": self.node_id}
        ).fetchall()
        urls = [r[0] for r in rows]
        if urls != self._cluster_seen:
            self._cluster_seen = urls
            self.reactor.callFromThread(self._cluster_changed, urls)

    def _active(self, epoch: int) -> None:
        """Renew until stopped; report a loss to the reactor."""
        problem = None
        try:
            # the node's row says active from the start (`polymq status`), and the clients of
            # the first connections learn the other nodes
            self._seen(ACTIVE)
            self._refresh_cluster()
        except Exception as e:
            self._close_if_broken()
            log.warn("ha: cannot read the nodes: {e}", e=" ".join(str(e).split()))
        while not self._stop.wait(self.renew_s):
            sent = time.monotonic()
            try:
                if self._conn is None:
                    self._conn = self._connect()
                row = self._conn.execute(
                    _RENEW.format(s=self._s),
                    {"me": self.node_id, "epoch": epoch, "ttl": self.lease_s},
                ).fetchone()
                if row is None:
                    self.reactor.callFromThread(self._lost, "another node took the lease over")
                    return
                self._valid_until = sent + self.lease_s - self.renew_s
                self.renewals += 1
                problem = None
                self._fence_old_writers()
                self._seen(ACTIVE)
                self._refresh_cluster()
            except Exception as e:
                self._close_if_broken()
                text = " ".join(str(e).split()) or type(e).__name__
                if text != problem:
                    log.warn("ha: lease renewal failed: {e}", e=text)
                    problem = text
            if time.monotonic() >= self._valid_until:
                self.reactor.callFromThread(
                    self._lost,
                    f"not renewed for {self.lease_s - self.renew_s:.1f}s ({problem or 'late'})",
                )
                return


def with_application_name(dsn: str, name: str) -> str:
    """``dsn`` with libpq's application_name set (so the lease can tell our sessions apart)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, application_name=name)


def _iso(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()
