"""Which metric families are job facts and which are process facts, and where each is served.

Job facts are everything derived from the jobs themselves (`distribute_jobs`, the finished counters,
the duration histogram, tokens, results, choices, tool calls, cost, unpriced, oldest unfinished): with
a shared database every replica can serve the same ones. Process facts are this process's own (its
API requests and latency, polls, proxy, rate limit, reloads, `process_*`). `/metrics/jobs` serves the
job facts, `/metrics` the process facts and, unless the state is shared, the job facts too. The build
info goes along on both, so that an alert joining on `(instance, job)` finds it beside either.

Whoever keeps the jobs supplies the job-fact collectors (`add_job_facts`): the in-process aggregates
with SQLite; a backend with shared state may supply collectors that read its database instead.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

# The sample names of the job facts, as one Prometheus regular expression: what the scrape of
# /metrics drops (prometheus/prometheus.yml and the other scrape configs carry this same text; a test
# holds them to it and to the families a real exporter serves on /metrics/jobs).
JOB_FACT_NAMES = ("distribute_(jobs|jobs_finished|job_duration_seconds|oldest_unfinished_job_created_timestamp_seconds"
                  "|tokens|results|chat_choices|chat_tool_calls|estimated_cost|unpriced_jobs)"
                  "(_total|_created|_bucket|_count|_sum)?")


class MetricsFacts:
    """The two registries the metric routes render: `everything` for /metrics, `jobs` for /metrics/jobs."""

    def __init__(self, shared_state: bool = False) -> None:
        self.shared_state = shared_state
        self.everything = CollectorRegistry(auto_describe=False)
        self.jobs = CollectorRegistry(auto_describe=False)

    def add_job_facts(self, collector: Collector) -> None:
        """Serve `collector` on /metrics/jobs, and on /metrics too while the state is this process's own."""
        self.jobs.register(collector)
        if not self.shared_state:
            self.everything.register(collector)

    def add_process_facts(self, collector: Collector) -> None:
        """Serve `collector` on /metrics only."""
        self.everything.register(collector)

    def add_to_both(self, collector: Collector) -> None:
        """Serve `collector` on both routes (the build info)."""
        self.jobs.register(collector)
        self.everything.register(collector)
