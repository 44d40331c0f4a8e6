"""What tracing costs the poll loop: the poll benchmark with tracing off, on (a collector that takes
every batch) and on with a collector that never answers, and the spans per second the exporter sent.

Every job finishes at its first answer (nginx's fixed COMPLETED speech body), so each poll also makes
one trace owed, and the shipper runs flat out beside the poller. The machine is shared and its load
drifts within minutes, so the three variants are interleaved: each round runs all three, one after
the other on their own copy of the same jobs against the same nginx, in an order rotated from round
to round (each variant takes each place equally often); a ratio is taken within a round and the
figure is the median of the rounds' ratios, their lowest and highest reported beside it.
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
from bench.procs import Exporter, Nginx, metric, wait_for


class Collector:
    """An OTLP/HTTP receiver on loopback that counts spans (and when), or never answers (`hang`)."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.spans = 0
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
                spans = sum(len(ss.spans) for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                            for ss in rs.scope_spans)
                collector.took(spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def took(self, spans: int) -> None:
        with self._lock:
            now = time.monotonic()
            if not self.first:
                self.first, self.first_spans = now, spans
            self.spans, self.last = self.spans + spans, now

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


def _run(workdir: Path, ids: int, nginx: Nginx, collector: Collector | None) -> dict[str, float]:
    """One exporter polling `ids` fresh jobs until every one is final: polls per second over the span
    of its polls (the first to the last poll's time, from the state file: each job is polled once),
    and CPU per poll from ready to the last; with a collector that takes traces, also the CPU per
    poll until every trace went out and the collector's spans per second. nginx's answer finished
    long ago: a long retention keeps the jobs (a job retired before its trace went out has none)."""
    _ids_file(workdir / "ids.txt", ids)
    tracing = f"tracing: {{endpoint: '{collector.url}'}}" if collector else ""
    exporter = Exporter(workdir, f"""
api: {{base_url: 'http://127.0.0.1:{nginx.port}', max_requests_per_second: 0, max_concurrency: 32}}
poll: {{interval_seconds: 60, max_interval_seconds: 60}}
jobs: [{{kind: speech, ids_file: ids.txt}}]
state: {{path: state.db, retention_seconds: 100000000}}
{tracing}""")
    try:
        exporter.wait_ready()
        cpu0 = exporter.cpu_seconds()
        wait_for(lambda: metric(exporter.metrics(), "distribute_jobs_finished_total") >= ids, 600, "every id polled", 0.1)
        cpu = exporter.cpu_seconds() - cpu0
        polls = metric(exporter.metrics(), "distribute_exporter_polls_total")
        out = {"cpu_us": cpu / polls * 1e6}
        if collector is not None and not collector.hang:
            wait_for(lambda: metric(exporter.metrics(), "distribute_exporter_traces_total", 'outcome="exported"') >= ids,
                     600, "every trace exported", 0.2)
            out["cpu_us_total"] = (exporter.cpu_seconds() - cpu0) / polls * 1e6
            out["spans_per_second"], out["spans"] = collector.spans_per_second(), float(collector.spans)
    finally:
        exporter.stop()
    with sqlite3.connect(workdir / "state.db") as db:
        polled, first, last = db.execute("SELECT count(*), min(last_polled), max(last_polled) FROM jobs").fetchone()
    assert polled == ids == polls, (polled, ids, polls)  # one poll per job: final at its first answer
    out["rate"] = polls / (last - first)
    return out


def traced_polls(workdir: Path, ids: int, rounds: int = 3) -> Figures:
    """`rounds` rounds of the three variants against one nginx (module docstring); the medians of
    the rounds' figures and ratios, with the lowest and highest ratio of any round."""
    nginx = Nginx()
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    try:
        for round_no in range(rounds):
            for variant in VARIANTS[round_no % 3:] + VARIANTS[:round_no % 3]:
                where = workdir / f"round{round_no}" / variant
                where.mkdir(parents=True, exist_ok=True)
                collector = Collector(hang=variant == "hang") if variant != "off" else None
                try:
                    runs[variant].append(_run(where, ids, nginx, collector))
                finally:
                    if collector is not None:
                        collector.stop()
    finally:
        nginx.stop()
    return summary(runs)


def summary(runs: dict[str, list[dict[str, float]]]) -> Figures:
    """Medians over the rounds; each ratio is taken within a round (to that round's run with tracing
    off), so a load that drifts between rounds cancels out."""
    def median(variant: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[variant])

    figures: Figures = {}
    for variant in VARIANTS:
        figures[f"polls_per_second_{variant}"] = median(variant, "rate")
        figures[f"cpu_us_per_poll_{variant}"] = median(variant, "cpu_us")
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
    return figures
