"""The shared state of several replicas in PostgreSQL: the database is the source of truth.

Registers itself as the backend of postgresql:// state URLs when its driver (the `postgres`
extra, asyncpg) is installed; without it a config with state.url is refused at start in one line.
"""

from __future__ import annotations

from typing import Any

from exporter.tracking import backends


def open_store(pool: Any, duration_buckets: Any, prices: Any = None) -> Any:
    from exporter.tracking.pg.store import PgJobStore
    return PgJobStore(pool, duration_buckets, prices)


try:
    import asyncpg  # noqa: F401 - only whether the driver is part of this build
except ImportError:
    pass
else:
    backends.register(("postgresql", "postgres"), open_store)
