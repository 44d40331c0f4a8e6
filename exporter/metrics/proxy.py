"""The proxy's own figures and the collector that renders them. Exposition, for example:

    distribute_proxy_requests_total{code="200",endpoint="result"} 5120.0
    distribute_proxy_requests_total{code="504",endpoint="create"} 1.0
    distribute_proxy_upstream_duration_seconds_bucket{endpoint="create",le="0.05"} 311.0
    distribute_proxy_observed_answers_total{kind="chat"} 5004.0
    distribute_proxy_errors_total{reason="connect"} 2.0
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

from exporter import KINDS
from exporter.metrics.families import Family, FamilyCollector
from exporter.tracking.aggregates import Histogram

ENDPOINTS = ("create", "result", "other")
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# connect/timeout: no answer (the application got 502/504); too_large: a request body over
# proxy.max_body_bytes (413); upstream_body: the upstream broke off mid-answer; client: the application
# hung up; observe: an answer the exporter could not use or apply; commit: a create not stored before
# its answer went back (the flush stores it later); commit_late: a create answered before its commit
# (COMMIT_WAIT_SECONDS); dropped: observations over the queue's bound.
ERROR_REASONS = ("connect", "timeout", "too_large", "upstream_body", "client", "observe", "commit", "commit_late",
                 "dropped")


class ProxyStats:
    """Counters the proxy bumps on its path: plain dictionary updates, no locks, no I/O."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.upstream = {e: Histogram(UPSTREAM_BUCKETS) for e in ENDPOINTS}
        self.observed: dict[tuple[str], int] = {(k,): 0 for k in KINDS}
        self.errors: dict[tuple[str], int] = {(r,): 0 for r in ERROR_REASONS}
        self.version = 0

    def answered(self, endpoint: str, code: str, seconds: float | None) -> None:
        self.version += 1
        self.requests[(endpoint, code)] += 1
        if seconds is not None:
            self.upstream[endpoint].observe(seconds)

    def error(self, reason: str) -> None:
        self.version += 1
        self.errors[(reason,)] = self.errors.get((reason,), 0) + 1

    def observed_answer(self, kind: str) -> None:
        self.version += 1
        self.observed[(kind,)] = self.observed.get((kind,), 0) + 1

    def total(self, endpoint: str | None = None) -> int:
        return sum(n for (e, _), n in self.requests.items() if endpoint in (None, e))


class ProxyCollector(FamilyCollector):
    def __init__(self, stats: ProxyStats) -> None:
        self.stats = stats

    def version(self) -> int:
        return self.stats.version

    def families(self) -> Iterator[Family]:
        s = self.stats
        yield Family("distribute_proxy_requests", "counter", "Requests the proxy forwarded, by endpoint (create, "
                     "result, other) and HTTP status code of the answer the application got (502/504: the "
                     "upstream was unreachable or too slow, 413: body over proxy.max_body_bytes, 'error': the "
                     "answer broke off).", ("endpoint", "code"), dict(s.requests))
        yield Family("distribute_proxy_upstream_duration_seconds", "histogram", "Time from receiving a request to "
                     "having the upstream's answer headers, in seconds, by endpoint.", ("endpoint",),
                     {(e,): h for e, h in s.upstream.items()})
        yield Family("distribute_proxy_observed_answers", "counter", "Result answers (200) the application fetched "
                     "through the proxy and the exporter applied, by kind.", ("kind",), dict(s.observed))
        yield Family("distribute_proxy_errors", "counter", "Failures on the proxy path by reason: connect, timeout, "
                     "too_large, upstream_body, client, observe, commit, commit_late, dropped (see README, Proxy).",
                     ("reason",), dict(s.errors))
