"""What tracing costs the poll loop: the poll benchmark with tracing off, on (a collector that takes
every batch) and on with a collector that never answers, and the spans per second the exporter sent.

The main case is the one users have: `poll_throughput`'s realistic upstream (bench/poll_realistic.py:
3 kinds, 10 groups, 20 models, each job answered QUEUED, then PROCESSING, then final with realistic
bodies), so each job makes two status changes and three state writes before its trace (a root span
and one child per status phase) is owed. The worst case is kept beside it: nginx's one fixed
COMPLETED answer, so every poll makes a job final and owes a trace, and the shipper runs flat out.

The machine is shared and its load drifts within minutes, so the three variants are interleaved:
each round runs all three, one after the other on their own copy of the same jobs (and their own
upstream), in an order rotated from round to round (each variant takes each place equally often);
a ratio is taken within a round and the figure is the median of the rounds' ratios, their lowest and
highest reported beside it.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.benchmarks import Figures, _ids_file
from bench.poll_realistic import GROUPS, Upstream, make_jobs
from bench.procs import Exporter, Nginx, metric, wait_for


class Collector:
    """An OTLP/HTTP receiver on loopback that counts spans (and when), or never answers (`hang`)."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.spans = self.roots = 0
        self.first = self.last = 0.0
        self.first_spans = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._release = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if collector.hang:
                    collector._release.wait(600)
                    return
                spans = [span for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                         for ss in rs.scope_spans for span in ss.spans]
                collector.took(len(spans), sum(1 for span in spans if not span.parent_span_id))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def took(self, spans: int, roots: int) -> None:
        with self._lock:
            now = time.monotonic()
            if not self.first:
                self.first, self.first_spans = now, spans
            self.spans, self.roots, self.last = self.spans + spans, self.roots + roots, now

    def spans_per_second(self) -> float:
        """The spans that came after the first request, over the time from it to the last one
        (from the collector's start when one request carried them all)."""
        if self.last > self.first:
            return (self.spans - self.first_spans) / (self.last - self.first)
        return self.spans / (self.last - self.started) if self.last else 0.0

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()




VARIANTS = ("off", "on", "hang")
CASES = ("realistic", "final")  # the case users have; the worst case, every poll final


def _config(workdir: Path, ids: int, case: str, url: str) -> str:
    """The exporter's config for one run: the realistic case as `poll_throughput` polls it (its 10
    groups, a 0.2 s interval), the worst case as one speech list. The answers' `finished` lies in the
    past: a long retention keeps the jobs (a job retired before its trace went out has none)."""
    if case == "realistic":  # the jobs' files written by make_jobs
        jobs = "jobs:\n" + "".join(f"  - {{kind: {kind}, group: {g}, ids_file: {g}.txt}}\n"
                                   for kind, names in GROUPS.items() for g in names)
        interval = 0.2
    else:
        _ids_file(workdir / "ids.txt", ids)
        jobs, interval = "jobs: [{kind: speech, ids_file: ids.txt}]\n", 60
    return f"""
api: {{base_url: '{url}', max_requests_per_second: 0, max_concurrency: 32}}
poll: {{interval_seconds: {interval}, max_interval_seconds: 60}}
{jobs}state: {{path: state.db, retention_seconds: 100000000}}
"""


def _run(workdir: Path, ids: int, case: str, nginx: Nginx, collector: Collector | None) -> dict[str, float]:
    """One exporter polling `ids` fresh jobs until every one is final: polls per second over the span
    of its polls (from the first job's first status seen to the last poll, from the state file), and
    CPU per poll from ready to the last job final; with a collector that takes traces, also the CPU
    per poll until every trace went out and the collector's spans per second. The realistic case has
    an upstream of its own, so that every copy of the jobs is answered from its first poll on."""
    upstream = None
    if case == "realistic":
        make_jobs(workdir, ids)  # the same jobs (a fixed seed) for every copy
        upstream = Upstream(workdir)
        config = _config(workdir, ids, case, upstream.url)
    else:
        config = _config(workdir, ids, case, f"http://127.0.0.1:{nginx.port}")
    if collector is not None:
        config += f"tracing: {{endpoint: '{collector.url}'}}\n"
    try:
        out = _poll(workdir, ids, config, collector)
    finally:
        if upstream is not None:
            upstream.stop()
    with sqlite3.connect(workdir / "state.db") as db:
        rows = db.execute("SELECT final, polls, history, last_polled FROM jobs").fetchall()
    assert len(rows) == ids and all(final == 1 for final, *_ in rows), "every job of the copy final"
    assert sum(row[1] for row in rows) == out["polls"], "every poll counted in the state"
    first = min(float(history.split(";")[0].rpartition("@")[2]) for _, _, history, _ in rows)
    out["rate"] = out["polls"] / (max(row[3] for row in rows) - first)
    out["polls_per_job"] = out["polls"] / ids
    return out


def _poll(workdir: Path, ids: int, config: str, collector: Collector | None) -> dict[str, float]:
    exporter = Exporter(workdir, config)
    try:
        # The CPU counted from the process's start: its start-up is in every variant alike (the OTLP
        # exporter's imports in "on" and "hang": against tracing, if anything). Counted from
        # readiness instead, a small run on an idle machine could be all polled before it, and read
        # zero CPU.
        cpu0 = 0.0
        exporter.wait_ready()
        wait_for(lambda: metric(exporter.metrics(), "distribute_jobs_finished_total") >= ids, 900, "every id final", 0.1)
        cpu = exporter.cpu_seconds() - cpu0
        polls = metric(exporter.metrics(), "distribute_exporter_polls_total")
        out = {"cpu_us": cpu / polls * 1e6, "polls": polls}
        if collector is not None and not collector.hang:
            wait_for(lambda: metric(exporter.metrics(), "distribute_exporter_traces_total", 'outcome="exported"') >= ids,
                     900, "every trace exported", 0.2)
            out["cpu_us_total"] = (exporter.cpu_seconds() - cpu0) / polls * 1e6
            out["spans_per_second"], out["spans"] = collector.spans_per_second(), float(collector.spans)
            out["traces"] = float(collector.roots)
    finally:
        exporter.stop()
    return out


def traced_polls(workdir: Path, ids: int, rounds: int = 3, final_ids: int | None = None,
                 final_rounds: int | None = None) -> Figures:
    """`rounds` rounds of the three variants in the realistic case, then `final_rounds` rounds of
    `final_ids` jobs in the worst case (module docstring): the medians of the rounds' figures and
    ratios, with the lowest and highest ratio of any round; the worst case's figures are prefixed
    `final_`."""
    nginx = Nginx()
    figures: Figures = {}
    try:
        for case, count, times in (("realistic", ids, rounds),
                                   ("final", final_ids or ids, final_rounds or rounds)):
            runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
            for round_no in range(times):
                for variant in VARIANTS[round_no % 3:] + VARIANTS[:round_no % 3]:
                    where = workdir / case / f"round{round_no}" / variant
                    where.mkdir(parents=True, exist_ok=True)
                    collector = Collector(hang=variant == "hang") if variant != "off" else None
                    try:
                        runs[variant].append(_run(where, count, case, nginx, collector))
                    finally:
                        if collector is not None:
                            collector.stop()
            prefix = "" if case == "realistic" else "final_"
            figures.update({prefix + name: value for name, value in summary(runs).items()})
    finally:
        nginx.stop()
    return figures


def summary(runs: dict[str, list[dict[str, float]]]) -> Figures:
    """Medians over the rounds; each ratio is taken within a round (to that round's run with tracing
    off), so a load that drifts between rounds cancels out."""
    def median(variant: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[variant])

    figures: Figures = {}
    for variant in VARIANTS:
        figures[f"polls_per_second_{variant}"] = median(variant, "rate")
        figures[f"cpu_us_per_poll_{variant}"] = median(variant, "cpu_us")
        figures[f"polls_per_job_{variant}"] = median(variant, "polls_per_job")
    for variant in ("on", "hang"):
        rates = [run["rate"] / off["rate"] for run, off in zip(runs[variant], runs["off"])]
        cpus = [run["cpu_us"] / off["cpu_us"] for run, off in zip(runs[variant], runs["off"])]
        figures[f"rate_ratio_{variant}"] = statistics.median(rates)
        figures[f"rate_ratio_{variant}_lowest"], figures[f"rate_ratio_{variant}_highest"] = min(rates), max(rates)
        figures[f"cpu_ratio_{variant}"] = statistics.median(cpus)
    figures["cpu_us_per_poll_on_until_exported"] = median("on", "cpu_us_total")
    figures["cpu_ratio_on_until_exported"] = statistics.median(
        run["cpu_us_total"] / off["cpu_us"] for run, off in zip(runs["on"], runs["off"]))
    figures["spans_per_second"] = median("on", "spans_per_second")
    figures["spans_exported"] = median("on", "spans")
    figures["traces_exported_fewest"] = min(run["traces"] for run in runs["on"])
    return figures
