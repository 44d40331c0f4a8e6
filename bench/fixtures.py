"""A prepared state file: N tracked jobs over 3 kinds, 10 groups, 20 models and all statuses, with
the counters that those jobs would have produced, written straight into SQLite."""

from __future__ import annotations

import random
import time
import uuid
from collections import defaultdict
from pathlib import Path

from exporter import KINDS
from exporter.tracking.aggregates import Histogram
from exporter.config import DEFAULT_DURATION_BUCKETS
from exporter.tracking.store import Batch, StateStore

OPEN_STATUSES = ("UNKNOWN", "CREATED", "QUEUED", "POSTPONED", "ASSIGNED_CONNECTIONS", "PROCESSING")
GROUPS = tuple(f"group-{g}" for g in range(10))
MODELS = tuple(f"model-{m:02d}" for m in range(20))


def job_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def prepare_state(path: Path, jobs: int, unfinished_share: float = 0.1, seed: int = 1,
                  due_in: float = 86400.0) -> dict[str, int]:
    """Write `jobs` jobs to a new state file at `path`; return how many are unfinished and final."""
    rng = random.Random(seed)
    now = time.time()
    store = StateStore(str(path))
    store.open()
    # Indexes are built once at the end: maintaining them row by row would take minutes.
    indexes = [name for (name,) in store.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' AND sql IS NOT NULL")]
    for name in indexes:
        store.db.execute(f"DROP INDEX {name}")
    agg = _Counters()
    rows = []
    unfinished = 0
    for i in range(jobs):
        kind, group, model = KINDS[i % 3], GROUPS[(i // 3) % 10], MODELS[(i // 30) % 20]
        created = now - rng.uniform(60, 6 * 3600)
        if rng.random() < unfinished_share:
            unfinished += 1
            status = OPEN_STATUSES[i % len(OPEN_STATUSES)]
            rows.append(_row(job_id(rng), kind, group, "" if status == "UNKNOWN" else model, status, created,
                             None, 0, now, now + rng.uniform(due_in / 2, due_in)))
            continue
        status = "ERROR" if i % 17 == 0 else ("NOT_FOUND" if i % 101 == 0 else "COMPLETED")
        duration = rng.lognormvariate(2.5, 1.0)
        final = 2 if status == "NOT_FOUND" else 1
        rows.append(_row(job_id(rng), kind, group, model, status, created, created + duration, final, now, now))
        agg.tables["closed"][(kind, group, model, status)] += 1
        if final == 1:
            agg.add(kind, group, model, status, duration, rng)
        if len(rows) >= 50_000:
            store.bulk_insert(rows)
            rows.clear()
    store.bulk_insert(rows)
    store.write(Batch(counters=agg.rows()))
    store.close()
    store.open()  # builds the indexes again
    store.close()
    return {"jobs": jobs, "unfinished": unfinished, "final": jobs - unfinished}


def _row(jid, kind, group, model, status, created, finished, final, now, due):
    history = f"QUEUED@{created + 0.5:.3f};{status}@{(finished or now):.3f}" if final else f"{status}@{now:.3f}"
    duration = finished - created if final == 1 else None
    return (jid, kind, group, "file:bench", status, model, created, finished, final,
            finished if final else None, 0, 0, 0, 0, None, now, now if final else None, due, 15.0, 0, 1,
            200 if status != "UNKNOWN" else None, history, duration)


class _Counters:
    def __init__(self) -> None:
        self.tables: dict[str, dict] = defaultdict(lambda: defaultdict(int))
        self.durations: dict[tuple, Histogram] = {}

    def add(self, kind, group, model, status, duration, rng) -> None:
        labels = (kind, group, model, status)
        self.tables["finished"][labels] += 1
        self.durations.setdefault(labels, Histogram(tuple(float(b) for b in DEFAULT_DURATION_BUCKETS))).observe(duration)
        if kind == "chat" and status == "COMPLETED":
            self.tables["tokens"][(group, model, "prompt")] += rng.randint(10, 2000)
            self.tables["tokens"][(group, model, "completion")] += rng.randint(10, 800)
            reason = "tool_calls" if rng.random() < 0.2 else "stop"
            self.tables["choices"][(group, model, reason)] += 1
            self.tables["tool_calls"][(group, model)] += 2 if reason == "tool_calls" else 0
        elif status == "COMPLETED":
            self.tables["results"][(kind, group, model)] += 1

    def rows(self) -> list[tuple[str, tuple[str, ...], object]]:
        out = [(family, labels, value) for family, table in self.tables.items() for labels, value in table.items()]
        out += [("durations", labels, [list(h.bounds), h.counts, h.total, h.count]) for labels, h in self.durations.items()]
        return out
