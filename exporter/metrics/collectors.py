"""Custom collectors: at scrape time each describes its metric families from the aggregates.

Nothing here walks the tracked jobs: a scrape costs time in proportion to the number of series.
`families()` feeds the fast text renderer (exposition.py); `collect()` (from FamilyCollector) yields
fresh prometheus_client `*MetricFamily` objects built from the same descriptions.
"""

from __future__ import annotations

import platform
import time
from typing import Callable, Iterator

from exporter import __version__
from exporter.tracking.aggregates import ApiAggregates, JobAggregates
from exporter.tracking.exemplars import Exemplars
from exporter.metrics.families import Family, FamilyCollector

_SOURCE = "from the answers of POST /async/<kind>/result"
JOB_LABELS = ("kind", "group", "model", "status")


class JobsCollector(FamilyCollector):
    """What the tracked jobs are and what the finished ones produced. Exposition, for example:

        # HELP distribute_jobs Tracked jobs by current status ...
        # TYPE distribute_jobs gauge
        distribute_jobs{group="nightly",kind="chat",model="Llama-3.1 8B",status="COMPLETED"} 41.0
        # TYPE distribute_jobs_finished_total counter
        distribute_jobs_finished_total{group="nightly",kind="chat",model="Llama-3.1 8B",status="ERROR"} 2.0
        # TYPE distribute_job_duration_seconds histogram
        distribute_job_duration_seconds_bucket{group="nightly",kind="chat",le="0.5",model="...",status="COMPLETED"} 0.0
        distribute_job_duration_seconds_count{...} 41.0
        distribute_job_duration_seconds_sum{...} 812.3
        distribute_oldest_unfinished_job_created_timestamp_seconds{group="nightly",kind="chat"} 1.7639e+09
        distribute_tokens_total{group="nightly",model="Llama-3.1 8B",token_type="prompt"} 10234.0
        distribute_results_total{group="renders",kind="images",model="SDXL"} 12.0
        distribute_chat_choices_total{finish_reason="tool_calls",group="nightly",model="..."} 7.0
        distribute_chat_tool_calls_total{group="nightly",model="Llama-3.1 8B"} 11.0
        distribute_estimated_cost_total{currency="USD",group="nightly",kind="chat",model="Llama-3.1 8B"} 0.42
        distribute_unpriced_jobs_total{group="nightly",kind="chat",model="Qwen2.5 7B"} 3.0
    """

    def __init__(self, agg: JobAggregates, is_current: Callable[[str, float], bool],
                 exemplars: Exemplars | None = None) -> None:
        self.agg = agg
        self.is_current = is_current
        self.exemplars = exemplars  # shown in the OpenMetrics exposition only

    def version(self) -> int:
        return self.agg.version

    def families(self) -> Iterator[Family]:
        agg = self.agg
        yield Family("distribute_jobs", "gauge", "Tracked jobs by current status " + _SOURCE + "; UNKNOWN: no "
                     "answer yet, NOT_FOUND: 404 past poll.not_found_grace_seconds; model is empty while unknown.",
                     JOB_LABELS, agg.jobs)
        yield Family("distribute_jobs_finished", "counter", "Jobs seen reaching COMPLETED or ERROR, each counted "
                     "once, " + _SOURCE + ".", JOB_LABELS, agg.finished,
                     self.exemplars.finished if self.exemplars else None)
        yield Family("distribute_job_duration_seconds", "histogram", "finished - created of finished jobs, in "
                     "seconds, " + _SOURCE + ".", JOB_LABELS, agg.durations,
                     self.exemplars.buckets if self.exemplars else None)
        yield Family("distribute_oldest_unfinished_job_created_timestamp_seconds", "gauge", "created (Unix time) "
                     "of the oldest tracked job not yet COMPLETED or ERROR, " + _SOURCE + ".", ("kind", "group"),
                     agg.oldest_unfinished(self.is_current))
        yield Family("distribute_tokens", "counter", "Tokens of finished chat jobs (usage.prompt_tokens and "
                     "usage.completion_tokens), " + _SOURCE + ".", ("group", "model", "token_type"), agg.tokens)
        yield Family("distribute_results", "counter", "Result items (image or audio URLs) of finished jobs, "
                     + _SOURCE + ".", ("kind", "group", "model"), agg.results)
        yield Family("distribute_chat_choices", "counter", "Choices of finished chat jobs by finish_reason, "
                     + _SOURCE + ".", ("group", "model", "finish_reason"), agg.choices)
        yield Family("distribute_chat_tool_calls", "counter", "Tool calls in the choices of finished chat jobs, "
                     + _SOURCE + ".", ("group", "model"), agg.tool_calls)
        if agg.currency is not None:  # only with pricing.file: no cost series, and no silent zero, without
            yield from _cost_families(agg)


def _cost_families(agg: JobAggregates) -> Iterator[Family]:
    yield Family("distribute_estimated_cost", "counter", "Estimated cost of finished jobs: the prices of "
                 "pricing.file in effect at each job's finished time, times the tokens, result items and "
                 "request it reported; in the currency label's units. Not a bill.",
                 ("kind", "group", "model", "currency"), agg.cost)
    yield Family("distribute_unpriced_jobs", "counter", "Finished jobs whose kind and model matched no entry "
                 "of pricing.file in effect at their finished time (their cost is in no total).",
                 ("kind", "group", "model"), agg.unpriced)


class ApiCollector(FamilyCollector):
    """How the exporter's requests to the API fare. Exposition, for example:

        distribute_api_requests_total{code="200",kind="chat"} 1520.0
        distribute_api_requests_total{code="error",kind="chat"} 3.0
        distribute_api_request_errors_total{kind="chat",reason="timeout"} 3.0
        distribute_api_request_duration_seconds_bucket{kind="chat",le="0.1"} 1490.0
        distribute_up 1.0
        distribute_last_successful_poll_timestamp_seconds 1.7639e+09
    """

    def __init__(self, agg: ApiAggregates) -> None:
        self.agg = agg

    def version(self) -> int:
        return self.agg.version

    def families(self) -> Iterator[Family]:
        agg = self.agg
        yield Family("distribute_api_requests", "counter", "Result requests sent to the API, by HTTP status code "
                     "of the answer, or 'error' when no answer came.", ("kind", "code"), agg.requests)
        yield Family("distribute_api_request_errors", "counter", "Result requests that failed, by reason: "
                     "timeout, connect, unauthorized, rate_limited, http_4xx, http_5xx, invalid_body.",
                     ("kind", "reason"), agg.errors)
        yield Family("distribute_api_request_duration_seconds", "histogram", "Time from sending a result "
                     "request to having read its answer, in seconds.", ("kind",),
                     {(k,): h for k, h in agg.latency.items()})
        yield Family("distribute_up", "gauge", "1 when the last result request got a well-formed answer "
                     "(200 or 404), else 0.", (), {(): agg.up})
        if agg.last_success is not None:
            yield Family("distribute_last_successful_poll_timestamp_seconds", "gauge", "When (Unix time) a "
                         "result request last got a well-formed answer.", (), {(): agg.last_success})


class BuildInfoCollector(FamilyCollector):
    """Which build answers. Exposition:

        distribute_exporter_build_info{python_version="3.11.7",version="0.1.0"} 1.0
    """

    def version(self) -> int:
        return 0  # never changes while the process runs

    def families(self) -> Iterator[Family]:
        yield Family("distribute_exporter_build_info", "gauge", "Always 1; the labels say which build runs.",
                     ("version", "python_version"), {(__version__, platform.python_version()): 1})


class ExporterCollector(FamilyCollector):
    """The exporter's own state. Exposition, for example:

        distribute_config_last_reload_successful 1.0
        distribute_config_last_reload_success_timestamp_seconds 1.7639e+09
        distribute_exporter_poll_loop_restarts_total 0.0
        distribute_exporter_polls_total 1523.0
        distribute_exporter_tracked_jobs{state="polled"} 120.0
    """

    def __init__(self, status: "ExporterStatus") -> None:
        self.status = status

    def families(self) -> Iterator[Family]:
        s = self.status
        polled, closed = s.tracked()
        yield Family("distribute_config_last_reload_successful", "gauge",
                     "1 when the last load of the config file succeeded, else 0.", (), {(): 1 if s.reload_ok else 0})
        yield Family("distribute_config_last_reload_success_timestamp_seconds", "gauge",
                     "When (Unix time) the config was last loaded successfully.", (), {(): s.reload_success_time})
        yield Family("distribute_exporter_poll_loop_restarts", "counter",
                     "Poll loop tasks that died and were restarted.", (), {(): s.poll_restarts()})
        yield Family("distribute_exporter_polls", "counter", "Result requests the poller made.", (), {(): s.polls()})
        yield Family("distribute_exporter_tracked_jobs", "gauge", "Tracked jobs: 'polled' are unfinished and in "
                     "memory, 'closed' are final and only in the state file.", ("state",),
                     {("polled",): polled, ("closed",): closed})
        yield Family("distribute_exporter_ids_file_invalid_lines", "counter",
                     "Lines of ids files that were not a UUID v4 and were skipped.", (), {(): s.invalid_id_lines})
        yield Family("distribute_exporter_state_write_errors", "counter",
                     "Batches the state file could not take (retried with the next batch).", (),
                     {(): s.state_write_errors})
        yield Family("distribute_exporter_http_connections_rejected", "counter",
                     "HTTP connections closed at once because web.max_connections were open.", (),
                     {(): s.connections_rejected})


class ExporterStatus:
    """Facts about the exporter itself that its collector reads; filled in by the app."""

    def __init__(self) -> None:
        self.reload_ok = False
        self.reload_success_time = 0.0
        self.invalid_id_lines = 0
        self.state_write_errors = 0
        self.connections_rejected = 0
        self.poll_restarts: Callable[[], int] = lambda: 0
        self.polls: Callable[[], int] = lambda: 0
        self.tracked: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def connection_rejected(self) -> None:
        self.connections_rejected += 1

    def reloaded(self, ok: bool) -> None:
        self.reload_ok = ok
        if ok:
            self.reload_success_time = time.time()


class Sampled:
    """Wraps a prometheus_client collector so that it is read at most once per `period` seconds.

    prometheus_client's process collector reads /proc files and lists the open descriptors at every
    scrape: half a scrape's CPU when fifty scrapers hammer /metrics. Its values need not be fresher
    than a second for a server scraped every 15 s. `version()` lets the renderer reuse the text (and
    its gzip) of an unchanged sample. With `period` infinite (the platform collector) it is read once.
    """

    def __init__(self, inner: object, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.period = period
        self.clock = clock
        self._taken = -float("inf")
        self._sample: list = []
        self._version = 0

    def version(self) -> int:
        now = self.clock()
        if now - self._taken >= self.period:
            self._sample = list(self.inner.collect())  # type: ignore[attr-defined]
            self._taken, self._version = now, self._version + 1
        return self._version

    def collect(self) -> Iterator:
        self.version()
        return iter(self._sample)
