"""Wiring of the pass-through proxy with SQLite: the hooks its listener (proxy_listener.py) calls,
and the bound on a create's commit."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry

from exporter.app.proxy_listener import COMMIT_WAIT_SECONDS, ProxyListener
from exporter.config import Config
from exporter.metrics.proxy import ProxyStats
from exporter.polling.poller import Poller
from exporter.sources.proxy import ProxyHooks
from exporter.sources.proxy_observe import ProxyTracking
from exporter.tracking.aggregates import ApiAggregates
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.proxied import ProxiedJobs

log = logging.getLogger("distribute.exporter")


class ProxyWiring:
    def __init__(self, listen: str | None, jobs: TrackedJobs, poller: Poller, api_agg: ApiAggregates,
                 current: Callable[[], Config]) -> None:
        self.listen = listen
        self.current = current
        self.api_agg = api_agg
        self.stats = ProxyStats()
        self.tracking = ProxyTracking(ProxiedJobs(jobs, lambda: current().proxy.fsync_creates), poller.defer,
                                      self.stats, current)
        self.listener = ProxyListener(listen, self.stats, current)
        # With tracing on: keeps a create's requested model and traceparent for its trace (set by the wiring).
        self.note_create: Callable[[str, str | None, str | None], None] | None = None

    async def start(self, registry: CollectorRegistry, ssl_context: Any) -> None:
        """The listener (when set): after the state is loaded, so that the first create can be stored."""
        await self.listener.start(ProxyHooks(self.created, self.observed, self.note_create), registry, ssl_context)

    async def stop(self) -> None:
        await self.listener.stop()  # in-flight requests finish first, then their answers are applied
        await self.tracking.drain()

    async def created(self, job_id: str, kind: str, group: str, model: str | None) -> None:
        if not self.tracking.created_now(job_id, kind, group, model):  # stored at once, unless an fsync is due
            await self._bounded(self.tracking.synced(job_id, kind), job_id)

    async def _bounded(self, commit: Awaitable[None], job_id: str) -> None:
        """Wait for `commit` at most COMMIT_WAIT_SECONDS; it goes on (shielded) when the wait ends."""
        task = asyncio.ensure_future(commit)
        try:
            await asyncio.wait_for(asyncio.shield(task), COMMIT_WAIT_SECONDS)
        except asyncio.TimeoutError:
            self.stats.error("commit_late")
            log.warning("proxied create answered before its commit (over %gs) job_id=%s", COMMIT_WAIT_SECONDS,
                        job_id)

    def observed(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        self.tracking.observed(job_id, kind, group, model, body)

    @property
    def url(self) -> str | None:
        return self.listener.url

    def overview(self) -> dict[str, Any] | None:
        """What the status page's proxy section shows; None when the proxy is off."""
        return self.listener.overview(sum(n for (_kind, code), n in self.api_agg.requests.items() if code == "200"))
