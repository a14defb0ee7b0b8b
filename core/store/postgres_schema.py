"""Schema, migrations and statements of the ``postgres`` store (see docs/storage.md).

Every table lives in one PostgreSQL schema (``store.schema``, ``polymq`` by default), so several
brokers can share a database with different schemas. Names (vhosts, exchanges, queues, routing
keys, kv keys) are stored as UTF-8 ``bytea``: a protocol may allow characters PostgreSQL ``text``
cannot hold (NUL, unpaired surrogates), and they must round-trip unchanged.

The version is the single row of ``<schema>.schema_version``. ``MIGRATIONS[v]`` brings a schema
of version ``v`` to ``v + 1`` (0 = an empty schema): statements separated by ``;``, or a
function of (connection, quoted schema) where a step depends on the server; all of them run in
one transaction under an advisory lock, so two brokers starting at once cannot both migrate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SCHEMA_VERSION = 3

_V1 = """
CREATE TABLE {s}.schema_version (version integer NOT NULL);
INSERT INTO {s}.schema_version VALUES (0);
CREATE TABLE {s}.exchanges (
    vhost bytea NOT NULL, name bytea NOT NULL, record bytea NOT NULL,
    PRIMARY KEY (vhost, name));
CREATE TABLE {s}.queues (
    vhost bytea NOT NULL, name bytea NOT NULL, record bytea NOT NULL,
    PRIMARY KEY (vhost, name));
CREATE TABLE {s}.bindings (
    vhost bytea NOT NULL, source bytea NOT NULL, kind text NOT NULL,
    destination bytea NOT NULL, key bytea NOT NULL, args bytea NOT NULL,
    PRIMARY KEY (vhost, source, kind, destination, key, args));
CREATE INDEX bindings_by_destination ON {s}.bindings (vhost, kind, destination);
CREATE TABLE {s}.messages (
    vhost bytea NOT NULL, queue bytea NOT NULL, seq bigint NOT NULL,
    delivery_count integer NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (vhost, queue, seq))
    WITH (autovacuum_vacuum_scale_factor = 0.02);
CREATE TABLE {s}.stream_entries (
    vhost bytea NOT NULL, stream bytea NOT NULL, partition integer NOT NULL,
    "offset" bigint NOT NULL, count integer NOT NULL, "timestamp" bigint NOT NULL,
    format text NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (vhost, stream, partition, "offset"))
    WITH (autovacuum_vacuum_scale_factor = 0.02);
CREATE TABLE {s}.kv (
    namespace bytea NOT NULL, key bytea NOT NULL, value bytea NOT NULL,
    PRIMARY KEY (namespace, key));
"""


def _v2_lz4(conn: Any, s: str) -> None:
    """Payloads (message bodies, Kafka record batches) compressed with lz4 instead of pglz.

    A value over ~2 kB is compressed before it goes to TOAST: pglz costs about as much as the
    rest of the insert on a compressible record batch, lz4 a fraction of that, and both give up
    early on incompressible data. PostgreSQL 14+ built with lz4 (Debian's is); other servers
    keep pglz, the schema is the same.
    """
    if int(conn.execute("SHOW server_version_num").fetchone()[0]) < 140000:
        return
    conn.execute("SAVEPOINT polymq_lz4")
    try:
        for table in ("messages", "stream_entries"):
            conn.execute(f"ALTER TABLE {s}.{table} ALTER COLUMN data SET COMPRESSION lz4")
    except Exception:  # "compression method lz4 not supported": this server keeps pglz
        conn.execute("ROLLBACK TO SAVEPOINT polymq_lz4")
    else:
        conn.execute("RELEASE SAVEPOINT polymq_lz4")


# Version 3: scheduled messages (core/scheduler.py)
_V3 = """
CREATE TABLE {s}.scheduled (id bigint PRIMARY KEY, due bigint NOT NULL, data bytea NOT NULL);
CREATE INDEX scheduled_by_due ON {s}.scheduled (due, id);
"""

# from-version -> statements (``{s}`` is the quoted schema name) or a function (see above)
MIGRATIONS: dict[int, str | Callable[[Any, str], None]] = {0: _V1, 1: _v2_lz4, 2: _V3}

# Operation kinds: the same numbers as the sqlite store's, so both read the same op tuples.
PUT_EXCHANGE = 0
DEL_EXCHANGE = 1
PUT_QUEUE = 2
DEL_QUEUE = 3
PUT_BINDING = 4
DEL_BINDING = 5
PUT_MESSAGE = 6
DEL_MESSAGE = 7
APPEND_STREAM = 8
TRIM_STREAM = 9
PUT_KV = 10
DEL_KV = 11
PUT_SCHEDULED = 13
DEL_SCHEDULED = 14

# kind -> positions of names (str) in its parameter tuple, stored as UTF-8 bytea
NAME_FIELDS: dict[int, tuple[int, ...]] = {
    PUT_EXCHANGE: (0, 1),
    DEL_EXCHANGE: (0, 1),
    PUT_QUEUE: (0, 1),
    DEL_QUEUE: (0, 1),
    PUT_BINDING: (0, 1, 3, 4),
    DEL_BINDING: (0, 1, 3, 4),
    PUT_MESSAGE: (0, 1),
    DEL_MESSAGE: (0, 1),
    APPEND_STREAM: (0, 1),
    TRIM_STREAM: (0, 1),
    PUT_KV: (0, 1),
    DEL_KV: (0, 1),
    PUT_SCHEDULED: (),
    DEL_SCHEDULED: (),
}

# kind -> [(statement, positions of the op's parameters it takes)], one execution per op.
# Message and kv puts/deletes and stream appends have set-based statements below instead.
STATEMENTS: dict[int, list[tuple[str, tuple[int, ...]]]] = {
    PUT_EXCHANGE: [
        (
            "INSERT INTO {s}.exchanges (vhost, name, record) VALUES (%s, %s, %s)"
            " ON CONFLICT (vhost, name) DO UPDATE SET record = EXCLUDED.record",
            (0, 1, 2),
        )
    ],
    DEL_EXCHANGE: [
        ("DELETE FROM {s}.exchanges WHERE vhost = %s AND name = %s", (0, 1)),
        (
            "DELETE FROM {s}.bindings WHERE vhost = %s AND (source = %s OR"
            " (kind = 'exchange' AND destination = %s))",
            (0, 1, 1),
        ),
    ],
    PUT_QUEUE: [
        (
            "INSERT INTO {s}.queues (vhost, name, record) VALUES (%s, %s, %s)"
            " ON CONFLICT (vhost, name) DO UPDATE SET record = EXCLUDED.record",
            (0, 1, 2),
        )
    ],
    DEL_QUEUE: [
        ("DELETE FROM {s}.queues WHERE vhost = %s AND name = %s", (0, 1)),
        ("DELETE FROM {s}.messages WHERE vhost = %s AND queue = %s", (0, 1)),
        ("DELETE FROM {s}.stream_entries WHERE vhost = %s AND stream = %s", (0, 1)),
        (
            "DELETE FROM {s}.bindings WHERE vhost = %s AND kind = 'queue' AND destination = %s",
            (0, 1),
        ),
    ],
    PUT_BINDING: [
        (
            "INSERT INTO {s}.bindings (vhost, source, kind, destination, key, args)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (0, 1, 2, 3, 4, 5),
        )
    ],
    DEL_BINDING: [
        (
            "DELETE FROM {s}.bindings WHERE vhost = %s AND source = %s AND kind = %s"
            " AND destination = %s AND key = %s AND args = %s",
            (0, 1, 2, 3, 4, 5),
        )
    ],
    PUT_SCHEDULED: [
        (
            "INSERT INTO {s}.scheduled (id, due, data) VALUES (%s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET due = EXCLUDED.due, data = EXCLUDED.data",
            (0, 1, 2),
        )
    ],
    DEL_SCHEDULED: [("DELETE FROM {s}.scheduled WHERE id = %s", (0,))],
    TRIM_STREAM: [
        (
            "DELETE FROM {s}.stream_entries WHERE vhost = %s AND stream = %s"
            ' AND partition = %s AND "offset" < %s',
            (0, 1, 2, 3),
        )
    ],
}

# Set-based statements: one statement per group of rows (arrays, one per column).
PUT_MESSAGES = (
    "INSERT INTO {s}.messages (vhost, queue, seq, data, delivery_count)"
    " SELECT * FROM unnest(%b::bytea[], %b::bytea[], %b::int8[], %b::bytea[], %b::int4[])"
    " ON CONFLICT (vhost, queue, seq) DO UPDATE"
    " SET data = EXCLUDED.data, delivery_count = EXCLUDED.delivery_count"
)
# the same, for a run of puts into one queue (the usual case): fewer values to send
PUT_QUEUE_MESSAGES = (
    "INSERT INTO {s}.messages (vhost, queue, seq, data, delivery_count)"
    " SELECT %b::bytea, %b::bytea, s, d, c FROM unnest(%b::int8[], %b::bytea[], %b::int4[])"
    " AS u(s, d, c) ON CONFLICT (vhost, queue, seq) DO UPDATE"
    " SET data = EXCLUDED.data, delivery_count = EXCLUDED.delivery_count"
)
DELETE_MESSAGES = (
    "DELETE FROM {s}.messages WHERE vhost = %s AND queue = %s AND seq = ANY(%b::int8[])"
)
# A retried batch (after a lost connection, when its commit may have happened) finds its
# entries there already: they are left as they are.
APPEND_ENTRIES = (
    'INSERT INTO {s}.stream_entries (vhost, stream, partition, "offset", count, "timestamp",'
    " format, data) SELECT * FROM unnest(%b::bytea[], %b::bytea[], %b::int4[], %b::int8[],"
    " %b::int4[], %b::int8[], %b::text[], %b::bytea[]) ON CONFLICT DO NOTHING"
)

PUT_KVS = (
    "INSERT INTO {s}.kv (namespace, key, value)"
    " SELECT * FROM unnest(%b::bytea[], %b::bytea[], %b::bytea[])"
    " ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value"
)
DELETE_KVS = (
    "DELETE FROM {s}.kv WHERE (namespace, key) IN (SELECT * FROM unnest(%b::bytea[], %b::bytea[]))"
)

LOAD_EXCHANGES = "SELECT vhost, name, record FROM {s}.exchanges ORDER BY vhost, name"
LOAD_QUEUES = "SELECT vhost, name, record FROM {s}.queues ORDER BY vhost, name"
LOAD_BINDINGS = (
    "SELECT vhost, source, kind, destination, key, args FROM {s}.bindings"
    " ORDER BY vhost, source, kind, destination, key"
)
LOAD_MESSAGES = (
    "SELECT vhost, queue, seq, data, delivery_count FROM {s}.messages ORDER BY vhost, queue, seq"
)
LOAD_ENTRIES = (
    'SELECT vhost, stream, partition, "offset", count, "timestamp", format, data'
    ' FROM {s}.stream_entries ORDER BY vhost, stream, partition, "offset"'
)
LOAD_KV = "SELECT namespace, key, value FROM {s}.kv"
LOAD_SCHEDULED = "SELECT id, due, data FROM {s}.scheduled ORDER BY due, id"

TABLES = (
    "schema_version",
    "exchanges",
    "queues",
    "bindings",
    "messages",
    "stream_entries",
    "kv",
    "scheduled",
)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    if "\x00" in name:
        raise ValueError("an SQL identifier cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'
