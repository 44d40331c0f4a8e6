"""The running exporter: wires config -> id sources -> tracked jobs -> poller -> API client, and
state -> aggregates -> collectors -> HTTP (the proxy through proxying.py); owns start-up, reload and
shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from prometheus_client import PlatformCollector, ProcessCollector

from exporter import KINDS, __version__
from exporter.tracking.aggregates import ApiAggregates, JobAggregates
from exporter.polling.client import ApiClient, Transport, make_transport
from exporter.metrics.collectors import (ApiCollector, BuildInfoCollector, ExporterCollector, ExporterStatus,
                                         JobsCollector, Sampled)
from exporter.metrics.facts import MetricsFacts
from exporter.metrics.exposition import GzipParts, TextRenderer
from exporter.config import Config
from exporter.logs import MASK
from exporter.polling.health import ApiHealth
from exporter.polling.poller import Poller
from exporter.polling.ratelimit import RateLimiter
from exporter.sources.registration import Registrar
from exporter.sources.registration import routes as registration_routes
from exporter.sources.sync import ConfigSources
from exporter.app.proxy_listener import listen_url
from exporter.app.proxying import ProxyWiring
from exporter.metrics.traces import TracesCollector
from exporter.tracking.trace_owed import TraceStats
from exporter.tracking.trace_queue import SqliteOwedTraces
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.store import StateStore
from exporter.http.server import Site, build_web_app
from exporter.app.reloading import read_again
from exporter.app.web_listener import start_web
from exporter.http.jobs_api import JobsReader
from exporter.http.jobs_api import routes as jobs_routes
from exporter.tracking import queries
from exporter.tracking.queries import JobQuery
from exporter.tracking.timeline import SAMPLE_SECONDS, Timeline
from exporter.http.guard import Guard, middleware

log = logging.getLogger("distribute.exporter")

API_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RETENTION_SWEEP_SECONDS = 10.0  # an indexed range query: cheap when nothing is due
PROCESS_SAMPLE_SECONDS = 1.0  # process_* metrics: read /proc at most this often

TransportFactory = Callable[[Config], Transport]


def default_transport(config: Config) -> Transport:
    api = config.api
    return make_transport(api.http_client, api.timeout_seconds, api.max_concurrency, api.max_response_bytes)


class Exporter:
    def __init__(self, config: Config, config_path: str | None = None, listen: str | None = None,
                 transport_factory: TransportFactory = default_transport,
                 web_config: str | None = None,
                 proxy_listen: str | None = None, external_url: str | None = None) -> None:
        self.config = config
        self.external_url_flag = external_url
        web_file = web_config or (str(config.resolve(config.web.config_file)) if config.web.config_file else None)
        self.guard = Guard(Path(web_file) if web_file else None)  # WebConfigError: refuse to start
        self.config_path = config_path
        self.listen = listen or config.web.listen_address
        self.transport_factory = transport_factory
        self.ready = False
        self.status = ExporterStatus()
        self.status.reloaded(True)
        # state.path is relative to the working directory (the container's volume), unlike the
        # paths that point at inputs next to the config file.
        self.store = StateStore(config.state.path)
        self.job_agg = JobAggregates(config.metrics.duration_buckets)
        self.api_agg = ApiAggregates(API_LATENCY_BUCKETS)
        self.jobs = TrackedJobs(self.store, self.job_agg)
        self.jobs.prices = config.prices
        self.jobs.deadline_seconds = config.metrics.job_deadline_seconds
        # tracing.endpoint: finished jobs owe a trace (kept in the state) that `traces` sends.
        self.tracing = config.tracing.endpoint is not None
        self.jobs.owe_traces = self.jobs.exemplars.traced = self.tracing
        self.trace_stats = TraceStats()
        self.traces: Any = None  # the TraceShipper, once started
        self.timeline = Timeline(self.job_agg, self.api_agg)
        self.limiter = RateLimiter(config.api.max_requests_per_second)
        self.client = self._make_client(config)
        self.health = ApiHealth(lambda: self.config.api.base_url, lambda: self.config.poll.interval_seconds,
                                lambda: self.config.poll.failing_reminder_seconds)
        self.poller = Poller(self.jobs, self.client, self.limiter, self.api_agg, config.poll,
                             config.api.max_concurrency, health=self.health)
        self.facts = MetricsFacts()  # SQLite: /metrics serves the job facts too
        self.renderer = TextRenderer()
        self.gzip_parts = GzipParts()
        self.sources = ConfigSources(self.jobs, self._invalid_id_line)
        self.proxying = ProxyWiring(proxy_listen or config.proxy.listen_address, self.jobs, self.poller,
                                    self.api_agg, lambda: self.config)
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self._retired_clients: list[ApiClient] = []
        self.port = 0
        MASK.set(self._secrets(config))

    # -- shape ---------------------------------------------------------------------------------------
    @staticmethod
    def _secrets(config: Config) -> list[str | None]:
        secrets = (config.api_key, config.registration_token, config.state_password,
                   *(v for _, v in config.tracing_headers))
        return [s.reveal() if s else None for s in secrets]

    def _make_client(self, config: Config) -> ApiClient:
        key = config.api_key.reveal() if config.api_key else None
        agent = f"distribute-exporter/{__version__}"
        return ApiClient(config.api.base_url, key, self.transport_factory(config), agent)

    # -- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the state, serve HTTP at once (not ready yet), load ids, then start polling."""
        await self.store.call(self.store.open)
        await self.store.call(self.store.separate_checkpoints)
        self._register_collectors()
        await self._serve()
        await self.jobs.load()
        if self.config.prices is not None:  # only the status page's spend today reads it: a scan of today's jobs
            now = time.time()
            today = self.job_agg.spend_today
            today.restore(await self.store.call(self.store.spend_since, today.start_of_day(now)), now)
        if self.tracing:
            from exporter.tracking.trace_export import TraceShipper  # needs the otel extra
            self.traces = TraceShipper(SqliteOwedTraces(self.store), self.config, self.trace_stats)
            self.proxying.note_create = self.traces.notes.add
        self._declare_series(self.config)
        self.poller.schedule_all()
        await self.sources.sync(self.config, initial=True)
        await self.proxying.start(self.facts.everything, self.guard.ssl_context)
        # What start-up loaded lives long: keep full collections from scanning it over and over (a
        # million jobs take a quarter of a second per scan). Refcounting still frees finished jobs.
        gc.freeze()
        # Ready before the new ids are in the state file: they are still in the config and the
        # files they came from, and the flusher writes them in the background.
        self.ready = True
        for name, coro in (("poller", self.poller.run()), ("flusher", self._flush_loop()),
                           ("web-config", self.guard.watch()),
                           ("files", self._files_loop()), ("retention", self._retention_loop()),
                           ("timeline", self._timeline_loop()),
                           ("proxy-observer", self.proxying.tracking.run()),
                           *((("traces", self.traces.run()),) if self.traces else ())):
            self._tasks.append(asyncio.create_task(coro, name=name))
        log.info("ready: %d jobs polled, %d closed, listening on %s", len(self.jobs.open),
                 self.jobs.closed_total, self.url)

    @property
    def url(self) -> str:
        return listen_url(self.listen, self.guard.ssl_context is not None, self.port)

    @property
    def external_url(self) -> str:
        """Where users reach this exporter: --web.external-url, web.external_url, else the listen URL."""
        given = self.external_url_flag or self.config.web.external_url
        return (given or self.url).rstrip("/")

    async def _serve(self) -> None:
        limits = self.config.web
        site = Site(self.facts.everything, self.facts.jobs, self.renderer, self.gzip_parts, lambda: self.ready, self.reload,
                    self.overview, limits.max_request_body_bytes)
        registrar = Registrar(lambda: self.config.registration_token, self.jobs)
        reader = JobsReader(lambda query: queries.find(self.jobs, query), self.jobs.lookup)
        app = build_web_app(site, [middleware(self.guard, limits.request_timeout_seconds)],
                            [registration_routes(registrar), jobs_routes(reader)])
        self._runner, self.port = await start_web(app, limits, self.guard, self.listen,
                                                  self.status.connection_rejected)

    def _register_collectors(self) -> None:
        s = self.status
        s.poll_restarts = lambda: self.poller.restarts
        s.polls = lambda: self.poller.polls
        s.tracked = lambda: (len(self.jobs.open), self.jobs.closed_total)
        s.external_url = lambda: self.external_url
        facts = self.facts
        facts.add_job_facts(JobsCollector(self.job_agg, self.jobs.is_current, self.jobs.exemplars))
        facts.add_process_facts(ApiCollector(self.api_agg))
        facts.add_to_both(BuildInfoCollector())
        facts.add_process_facts(ExporterCollector(s))
        facts.add_process_facts(Sampled(ProcessCollector(registry=None), PROCESS_SAMPLE_SECONDS))
        facts.add_process_facts(Sampled(PlatformCollector(registry=None), float("inf")))
        if self.tracing:
            facts.add_process_facts(TracesCollector(self.trace_stats))

    def _declare_series(self, config: Config) -> None:
        for kind, group in config.groups():
            self.job_agg.declare_group(kind, group)
        for kind in KINDS:
            self.api_agg.declare_kind(kind)
        self.job_agg.pricing(config.prices.currency if config.prices else None, config.groups())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            await self.proxying.stop()
            await self.jobs.flush()
        finally:
            for client in [self.client, *self._retired_clients]:
                await client.close()
            if self.traces is not None:
                self.traces.close()
            if self._runner is not None:
                await self._runner.cleanup()
            await asyncio.get_running_loop().run_in_executor(None, self.store.shutdown)

    # -- background loops ------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.state.flush_interval_seconds)
            try:
                self.jobs.sweep_deadlines(time.time())  # its counts go with this flush
                await self.jobs.flush()
                await self.store.checkpoint()
            except Exception as exc:  # the disk is full or gone: keep the batch, say so, try again
                self.status.state_write_errors += 1
                log.error("cannot write the state file: %s", exc)

    async def _files_loop(self) -> None:
        while True:
            # A stat() per file: cheap enough to look every second, so appended ids show up at once.
            await asyncio.sleep(min(1.0, self.config.poll.interval_seconds / 2))
            try:
                await self.sources.scan_files(self.config)
            except Exception:
                log.exception("ids file scan failed")

    async def _retention_loop(self) -> None:
        while True:
            try:
                dropped = await self.jobs.retire_old(self.config.state.retention_seconds, time.time())
                if dropped:
                    log.info("retention dropped %d finished jobs older than %gs", dropped,
                             self.config.state.retention_seconds)
            except Exception as exc:
                log.error("retention sweep failed: %s", exc)
            # Short retentions (tests, small disks) are swept more often than once a minute.
            await asyncio.sleep(min(RETENTION_SWEEP_SECONDS, max(0.5, self.config.state.retention_seconds / 4)))

    async def _timeline_loop(self) -> None:
        while True:  # a sample of the aggregates (not of the jobs): microseconds, bounded memory
            self.timeline.sample(time.time())
            await asyncio.sleep(SAMPLE_SECONDS)

    def _invalid_id_line(self) -> None:
        self.status.invalid_id_lines += 1

    # -- reload ------------------------------------------------------------------------------------------
    async def reload(self) -> tuple[bool, str]:
        """Load the config file again; on any error keep the running config."""
        async with self._reload_lock:
            new, why = read_again(self.config_path, self.status)
            if new is None:
                return False, why
            try:
                self._apply(new)
                await self.sources.sync(new)
            except Exception as exc:  # a bug, not a bad file: say so, keep serving
                self.status.reloaded(False)
                log.exception("config reload failed unexpectedly")
                return False, f"reload failed: {type(exc).__name__}"
            self.status.reloaded(True)
            log.info("config reloaded from %s", self.config_path)
            return True, "config reloaded"

    def _apply(self, new: Config) -> None:
        old = self.config
        for key, what in ((("state", "path"), "state.path"), (("web", "listen_address"), "web.listen_address"),
                          (("proxy", "listen_address"), "proxy.listen_address"), (("tracing", "endpoint"), "tracing.endpoint")):
            if getattr(getattr(old, key[0]), key[1]) != getattr(getattr(new, key[0]), key[1]):
                log.warning("%s changed; that takes a restart", what)
        MASK.set(self._secrets(old) + self._secrets(new))
        if new.api != old.api or new.api_key != old.api_key:
            old_client = self.client
            self.client = self._make_client(new)
            self.poller.client = self.client
            self._retired_clients.append(old_client)
            asyncio.get_running_loop().call_later(30, self._close_retired, old_client)  # in-flight requests end first
            if new.api_key != old.api_key:
                self.poller.credentials_changed()
        self.limiter.reconfigure(new.api.max_requests_per_second)
        self.poller.config = new.poll
        self.jobs.prices = new.prices  # for jobs that finish from now on; what was counted stays
        self.jobs.deadline_seconds = new.metrics.job_deadline_seconds  # counted jobs stay counted
        self._declare_series(new)
        self.config = dataclasses.replace(new, state=old.state, tracing=old.tracing, tracing_headers=old.tracing_headers,
                                          web=dataclasses.replace(new.web, listen_address=old.web.listen_address))

    def _close_retired(self, client: ApiClient) -> None:
        if client in self._retired_clients:
            self._retired_clients.remove(client)
            asyncio.get_running_loop().create_task(client.close())

    def summary(self) -> dict[str, Any]:
        jobs: dict[str, Counter[str]] = {}
        for (kind, _group, _model, status), n in list(self.job_agg.jobs.items()):
            if n:
                jobs.setdefault(kind, Counter())[status] += n
        error = self.health.last_error
        return {"jobs": jobs, "up": self.api_agg.up, "last_success": self.api_agg.last_success,
                "base_url": self.config.api.base_url,
                "last_error": ({"reason": error.reason, "detail": error.detail, "at": error.at} if error else None),
                "down_since": self.health.down_since()}

    async def overview(self) -> dict[str, Any]:
        """What the status page shows: the summary, tracked ids per source, the last hour's
        samples, the jobs to look at first, spend today by group (with a price file) and the proxy's
        traffic (with the proxy on)."""
        now = time.time()
        hour_ago = now - 3600
        tables = {
            "oldest": JobQuery(unfinished=True, sort="created", limit=10),
            "slowest": JobQuery(unfinished=False, finished_after=hour_ago, sort="-duration", limit=10),
            "failed": JobQuery(statuses=("ERROR", "NOT_FOUND"), finished_after=hour_ago, limit=10),
        }
        found = {name: (await queries.find(self.jobs, q)).jobs for name, q in tables.items()}
        spend = self.job_agg.spend_today.snapshot(now) if self.config.prices else None
        return {**self.summary(), "sources": await self.sources.counts(), "tables": found,
                "samples": self.timeline.samples(now), "duration_bounds": self.job_agg.bounds,
                "sample_seconds": SAMPLE_SECONDS, "spend_today": spend, "proxy": self.proxying.overview()}
