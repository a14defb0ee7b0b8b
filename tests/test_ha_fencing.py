"""Fencing: an active node paused (SIGSTOP) until the standby took over must never commit again.

The paused node's lease expires, the standby takes over with a higher epoch and ends the old
node's store session. A client then has publishes waiting in the paused node's socket; after
SIGCONT the old node reads them, but its store refuses every write (the epoch check in each
transaction) and the node steps down: listeners and connections closed, then it restarts as a
standby (or exits with code 3 for a supervisor). The database shows that no transaction of the
old epoch committed after the takeover.
"""

from __future__ import annotations

import os
import signal
import time

import pika
import pytest
from hanodes import amqp_drain, make_nodes

LEASE_S = 3.0
RENEW_S = 0.5


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("on_lost", ["restart", "exit"])
def test_paused_active_is_fenced_and_steps_down(pg_server, tmp_path, on_lost):
    dsn, (a, b) = make_nodes(
        pg_server,
        tmp_path,
        adapters=("amqp",),
        lease_s=LEASE_S,
        renew_s=RENEW_S,
        settings={"ha.on_lease_lost": on_lost},
    )
    dbname = dsn.rsplit("/", 1)[1]
    a.start()
    b.launch()
    try:
        wait_for(lambda: "is standby; " in b.log_text(), 30, "node b to be standby")
        conn = pika.BlockingConnection(pika.ConnectionParameters(*a.address("amqp")))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("fence", durable=True)
        for i in range(50):
            ch.basic_publish("", "fence", f"m-{i}".encode(), pika.BasicProperties(delivery_mode=2))
        # a second publisher without confirms: its publishes wait in the paused node's socket
        late = pika.BlockingConnection(pika.ConnectionParameters(*a.address("amqp"), heartbeat=0))
        late_ch = late.channel()

        os.kill(a.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        for i in range(100):
            late_ch.basic_publish(
                "", "fence", f"m-{1000 + i}".encode(), pika.BasicProperties(delivery_mode=2)
            )
        late.process_data_events(0)
        b.wait_active(LEASE_S * 4)
        takeover = time.monotonic() - stopped
        assert takeover >= LEASE_S - RENEW_S - 0.5, "taken over before the lease could expire"
        holder, epoch, since = pg_server.sql(
            "SELECT holder, epoch, since FROM polymq.ha_lease", dbname=dbname
        )[0]
        assert (holder, epoch) == ("b", 2)

        os.kill(a.pid, signal.SIGCONT)
        wait_for(lambda: "ha: stepping down" in a.log_text(), 20, "node a to step down")
        if on_lost == "restart":
            wait_for(
                lambda: a.log_text().count("is standby; ") >= 1, 30, "node a to restart as standby"
            )
            assert a.running, "the deposed node restarts itself as a standby"
        else:
            assert a.proc.wait(20) == 3, "the deposed node exits with code 3"
        assert a.open_ports() == [], "the deposed node's client ports must be closed"
        assert b.open_ports() == ["amqp"]

        commits = dict(
            (e, (n, last))
            for e, n, last in pg_server.sql(
                "SELECT epoch, commits, last_at FROM polymq.ha_commits", dbname=dbname
            )
        )
        assert commits[1][0] > 0, commits  # the old active did commit while it held the lease
        assert commits[1][1] < since, f"epoch 1 committed at {commits[1][1]}, after {since}"
        log = a.log_text()
        assert "lost the lease" in log or "fenced" in log, a.log_tail()

        # B has exactly the confirmed messages; none of the late ones reached the store
        got = amqp_drain(b.address("amqp"), "fence")
        assert sorted(got) == list(range(50)), got
        for c in (conn, late):
            try:
                c.close()
            except Exception:
                pass
    finally:
        for node in (a, b):
            if node.running:
                os.kill(node.pid, signal.SIGCONT)
            node.kill9()
