"""The API's bad days, against the exporter as a real process: through each fault /metrics answers
within a second, the process stays up and bounded, the error counters say what happened, and once the
fault ends the figures converge to exactly the fault-free truth (nothing lost, nothing counted twice)."""

from __future__ import annotations

import json
import time
from typing import Callable

import pytest

from helpers import http, parse_samples, total, wait_for, write_config
from test_exporter import OLD, config_text, exporter_totals, truth_totals

FAST_RETRIES = "interval_seconds: 0.3, max_interval_seconds: 1, not_found_grace_seconds: 600"


def start(simulator, exporter, tmp_path, *sim_args: str, api: str = "max_requests_per_second: 0, timeout_seconds: 1",
          env=None, key_file: str | None = None, fault: dict | None = None):
    sim = simulator("--seed", "77", *sim_args)
    ids = {k: sim.create(k, n, age_seconds=OLD) for k, n in (("chat", 20), ("images", 8), ("speech", 8))}
    if fault:  # set once the jobs exist, before the exporter asks anything
        sim.faults(**fault)
    groups = "".join(f"  - {{kind: {k}, ids: {json.dumps(v)}}}\n" for k, v in ids.items())
    if key_file:
        api += f", api_key_file: {key_file}"
    cfg = write_config(tmp_path, config_text(sim.url, groups, poll=FAST_RETRIES, api=api))
    proc = exporter(cfg, env=env)
    return sim, proc, [i for v in ids.values() for i in v]


def ride_out(proc, seconds: float, until: Callable[[], bool] | None = None) -> dict[str, float]:
    """Scrape throughout a fault; every scrape must answer within a second."""
    rss = []
    slowest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        status, body, _ = http("GET", f"{proc.url}/metrics", timeout=5)
        took = time.monotonic() - started
        assert status == 200 and took < 1.0, took
        slowest = max(slowest, took)
        rss.append(parse_samples(body.decode(), "process_resident_memory_bytes")[()])
        assert proc.popen.poll() is None, proc.log()
        if until is not None and until():
            break
        time.sleep(0.1)
    assert max(rss) - rss[0] < 150 * 1024 * 1024, (rss[0], max(rss))  # no growth without bound
    return {"slowest": slowest, "rss_growth": max(rss) - rss[0]}


def converges(sim, proc, ids: list[str], timeout: float = 40) -> None:
    expected = truth_totals(wait_for(sim.truth, timeout, what="the simulator back"), ids)
    wait_for(lambda: exporter_totals(proc.metrics()) == expected, timeout, what="figures equal to the truth")
    time.sleep(1.5)  # and stay there: nothing counted twice by late retries
    assert exporter_totals(proc.metrics()) == expected
    assert parse_samples(proc.metrics(), "distribute_up")[()] == 1


def errors(proc, reason: str) -> float:
    return total(proc.samples("distribute_api_request_errors_total"), reason=reason)


def test_bursts_of_500(simulator, exporter, tmp_path):
    sim, proc, ids = start(simulator, exporter, tmp_path, "--fault.error-500-ratio", "1")
    ride_out(proc, 3)
    assert errors(proc, "http_5xx") >= 10 and parse_samples(proc.metrics(), "distribute_up")[()] == 0
    assert total(proc.samples("distribute_jobs_finished_total")) == 0
    sim.faults(error_500_ratio=0.6)  # a second, partial burst
    ride_out(proc, 2)
    sim.faults(error_500_ratio=0)
    converges(sim, proc, ids)


def test_rate_limited_with_retry_after(simulator, exporter, tmp_path):
    sim, proc, ids = start(simulator, exporter, tmp_path, "--fault.error-429-ratio", "1",
                           "--fault.retry-after-seconds", "2")
    ride_out(proc, 4.5)
    times = [t for t, path, status, _ in json.loads(http("GET", f"{sim.url}/__admin/stats?recent=1&ids=0")[1])["recent"]
             if status == 429]
    # after each 429, at most the requests already in flight (max_concurrency) arrive before Retry-After
    bursts = [t for a, t in zip(times, times[1:]) if t - a >= 1.9]
    assert len(bursts) >= 1 and len(times) <= (len(bursts) + 1) * 8, times
    assert errors(proc, "rate_limited") == len(times)
    sim.faults(error_429_ratio=0)
    converges(sim, proc, ids)


def test_requests_that_hang(simulator, exporter, tmp_path):
    sim, proc, ids = start(simulator, exporter, tmp_path, "--fault.hang-ratio", "1")
    ride_out(proc, 3)
    assert errors(proc, "timeout") >= 8
    assert total(proc.samples("distribute_api_requests_total"), code="error") == errors(proc, "timeout")
    sim.faults(hang_ratio=0)
    converges(sim, proc, ids)


def test_api_down_for_a_minute_then_back(simulator, exporter, tmp_path):
    down_since = time.monotonic()
    sim, proc, ids = start(simulator, exporter, tmp_path, fault={"down": "refuse", "down_seconds": 60})
    ride_out(proc, 55 - (time.monotonic() - down_since))  # to 5 s before the outage ends, however slow the start
    assert errors(proc, "connect") >= 10 and parse_samples(proc.metrics(), "distribute_up")[()] == 0
    assert time.monotonic() - down_since < 60  # still inside the outage
    converges(sim, proc, ids, timeout=60)


@pytest.mark.parametrize("kind", ["not_json", "wrong_shape", "huge"])
def test_malformed_bodies(simulator, exporter, tmp_path, kind):
    sim, proc, ids = start(simulator, exporter, tmp_path, "--fault.malformed-ratio", "1",
                           "--fault.malformed-kinds", kind)
    stats = ride_out(proc, 3)
    assert errors(proc, "invalid_body") >= 8
    if kind == "huge":  # 10 MB answers are not read past api.max_response_bytes
        assert stats["rss_growth"] < 60 * 1024 * 1024
    sim.faults(malformed_ratio=0)
    converges(sim, proc, ids)


def test_wrong_key_then_the_right_one_after_reload(simulator, exporter, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-wrong\n")
    key_file.chmod(0o600)
    sim, proc, ids = start(simulator, exporter, tmp_path, "--api-key", "sk-right", key_file=str(key_file))
    ride_out(proc, 3)
    assert errors(proc, "unauthorized") >= 1 and parse_samples(proc.metrics(), "distribute_up")[()] == 0
    sent = sim.stats()["by_status"]["401"]
    key_file.write_text("sk-right\n")
    fixed = time.monotonic()
    assert http("POST", f"{proc.url}/-/reload")[0] == 200
    converges(sim, proc, ids)
    assert time.monotonic() - fixed < 10  # the pause ends with the new key, not at its own pace
    assert sent < 36  # backed off: fewer 401s than one round over the jobs would cost
