"""The SQL side of the sqlite store: schema, migrations, statements and batched writes."""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from operator import itemgetter
from typing import Any

import msgpack

_SCHEMA_V1 = """
CREATE TABLE exchanges (
    vhost TEXT NOT NULL, name TEXT NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (vhost, name));
CREATE TABLE queues (
    vhost TEXT NOT NULL, name TEXT NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (vhost, name));
CREATE TABLE bindings (
    vhost TEXT NOT NULL, source TEXT NOT NULL, kind TEXT NOT NULL, destination TEXT NOT NULL,
    "key" TEXT NOT NULL, args BLOB NOT NULL,
    PRIMARY KEY (vhost, source, kind, destination, "key", args));
CREATE INDEX bindings_by_destination ON bindings (vhost, kind, destination);
CREATE TABLE messages (
    vhost TEXT NOT NULL, queue TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (vhost, queue, seq));
CREATE TABLE stream_entries (
    vhost TEXT NOT NULL, stream TEXT NOT NULL, "partition" INTEGER NOT NULL,
    "offset" INTEGER NOT NULL, "count" INTEGER NOT NULL, "timestamp" INTEGER NOT NULL,
    "format" TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (vhost, stream, "partition", "offset"));
CREATE TABLE kv (
    namespace TEXT NOT NULL, "key" TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (namespace, "key"));
"""

# Version 2: stream entries live in segment files (StreamLog); the database keeps each
# partition's log start (entries below it, in a segment that is still kept, are skipped).
_STREAM_STARTS = """
CREATE TABLE stream_starts (
    vhost TEXT NOT NULL, stream TEXT NOT NULL, "partition" INTEGER NOT NULL,
    start INTEGER NOT NULL,
    PRIMARY KEY (vhost, stream, "partition"));
"""


# Version 3: what a paging queue needs without reading bodies (priority level, absolute expiry,
# body size), transient rows (non-persistent messages written out only to bound memory;
# deleted at open), and an index that gives each level's count, bytes and order from the index
# alone (restart reads it, never the bodies).
_MESSAGE_META = """
ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN expires_at INTEGER;
ALTER TABLE messages ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN transient INTEGER NOT NULL DEFAULT 0;
UPDATE messages SET size = length(data);  -- then the body size (_migrate_message_meta)
CREATE INDEX messages_levels ON messages (vhost, queue, priority, seq, size, transient);
"""

# Version 4: scheduled messages (core/scheduler.py), read back in due order through the index.
_SCHEDULED = """
CREATE TABLE scheduled (id INTEGER PRIMARY KEY, due INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX scheduled_by_due ON scheduled (due, id);
"""

# from-version -> script bringing the schema to from-version + 1. 1 -> 2 also moves the rows of
# stream_entries into segment files first (SqliteStore._migrate_streams); 2 -> 3 then fills in
# the priority of messages on priority queues (SqliteStore._migrate_priorities).
_MIGRATIONS: dict[int, str] = {
    1: _STREAM_STARTS + "DROP TABLE stream_entries;",
    2: _MESSAGE_META,
    3: _SCHEDULED,
}

# Paging reads and the restart summary (never a body).
_LEVELS_SQL = (
    "SELECT vhost, queue, priority, count(*), sum(size), max(seq), sum(transient)"
    " FROM messages INDEXED BY messages_levels GROUP BY vhost, queue, priority"
)
_READ_LEVEL_SQL = (
    "SELECT seq, data, delivery_count, expires_at FROM messages"
    " WHERE vhost = ? AND queue = ? AND priority = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_DROP_TRANSIENT_SQL = (
    "DELETE FROM messages WHERE vhost = ? AND queue = ? AND priority = ? AND transient = 1"
)
_READ_SCHEDULED_SQL = (
    "SELECT id, due, data FROM scheduled INDEXED BY scheduled_by_due"
    " WHERE due > ?1 OR (due = ?1 AND id >= ?2) ORDER BY due, id LIMIT ?3"
)
_DROP_QUEUE_MESSAGES_SQL = "DELETE FROM messages WHERE vhost = ? AND queue = ?"

# Operation kinds. Every statement of a kind takes the same parameter tuple (numbered params).
_PUT_EXCHANGE = 0
_DEL_EXCHANGE = 1
_PUT_QUEUE = 2
_DEL_QUEUE = 3
_PUT_BINDING = 4
_DEL_BINDING = 5
_PUT_MESSAGE = 6
_DEL_MESSAGE = 7
_APPEND_STREAM = 8
_TRIM_STREAM = 9
_PUT_KV = 10
_DEL_KV = 11
_PURGE_MESSAGES = 12
_PUT_SCHEDULED = 13
_DEL_SCHEDULED = 14

_SQL: dict[int, tuple[str, ...]] = {
    _PUT_EXCHANGE: ("INSERT OR REPLACE INTO exchanges (vhost, name, record) VALUES (?1, ?2, ?3)",),
    _DEL_EXCHANGE: (
        "DELETE FROM exchanges WHERE vhost = ?1 AND name = ?2",
        "DELETE FROM bindings WHERE vhost = ?1 AND (source = ?2 OR"
        " (kind = 'exchange' AND destination = ?2))",
    ),
    _PUT_QUEUE: ("INSERT OR REPLACE INTO queues (vhost, name, record) VALUES (?1, ?2, ?3)",),
    _DEL_QUEUE: (
        "DELETE FROM queues WHERE vhost = ?1 AND name = ?2",
        "DELETE FROM messages WHERE vhost = ?1 AND queue = ?2",
        "DELETE FROM stream_starts WHERE vhost = ?1 AND stream = ?2",
        "DELETE FROM bindings WHERE vhost = ?1 AND kind = 'queue' AND destination = ?2",
    ),
    _PUT_BINDING: (
        'INSERT OR IGNORE INTO bindings (vhost, source, kind, destination, "key", args)'
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    ),
    _DEL_BINDING: (
        "DELETE FROM bindings WHERE vhost = ?1 AND source = ?2 AND kind = ?3"
        ' AND destination = ?4 AND "key" = ?5 AND args = ?6',
    ),
    _PUT_MESSAGE: (
        "INSERT OR REPLACE INTO messages (vhost, queue, seq, data, delivery_count, priority,"
        " expires_at, size, transient) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    ),
    _DEL_MESSAGE: ("DELETE FROM messages WHERE vhost = ?1 AND queue = ?2 AND seq = ?3",),
    _APPEND_STREAM: (),  # segment files (StreamLog), not the database
    _TRIM_STREAM: (
        'INSERT INTO stream_starts (vhost, stream, "partition", start) VALUES (?1, ?2, ?3, ?4)'
        ' ON CONFLICT (vhost, stream, "partition") DO UPDATE SET start ='
        " max(start, excluded.start)",
    ),
    _PUT_KV: ('INSERT OR REPLACE INTO kv (namespace, "key", value) VALUES (?1, ?2, ?3)',),
    _DEL_KV: ('DELETE FROM kv WHERE namespace = ?1 AND "key" = ?2',),
    _PURGE_MESSAGES: (
        "DELETE FROM messages WHERE vhost = ?1 AND queue = ?2 AND priority = ?3 AND seq > ?4",
    ),
    _PUT_SCHEDULED: ("INSERT OR REPLACE INTO scheduled (id, due, data) VALUES (?1, ?2, ?3)",),
    _DEL_SCHEDULED: ("DELETE FROM scheduled WHERE id = ?1",),
}

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

# kind -> index of the payload (bytes) in its parameters, for the WAL size estimate
_DATA_INDEX = {_PUT_MESSAGE: 3, _PUT_KV: 2, _PUT_SCHEDULED: 2}
_KIND = itemgetter(0)
_PARAMS = itemgetter(1)
_OPS = itemgetter(0)
_CALLBACKS = itemgetter(1)
_QUEUE_KEY = itemgetter(0, 1)
_SEQ = itemgetter(2)

# Runs of message puts and deletes go in multi-row statements: sqlite releases the GIL around
# every statement step (executemany: every row), and each time the writer thread wants it back
# while the reactor thread is busy it may wait a whole switch interval (5 ms by default). Rows
# per statement are powers of two up to _MANY (576 or 130 bound variables, below the 999 that
# sqlite before 3.32 allows), so few distinct statements stay in the statement cache.
_MANY = 128
_PUT_ROWS = 64  # message puts bind 9 values a row: 576 at most
_PUT_MANY = {
    k: "INSERT OR REPLACE INTO messages (vhost, queue, seq, data, delivery_count, priority,"
    " expires_at, size, transient) VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?)"] * k)
    for k in (1 << i for i in range(7))
}
_DEL_MANY = {
    k: "DELETE FROM messages WHERE vhost = ? AND queue = ? AND seq IN (" + ",".join("?" * k) + ")"
    for k in (1 << i for i in range(8))
}


def _chunks(n: int, many: int = _MANY) -> list[int]:
    """``n`` as a sum of powers of two, at most ``many`` each, largest first."""
    out = [many] * (n // many)
    n %= many
    k = many
    while n:
        k >>= 1
        if n >= k:
            out.append(k)
            n -= k
    return out


def _put_many(execute: Callable, params: list[tuple]) -> None:
    i = 0
    for k in _chunks(len(params), _PUT_ROWS):
        execute(_PUT_MANY[k], list(chain.from_iterable(params[i : i + k])))
        i += k


def _delete_many(execute: Callable, params: list[tuple]) -> None:
    # Deletes of different messages commute, so they are grouped by queue (usually one).
    queues = set(map(_QUEUE_KEY, params))
    if len(queues) == 1:
        by_queue = {queues.pop(): list(map(_SEQ, params))}
    else:
        by_queue = {}
        for vhost, queue, seq in params:
            by_queue.setdefault((vhost, queue), []).append(seq)
    for (vhost, queue), seqs in by_queue.items():
        i = 0
        for k in _chunks(len(seqs)):
            execute(_DEL_MANY[k], [vhost, queue, *seqs[i : i + k]])
            i += k


def _pack(record: Any) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _canonical(value: Any) -> Any:
    """Binding arguments with dict keys sorted, so equal dicts encode to equal bytes."""
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value, key=lambda k: (type(k).__name__, k))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _pack_args(arguments: dict | None) -> bytes:
    return _pack(_canonical(arguments or {}))
