"""`distribute-exporter state export`: three SQLite state files written by the tracked jobs of one
replica each (today's code) copied into a real PostgreSQL; the totals there are the sum of the
three; a second run changes nothing; the files are left as they were."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing

from exporter.api.results import JobResult
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.pg.connect import create_pool
from exporter.tracking.pg.store import PgJobStore
from exporter.tracking.store import StateStore
from helpers import REPO

BUCKETS = (1.0, 10.0)
FAMILIES = ("finished", "tokens", "results", "choices", "tool_calls")


async def make_shard(path, seed: int, owed: list[str]) -> None:
    """One replica's state file: jobs registered, some answered, some final, one retired, and (for
    the last shard) hand-off entries it still owed another shard."""
    store = StateStore(str(path))
    await store.call(store.open)
    tracked = TrackedJobs(store, JobAggregates(BUCKETS))
    await tracked.load()
    now = time.time()
    ids = [str(uuid.UUID(int=seed * 1000 + i, version=4)) for i in range(12)]
    await tracked.track(ids[:8], "chat", "nightly", "config", now)
    await tracked.track(ids[8:], "images", "renders", "ids_file", now)
    for n, job_id in enumerate(ids):
        job = tracked.open[job_id]
        if n % 3 == 0:
            tracked.apply(job, JobResult("RUNNING", model="m", created=now - 50), now)
        elif job.kind == "chat":
            tracked.apply(job, JobResult("COMPLETED" if n % 2 else "ERROR", model="m", created=now - 20 - n,
                                         finished=now - n, prompt_tokens=10 + n, completion_tokens=n,
                                         choices={"stop": 1}, tool_calls=0), now)
        else:
            tracked.apply(job, JobResult("COMPLETED", model="sdxl", created=now - 5, finished=now,
                                         results=2), now)
    await tracked.flush()
    await tracked.untrack(ids[1], now)  # a final job untracked: a tombstone
    answer = json.dumps({"id": owed[1], "status": "COMPLETED", "model": "m", "created": int(now) - 30,
                         "finished": int(now), "usage": {"prompt_tokens": 7, "completion_tokens": 3},
                         "choices": [{"finish_reason": "stop"}]}).encode() if owed else b""
    entries = [(owed[0], "registered", {}),
               (owed[1], "observed", {"answer": base64.b64encode(answer).decode()})] if owed else []
    await tracked.flush()
    store.shutdown()
    # The outbox of a replica of the hash ring: entries owed to another shard, never delivered.
    with closing(sqlite3.connect(path)) as db, db:
        for job_id, op, extra in entries:
            entry = {"op": op, "id": job_id, "kind": "chat", "group": "nightly", "model": "", "source": "api",
                     **extra}
            db.execute("INSERT INTO handoff (job_id, target, payload, next_try) VALUES (?, 1, ?, ?)",
                       (job_id, json.dumps(entry), now))


async def totals_of(path) -> JobAggregates:
    store = StateStore(str(path))
    await store.call(store.open)
    tracked = TrackedJobs(store, JobAggregates(BUCKETS))
    await tracked.load()
    store.shutdown()
    return tracked.agg


def test_three_shard_files_sum_into_postgresql_once(tmp_path, pg_db):
    url, password_file = pg_db
    owed = [str(uuid.uuid4()), str(uuid.uuid4())]
    files = [tmp_path / f"shard-{i}.db" for i in range(3)]
    for i, path in enumerate(files):
        asyncio.run(make_shard(path, i + 1, owed if i == 2 else []))
    before = [asyncio.run(totals_of(p)) for p in files]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]

    def export() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "exporter", "state", "export", "--to", url,
                               "--password-file", password_file, *map(str, files)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    first = export()
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("jobs,") == 3 and "2 hand-off entries applied" in first.stdout

    async def facts():
        pool = await create_pool(url, password_file)
        try:
            store = PgJobStore(pool, BUCKETS)
            return await store.facts(), await pool.fetchval("SELECT count(*) FROM jobs")
        finally:
            await pool.close()

    after, rows = asyncio.run(facts())
    for family in FAMILIES:
        expected: dict = {}
        for agg in before:
            for labels, value in getattr(agg, family).items():
                expected[labels] = expected.get(labels, 0) + value
        if family in ("finished", "tokens", "choices"):  # the owed final answer, applied once
            for labels, n in {"finished": [(("chat", "nightly", "m", "COMPLETED"), 1)],
                              "tokens": [(("nightly", "m", "prompt"), 7), (("nightly", "m", "completion"), 3)],
                              "choices": [(("nightly", "m", "stop"), 1)]}[family]:
                expected[labels] = expected.get(labels, 0) + n
        got = {k: v for k, v in getattr(after, family).items() if v}
        assert got == {k: v for k, v in expected.items() if v}, family
    for labels in set().union(*(a.durations for a in before)):
        hists = [a.durations[labels] for a in before if labels in a.durations]
        extra = 1 if labels == ("chat", "nightly", "m", "COMPLETED") else 0
        assert after.durations[labels].count == sum(h.count for h in hists) + extra
        owed = [0, 0, extra]  # the owed job took 30 s: the +Inf bucket
        assert after.durations[labels].counts == [sum(h.counts[i] for h in hists) + owed[i] for i in range(3)]
    gauge_before = sum(sum(a.jobs.values()) for a in before) + 2  # the two owed ids
    assert sum(after.jobs.values()) == gauge_before == rows

    second = export()
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("copied before; nothing changed") == 3
    again, rows_again = asyncio.run(facts())
    for family in FAMILIES + ("jobs", "closed"):
        assert dict(getattr(again, family)) == dict(getattr(after, family)), family
    assert rows_again == rows
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in files] == digests  # files untouched


def test_export_refuses_a_missing_file_and_a_password_in_the_url_with_one_line(tmp_path, pg_db):
    url, password_file = pg_db
    missing = subprocess.run([sys.executable, "-m", "exporter", "state", "export", "--to", url,
                              "--password-file", password_file, str(tmp_path / "nope.db")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "nope.db: no such file" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    secret = url.replace("postgres@", "postgres:hunter2secret@")
    with_password = subprocess.run([sys.executable, "-m", "exporter", "state", "export", "--to", secret,
                                    str(tmp_path / "nope.db")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert with_password.returncode == 1 and "hunter2secret" not in with_password.stderr + with_password.stdout
    assert "password" in with_password.stderr
