"""Built-in store backends (memory, sqlite, postgres), registered through the store hook."""

from __future__ import annotations

from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import StoreBackendSpec

COMMON_KEYS = ("backend", "data_dir")


def _options(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in COMMON_KEYS}


def _memory(section: dict):
    from polymq.core.store.memory import MemoryStore

    return MemoryStore(config=_options(section))


def _sqlite(section: dict):
    from polymq.core.store.sqlite import SqliteStore

    return SqliteStore(section["data_dir"], **_options(section))


def _check_sqlite(section: dict) -> list[tuple[str, str]]:
    """What SqliteStore would refuse at start, found without opening anything."""
    from polymq.core.store.sqlite import _SYNCHRONOUS

    if str(section["synchronous"]).upper() not in _SYNCHRONOUS:
        choices = ", ".join(_SYNCHRONOUS)
        return [("synchronous", f"must be one of {choices}, got {section['synchronous']!r}")]
    return []


def _postgres(section: dict):
    from polymq.core.store.postgres import PostgresStore

    return PostgresStore(**_options(section))


@hookimpl
def polymq_store_backends():
    return [
        StoreBackendSpec(
            name="memory",
            factory=_memory,
            description="nothing is kept across restarts; for tests and transient brokers",
        ),
        StoreBackendSpec(
            name="sqlite",
            factory=_sqlite,
            default_config={
                "synchronous": "FULL",
                "busy_timeout_ms": 5000,
                "lazy_flush_ms": 20,
                "lazy_flush_ops": 10000,
                "checkpoint_mb": 0,
                "segment_mb": 64,
            },
            description="one SQLite file in data_dir, WAL, group commit on a writer thread",
            check=_check_sqlite,
        ),
        StoreBackendSpec(
            name="postgres",
            factory=_postgres,
            default_config={
                "dsn": "",
                "schema": "polymq",
                "connect_timeout_s": 5,
                "reconnect_timeout_s": 30.0,
                "retry_interval_s": 1.0,
                "lazy_flush_ms": 20.0,
                "lazy_flush_ops": 10000,
            },
            description="PostgreSQL (store.dsn, psycopg 3), group commit on a writer thread",
        ),
    ]
