"""The exporter as a real process against the simulator: the whole loop and each kind of answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import tool
from helpers import REPO, get_json, http, parse_samples, total, wait_for, write_config

OLD = 10 ** 6  # back-dating jobs by this many seconds makes them final at once


def config_text(sim_url: str, groups: str, **extra: str) -> str:
    poll = extra.pop("poll", "interval_seconds: 0.2, max_interval_seconds: 1, not_found_grace_seconds: 30")
    api = extra.pop("api", "max_requests_per_second: 0")
    # Back-dated jobs finished long ago: a long retention keeps them unless a test says otherwise.
    state = extra.pop("state", "retention_seconds: 100000000")
    return (f"api: {{base_url: '{sim_url}', {api}}}\npoll: {{{poll}}}\n"
            f"state: {{path: state.db, flush_interval_seconds: 0.2, {state}}}\njobs:\n{groups}")


def truth_totals(truth: dict, ids: list[str]) -> dict[str, Counter]:
    finished, tokens, results = Counter(), Counter(), Counter()
    for job_id in ids:
        job = truth[job_id]
        if job["status"] in ("COMPLETED", "ERROR"):
            finished[(job["kind"], job["model"], job["status"])] += 1
        if "usage" in job:
            tokens[(job["model"], "prompt")] += job["usage"]["prompt_tokens"]
            tokens[(job["model"], "completion")] += job["usage"]["completion_tokens"]
        if job["kind"] != "chat" and job["status"] == "COMPLETED":
            results[(job["kind"], job["model"])] += len(job["results"])
    return {"finished": finished, "tokens": tokens, "results": results}


def exporter_totals(text: str) -> dict[str, Counter]:
    finished = Counter({(dict(l)["kind"], dict(l)["model"], dict(l)["status"]): v
                        for l, v in parse_samples(text, "distribute_jobs_finished_total").items() if v})
    tokens = Counter({(dict(l)["model"], dict(l)["token_type"]): v
                      for l, v in parse_samples(text, "distribute_tokens_total").items() if v})
    results = Counter({(dict(l)["kind"], dict(l)["model"]): v
                       for l, v in parse_samples(text, "distribute_results_total").items() if v})
    return {"finished": finished, "tokens": tokens, "results": results}


def test_whole_loop_matches_the_simulators_truth(simulator, exporter, tmp_path):
    sim = simulator("--seed", "1", "--timestamps", "epoch-ms")
    chat = sim.create("chat", 30, age_seconds=OLD)
    images = sim.create("images", 20, age_seconds=OLD)
    speech = sim.create("speech", 20, age_seconds=OLD)
    running = sim.create("chat", 5)  # stay unfinished for the length of the test
    (tmp_path / "ids").mkdir()
    (tmp_path / "ids" / "a.txt").write_text("# images\n" + "\n".join(images) + "\n")
    groups = (f"  - {{kind: chat, group: nightly, ids: {json.dumps(chat + running)}}}\n"
              f"  - {{kind: images, group: renders, ids_file: 'ids/*.txt'}}\n"
              f"  - {{kind: speech, ids: {json.dumps(speech)}}}\n")
    proc = exporter(write_config(tmp_path, config_text(sim.url, groups)))
    expected = truth_totals(sim.truth(), chat + images + speech)
    wait_for(lambda: exporter_totals(proc.metrics())["finished"] == expected["finished"], 90,
             what="finished counts equal to the truth")
    text = proc.metrics()
    assert exporter_totals(text) == expected
    durations = parse_samples(text, "distribute_job_duration_seconds_count")
    assert total(durations) == sum(expected["finished"].values())
    truth = sim.truth()
    want_sum = sum(truth[i]["finished"] - truth[i]["created"] for i in chat + images + speech)
    assert total(parse_samples(text, "distribute_job_duration_seconds_sum")) == pytest.approx(want_sum, rel=1e-6)
    jobs = parse_samples(text, "distribute_jobs")
    assert total(jobs, kind="chat", group="nightly") == 35
    assert total(jobs, kind="images", group="renders") == 20
    unfinished = total(jobs, kind="chat") - total(jobs, kind="chat", status="COMPLETED") - total(jobs, kind="chat", status="ERROR")
    assert unfinished == 5
    oldest = parse_samples(text, "distribute_oldest_unfinished_job_created_timestamp_seconds")
    assert dict(oldest)[(("group", "nightly"), ("kind", "chat"))] == pytest.approx(
        min(truth[i]["created"] for i in running), abs=0.01)
    assert parse_samples(text, "distribute_up")[()] == 1
    tools = sum(1 for i in chat if any(c["finish_reason"] == "tool_calls" for c in truth[i].get("choices", [])))
    choices = parse_samples(text, "distribute_chat_choices_total")
    assert total(choices, finish_reason="tool_calls") == tools
    # finished jobs are never asked about again
    # (over several poll intervals, and on a loaded machine until every running job has been asked
    # about again, so that the window is never too short to have seen a poll)
    before = sim.stats()["by_id"]
    time.sleep(1.5)
    wait_for(lambda: all(sim.stats()["by_id"][i] > before[i] for i in running), 60,
             what="every running job polled again")
    after = sim.stats()["by_id"]
    assert all(after[i] == before[i] for i in chat + images + speech)


def test_zero_series_exist_before_any_job_and_promtool_is_clean(simulator, exporter, tmp_path):
    sim = simulator()
    groups = "  - {kind: speech, group: empty, ids_file: 'nothing/*.txt'}\n"
    proc = exporter(write_config(tmp_path, config_text(sim.url, groups)))
    text = proc.metrics()
    finished = parse_samples(text, "distribute_jobs_finished_total")
    assert finished[(("group", "empty"), ("kind", "speech"), ("model", ""), ("status", "COMPLETED"))] == 0
    assert finished[(("group", "empty"), ("kind", "speech"), ("model", ""), ("status", "ERROR"))] == 0
    assert parse_samples(text, "distribute_exporter_build_info")
    assert parse_samples(text, "process_resident_memory_bytes")
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    sim.create("chat")  # a busier exposition, checked again
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=proc.metrics(), capture_output=True, text=True)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr


def test_openmetrics_and_gzip(simulator, exporter, tmp_path):
    import gzip

    sim = simulator()
    proc = exporter(write_config(tmp_path, config_text(sim.url, "  - {kind: chat, ids_file: x.txt}\n")))
    status, body, headers = http("GET", f"{proc.url}/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert gzip.decompress(body).decode().rstrip().endswith("# EOF")


def test_not_found_is_retried_through_the_grace_then_dropped(simulator, exporter, tmp_path):
    sim = simulator()
    ghost = "0d6f4c2e-0c1a-4b7e-9a44-7f2b3c4d5e6f"
    proc = exporter(write_config(tmp_path, config_text(
        sim.url, f"  - {{kind: chat, ids: [{ghost}]}}\n",
        poll="interval_seconds: 0.2, max_interval_seconds: 0.4, not_found_grace_seconds: 2")))
    assert total(proc.samples("distribute_jobs"), status="UNKNOWN") == 1
    wait_for(lambda: total(proc.samples("distribute_jobs"), status="NOT_FOUND") == 1, 15, what="NOT_FOUND")
    asked = sim.stats()["by_id"][ghost]
    assert asked >= 3  # retried during the grace
    time.sleep(1.0)
    assert sim.stats()["by_id"][ghost] == asked  # and no more after it
    assert parse_samples(proc.metrics(), "distribute_up")[()] == 1  # a 404 is a well-formed answer


def test_refused_key_backs_off_sets_up_to_zero_and_never_leaks(simulator, exporter, tmp_path):
    sim = simulator("--api-key", "right-key-000")
    ids = sim.create("chat", 20, age_seconds=OLD)
    key = "sk-WRONG-key-12345"
    cfg = config_text(sim.url, f"  - {{kind: chat, ids: {json.dumps(ids)}}}\n",
                      poll="interval_seconds: 0.5, max_interval_seconds: 2, auth_backoff_max_seconds: 2")
    proc = exporter(write_config(tmp_path, cfg), env={"DISTRIBUTE_API_KEY": key})
    wait_for(lambda: parse_samples(proc.metrics(), "distribute_api_request_errors_total").get(
        (("kind", "chat"), ("reason", "unauthorized")), 0) > 0, 10, what="unauthorized counted")
    time.sleep(3)
    text = proc.metrics()
    assert parse_samples(text, "distribute_up")[()] == 0
    sent = sim.stats()["by_status"].get("401", 0)
    # 20 jobs, 3.5 s: without the pause every job would be asked several times (>= 60 requests)
    assert sent <= 20 + 8, sent
    log = proc.log()
    assert log.count("refused the key") == 1
    status, page, _ = http("GET", f"{proc.url}/")
    for output in (text, log, page.decode()):
        assert key not in output


def test_retry_after_is_honoured_for_all_requests(simulator, exporter, tmp_path):
    sim = simulator()
    ids = sim.create("chat", 10)
    sim.faults(error_429_ratio=1, retry_after_seconds=2)
    cfg = config_text(sim.url, f"  - {{kind: chat, ids: {json.dumps(ids)}}}\n",
                      api="max_requests_per_second: 0, max_concurrency: 1")
    proc = exporter(write_config(tmp_path, cfg))
    wait_for(lambda: sim.stats()["by_status"].get("429", 0) >= 3, 15, what="three 429 answers")
    recent = get_json(f"{sim.url}/__admin/stats?recent=1&ids=0")["recent"]
    times = [t for t, path, status, _ in recent if path == "/async/chat/result"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps and min(gaps) >= 1.9, gaps  # nothing sent before Retry-After expired
    errors = parse_samples(proc.metrics(), "distribute_api_request_errors_total")
    assert errors[(("kind", "chat"), ("reason", "rate_limited"))] >= 3


def test_errors_and_bad_bodies_are_counted_and_figures_converge(simulator, exporter, tmp_path):
    sim = simulator("--seed", "9", "--fault.error-500-ratio", "0.3", "--fault.malformed-ratio", "0.3",
                    "--fault.huge-body-bytes", "3000000")
    ids = sim.create("speech", 30, age_seconds=OLD) + sim.create("images", 1, age_seconds=OLD)
    groups = (f"  - {{kind: speech, ids: {json.dumps(ids[:30])}}}\n"
              f"  - {{kind: images, ids: {json.dumps(ids[30:])}}}\n")
    proc = exporter(write_config(tmp_path, config_text(
        sim.url, groups, poll="interval_seconds: 0.1, max_interval_seconds: 0.4")))
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 31, 60, what="all 31 finished")
    sim.faults(error_500_ratio=0, malformed_ratio=0)
    text = proc.metrics()
    errors = parse_samples(text, "distribute_api_request_errors_total")
    assert total(errors, reason="http_5xx") > 0 and total(errors, reason="invalid_body") > 0
    assert exporter_totals(text) == truth_totals(sim.truth(), ids)
    requests = parse_samples(text, "distribute_api_requests_total")
    assert total(requests, code="500") == total(errors, reason="http_5xx")


def test_hanging_requests_time_out_and_count(simulator, exporter, tmp_path):
    sim = simulator("--fault.hang-ratio", "1")
    ids = sim.create("chat", 2, age_seconds=OLD)
    proc = exporter(write_config(tmp_path, config_text(
        sim.url, f"  - {{kind: chat, ids: {json.dumps(ids)}}}\n",
        api="max_requests_per_second: 0, timeout_seconds: 0.5")))
    wait_for(lambda: total(proc.samples("distribute_api_request_errors_total"), reason="timeout") >= 2, 15,
             what="timeouts counted")
    assert total(proc.samples("distribute_api_requests_total"), code="error") >= 2
    sim.faults(hang_ratio=0)
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 2, 20, what="recovery")


def test_config_check_one_line_verdicts(tmp_path):
    good = write_config(tmp_path, "jobs: [{kind: chat, ids: [3b241101-e2bb-4255-8caf-4136c566a962]}]\n")
    with_key = {**os.environ, "DISTRIBUTE_API_KEY": "test-key-0001"}  # else a warning line follows
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(good)],
                         capture_output=True, text=True, cwd=REPO, env=with_key)
    assert run.returncode == 0 and run.stdout.startswith("valid:") and run.stdout.count("\n") == 1, run.stdout
    good.write_text("jobs:\n  - kind: chat\n    ids: [3b241101-e2bb-4255-8caf-4136c566a962, x, y]\n")
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(good)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1 and run.stdout.strip() == "invalid: jobs[0].ids[1]: not a UUID v4: 'x'"
    assert "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(tmp_path / "no")],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1 and "no such file" in run.stdout and "Traceback" not in run.stderr


def test_health_ready_landing_and_prompt_stop(simulator, exporter, tmp_path):
    sim = simulator()
    ids = sim.create("images", 3, age_seconds=OLD)
    proc = exporter(write_config(tmp_path, config_text(sim.url, f"  - {{kind: images, ids: {json.dumps(ids)}}}\n")))
    assert http("GET", f"{proc.url}/-/healthy") == (200, b"OK\n", http("GET", f"{proc.url}/-/healthy")[2])
    assert http("GET", f"{proc.url}/-/ready")[0] == 200
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 3, 15, what="3 finished")
    status, page, _ = http("GET", f"{proc.url}/")
    page = page.decode()
    assert status == 200 and "distribute-exporter" in page and "/metrics" in page
    assert "images" in page and "COMPLETED" in page and "config" in page
    started = time.monotonic()
    code = proc.stop(signal.SIGTERM, timeout=10)
    assert code == 0 and time.monotonic() - started < 5


def test_a_404_that_is_not_the_apis_counts_as_http_4xx(simulator, exporter, tmp_path):
    sim = simulator()
    ids = sim.create("chat", 1, age_seconds=OLD)
    # A base_url with a wrong path: the simulator's router answers a plain-text 404 page.
    proc = exporter(write_config(tmp_path, config_text(
        sim.url + "/v2", f"  - {{kind: chat, ids: {json.dumps(ids)}}}\n",
        poll="interval_seconds: 0.2, max_interval_seconds: 0.4, not_found_grace_seconds: 0.5")))
    wait_for(lambda: total(proc.samples("distribute_api_request_errors_total"), reason="http_4xx") >= 3, 10,
             what="http_4xx counted")
    text = proc.metrics()
    assert total(parse_samples(text, "distribute_jobs"), status="NOT_FOUND") == 0
    assert parse_samples(text, "distribute_up")[()] == 0
