"""The PostgreSQL schema and its forward migrations, applied at start under a transaction-scoped
advisory lock: replicas starting together migrate once, the others wait and find it done. A
database whose schema is newer than this version knows is refused, never rewritten.

Times are Unix seconds (double precision) taken from the database's clock (`NOW`), as in the
SQLite file, so rows copy across unchanged.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

MIGRATION_LOCK = 0x4449_5354_0000_0001  # "DIST" + 1: the key of the advisory lock
NOW = "extract(epoch from statement_timestamp())::float8"

_V1 = """
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id text PRIMARY KEY, kind text NOT NULL, grp text NOT NULL, source text NOT NULL,
    status text NOT NULL DEFAULT 'UNKNOWN', model text NOT NULL DEFAULT '',
    created float8, finished float8,
    final smallint NOT NULL DEFAULT 0,     -- 0 polled, 1 COMPLETED/ERROR, 2 NOT_FOUND
    ended float8,
    prompt_tokens bigint NOT NULL DEFAULT 0, completion_tokens bigint NOT NULL DEFAULT 0,
    results bigint NOT NULL DEFAULT 0, tool_calls bigint NOT NULL DEFAULT 0, choices text,
    first_tracked float8 NOT NULL, last_polled float8, next_due float8 NOT NULL,
    interval float8 NOT NULL DEFAULT 0, errors integer NOT NULL DEFAULT 0, polls integer NOT NULL DEFAULT 0,
    last_answer_code integer, history text NOT NULL DEFAULT '', duration float8,
    estimated_cost float8, price_entry text,
    epoch bigint NOT NULL DEFAULT 0        -- bumped by each claim: an answer from an older one is stale
);
-- The claim's scan: unfinished jobs by due time (rows leave the index when they become final).
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (next_due) WHERE final = 0;
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (ended) WHERE final <> 0;
CREATE INDEX IF NOT EXISTS jobs_source ON jobs (source);
CREATE INDEX IF NOT EXISTS jobs_fin_created ON jobs (created) WHERE final <> 0;
-- Job-derived counters, additive: family, labels (compact JSON array), value.
CREATE TABLE IF NOT EXISTS counters (
    family text NOT NULL, labels text NOT NULL, value float8 NOT NULL, PRIMARY KEY (family, labels)
);
-- Ids that were tracked and retired: never tracked (and counted) again.
CREATE TABLE IF NOT EXISTS retired (id text PRIMARY KEY, at float8 NOT NULL);
-- One row per live replica, renewed by its heartbeat: the rate limit is shared by their number.
CREATE TABLE IF NOT EXISTS replicas (name text PRIMARY KEY, seen float8 NOT NULL);
-- Periodic work done by one replica at a time: the holder until `until` (no session lock, so it
-- works through a transaction-pooling PgBouncer).
CREATE TABLE IF NOT EXISTS leaders (task text PRIMARY KEY, holder text NOT NULL, until float8 NOT NULL);
-- Values computed by one replica for all (the gauges over unfinished jobs: see facts.py).
CREATE TABLE IF NOT EXISTS gauges (key text PRIMARY KEY, value text NOT NULL, at float8 NOT NULL);
-- SQLite files already copied by `state export` (their hand-off entries are applied once).
CREATE TABLE IF NOT EXISTS imports (source text PRIMARY KEY, at float8 NOT NULL);
"""

# Version 2: traces owed to the collector (tracking/pg/traces.py).
_V2 = """
CREATE TABLE IF NOT EXISTS traces_owed (
    seq bigserial PRIMARY KEY, job_id text NOT NULL UNIQUE, owed_at float8 NOT NULL,
    holder text, until float8 NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS trace_creates (job_id text PRIMARY KEY, request_model text, traceparent text);
"""

# Version 3: jobs past their deadline (tracking/pg/deadlines.py). A flag per job rather than a
# cutoff: the sweep and a late final answer both decide under the job's row lock, so whichever comes
# second sees the other's mark. Unfinished jobs already past their deadline at the upgrade were never
# counted with PostgreSQL, so the first sweep counts them.
_V3 = """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS deadline_counted boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS jobs_deadline_due ON jobs (created) WHERE final = 0 AND NOT deadline_counted;
"""

# Version 4: the counters read by what changed (tracking/pg/facts.py). `changed` is the id of the
# transaction that last wrote the row (add_counters sets it): a reader that remembers the oldest
# transaction still running at its last read (its snapshot's xmin) finds every row written since by
# `changed >= xmin`, whichever order the writers committed in. A deletion leaves no row to find: a
# statement trigger counts deletions and truncations in `meta`, and a reader that sees the count
# move reads everything again. `jobs_open`: the gauges over unfinished jobs (facts.py) from an
# index of the unfinished rows instead of a scan of every job (seconds at a million jobs).
_V4 = """
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (kind, grp, created) INCLUDE (model, status) WHERE final = 0;
ALTER TABLE counters ADD COLUMN IF NOT EXISTS changed xid8 NOT NULL DEFAULT '0';
CREATE INDEX IF NOT EXISTS counters_changed ON counters (changed);
INSERT INTO meta VALUES ('counters_resets', '0') ON CONFLICT (key) DO NOTHING;
CREATE OR REPLACE FUNCTION counters_reset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'counters_resets';
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS counters_reset ON counters;
CREATE TRIGGER counters_reset AFTER DELETE OR TRUNCATE ON counters FOR EACH STATEMENT EXECUTE FUNCTION counters_reset();
"""

# Version 5: the status page's shared figures (tracking/pg/status_page.py): the last hour's samples
# written by the `timeline` leader, the API request totals of all replicas, and spend per UTC day.
# Jobs that finished before the upgrade are in no day's spend (they were on no page either).
_V5 = """
CREATE TABLE IF NOT EXISTS timeline (at float8 PRIMARY KEY, sample text NOT NULL);
CREATE TABLE IF NOT EXISTS api_totals (key text PRIMARY KEY, requests bigint NOT NULL, errors bigint NOT NULL);
CREATE TABLE IF NOT EXISTS spend_days (
    day float8 NOT NULL, grp text NOT NULL, currency text NOT NULL, cost float8 NOT NULL,
    priced bigint NOT NULL, unpriced bigint NOT NULL, PRIMARY KEY (day, grp, currency)
);
"""

Execute = Callable[[str], Awaitable[Any]]
MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}
SCHEMA_VERSION = max(MIGRATIONS)


class SchemaError(Exception):
    """A database this version cannot use (one line)."""


async def migrate(conn: Any) -> int:
    """Create or bring the schema up to SCHEMA_VERSION in one transaction under the advisory lock;
    answer the version found (0: an empty database)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        found = await _version(conn)
        if found > SCHEMA_VERSION:
            raise SchemaError(f"state database schema {found} is newer than this version reads "
                              f"(up to {SCHEMA_VERSION}); run the newer exporter or another database")
        for target in sorted(MIGRATIONS):
            if found < target:
                await conn.execute(MIGRATIONS[target])
        if found < SCHEMA_VERSION:
            await conn.execute("INSERT INTO meta VALUES ('schema_version', $1) ON CONFLICT (key) "
                               "DO UPDATE SET value = EXCLUDED.value", str(SCHEMA_VERSION))
    return found


async def _version(conn: Any) -> int:
    exists = await conn.fetchval("SELECT to_regclass('meta') IS NOT NULL")
    if not exists:
        return 0
    value = await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
    return int(value) if value is not None else 0
