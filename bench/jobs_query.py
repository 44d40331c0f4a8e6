"""`jobs_query`: GET /api/v1/jobs over a million tracked jobs, /metrics beside it, and the status
page's memory.

With N tracked jobs (a tenth unfinished, from bench/fixtures.py), p99 and median of three lists an
SRE asks for (the oldest 100 unfinished, the slowest 100 finished in the last hour, one group and
status), then /metrics (text format) of this build against a baseline commit's build (the one this
feature started from) over the same state, scraped in alternating rounds in the same run, so that
the shared machine's noise falls on both. Memory: the exporter's RSS before and after many status
page loads, and the size of a full timeline ring measured with tracemalloc.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from bench.procs import REPO, Exporter

BASELINE = "85216f8"  # main before the drill-down feature (schema 3)
QUERIES = {
    "oldest_unfinished": "/api/v1/jobs?unfinished=true&sort=created&limit=100",
    # the hour before the state was built (a cached file ages): about a sixth of the finished jobs
    "slowest_last_hour": "/api/v1/jobs?unfinished=false&finished_after={hour_ago:.0f}&sort=-duration&limit=100",
    "group_status": "/api/v1/jobs?group=group-3&status=ERROR&limit=100",
}
CONFIG = "api: {base_url: 'http://127.0.0.1:9'}\nstate: {path: state.db}\n"
Figures = dict[str, float]


def _timed(conn: http.client.HTTPConnection, path: str, count: int,
           headers: dict[str, str] | None = None) -> list[float]:
    took = []
    for _ in range(count):
        begin = time.perf_counter()
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status, body[:200])
        took.append((time.perf_counter() - begin) * 1000)
    return took


def _p99(took: list[float]) -> float:
    took = sorted(took)
    return took[max(0, int(len(took) * 0.99) - 1)]


def _state(path: Path, jobs: int, repo: Path) -> None:
    """A state file written by `repo`'s own fixtures (the baseline reads only its own schema)."""
    if path.exists() and path.with_suffix(".at").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".at").write_text(f"{time.time()}\n")
    code = f"from pathlib import Path; from bench.fixtures import prepare_state; prepare_state(Path({str(path)!r}), {jobs})"
    subprocess.run([sys.executable, "-c", code], cwd=repo, check=True)


def _scrapes(procs: dict[str, Exporter], scrapes: int) -> Figures:
    """/metrics in the text format, gzipped as Prometheus asks and plain, of this build and the
    baseline's in alternating rounds (both see the same noise); and CPU per scrape of each."""
    figures: Figures = {}
    conns = {name: http.client.HTTPConnection("127.0.0.1", p.port, timeout=60) for name, p in procs.items()}
    for encoding in ("gzip", "identity"):
        headers = {"Accept-Encoding": encoding}
        took: dict[str, list[float]] = {name: [] for name in procs}
        cpu: dict[str, float] = {name: 0.0 for name in procs}
        for round_ in range(max(1, scrapes // 50)):
            for name in sorted(conns, reverse=round_ % 2 == 1):
                before = procs[name].cpu_seconds()
                took[name] += _timed(conns[name], "/metrics", min(50, scrapes), headers)
                cpu[name] += procs[name].cpu_seconds() - before
        for name, suffix in (("ours", ""), ("base", "_baseline")):
            if name in took:
                figures[f"metrics_{encoding}_p99{suffix}_ms"] = _p99(took[name])
                figures[f"metrics_{encoding}_median{suffix}_ms"] = statistics.median(took[name])
                figures[f"metrics_{encoding}_cpu{suffix}_ms"] = cpu[name] * 1000 / len(took[name])
        if "base" in took:
            for figure in ("p99", "median", "cpu"):
                figures[f"metrics_{encoding}_{figure}_ratio"] = (
                    figures[f"metrics_{encoding}_{figure}_ms"] / figures[f"metrics_{encoding}_{figure}_baseline_ms"])
    return figures


def ring_bytes(samples: int = 1000) -> float:
    """Bytes a full ring holds: samples of aggregates with 3 kinds x 10 groups x 20 models."""
    from exporter.tracking.aggregates import ApiAggregates, JobAggregates
    from exporter.tracking.timeline import SAMPLES, Timeline

    jobs, api = JobAggregates((0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)), ApiAggregates((0.1, 1))
    for i in range(600):
        labels = (("chat", "images", "speech")[i % 3], f"g{i % 10}", f"m{i % 20}", "COMPLETED")
        jobs.record_finished(labels, float(i % 100), 1, 1, 1, {}, 0)
        jobs.move(None, labels[:3] + ("QUEUED",))
    timeline = Timeline(jobs, api)
    tracemalloc.start()
    for i in range(SAMPLES):
        timeline.sample(float(i))
    full = tracemalloc.get_traced_memory()[0]
    for i in range(samples):
        timeline.sample(float(SAMPLES + i))
    later = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(timeline.ring) == SAMPLES
    return max(full, later)


def jobs_query(workdir: Path, jobs: int, requests: int = 200, scrapes: int = 2000, pages: int = 100,
               baseline: str | None = BASELINE, cache: Path | None = None) -> Figures:
    here = (cache or workdir) / f"state-v5-{jobs}.db"
    _state(here, jobs, REPO)
    figures: Figures = {}
    ours_dir = workdir / "ours"
    ours_dir.mkdir()
    (ours_dir / "state.db").write_bytes(here.read_bytes())
    procs = {"ours": Exporter(ours_dir, CONFIG)}
    base_repo = workdir / "baseline-src"
    try:
        if baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_repo), baseline],
                           check=True, capture_output=True)
            there = (cache or workdir) / f"state-{baseline}-{jobs}.db"
            _state(there, jobs, base_repo)
            (workdir / "base").mkdir()
            (workdir / "base" / "state.db").write_bytes(there.read_bytes())
            procs["base"] = Exporter(workdir / "base", CONFIG, repo=base_repo)
        for proc in procs.values():
            proc.wait_ready(300)
        ours = http.client.HTTPConnection("127.0.0.1", procs["ours"].port, timeout=60)
        hour_ago = float(here.with_suffix(".at").read_text()) - 3600
        for name, path in QUERIES.items():
            path = path.format(hour_ago=hour_ago)
            _timed(ours, path, 3)  # warm the page cache
            took = _timed(ours, path, requests)
            ours.request("GET", path)
            figures[f"{name}_jobs"] = len(json.loads(ours.getresponse().read())["jobs"])  # not an empty page
            figures[f"{name}_p99_ms"], figures[f"{name}_median_ms"] = _p99(took), statistics.median(took)
        figures.update(_scrapes(procs, scrapes))
        before = procs["ours"].rss()
        _timed(ours, "/", pages)
        figures["status_page_p99_ms"] = _p99(_timed(ours, "/", 20))
        figures["status_page_rss_growth_mb"] = (procs["ours"].rss() - before) / 2**20
        figures["rss_mb"] = procs["ours"].rss() / 2**20
        figures["ring_kb"] = ring_bytes() / 1024
    finally:
        for proc in procs.values():
            proc.stop()
        if base_repo.exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_repo)],
                           capture_output=True)
    return figures
