"""Custom collectors: each `collect()` builds fresh metric families from the aggregates at scrape time.

Nothing here walks the tracked jobs: a scrape costs time in proportion to the number of series.
"""

from __future__ import annotations

import platform
import time
from typing import Callable, Iterable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)
from prometheus_client.registry import Collector

from . import __version__
from .aggregates import ApiAggregates, Histogram, JobAggregates

_SOURCE = "from the answers of POST /async/<kind>/result"


def _histogram(name: str, doc: str, labelnames: list[str],
               series: Iterable[tuple[tuple[str, ...], Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labelnames)
    for labels, h in series:
        family.add_metric(list(labels), buckets=h.cumulative(), sum_value=h.total)
    return family


def _counter(name: str, doc: str, labelnames: list[str], series: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labelnames)
    for labels, value in series.items():
        family.add_metric(list(labels), value)
    return family


class JobsCollector(Collector):
    """What the tracked jobs are and what the finished ones produced. Exposition, for example:

        # HELP distribute_jobs Tracked jobs by current status ...
        # TYPE distribute_jobs gauge
        distribute_jobs{group="nightly",kind="chat",model="Llama-3.1 8B",status="COMPLETED"} 41.0
        # TYPE distribute_jobs_finished_total counter
        distribute_jobs_finished_total{group="nightly",kind="chat",model="Llama-3.1 8B",status="ERROR"} 2.0
        # TYPE distribute_job_duration_seconds histogram
        distribute_job_duration_seconds_bucket{group="nightly",kind="chat",le="0.5",model="...",status="COMPLETED"} 0.0
        distribute_job_duration_seconds_sum{...} 812.3
        distribute_job_duration_seconds_count{...} 41.0
        distribute_oldest_unfinished_job_created_timestamp_seconds{group="nightly",kind="chat"} 1.7639e+09
        distribute_tokens_total{group="nightly",model="Llama-3.1 8B",token_type="prompt"} 10234.0
        distribute_results_total{group="renders",kind="images",model="SDXL"} 12.0
        distribute_chat_choices_total{finish_reason="tool_calls",group="nightly",model="..."} 7.0
        distribute_chat_tool_calls_total{group="nightly",model="Llama-3.1 8B"} 11.0
    """

    def __init__(self, agg: JobAggregates, is_current: Callable[[str, float], bool]) -> None:
        self.agg = agg
        self.is_current = is_current

    def collect(self) -> Iterator[Metric]:
        agg = self.agg
        job_labels = ["kind", "group", "model", "status"]
        jobs = GaugeMetricFamily(
            "distribute_jobs", "Tracked jobs by current status " + _SOURCE + "; UNKNOWN: no answer yet, "
            "NOT_FOUND: 404 past poll.not_found_grace_seconds; model is empty while unknown.", labels=job_labels)
        for labels, n in list(agg.jobs.items()):
            jobs.add_metric(list(labels), n)
        yield jobs
        yield _counter("distribute_jobs_finished", "Jobs seen reaching COMPLETED or ERROR, each counted once, "
                       + _SOURCE + ".", job_labels, agg.finished)
        yield _histogram("distribute_job_duration_seconds", "finished - created of finished jobs, in seconds, "
                         + _SOURCE + ".", job_labels, list(agg.durations.items()))
        oldest = GaugeMetricFamily(
            "distribute_oldest_unfinished_job_created_timestamp_seconds",
            "created (Unix time) of the oldest tracked job not yet COMPLETED or ERROR, " + _SOURCE + ".",
            labels=["kind", "group"])
        for (kind, group), created in agg.oldest_unfinished(self.is_current).items():
            oldest.add_metric([kind, group], created)
        yield oldest
        yield _counter("distribute_tokens", "Tokens of finished chat jobs (usage.prompt_tokens and "
                       "usage.completion_tokens), " + _SOURCE + ".", ["group", "model", "token_type"], agg.tokens)
        yield _counter("distribute_results", "Result items (image or audio URLs) of finished jobs, "
                       + _SOURCE + ".", ["kind", "group", "model"], agg.results)
        yield _counter("distribute_chat_choices", "Choices of finished chat jobs by finish_reason, "
                       + _SOURCE + ".", ["group", "model", "finish_reason"], agg.choices)
        yield _counter("distribute_chat_tool_calls", "Tool calls in the choices of finished chat jobs, "
                       + _SOURCE + ".", ["group", "model"], agg.tool_calls)


class ApiCollector(Collector):
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

    def collect(self) -> Iterator[Metric]:
        agg = self.agg
        yield _counter("distribute_api_requests", "Result requests sent to the API, by HTTP status code "
                       "of the answer, or 'error' when no answer came.", ["kind", "code"], agg.requests)
        yield _counter("distribute_api_request_errors", "Result requests that failed, by reason: timeout, "
                       "connect, unauthorized, rate_limited, http_4xx, http_5xx, invalid_body.",
                       ["kind", "reason"], agg.errors)
        yield _histogram("distribute_api_request_duration_seconds", "Time from sending a result request "
                         "to having read its answer, in seconds.", ["kind"],
                         [((k,), h) for k, h in agg.latency.items()])
        yield GaugeMetricFamily("distribute_up", "1 when the last result request got a well-formed answer "
                                "(200 or 404), else 0.", value=agg.up)
        if agg.last_success is not None:
            yield GaugeMetricFamily("distribute_last_successful_poll_timestamp_seconds", "When (Unix time) a "
                                    "result request last got a well-formed answer.", value=agg.last_success)


class ExporterCollector(Collector):
    """The exporter's own state. Exposition, for example:

        distribute_exporter_build_info{python_version="3.11.7",version="0.1.0"} 1.0
        distribute_config_last_reload_successful 1.0
        distribute_config_last_reload_success_timestamp_seconds 1.7639e+09
        distribute_exporter_poll_loop_restarts_total 0.0
        distribute_exporter_polls_total 1523.0
        distribute_exporter_tracked_jobs{state="polled"} 120.0
        distribute_exporter_shard_info{count="1",index="0"} 1.0
    """

    def __init__(self, status: "ExporterStatus") -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status
        build = GaugeMetricFamily("distribute_exporter_build_info", "Always 1; the labels say which build runs.",
                                  labels=["version", "python_version"])
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        yield GaugeMetricFamily("distribute_config_last_reload_successful",
                                "1 when the last load of the config file succeeded, else 0.",
                                value=1 if s.reload_ok else 0)
        yield GaugeMetricFamily("distribute_config_last_reload_success_timestamp_seconds",
                                "When (Unix time) the config was last loaded successfully.",
                                value=s.reload_success_time)
        yield CounterMetricFamily("distribute_exporter_poll_loop_restarts",
                                  "Poll loop tasks that died and were restarted.", value=s.poll_restarts())
        yield CounterMetricFamily("distribute_exporter_polls", "Result requests the poller made.", value=s.polls())
        tracked = GaugeMetricFamily("distribute_exporter_tracked_jobs", "Tracked jobs: 'polled' are "
                                    "unfinished and in memory, 'closed' are final and only in the state file.",
                                    labels=["state"])
        polled, closed = s.tracked()
        tracked.add_metric(["polled"], polled)
        tracked.add_metric(["closed"], closed)
        yield tracked
        yield CounterMetricFamily("distribute_exporter_ids_file_invalid_lines",
                                  "Lines of ids files that were not a UUID v4 and were skipped.",
                                  value=s.invalid_id_lines)
        yield CounterMetricFamily("distribute_exporter_state_write_errors",
                                  "Batches the state file could not take (retried with the next batch).",
                                  value=s.state_write_errors)
        yield CounterMetricFamily("distribute_exporter_http_connections_rejected",
                                  "HTTP connections closed at once because web.max_connections were open.",
                                  value=s.connections_rejected)
        shard = GaugeMetricFamily("distribute_exporter_shard_info", "Always 1; which shard of the ids this "
                                  "replica tracks.", labels=["index", "count"])
        shard.add_metric([str(s.shard_index), str(s.shard_count)], 1)
        yield shard


class ExporterStatus:
    """Facts about the exporter itself that its collector reads; filled in by the app."""

    def __init__(self) -> None:
        self.reload_ok = False
        self.reload_success_time = 0.0
        self.invalid_id_lines = 0
        self.state_write_errors = 0
        self.connections_rejected = 0
        self.shard_index = 0
        self.shard_count = 1
        self.poll_restarts: Callable[[], int] = lambda: 0
        self.polls: Callable[[], int] = lambda: 0
        self.tracked: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def connection_rejected(self) -> None:
        self.connections_rejected += 1

    def reloaded(self, ok: bool) -> None:
        self.reload_ok = ok
        if ok:
            self.reload_success_time = time.time()
