"""Ids that change and state that survives: kill -9, live ids files, reload, registration, retention."""

from __future__ import annotations

import json
import os
import signal
import time


from helpers import http, parse_samples, total, wait_for, write_config
from test_exporter import OLD, config_text

TOKEN = "reg-token-4242-abcd"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COUNTERS = ("distribute_jobs_finished_total", "distribute_tokens_total", "distribute_results_total",
            "distribute_chat_choices_total", "distribute_chat_tool_calls_total",
            "distribute_job_duration_seconds_bucket", "distribute_job_duration_seconds_sum")


def counters(text: str) -> dict:
    return {name: parse_samples(text, name) for name in COUNTERS}


def register(url: str, kind: str, ids: list[str], group: str = "apps", headers=AUTH):
    status, body, _ = http("POST", f"{url}/api/v1/jobs", {"kind": kind, "group": group, "ids": ids}, headers)
    return status, json.loads(body) if body else None


def ghost_ids(n: int, seed: int) -> list[str]:
    return [f"{seed:08x}-0000-4000-8000-{i:012x}" for i in range(n)]


def test_kill_9_then_restart_keeps_ids_and_counters_and_does_not_repoll(simulator, exporter, tmp_path):
    sim = simulator("--seed", "4")
    finished_chat = sim.create("chat", 25, age_seconds=OLD)
    finished_speech = sim.create("speech", 10, age_seconds=OLD)
    waiting = ghost_ids(5, 1)  # unknown to the API: polled on and on within the grace
    (tmp_path / "ids.txt").write_text("\n".join(finished_speech) + "\n")
    cfg = write_config(tmp_path, config_text(
        sim.url, "  - {kind: speech, ids_file: ids.txt}\n",
        poll="interval_seconds: 0.2, max_interval_seconds: 0.4, not_found_grace_seconds: 3600"))
    env = {"DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN": TOKEN}
    first = exporter(cfg, env=env)
    assert register(first.url, "chat", finished_chat + waiting) == (202, {"accepted": 30, "duplicates": 0})
    wait_for(lambda: total(first.samples("distribute_jobs_finished_total")) == 35, 30, what="35 finished")
    wait_for(lambda: all(sim.stats()["by_id"].get(i, 0) >= 3 for i in waiting), 10, what="active polling")
    before = counters(first.metrics())
    gauge_before = {k: v for k, v in first.samples("distribute_jobs").items() if v}
    first.stop(signal.SIGKILL)
    asked = sim.stats()["by_id"]

    second = exporter(cfg, env=env)
    after = counters(second.metrics())
    assert after == before
    assert {k: v for k, v in second.samples("distribute_jobs").items() if v} == gauge_before
    for job_id in finished_chat + waiting:
        assert http("GET", f"{second.url}/api/v1/jobs/{job_id}", headers=AUTH)[0] == 200
    wait_for(lambda: all(sim.stats()["by_id"][i] > asked[i] + 2 for i in waiting), 10, what="polling resumed")
    now = sim.stats()["by_id"]
    assert all(now[i] == asked[i] for i in finished_chat + finished_speech)  # never asked again
    assert counters(second.metrics()) == before
    assert register(second.url, "chat", finished_chat[:3]) == (202, {"accepted": 0, "duplicates": 3})


def test_ids_file_append_is_picked_up_and_removal_stops_polling(simulator, exporter, tmp_path):
    sim = simulator()
    first, second = ghost_ids(2, 2)
    ids_dir = tmp_path / "ids"
    ids_dir.mkdir()
    (ids_dir / "a.txt").write_text(f"{first}\n")
    cfg = write_config(tmp_path, config_text(
        sim.url, "  - {kind: images, ids_file: 'ids/*.txt'}\n",
        poll="interval_seconds: 1, max_interval_seconds: 1, not_found_grace_seconds: 3600"))
    proc = exporter(cfg)
    wait_for(lambda: sim.stats()["by_id"].get(first, 0) >= 1, 10, what="the first id polled")
    with open(ids_dir / "a.txt", "a") as out:
        out.write(f"not-an-id\n{second}\n")
    appended = time.monotonic()
    wait_for(lambda: sim.stats()["by_id"].get(second, 0) >= 1, 5, what="the appended id polled")
    assert time.monotonic() - appended <= 1 + 1.0  # within the interval (plus the scheduler's slack)
    assert "line=2" in proc.log() and "not-an-id" in proc.log()
    assert total(proc.samples("distribute_exporter_ids_file_invalid_lines_total")) == 1
    assert total(proc.samples("distribute_jobs"), kind="images") == 2
    (ids_dir / "a.txt").write_text(f"{second}\n")  # `first` removed
    wait_for(lambda: total(proc.samples("distribute_jobs"), kind="images") == 1, 10, what="removal")
    stopped_at = sim.stats()["by_id"][first]
    time.sleep(2.5)
    assert sim.stats()["by_id"][first] == stopped_at
    (ids_dir / "b.txt").write_text(f"{first}\n")  # a new file matching the glob
    wait_for(lambda: total(proc.samples("distribute_jobs"), kind="images") == 2, 10, what="new file")


def test_forget_removed_false_keeps_ids(simulator, exporter, tmp_path):
    sim = simulator()
    ids = ghost_ids(2, 3)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    cfg = write_config(tmp_path, config_text(sim.url, "  - {kind: chat, ids_file: ids.txt, forget_removed: false}\n",
                                             poll="interval_seconds: 0.5, max_interval_seconds: 1"))
    proc = exporter(cfg)
    assert total(proc.samples("distribute_jobs")) == 2
    (tmp_path / "ids.txt").write_text(ids[0] + "\n")
    time.sleep(3)  # several scans
    assert total(proc.samples("distribute_jobs")) == 2


def test_broken_config_on_reload_keeps_the_old_one(simulator, exporter, tmp_path):
    sim = simulator()
    ids = sim.create("chat", 2, age_seconds=OLD)
    cfg = write_config(tmp_path, config_text(sim.url, f"  - {{kind: chat, ids: {json.dumps(ids[:1])}}}\n"))
    proc = exporter(cfg)
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 1, 10, what="first job")
    assert parse_samples(proc.metrics(), "distribute_config_last_reload_successful")[()] == 1
    good_text = cfg.read_text()
    cfg.write_text(good_text.replace("interval_seconds: 0.2", "interval_seconds: soon"))
    status, body, _ = http("POST", f"{proc.url}/-/reload")
    assert status == 500 and b"poll.interval_seconds" in body
    text = proc.metrics()
    assert parse_samples(text, "distribute_config_last_reload_successful")[()] == 0
    os.kill(proc.popen.pid, signal.SIGHUP)  # SIGHUP too
    time.sleep(0.5)
    assert proc.popen.poll() is None
    assert "config reload failed" in proc.log()
    cfg.write_text(config_text(sim.url, f"  - {{kind: chat, ids: {json.dumps(ids)}}}\n"))
    os.kill(proc.popen.pid, signal.SIGHUP)
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 2, 10, what="the new id counted")
    text = proc.metrics()
    assert parse_samples(text, "distribute_config_last_reload_successful")[()] == 1
    assert parse_samples(text, "distribute_config_last_reload_success_timestamp_seconds")[()] > time.time() - 30


def test_registration_api_answers(simulator, exporter, tmp_path):
    sim = simulator()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    cfg = write_config(tmp_path, config_text(sim.url, "  - {kind: chat, ids_file: none.txt}\n").replace(
        "state:", f"web: {{registration_token_file: {token_file}}}\nstate:"))
    proc = exporter(cfg)
    ids = sim.create("images", 3)
    assert register(proc.url, "images", ids) == (202, {"accepted": 3, "duplicates": 0})
    assert register(proc.url, "images", ids[:2] + ghost_ids(1, 5)) == (202, {"accepted": 1, "duplicates": 2})
    status, answer = register(proc.url, "images", [ids[0], "nope", "also-bad"])
    assert status == 400 and answer["invalid"] == ["nope", "also-bad"]
    assert register(proc.url, "video", ids)[0] == 400
    assert register(proc.url, "images", ids, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert register(proc.url, "images", ids, headers={})[0] == 401
    big = {"kind": "images", "ids": ["3b241101-e2bb-4255-8caf-4136c566a962"] * 40000}
    assert http("POST", f"{proc.url}/api/v1/jobs", big, AUTH)[0] == 413
    status, body, _ = http("GET", f"{proc.url}/api/v1/jobs/{ids[0]}", headers=AUTH)
    record = json.loads(body)
    assert status == 200 and record["id"] == ids[0] and record["source"] == "api" and record["kind"] == "images"
    assert TOKEN not in body.decode()
    assert http("GET", f"{proc.url}/api/v1/jobs/{ghost_ids(1, 9)[0]}", headers=AUTH)[0] == 404
    assert http("DELETE", f"{proc.url}/api/v1/jobs/{ids[0]}", headers=AUTH)[0] == 200
    assert http("GET", f"{proc.url}/api/v1/jobs/{ids[0]}", headers=AUTH)[0] == 404
    assert total(proc.samples("distribute_jobs"), kind="images") == 3
    status, page, _ = http("GET", f"{proc.url}/")
    assert status == 200 and "api" in page.decode()
    assert TOKEN not in proc.log() and TOKEN not in proc.metrics()


def test_registration_is_404_without_a_token(simulator, exporter, tmp_path):
    sim = simulator()
    proc = exporter(write_config(tmp_path, config_text(sim.url, "  - {kind: chat, ids_file: none.txt}\n")))
    status, body, _ = http("POST", f"{proc.url}/api/v1/jobs", {"kind": "chat", "ids": ghost_ids(1, 1)}, AUTH)
    assert status == 404


def test_retention_drops_old_finished_jobs_but_counters_keep_totals(simulator, exporter, tmp_path):
    sim = simulator()
    old = sim.create("speech", 6, age_seconds=OLD)
    cfg = write_config(tmp_path, config_text(sim.url, f"  - {{kind: speech, ids: {json.dumps(old)}}}\n",
                                             state="retention_seconds: 3600"))
    proc = exporter(cfg)
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 6, 10, what="6 finished")
    wait_for(lambda: total(proc.samples("distribute_jobs")) == 0, 25, what="retention to drop them")
    kept = counters(proc.metrics())
    assert total(kept["distribute_jobs_finished_total"]) == 6
    asked = sim.stats()["by_id"]
    proc.stop()
    again = exporter(cfg)
    time.sleep(1.5)  # the ids are still in the config: they must not be tracked or polled again
    assert counters(again.metrics()) == kept
    assert total(again.samples("distribute_jobs")) == 0
    assert sim.stats()["by_id"] == asked


def test_ids_from_a_file_survive_a_kill_9_before_the_state_file_has_them(exporter, tmp_path):
    """Ready does not wait for the state file: the ids file keeps the ids until the flusher has
    written them, so a crash in between loses none (they are read again at start)."""
    ids = ghost_ids(30_000, 7)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    config = ("api: {base_url: 'http://127.0.0.1:9', max_requests_per_second: 1}\n"
              "poll: {interval_seconds: 60, not_found_grace_seconds: 3600}\n"
              "state: {path: state.db, flush_interval_seconds: 30}\n"
              "jobs: [{kind: images, ids_file: ids.txt}]\n")
    cfg = write_config(tmp_path, config)
    first = exporter(cfg)
    assert total(first.samples("distribute_jobs")) == len(ids)  # tracked at ready
    first.stop(signal.SIGKILL)
    assert stored_ids(tmp_path / "state.db") < len(ids)  # the flusher had not written them all

    # The second run takes the ids the state file lacks from the ids file again, and its flusher
    # writes them. Waited on rather than left to the stop: a clean stop has 4 s (cli.STOP_SECONDS)
    # and writes batches (20,000 rows each past the first) until that runs out, the rest staying in
    # the ids file; on a loaded machine 30,000 new rows can take longer (2 s here idle).
    write_config(tmp_path, config.replace("flush_interval_seconds: 30", "flush_interval_seconds: 1"))
    second = exporter(cfg, "--log.level", "warn")
    assert total(second.samples("distribute_jobs")) == len(ids)
    wait_for(lambda: stored_ids(tmp_path / "state.db") == len(ids), 60, what="the flusher to write every id")
    assert second.stop() == 0
    assert stored_ids(tmp_path / "state.db") == len(ids)  # nothing written is lost by a clean stop


def stored_ids(path) -> int:
    import sqlite3
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM jobs").fetchone()[0]


def test_rows_the_proxy_inbox_writes_keep_their_price_entry(tmp_path):
    """The inbox's INSERT writes rows as a batch does: a priced job's entry is stored once in
    price_entries and read back whole (it was stored as text and read back as nothing)."""
    from exporter.tracking.job import FINISHED, Job
    from exporter.tracking.store import StateStore

    entry = json.dumps({"model": "Llama-X", "per_million_prompt_tokens": 0.1})
    job = Job("5b0e3f8e-7a47-4c36-9d55-2f1c7f0e9a12", "chat", "g", "proxy", model="Llama-X",
              first_tracked=1.0, next_due=2.0)
    job.status, job.final, job.ended, job.price_entry, job.estimated_cost = "COMPLETED", FINISHED, 3.0, entry, 0.5
    store = StateStore(str(tmp_path / "state.db"))
    store.open()
    try:
        store.insert_new([job.row()])
        assert store.get(job.id)["price_entry"] == entry
    finally:
        store.close()
    reopened = StateStore(str(tmp_path / "state.db"))  # a fresh cache: read from the file itself
    reopened.open()
    try:
        assert reopened.get(job.id)["price_entry"] == entry
    finally:
        reopened.close()
