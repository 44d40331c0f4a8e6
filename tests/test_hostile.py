"""Hostile input: every schema-valid answer is handled, every other one is counted as invalid_body and
never raises out of the poller; hostile configs and state files are refused with one clear line."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis_jsonschema import from_schema

from exporter.tracking.aggregates import ApiAggregates, JobAggregates
from exporter.polling.client import ApiClient, RawResponse
from exporter.config import PollConfig
from exporter.polling.poller import Poller
from exporter.polling.ratelimit import RateLimiter
from exporter.api.results import InvalidBody, parse_result
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.migrations import SCHEMA_VERSION
from exporter.tracking.store import StateStore
from helpers import REPO, SCHEMA_PATH

SCHEMA = json.loads(SCHEMA_PATH.read_text())
ID = "3b241101-e2bb-4255-8caf-4136c566a962"
KINDS = ("chat", "images", "speech")


def kind_schema(kind: str) -> dict:
    return {"$defs": SCHEMA["$defs"], **SCHEMA["$defs"][kind]}


VALID = {kind: from_schema(kind_schema(kind)) for kind in KINDS}
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("kind", KINDS)
def test_every_schema_valid_answer_is_handled(kind):
    @SETTINGS
    @given(VALID[kind])
    def check(body):
        body["id"] = ID
        result = parse_result(json.dumps(body).encode(), kind)
        assert result.status == body["status"]
        assert result.created is not None
        assert result.prompt_tokens >= 0 and result.completion_tokens >= 0
        # A chat answer's schema has no `results`; one it carries anyway (extra keys are allowed) is
        # not counted as results.
        assert result.results == (0 if kind == "chat" else len(body.get("results", [])))

    check()


json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)


@st.composite
def mutated(draw, kind: str):
    """A schema-valid body with one field removed, retyped or corrupted, or raw garbage."""
    body = draw(VALID[kind])
    body["id"] = ID
    choice = draw(st.integers(0, 4))
    if choice == 0 and body:
        body.pop(draw(st.sampled_from(sorted(body))))
    elif choice == 1:
        body[draw(st.sampled_from(sorted(body)))] = draw(json_values)
    elif choice == 2:
        return draw(st.binary(max_size=200))
    elif choice == 3:
        return json.dumps(draw(json_values)).encode()
    else:
        body[draw(st.sampled_from(["usage", "choices", "results", "created", "finished", "status"]))] = draw(json_values)
    return json.dumps(body, allow_nan=True).encode()


class FixedTransport:
    """An injected transport that answers every request with one body."""

    def __init__(self) -> None:
        self.body = b""

    async def post(self, url, body, headers) -> RawResponse:
        return RawResponse(200, {}, self.body)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("kind", KINDS)
def test_mutated_answers_count_as_invalid_body_and_never_escape_the_poller(kind):
    loop = asyncio.new_event_loop()
    store = StateStore(":memory:")
    loop.run_until_complete(store.call(store.open))
    transport = FixedTransport()
    api = ApiAggregates((0.1, 1.0))
    jobs = TrackedJobs(store, JobAggregates((1.0, 10.0)))
    poller = Poller(jobs, ApiClient("http://api.invalid", None, transport), RateLimiter(0), api,
                    PollConfig(interval_seconds=1, max_interval_seconds=2), 1)
    counts = {"valid": 0, "invalid": 0}

    @SETTINGS
    @given(mutated(kind))
    def check(raw):
        try:
            parse_result(raw, kind)
            expected_invalid = False
        except InvalidBody:
            expected_invalid = True
        counts["invalid" if expected_invalid else "valid"] += 1
        loop.run_until_complete(jobs.track([ID], kind, "g", "test", 0.0))
        job = jobs.open.get(ID)
        if job is None:  # finished by an earlier example: start it again
            loop.run_until_complete(jobs.untrack(ID, 0.0))
            jobs._retire.clear()
            loop.run_until_complete(jobs.track([ID], kind, "g", "test", 0.0))
            job = jobs.open[ID]
        before = api.errors[(kind, "invalid_body")]
        transport.body = raw
        loop.run_until_complete(poller.poll(job))  # must not raise
        assert api.errors[(kind, "invalid_body")] == before + expected_invalid

    try:
        check()
    finally:
        loop.run_until_complete(store.call(store.close))
        loop.close()
    assert counts["invalid"] > 0


# ---- configs at start -------------------------------------------------------------------------------
@pytest.mark.parametrize("text,culprit", [
    ("api: {base_url: [\n", "line"),
    ("poll: {interval_seconds: '15'}", "poll.interval_seconds: must be a number"),
    ("jobs: [{kind: chat, ids: [x]}]", "jobs[0].ids[0]: not a UUID v4"),
    ("jobs: [{kind: chat, ids: [3b241101-e2bb-4255-8caf-4136c566a962]}, "
     "{kind: chat, group: b, ids: [3b241101-e2bb-4255-8caf-4136c566a962]}]", "jobs[1].ids[0]: duplicate id"),
    ("webb: {}", "webb: unknown key"),
    ("api: {api_key_file: .}", "api.api_key_file: cannot read"),
])
def test_a_bad_config_stops_the_start_with_one_line(tmp_path, text, culprit):
    (tmp_path / "config.yaml").write_text(text)
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(tmp_path / "config.yaml")],
                         capture_output=True, text=True, cwd=REPO, timeout=30)
    assert run.returncode == 1
    lines = [l for l in run.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and culprit in lines[0] and "Traceback" not in run.stderr, run.stderr


def test_an_unreadable_config_file(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(tmp_path / "dir.yaml")],
                         capture_output=True, text=True, cwd=REPO, timeout=30)
    assert run.returncode == 1 and "cannot read" in run.stderr and "Traceback" not in run.stderr


# ---- state files -------------------------------------------------------------------------------------
def start_on_state(tmp_path: Path, state: Path) -> subprocess.CompletedProcess:
    (tmp_path / "config.yaml").write_text(f"state: {{path: {state}}}\nweb: {{listen_address: '127.0.0.1:0'}}\n")
    # with a key: else the start's warning about a missing one comes before the error line
    return subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, cwd=REPO, timeout=30,
                          env={**os.environ, "DISTRIBUTE_API_KEY": "hostile-test-key-01"})


def make_state(path: Path, jobs: int = 200) -> None:
    store = StateStore(str(path))
    store.open()
    from exporter.tracking.job import Job

    # Rows from Job.row(), so that columns added later need no change here.
    rows = [Job(f"3b241101-e2bb-4255-8caf-{i:012x}", "chat", "g", "config", status="COMPLETED", model="m",
                created=1.0, finished=2.0, final=1, ended=2.0, prompt_tokens=1, completion_tokens=1,
                polls=1).row() for i in range(jobs)]
    store.bulk_insert(rows)
    store.close()


@pytest.mark.parametrize("damage", ["truncated", "text", "foreign_sqlite"])
def test_a_damaged_or_foreign_state_file_is_refused_and_left_alone(tmp_path, damage):
    state = tmp_path / "state.db"
    if damage == "truncated":
        make_state(state, 3000)
        data = state.read_bytes()
        state.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        state.write_text("these are my notes, not a database\n" * 100)
    else:
        db = sqlite3.connect(state)
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        db.commit()
        db.close()
    before = state.read_bytes()
    run = start_on_state(tmp_path, state)
    assert run.returncode == 1, run.stderr
    lines = [l for l in run.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and str(state) in lines[0] and "Traceback" not in run.stderr, run.stderr
    assert state.read_bytes() == before  # never silently replaced


def test_a_state_file_from_an_older_version_is_migrated(tmp_path):
    state = tmp_path / "old.db"
    db = sqlite3.connect(state)
    # Schema 1: no polls column, no retired table.
    db.executescript("""
        PRAGMA application_id = 1145656148;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, grp TEXT NOT NULL, source TEXT NOT NULL,
            status TEXT NOT NULL, model TEXT NOT NULL, created REAL, finished REAL, final INTEGER NOT NULL DEFAULT 0,
            ended REAL, prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
            results INTEGER NOT NULL DEFAULT 0, tool_calls INTEGER NOT NULL DEFAULT 0, choices TEXT,
            first_tracked REAL NOT NULL, last_polled REAL, next_due REAL NOT NULL,
            interval REAL NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
        CREATE TABLE counters (family TEXT NOT NULL, labels TEXT NOT NULL, value TEXT NOT NULL,
            PRIMARY KEY (family, labels)) WITHOUT ROWID;
        INSERT INTO jobs (id, kind, grp, source, status, model, created, finished, final, ended, first_tracked, next_due)
            VALUES ('3b241101-e2bb-4255-8caf-4136c566a962', 'speech', 'g', 'config', 'COMPLETED', 'Chatterbox',
                    1.0, 3.0, 1, 3.0, 0.0, 0.0);
        INSERT INTO counters VALUES ('finished', '["speech", "g", "Chatterbox", "COMPLETED"]', '1');
    """)
    db.commit()
    db.close()
    store = StateStore(str(state))
    store.open()
    assert store.get("3b241101-e2bb-4255-8caf-4136c566a962")["polls"] == 0
    assert sorted(store.load_counters()) == [("closed", ("speech", "g", "Chatterbox", "COMPLETED"), 1),
                                             ("finished", ("speech", "g", "Chatterbox", "COMPLETED"), 1)]
    assert store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert store.known(["3b241101-e2bb-4255-8caf-4136c566a962"])
    # schema 5: the duration of a finished job is filled in, the history starts empty, indexes exist
    row = store.get("3b241101-e2bb-4255-8caf-4136c566a962")
    assert row["duration"] == 2.0 and row["history"] == "" and row["last_answer_code"] is None
    indexes = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"jobs_fin_created", "jobs_fin_duration", "jobs_fin_group"} <= indexes
    store.close()
