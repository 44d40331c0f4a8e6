"""The benchmarks. Each takes a work folder and a size, and returns its measured figures; `python -m
bench` runs them at full size with repeats, `tests/test_bench_small.py` at small sizes."""

from __future__ import annotations

import http.client
import json
import sqlite3
import statistics
import threading
import time
import uuid
from pathlib import Path

from bench.fixtures import prepare_state
from exporter.tracking.migrations import SCHEMA_VERSION
from bench.procs import Exporter, Nginx, Simulator, get, metric, wait_for, wrk

Figures = dict[str, float]


def _ids_file(path: Path, count: int, seed: int = 7) -> list[str]:
    import random

    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]
    path.write_text("\n".join(ids) + "\n")
    return ids


def poll_throughput(workdir: Path, ids: int, wrk_seconds: int = 5, extra_config: str = "") -> Figures:
    """Polls per second and CPU per poll against nginx's fixed COMPLETED answer, and wrk's rate
    (`extra_config`: more top-level config keys, e.g. pricing)."""
    nginx = Nginx()
    try:
        _ids_file(workdir / "ids.txt", ids)
        exporter = Exporter(workdir, f"""
api: {{base_url: 'http://127.0.0.1:{nginx.port}', max_requests_per_second: 0, max_concurrency: 32}}
poll: {{interval_seconds: 60, max_interval_seconds: 60}}
jobs: [{{kind: speech, ids_file: ids.txt}}]
state: {{path: state.db}}
{extra_config}""")
        try:
            exporter.wait_ready()
            started, cpu0 = time.monotonic(), exporter.cpu_seconds()
            wait_for(lambda: metric(exporter.metrics(), "distribute_jobs_finished_total") >= ids, 600,
                     "every id polled", 0.2)
            elapsed, cpu = time.monotonic() - started, exporter.cpu_seconds() - cpu0
            polls = metric(exporter.metrics(), "distribute_exporter_polls_total")
        finally:
            exporter.stop()
        ceiling = wrk(f"http://127.0.0.1:{nginx.port}/async/speech/result",
                      json.dumps({"id": "3b241101-e2bb-4255-8caf-4136c566a962"}), wrk_seconds)["rps"]
    finally:
        nginx.stop()
    rate = polls / elapsed
    return {"polls_per_second": rate, "cpu_us_per_poll": cpu / polls * 1e6, "wrk_rps": ceiling,
            "ratio_to_wrk": rate / ceiling}


def scrape_latency(workdir: Path, jobs: int, scrapes: int = 200, cache: Path | None = None) -> Figures:
    """Median and p99 of /metrics (gzip, as Prometheus asks, and plain) over a prepared state; with
    it, start-up time and memory."""
    # Keyed by schema version: a fixture cached by an older version would be migrated at every start
    # and measured as start-up time.
    state = (cache or workdir) / f"state-{jobs}-v{SCHEMA_VERSION}.db"
    if not state.exists():
        state.parent.mkdir(parents=True, exist_ok=True)
        prepare_state(state, jobs)
    working = workdir / "state.db"
    working.write_bytes(state.read_bytes())
    exporter = Exporter(workdir, "api: {base_url: 'http://127.0.0.1:9'}\nstate: {path: state.db}\n")
    try:
        ready = exporter.wait_ready(180)
        figures: Figures = {"startup_seconds": ready}
        for encoding in ("gzip", "identity"):
            conn = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=30)
            took = []
            for _ in range(scrapes):
                begin = time.perf_counter()
                conn.request("GET", "/metrics", headers={"Accept-Encoding": encoding})
                response = conn.getresponse()
                response.read()
                assert response.status == 200
                took.append((time.perf_counter() - begin) * 1000)
            conn.close()
            took.sort()
            figures[f"{encoding}_median_ms"] = statistics.median(took)
            figures[f"{encoding}_p99_ms"] = took[max(0, int(len(took) * 0.99) - 1)]
        figures["rss_mb"] = exporter.rss() / 2**20
        figures["series_lines"] = get(exporter.port, "/metrics")[1].count(b"\n")
    finally:
        exporter.stop()
    return figures


def api_economy(workdir: Path, jobs: int, speed: float = 10.0, interval: float = 15.0) -> Figures:
    """Result requests per job to completion with back-off, against fixed-interval polling of the
    same jobs, and the median delay from a job finishing to the exporter showing it."""
    scale = interval / speed
    runs = {}
    for name, max_interval in (("backoff", 300.0 / speed), ("fixed", scale)):
        sim = Simulator("--seed", "5", "--speed", str(speed))
        try:
            ids = []
            for kind, share in (("chat", 0.5), ("images", 0.2), ("speech", 0.3)):
                ids += [(kind, i) for i in sim.create(kind, int(jobs * share))]
            groups = "".join(f"  - {{kind: {k}, ids_file: {k}.txt}}\n" for k in ("chat", "images", "speech"))
            folder = workdir / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in ("chat", "images", "speech"):
                (folder / f"{k}.txt").write_text("".join(i + "\n" for kind, i in ids if kind == k))
            exporter = Exporter(folder, f"""
api: {{base_url: '{sim.url}', max_requests_per_second: 0, max_concurrency: 16}}
poll: {{interval_seconds: {scale}, max_interval_seconds: {max_interval}}}
jobs:
{groups}state: {{path: state.db, flush_interval_seconds: 0.5}}
""")
            try:
                exporter.wait_ready()
                wait_for(lambda: metric(exporter.metrics(), "distribute_jobs_finished_total") >= len(ids),
                         7200 / speed + 300, "every job finished", 0.5)
                requests = metric(exporter.metrics(), "distribute_api_requests_total")
            finally:
                exporter.stop()
            truth = json.loads(get(sim.port, "/__admin/jobs", timeout=120)[1])
            seen = dict(sqlite3.connect(folder / "state.db").execute("SELECT id, last_polled FROM jobs WHERE final = 1"))
            delays = [seen[i] - truth[i]["finished"] for _, i in ids if i in seen]
            runs[name] = {"requests_per_job": requests / len(ids), "delay_median_s": statistics.median(delays)}
        finally:
            sim.stop()
    return {"requests_per_job": runs["backoff"]["requests_per_job"],
            "fixed_requests_per_job": runs["fixed"]["requests_per_job"],
            "ratio_to_fixed": runs["backoff"]["requests_per_job"] / runs["fixed"]["requests_per_job"],
            # delays are measured in the sped-up world: scale them back to real seconds
            "delay_median_real_s": runs["backoff"]["delay_median_s"] * speed,
            "fixed_delay_median_real_s": runs["fixed"]["delay_median_s"] * speed}


def id_files(workdir: Path, lines: int, appended: int = 1000) -> Figures:
    """Start-up with an ids file of `lines` ids, then the time until `appended` new lines are tracked."""
    path = workdir / "ids.txt"
    _ids_file(path, lines)
    exporter = Exporter(workdir, """
api: {base_url: 'http://127.0.0.1:9', max_requests_per_second: 1}
poll: {interval_seconds: 15, max_interval_seconds: 300}
jobs: [{kind: chat, ids_file: ids.txt}]
state: {path: state.db}
""")
    try:
        load = exporter.wait_ready(300)
        tracked = metric(exporter.metrics(), "distribute_jobs")
        if tracked != lines:
            raise RuntimeError(f"ready with {tracked:g} of {lines} ids tracked")
        # Ready means every id is tracked and due; the state file catches up in the background.
        wait_for(lambda: _rows(workdir / "state.db") >= lines, 300, "every id in the state file", 0.1)
        persisted = time.monotonic() - exporter.started
        extra = _ids_file(workdir / "more.txt", appended, seed=99)
        time.sleep(1.5)  # let a scan pass with nothing new, so the append lands mid-period
        before = metric(exporter.metrics(), "distribute_jobs")
        with path.open("a") as out:
            out.write("\n".join(extra) + "\n")
        appended_at = time.monotonic()
        wait_for(lambda: metric(exporter.metrics(), "distribute_jobs") >= before + appended, 60,
                 "appended ids tracked", 0.01)
        pickup = time.monotonic() - appended_at
    finally:
        exporter.stop()
    return {"first_load_seconds": load, "persisted_seconds": persisted, "append_pickup_seconds": pickup}


def _rows(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    except sqlite3.Error:
        return 0


def scrape_load(workdir: Path, jobs: int, scrapers: int = 50, seconds: int = 30, rate: float = 500) -> Figures:
    """`scrapers` concurrent clients hammering /metrics while `jobs` unfinished jobs are polled:
    failed scrapes, p99 scrape latency, and the poll rate with and without the load."""
    sim = Simulator("--seed", "3", "--speed", "0.001")  # lifecycles 1000x slower: nothing finishes
    try:
        ids = sim.create("chat", jobs)
        (workdir / "ids.txt").write_text("\n".join(ids) + "\n")
        exporter = Exporter(workdir, f"""
api: {{base_url: '{sim.url}', max_requests_per_second: {rate}, max_concurrency: 16}}
poll: {{interval_seconds: 1, max_interval_seconds: 1}}
jobs: [{{kind: chat, ids_file: ids.txt}}]
state: {{path: state.db}}
""")
        try:
            exporter.wait_ready()
            time.sleep(3)  # past the first burst
            quiet = _poll_rate(exporter, max(5, seconds // 3))
            result: dict = {}
            load = threading.Thread(target=lambda: result.update(wrk(
                f"http://127.0.0.1:{exporter.port}/metrics", "", seconds, connections=scrapers, threads=2,
                method="GET", latency=True)))
            load.start()
            time.sleep(1)
            loaded = _poll_rate(exporter, seconds - 3)
            load.join()
        finally:
            exporter.stop()
    finally:
        sim.stop()
    return {"scrapes_per_second": result["rps"], "failed_scrapes": result["non_2xx"] + result["socket_errors"],
            "scrape_p99_ms": result["p99_ms"], "poll_rate_quiet": quiet, "poll_rate_loaded": loaded,
            "poll_rate_ratio": loaded / quiet}


def _poll_rate(exporter: Exporter, seconds: float) -> float:
    first = metric(exporter.metrics(), "distribute_exporter_polls_total")
    begin = time.monotonic()
    time.sleep(seconds)
    return (metric(exporter.metrics(), "distribute_exporter_polls_total") - first) / (time.monotonic() - begin)


def simulator_throughput(workdir: Path, jobs: int, seconds: int = 5) -> Figures:
    """Result answers per second of the simulator holding `jobs` jobs, measured with wrk."""
    sim = Simulator()
    try:
        job_id = sim.create("chat", jobs, age_seconds=100)[-1]
        return {"answers_per_second": wrk(f"{sim.url}/async/chat/result", json.dumps({"id": job_id}), seconds)["rps"]}
    finally:
        sim.stop()
