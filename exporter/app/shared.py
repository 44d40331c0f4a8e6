"""The running exporter when several replicas share PostgreSQL (`state.url`): stateless and
interchangeable. The database holds every job; this process holds claims in flight, its own
process facts (/metrics) and a short cache of the job facts (/metrics/jobs).

Start-up serves HTTP at once (alive, not ready), connects with back-off, migrates under the
advisory lock, stores the config's ids, then polls. Losing the database later pauses polling; the
HTTP side keeps answering and readiness says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import PlatformCollector, ProcessCollector

from exporter import KINDS, __version__
from exporter.app.exporter import API_LATENCY_BUCKETS, PROCESS_SAMPLE_SECONDS, TransportFactory, default_transport
from exporter.app.proxy_listener import listen_url
from exporter.app.database_answers import LateBook, from_database
from exporter.app.shared_facts import FactsCache
from exporter.app.shared_proxy import SharedProxy
from exporter.app.shared_status import SharedStatus
from exporter.config import Config
from exporter.http.guard import Guard, middleware
from exporter.http.jobs_api import JobsReader
from exporter.http.jobs_api import routes as jobs_routes
from exporter.http.server import Site, build_web_app
from exporter.app.reloading import read_again
from exporter.app.web_listener import start_web
from exporter.logs import MASK
from exporter.metrics.collectors import ApiCollector, BuildInfoCollector, ExporterCollector, ExporterStatus, Sampled
from exporter.metrics.facts import MetricsFacts
from exporter.metrics.traces import TracesCollector
from exporter.metrics.exposition import GzipParts, TextRenderer, render_ahead
from exporter.metrics.shared_state import SharedJobsCollector, SharedStateCollector, SharedStateView
from exporter.polling.client import ApiClient
from exporter.polling.health import ApiHealth
from exporter.polling.ratelimit import RateLimiter
from exporter.polling.shared_poller import DatabaseHealth, SharedPoller
from exporter.sources.registration import Registrar
from exporter.sources.registration import routes as registration_routes
from exporter.sources.sync import ConfigSources
from exporter.tracking.aggregates import ApiAggregates, JobAggregates
from exporter.tracking.pg import queries as pg_queries
from exporter.tracking.pg.book import SharedBook
from exporter.tracking.pg.connect import create_pool, create_pool_waiting, where
from exporter.tracking.pg.deadlines import SWEEP_SECONDS as DEADLINE_SWEEP_SECONDS
from exporter.tracking.pg.facts import GAUGES_SECONDS
from exporter.tracking.pg.schema import SchemaError
from exporter.tracking.pg.store import PgJobStore
from exporter.tracking.pg.traces import PgOwedTraces
from exporter.tracking.trace_owed import TraceStats
from exporter.tracking.queries import JobQuery
from exporter.tracking.store import StateError
from exporter.tracking.timeline import SAMPLE_SECONDS, take

log = logging.getLogger("distribute.exporter")

HEARTBEAT_SECONDS = 2.0
REPLICA_TTL_SECONDS = 10.0  # a replica not heard from for this long no longer takes a share
LEADER_TERM_SECONDS = 30.0
RETENTION_SWEEP_SECONDS = 10.0
class SharedExporter:
    def __init__(self, config: Config, config_path: str | None = None, listen: str | None = None,
                 transport_factory: TransportFactory = default_transport, web_config: str | None = None,
                 proxy_listen: str | None = None, external_url: str | None = None) -> None:
        assert config.state.url, "SharedExporter needs state.url"
        self.config = config
        self.external_url_flag = external_url
        self.config_path = config_path
        web_file = web_config or (str(config.resolve(config.web.config_file)) if config.web.config_file else None)
        self.guard = Guard(Path(web_file) if web_file else None)
        self.listen = listen or config.web.listen_address
        self.name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.status = ExporterStatus()
        self.status.reloaded(True)
        self.api_agg = ApiAggregates(API_LATENCY_BUCKETS)
        self.limiter = RateLimiter(config.api.max_requests_per_second)
        self.transport_factory = transport_factory
        self._reload_lock = asyncio.Lock()
        self.client = self._make_client(config)
        self.health = DatabaseHealth()
        self.api_health = ApiHealth(lambda: self.config.api.base_url, lambda: self.config.poll.interval_seconds,
                                    lambda: self.config.poll.failing_reminder_seconds)
        self.facts = FactsCache()
        # The status page's last hour and spend today: shared rows, the same page on every replica.
        self.status_figures = SharedStatus(self.api_agg, lambda: self.config.prices is not None)
        self.store: PgJobStore | None = None
        self.poller: SharedPoller | None = None
        self.replicas = 1
        self.started = False
        self.metrics = MetricsFacts(shared_state=True)  # /metrics: this process; /metrics/jobs: the database's
        self.renderer, self.gzip_parts = TextRenderer(), GzipParts()
        self.proxy = SharedProxy(proxy_listen or config.proxy.listen_address, config, lambda: self.config,
                                 self.api_agg)
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        # tracing.endpoint: a job made final by any replica or proxy owes a trace (pg/traces.py);
        # the replicas share the sending.
        self.trace_stats = TraceStats()
        self.traces: Any = None  # the TraceShipper, once the database answered
        MASK.set([s.reveal() if s else None for s in (config.api_key, config.registration_token,
                                                      config.state_password, *(v for _, v in config.tracing_headers))])

    @property
    def url(self) -> str:
        return listen_url(self.listen, self.guard.ssl_context is not None, self.port)

    @property
    def external_url(self) -> str:
        """Where users reach this exporter: --web.external-url, web.external_url, else the listen URL."""
        given = self.external_url_flag or self.config.web.external_url
        return (given or self.url).rstrip("/")

    def is_ready(self) -> bool:
        return self.started and self.health.up

    # -- life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Serve HTTP (alive, not ready), connect and migrate, store the config's ids, poll."""
        self._register_collectors()
        await self._serve()
        state = self.config.state
        password = self.config.state_password.reveal() if self.config.state_password else None
        pool = await create_pool_waiting(state.url, max_size=8, password=password)
        answers = await create_pool(state.url, max_size=self.config.api.max_concurrency + 2, password=password,
                                    relaxed=True)
        self.store = PgJobStore(pool, self.config.metrics.duration_buckets, self.config.prices, answers)
        try:
            await self.store.migrate()
        except SchemaError as exc:
            raise StateError(str(exc)) from None
        self.health.ok()
        self.facts.store = self.store
        self.status_figures.pool = pool
        self.store.deadline_seconds = self.config.metrics.job_deadline_seconds
        if self.config.tracing.endpoint is not None:
            from exporter.tracking.trace_export import TraceShipper  # needs the otel extra
            self.store.owe_traces = True
            self.traces = TraceShipper(PgOwedTraces(pool, self.name), self.config, self.trace_stats)
            self.proxy.note_create = self.traces.notes.add
        book = SharedBook(self.store)
        self.registrar_jobs.book = book
        self.sources = ConfigSources(book, self._invalid_id_line)
        await self.sources.sync(self.config, initial=True)
        lease = max(10.0, 2 * self.config.api.timeout_seconds + 5.0)
        self.poller = SharedPoller(self.store, self.client, self.limiter, self.api_agg, self.config.poll,
                                   self.config.api.max_concurrency, lease, self.health, self.api_health)
        await self.proxy.start(self.store, self.health, self.metrics.everything, self.guard.ssl_context)
        self.started = True
        for name, coro in (("poller", self.poller.run()), ("heartbeat", self._heartbeat_loop()),
                           ("retention", self._lead("retention", self._retention, self._retention_every)),
                           ("gauges", self._lead("gauges", self.store.refresh_gauges, lambda: GAUGES_SECONDS)),
                           ("deadlines", self._lead("deadlines", self.store.sweep_deadlines, lambda: DEADLINE_SWEEP_SECONDS)),
                           ("files", self._files_loop()),
                           ("web-config", self.guard.watch()),
                           ("timeline", self._lead("timeline", self._sample, lambda: SAMPLE_SECONDS)), *self.proxy.tasks(),
                           *((("traces", self.traces.run()),) if self.traces else ())):
            self._tasks.append(asyncio.create_task(coro, name=name))
        log.info("ready: replica %s on the state database %s, listening on %s", self.name, where(state.url), self.url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.proxy.stop()
        await self.facts.close()
        if self.traces is not None:
            self.traces.close()
        if self.store is not None:
            try:
                await asyncio.wait_for(self.store.leave(self.name), 1.0)
            except Exception:
                pass  # its heartbeat row expires by itself
            await self.store.answers.close()
            await self.store.pool.close()
        await self.client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def reload(self) -> tuple[bool, str]:
        """Load the config file again (SIGHUP, /-/reload); on any error keep the running config."""
        async with self._reload_lock:
            new, why = read_again(self.config_path, self.status)
            if new is None:
                return False, why
            self._apply(new)
            if self.poller is not None:
                try:
                    await self.sources.sync(self.config)
                except Exception as exc:  # the database is away: the config holds, its ids wait
                    self.status.reloaded(False)
                    log.error("config reloaded but its ids were not stored (the state database did not answer: "
                              "%s); reload again once it is back", type(exc).__name__)
                    return False, "reload failed: the state database did not answer"
            self.status.reloaded(True)
            log.info("config reloaded from %s", self.config_path)
            return True, "config reloaded"

    def _apply(self, new: Config) -> None:
        """What a reload changes in the running replica; what takes a restart is said so."""
        old = self.config
        for (section, key), what in ((("state", "url"), "state.url"), (("web", "listen_address"), "web.listen_address"),
                                     (("proxy", "listen_address"), "proxy.listen_address"),
                                     (("tracing", "endpoint"), "tracing.endpoint")):
            if getattr(getattr(old, section), key) != getattr(getattr(new, section), key):
                log.warning("%s changed; that takes a restart", what)
        MASK.set([s.reveal() if s else None for c in (old, new) for s in
                  (c.api_key, c.registration_token, c.state_password, *(v for _, v in c.tracing_headers))])
        if new.api != old.api or new.api_key != old.api_key:
            retired, self.client = self.client, self._make_client(new)
            if self.poller is not None:
                self.poller.client = self.client
            # in-flight requests end on the old client first
            asyncio.get_running_loop().call_later(30, lambda: asyncio.ensure_future(retired.close()))
            if new.api_key != old.api_key:
                self.limiter.resume()  # a pause after refused keys ends; refused jobs are due again by themselves
        if self.store is not None:
            self.store.prices = new.prices  # for jobs that finish from now on; what was counted stays
            self.store.deadline_seconds = new.metrics.job_deadline_seconds  # counted jobs stay counted
        if self.poller is not None:
            self.poller.config = new.poll
        self.limiter.reconfigure(new.api.max_requests_per_second / max(1, self.replicas))
        self.config = dataclasses.replace(new, state=old.state, state_password=old.state_password,
                                          tracing=old.tracing, tracing_headers=old.tracing_headers,
                                          web=dataclasses.replace(new.web, listen_address=old.web.listen_address))

    def _make_client(self, config: Config) -> ApiClient:
        key = config.api_key.reveal() if config.api_key else None
        return ApiClient(config.api.base_url, key, self.transport_factory(config),
                         f"distribute-exporter/{__version__} (replica {self.name})")

    # -- HTTP ----------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        limits = self.config.web
        site = Site(self.metrics.everything, self.metrics.jobs, self.renderer, self.gzip_parts, self.is_ready,
                    self.reload, self.overview, limits.max_request_body_bytes, refresh_jobs=self.facts.refresh)
        self.registrar_jobs = LateBook()
        registrar = Registrar(lambda: self.config.registration_token, self.registrar_jobs)
        reader = JobsReader(self._find, self._lookup)
        app = build_web_app(site, [middleware(self.guard, limits.request_timeout_seconds)],
                            [registration_routes(registrar), jobs_routes(reader)])
        self._runner, self.port = await start_web(app, limits, self.guard, self.listen,
                                                  self.status.connection_rejected)

    async def _find(self, query: JobQuery):
        if self.store is None:
            raise web.HTTPServiceUnavailable(text="the state database has not answered yet\n")
        return await from_database(pg_queries.find(self.store.pool, query))

    async def _lookup(self, job_id: str):
        if self.store is None:
            raise web.HTTPServiceUnavailable(text="the state database has not answered yet\n")
        return await from_database(self.store.get(job_id))

    async def overview(self) -> dict[str, Any]:
        agg = await self.facts.get()
        samples, spend = await self.status_figures.read()
        jobs: dict[str, dict[str, int]] = {}
        for (kind, _g, _m, status), n in (agg.jobs.items() if agg else ()):
            if n:
                jobs.setdefault(kind, {}).setdefault(status, 0)
                jobs[kind][status] += n
        now = time.time()
        tables: dict[str, list] = {"oldest": [], "slowest": [], "failed": []}
        sources: dict[str, int] = {}
        if self.store is not None:
            try:
                for name, q in (("oldest", JobQuery(unfinished=True, sort="created", limit=10)),
                                ("slowest", JobQuery(unfinished=False, finished_after=now - 3600,
                                                     sort="-duration", limit=10)),
                                ("failed", JobQuery(statuses=("ERROR", "NOT_FOUND"), finished_after=now - 3600,
                                                    limit=10))):
                    tables[name] = (await pg_queries.find(self.store.pool, q)).jobs
                sources = await self.store.sources()
            except Exception as exc:  # the page still shows what this replica knows
                log.debug("status page without the database's tables: %s", exc)
        error = self.api_health.last_error
        return {"jobs": jobs, "up": self.api_agg.up, "last_success": self.api_agg.last_success,
                "base_url": self.config.api.base_url,
                "last_error": ({"reason": error.reason, "detail": error.detail, "at": error.at} if error else None),
                "down_since": self.api_health.down_since(),
                "sources": sources, "tables": tables, "duration_bounds": tuple(self.config.metrics.duration_buckets),
                # The charts end at the newest shared sample, not at this replica's clock: the same
                # samples draw the same charts on every replica.
                "samples": samples or [take(JobAggregates(self.config.metrics.duration_buckets), self.api_agg, now)],
                "charts_at": samples[-1].at if samples else None, "samples_shared": True,
                "sample_seconds": SAMPLE_SECONDS, "spend_today": spend, "proxy": self.proxy.overview()}

    def _register_collectors(self) -> None:
        s = self.status
        s.poll_restarts = lambda: self.poller.restarts if self.poller else 0
        s.polls = lambda: self.poller.polls if self.poller else 0
        s.tracked = lambda: (self.poller.leases if self.poller else 0, 0)
        s.external_url = lambda: self.external_url
        for kind in KINDS:
            self.api_agg.declare_kind(kind)
        view = SharedStateView(lambda: self.health.up, lambda: self.health.errors,
                               lambda: self.poller.leases if self.poller else 0,
                               lambda: self.poller.stale if self.poller else 0, lambda: self.replicas)
        facts = self.metrics
        jobs = SharedJobsCollector(lambda: self.facts.last, lambda: self.facts.generation)
        facts.add_job_facts(jobs)
        # Each new read's text rendered and compressed ahead, a slice at a time, before scrapes see it.
        self.facts.prepare = lambda agg, generation: render_ahead(self.renderer, self.gzip_parts, jobs, generation,
                                                                  jobs.families_of(agg))
        facts.add_process_facts(ApiCollector(self.api_agg))
        facts.add_to_both(BuildInfoCollector())
        facts.add_process_facts(ExporterCollector(s))
        facts.add_process_facts(SharedStateCollector(view))
        facts.add_process_facts(Sampled(ProcessCollector(registry=None), PROCESS_SAMPLE_SECONDS))
        facts.add_process_facts(Sampled(PlatformCollector(registry=None), float("inf")))
        if self.config.tracing.endpoint is not None:
            facts.add_process_facts(TracesCollector(self.trace_stats))

    # -- background loops ------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        assert self.store is not None
        while True:
            try:
                self.replicas = max(1, await self.store.heartbeat(self.name, REPLICA_TTL_SECONDS))
                self.health.ok()
                self.limiter.reconfigure(self.config.api.max_requests_per_second / self.replicas)
                await self.status_figures.push_api()
            except Exception as exc:
                self.health.failed(exc)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _lead(self, task: str, work, every) -> None:
        """Run `work` every `every()` seconds while this replica holds the lead of `task` (a row with
        an expiry in the database: another replica takes over when this one stops renewing it)."""
        assert self.store is not None
        while True:
            try:
                if await self.store.lead(task, self.name, LEADER_TERM_SECONDS):
                    await work()
            except Exception as exc:
                log.debug("%s skipped: %s", task, exc)
            await asyncio.sleep(every())

    async def _retention(self) -> None:
        assert self.store is not None
        dropped = await self.store.retire_ended_before(self.config.state.retention_seconds)
        if dropped:
            log.info("retention dropped %d finished jobs older than %gs", dropped, self.config.state.retention_seconds)

    def _retention_every(self) -> float:
        # Short retentions (tests, small disks) are swept more often than every RETENTION_SWEEP_SECONDS.
        return min(RETENTION_SWEEP_SECONDS, max(0.5, self.config.state.retention_seconds / 4))

    async def _sample(self) -> None:
        await self.status_figures.sample(await self.facts.get(keep_warm=False))

    async def _files_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.poll.interval_seconds / 2))
            try:
                await self.sources.scan_files(self.config)
            except Exception as exc:
                log.debug("ids file scan deferred: %s", exc)

    def _invalid_id_line(self) -> None:
        self.status.invalid_id_lines += 1
