"""SIGHUP on a replica sharing a real PostgreSQL re-reads the config as with SQLite: a broken file
keeps the running config with one line; a good one brings in a new ids file group, a new API key
(a new client) and a price file (for jobs that finish from then on, and spend today)."""

from __future__ import annotations

import os
import signal

import pytest

from helpers import ExporterProc, free_port, http, parse_samples, total, wait_for, write_config
from test_cost import PRICE_FILE, PRICES, job_cost
from test_exporter import OLD

API_KEY = "pg-reload-api-key-5d2e9"
WRONG_KEY = "pg-reload-wrong-key-0b7"


def job_facts(proc: ExporterProc, name: str) -> dict:
    status, body, _ = http("GET", f"{proc.url}/metrics/jobs")
    assert status == 200, body
    return parse_samples(body.decode(), name)


def reload_ok(proc: ExporterProc) -> float:
    return parse_samples(proc.metrics(), "distribute_config_last_reload_successful")[()]


def config(sim_url: str, db_url: str, password_file: str, groups: str, extra: str = "",
           interval: str = "0.3") -> str:
    return (f"api: {{base_url: '{sim_url}', api_key_file: key, max_requests_per_second: 0, timeout_seconds: 2}}\n"
            f"poll: {{interval_seconds: {interval}, max_interval_seconds: 1, auth_backoff_max_seconds: 1, "
            "not_found_grace_seconds: 30}\n"
            f"state: {{url: '{db_url}', password_file: '{password_file}', retention_seconds: 100000000}}\n"
            f"{extra}jobs:\n{groups}")


@pytest.mark.slow
def test_sighup_reloads_a_replica_on_postgresql(simulator, exporter, tmp_path, pg_db):
    url, password_file = pg_db
    sim = simulator("--seed", "17", "--speed", "10", "--api-key", API_KEY)
    key = tmp_path / "key"
    key.write_text(WRONG_KEY + "\n")
    key.chmod(0o600)
    first = sim.create("chat", 3, age_seconds=OLD)
    (tmp_path / "a.txt").write_text("\n".join(first) + "\n")
    group_a = "  - {kind: chat, group: a, ids_file: a.txt}\n"
    cfg = write_config(tmp_path, config(sim.url, url, password_file, group_a))
    proc = exporter(cfg, port=free_port())
    wait_for(lambda: total(job_facts(proc, "distribute_jobs")) == 3, 60, 0.3, what="the ids file's jobs stored")
    wait_for(lambda: total(proc.samples("distribute_api_requests_total"), code="401") > 0, 30, 0.3,
             what="the wrong key refused")

    # A broken file: one line, the process keeps running with the old config.
    good = cfg.read_text()
    cfg.write_text(good.replace("interval_seconds: 0.3", "interval_seconds: soon"))
    os.kill(proc.popen.pid, signal.SIGHUP)
    wait_for(lambda: reload_ok(proc) == 0, 30, 0.3, what="the failed reload reported")
    failed = [line for line in proc.log().splitlines() if "config reload failed" in line]
    assert len(failed) == 1 and "poll.interval_seconds" in failed[0], failed
    assert proc.popen.poll() is None and "Traceback" not in proc.log()
    (tmp_path / "a.txt").write_text("\n".join(first + sim.create("chat", 1, age_seconds=OLD)) + "\n")
    wait_for(lambda: total(job_facts(proc, "distribute_jobs")) == 4, 30, 0.3,
             what="the running config (its ids file) still in force")

    # A good file: the right key, a second group from its own ids file, a price file.
    key.write_text(API_KEY + "\n")
    (tmp_path / "prices.yaml").write_text(PRICE_FILE)
    second = sim.create("images", 4)  # these finish today: spend today
    (tmp_path / "b.txt").write_text("\n".join(second) + "\n")
    cfg.write_text(config(sim.url, url, password_file, group_a + "  - {kind: images, group: b, ids_file: b.txt}\n",
                          extra="pricing: {file: prices.yaml}\n"))
    os.kill(proc.popen.pid, signal.SIGHUP)
    wait_for(lambda: reload_ok(proc) == 1, 30, 0.3, what="the reload reported")
    every = [*(tmp_path / "a.txt").read_text().split(), *second]
    truth = wait_for(lambda: (t := sim.truth()) and all(t[i]["status"] in ("COMPLETED", "ERROR") for i in every)
                     and t, 60, 0.3, what="every simulated job final")
    wait_for(lambda: total(job_facts(proc, "distribute_jobs_finished_total")) == len(every), 60, 0.3,
             what="every job finished with the new key")
    # (the gauge over unfinished jobs is a leader's cached scan, a few seconds behind the counters)
    wait_for(lambda: total(job_facts(proc, "distribute_jobs"), kind="images", group="b") == 4, 30, 0.3,
             what="the second group's jobs")
    # Priced from the reload on: the images of group b (and the chat jobs, finished after it too).
    want = sum(job_cost(truth[i], PRICES[("images", truth[i]["model"])]) for i in second)
    cost = job_facts(proc, "distribute_estimated_cost_total")
    assert total(cost, group="b") == pytest.approx(want)
    page = http("GET", f"{proc.url}/")[1].decode()
    assert f"<tr><th>b</th><td>USD</td><td>{want:.4f}</td><td>4</td><td>0</td></tr>" in page, page[-1500:]
    assert "config reloaded from" in proc.log()
    assert API_KEY not in proc.log() and WRONG_KEY not in proc.log()
