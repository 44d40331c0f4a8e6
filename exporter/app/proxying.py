"""Wiring of the pass-through proxy: its listener, the hooks it calls, and what the status page shows
of it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.config.addresses import parse_listen_address
from exporter.metrics.proxy import ProxyCollector, ProxyStats
from exporter.polling.poller import Poller
from exporter.sources.proxy import Proxy, ProxyHooks
from exporter.sources.proxy_observe import ProxyTracking
from exporter.tracking.aggregates import ApiAggregates
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.proxied import ProxiedJobs

log = logging.getLogger("distribute.exporter")

# The longest a create's answer waits for its commit. A commit takes milliseconds; this bounds what a
# stalled disk (or a lock held by another process) could do to the application, which would time out
# and create the job again at the API. Past it the answer goes back and the commit finishes later.
COMMIT_WAIT_SECONDS = 5.0


def listen_url(listen: str, tls: bool, port: int) -> str:
    """The URL a listener on `listen` is reached at (a wildcard host shown as 127.0.0.1)."""
    host, _ = parse_listen_address(listen)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


class ProxyWiring:
    def __init__(self, listen: str | None, jobs: TrackedJobs, poller: Poller, api_agg: ApiAggregates,
                 current: Callable[[], Config]) -> None:
        self.listen = listen
        self.current = current
        self.api_agg = api_agg
        self.stats = ProxyStats()
        self.tracking = ProxyTracking(ProxiedJobs(jobs, lambda: current().proxy.fsync_creates), poller.defer,
                                      self.stats, current)
        self.proxy: Proxy | None = None
        # With tracing on: keeps a create's requested model and traceparent for its trace (set by the wiring).
        self.note_create: Callable[[str, str | None, str | None], None] | None = None
        self._tls = False

    async def start(self, registry: CollectorRegistry, ssl_context: Any) -> None:
        """The listener, when proxy.listen_address (or its flag) is set: after the state is loaded, so
        that the first create can be stored; TLS as the web config says, nothing else of it."""
        if not self.listen:
            return
        host, port = parse_listen_address(self.listen)
        registry.register(ProxyCollector(self.stats))
        config = self.current()
        self.proxy = Proxy(ProxyHooks(self.created, self.observed, self.note_create), self.stats, lambda: self.current().proxy,
                           lambda: self.current().api.base_url, config.api.max_response_bytes)
        self._tls = ssl_context is not None
        try:
            await self.proxy.start(host, port, ssl_context)
        except OSError as exc:  # in use, or not an address of this host: say which listener
            raise OSError(exc.errno, f"proxy listen address {self.listen}: {exc.strerror or exc}") from None
        log.info("proxy listening on %s, forwarding to %s", self.url, config.api.base_url)

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()  # in-flight requests finish first, then their answers are applied
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
        if self.proxy is None or not self.listen:
            return None
        return listen_url(self.listen, self._tls, self.proxy.port)

    def overview(self) -> dict[str, Any] | None:
        """What the status page's proxy section shows; None when the proxy is off."""
        if self.proxy is None:
            return None
        stats = self.stats
        observed = sum(stats.observed.values())
        own = sum(n for (_kind, code), n in self.api_agg.requests.items() if code == "200")
        failed = sum(n for (_e, code), n in stats.requests.items() if code in ("502", "504"))
        return {"url": self.url, "requests": {e: stats.total(e) for e in ("create", "result", "other")},
                "failed": failed, "observed": observed, "own_answers": own,
                "share_from_proxy": observed / (observed + own) if observed + own else None,
                "errors": {r: n for (r,), n in stats.errors.items() if n}}
