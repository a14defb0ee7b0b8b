"""The SQL a write transaction of the ``postgres`` store runs, built from its operations.

Each statement costs the writer thread one wait for the server, and each wait may cost it a GIL
hand-over from a busy reactor thread (up to the 5 ms switch interval): so the usual batch
(message puts and deletes, stream appends, kv records) becomes one statement, set-based
(arrays in binary parameters, ``unnest``), its parts joined as data-modifying CTEs.
"""

from __future__ import annotations

from . import postgres_schema as S

# rows per set-based statement, and payload bytes per statement (bounds both sides' memory)
_ROWS_PER_STATEMENT = 5000
_BYTES_PER_STATEMENT = 16 << 20

# operation kinds that are folded into one statement
_FOLDABLE = frozenset({S.PUT_MESSAGE, S.DEL_MESSAGE, S.APPEND_STREAM, S.PUT_KV, S.DEL_KV})


class Statements:
    """Statement builder for one schema (``schema`` is the quoted identifier)."""

    def __init__(self, schema: str) -> None:
        self._sql = {
            kind: [(sql.format(s=schema), idx) for sql, idx in stmts]
            for kind, stmts in S.STATEMENTS.items()
        }
        self._put_messages = S.PUT_MESSAGES.format(s=schema)
        self._put_queue_messages = S.PUT_QUEUE_MESSAGES.format(s=schema)
        self._put_kvs = S.PUT_KVS.format(s=schema)
        self._delete_kvs = S.DELETE_KVS.format(s=schema)
        self._delete_messages = S.DELETE_MESSAGES.format(s=schema)
        self._append_entries = S.APPEND_ENTRIES.format(s=schema)

    def statements(self, runs: list[tuple[int, list[tuple]]]) -> list[tuple[str, list]]:
        """(sql, params) to run in order in one transaction; one statement when possible."""
        if all(kind in _FOLDABLE for kind, _ in runs):
            parts = self._folded_parts(runs)
            if len(parts) == 1:
                return [parts[0][:2]]
            if sum(size for _, _, size in parts) <= _BYTES_PER_STATEMENT * 4:
                # data-modifying CTEs: one statement; they touch disjoint rows, so the order
                # in which PostgreSQL applies them does not matter
                sql = "WITH " + ", ".join(
                    f"w{i} AS ({part})" for i, (part, _, _) in enumerate(parts[:-1])
                )
                params = [p for _, ps, _ in parts for p in ps]
                return [(f"{sql} {parts[-1][0]}", params)]
            return [(sql, params) for sql, params, _ in parts]
        out: list[tuple[str, list]] = []
        for kind, rows in runs:
            if kind == S.PUT_MESSAGE:
                out += [(sql, ps) for sql, ps, _ in self._put_message_parts(_last_wins(rows, 3))]
            elif kind == S.DEL_MESSAGE:
                out += [(sql, ps) for sql, ps, _ in self._delete_message_parts(rows)]
            elif kind == S.APPEND_STREAM:
                out += [(sql, ps) for sql, ps, _ in self._append_parts(rows)]
            elif kind == S.PUT_KV:
                out += [(sql, ps) for sql, ps, _ in self._put_kv_parts(_last_wins(rows, 2))]
            elif kind == S.DEL_KV:
                out += [(sql, ps) for sql, ps, _ in self._delete_kv_parts(rows)]
            else:
                for sql, idx in self._sql[kind]:
                    out += [(sql, [r[i] for i in idx]) for r in rows]
        return out

    def _folded_parts(self, runs: list[tuple[int, list[tuple]]]) -> list[tuple[str, list, int]]:
        """Message and kv operations reduced to the last one per key (a put then a delete of a
        key is a delete; a delete then a put is the put, an upsert), plus stream appends."""
        messages: dict[tuple, tuple | None] = {}
        kv: dict[tuple, tuple | None] = {}
        appends: list[tuple] = []
        for kind, rows in runs:
            if kind == S.PUT_MESSAGE:
                for r in rows:
                    messages[r[:3]] = r
            elif kind == S.DEL_MESSAGE:
                messages.update(dict.fromkeys(rows))
            elif kind == S.APPEND_STREAM:
                appends += rows
            elif kind == S.PUT_KV:
                for r in rows:
                    kv[r[:2]] = r
            else:  # DEL_KV
                kv.update(dict.fromkeys(rows))
        parts = []
        if messages:
            puts = [r for r in messages.values() if r is not None]
            deletes = [k for k, r in messages.items() if r is None]
            parts += self._delete_message_parts(deletes) + self._put_message_parts(puts)
        if appends:
            parts += self._append_parts(appends)
        if kv:
            puts = [r for r in kv.values() if r is not None]
            deletes = [k for k, r in kv.items() if r is None]
            parts += self._delete_kv_parts(deletes) + self._put_kv_parts(puts)
        return parts

    def _put_message_parts(self, rows: list[tuple]) -> list[tuple[str, list, int]]:
        if not rows:
            return []
        queues = {r[:2] for r in rows}
        out = []
        for chunk in _chunks(rows, 3):
            cols = [list(c) for c in zip(*chunk, strict=True)]
            size = sum(map(len, cols[3]))
            if len(queues) == 1:  # the usual case: vhost and queue sent once
                vhost, queue = next(iter(queues))
                out.append((self._put_queue_messages, [vhost, queue, *cols[2:]], size))
            else:
                out.append((self._put_messages, cols, size))
        return out

    def _delete_message_parts(self, keys: list[tuple]) -> list[tuple[str, list, int]]:
        by_queue: dict[tuple[bytes, bytes], list[int]] = {}
        for v, q, seq in keys:
            by_queue.setdefault((v, q), []).append(seq)
        return [(self._delete_messages, [v, q, seqs], 0) for (v, q), seqs in by_queue.items()]

    def _append_parts(self, rows: list[tuple]) -> list[tuple[str, list, int]]:
        return [
            (self._append_entries, cols, sum(map(len, cols[7])))
            for cols in ([list(c) for c in zip(*chunk, strict=True)] for chunk in _chunks(rows, 7))
        ]

    def _put_kv_parts(self, rows: list[tuple]) -> list[tuple[str, list, int]]:
        return [
            (self._put_kvs, cols, sum(map(len, cols[2])))
            for cols in ([list(c) for c in zip(*chunk, strict=True)] for chunk in _chunks(rows, 2))
        ]

    def _delete_kv_parts(self, keys: list[tuple]) -> list[tuple[str, list, int]]:
        if not keys:
            return []
        return [(self._delete_kvs, [list(c) for c in zip(*keys, strict=True)], 0)]


def _last_wins(rows: list[tuple], key_len: int) -> list[tuple]:
    """``rows`` with one row per key (the last): an upsert may not touch a row twice."""
    if len(rows) < 2:
        return rows
    last = {r[:key_len]: r for r in rows}
    return rows if len(last) == len(rows) else list(last.values())


def _chunks(rows: list[tuple], data_index: int) -> list[list[tuple]]:
    """``rows`` cut into statements of at most _ROWS_PER_STATEMENT rows / _BYTES_PER_STATEMENT."""
    if len(rows) <= 64:
        return [rows] if rows else []
    out, cur, size = [], [], 0
    for r in rows:
        n = len(r[data_index])
        if cur and (len(cur) >= _ROWS_PER_STATEMENT or size + n > _BYTES_PER_STATEMENT):
            out.append(cur)
            cur, size = [], 0
        cur.append(r)
        size += n
    if cur:
        out.append(cur)
    return out
