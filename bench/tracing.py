"""What tracing costs the poll loop: the poll benchmark with tracing off, on (a collector that takes
every batch) and on with a collector that never answers, in one run; and the spans per second the
exporter sent meanwhile. Every job finishes at its first answer (nginx's fixed COMPLETED speech
body), so each poll also makes one trace owed, and the shipper runs flat out beside the poller.
"""

from __future__ import annotations

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
            self.first = self.first or now
            self.spans, self.last = self.spans + spans, now

    def spans_per_second(self) -> float:
        return self.spans / (self.last - self.first) if self.last > self.first else 0.0

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


def _run(workdir: Path, ids: int, nginx: Nginx, collector: Collector | None) -> float:
    """Polls per second until every id is final; with a collector that takes traces, then waits
    until every trace went out (the spans per second are the collector's). nginx's answer finished
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
        started = time.monotonic()
        wait_for(lambda: metric(exporter.metrics(), "distribute_jobs_finished_total") >= ids, 600, "every id polled", 0.2)
        rate = metric(exporter.metrics(), "distribute_exporter_polls_total") / (time.monotonic() - started)
        if collector is not None and not collector.hang:
            wait_for(lambda: metric(exporter.metrics(), "distribute_exporter_traces_total", 'outcome="exported"') >= ids,
                     600, "every trace exported", 0.2)
    finally:
        exporter.stop()
    return rate


def traced_polls(workdir: Path, ids: int) -> Figures:
    """Polls per second with tracing off, on, and on against a collector that never answers, against
    the same nginx in the same run; and the spans per second the collector took."""
    nginx = Nginx()
    figures: Figures = {}
    try:
        for run in ("off", "on", "hang"):
            (workdir / run).mkdir(parents=True, exist_ok=True)
            collector = Collector(hang=run == "hang") if run != "off" else None
            try:
                figures[f"polls_per_second_{run}"] = _run(workdir / run, ids, nginx, collector)
            finally:
                if collector is not None:
                    collector.stop()
            if run == "on" and collector is not None:
                figures["spans_per_second"] = collector.spans_per_second()
                figures["spans_exported"] = float(collector.spans)
    finally:
        nginx.stop()
    figures["rate_ratio_on"] = figures["polls_per_second_on"] / figures["polls_per_second_off"]
    figures["rate_ratio_hang"] = figures["polls_per_second_hang"] / figures["polls_per_second_off"]
    return figures
