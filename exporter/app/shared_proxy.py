"""The pass-through proxy of a replica sharing PostgreSQL.

A create is committed to the database before its answer goes back; creates arriving together share
one statement and commit. If the commit has not succeeded within COMMIT_WAIT_SECONDS (the database
is slow or away), the create is appended to the local create journal (kill -9 safe once written),
counted in `commit_late`, and the answer goes back; the journal is replayed into the database as
soon as it answers again (and at start). Result answers the application got are applied with the
store's guarded statements: a final one is counted once whichever replica or proxy sees it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from exporter.api.results import InvalidBody, parse_result
from exporter.app.proxy_listener import COMMIT_WAIT_SECONDS, ProxyListener
from exporter.config import Config
from exporter.metrics.proxy import ProxyStats
from exporter.polling.shared_poller import DatabaseHealth
from exporter.sources.proxy import ProxyHooks
from exporter.tracking.aggregates import ApiAggregates
from exporter.tracking.contract import Applied
from exporter.tracking.create_journal import CreateJournal, Entry
from exporter.tracking.finishing import is_final
from exporter.tracking.pg.store import PgJobStore
from exporter.tracking.proxied import SOURCE, GroupCommit

log = logging.getLogger("distribute.proxy")

REPLAY_SECONDS = 2.0
# Commits of proxied creates that may run at once (each on a session of the replica's pool of 8): a
# create that arrives while one commits starts its own rather than waiting for that one to end.
PARALLEL_COMMITS = 4
OBSERVED_QUEUE = 10_000  # answers waiting to be applied; past it they are dropped (the poller sees them)

Row = tuple[str, str, str, str, str]  # id, kind, group, source, model


class SharedProxy:
    def __init__(self, listen: str | None, config: Config, current: Callable[[], Config], api: ApiAggregates) -> None:
        self.current = current
        self.api = api
        self.stats = ProxyStats()
        self.listener = ProxyListener(listen, self.stats, current)
        self.journal = CreateJournal(config.state.path)
        self.store: PgJobStore | None = None
        self.health: DatabaseHealth | None = None
        # With tracing on: keeps a create's requested model and traceparent for its trace (set by the app).
        self.note_create: Callable[[str, str | None, str | None], None] | None = None
        self._commit: GroupCommit[Row] = GroupCommit(self._write, "proxy-commit", PARALLEL_COMMITS)
        self._observed: asyncio.Queue[tuple[str, str, str, str | None, bytes]] = asyncio.Queue(OBSERVED_QUEUE)
        self._late = 0  # creates in the journal not yet in the database

    async def start(self, store: PgJobStore, health: DatabaseHealth, registry: CollectorRegistry,
                    ssl_context: Any) -> None:
        self.store, self.health = store, health
        await self._replay(startup=True)  # what a crash or an outage left in the journal, first
        await self.listener.start(ProxyHooks(self.created, self.observed, self.note_create), registry, ssl_context)

    def tasks(self) -> list[tuple[str, Any]]:
        return [("proxy-replay", self._replay_loop()), ("proxy-observer", self._observe_loop())]

    async def stop(self) -> None:
        await self.listener.stop()
        self.journal.close()

    # -- creates -------------------------------------------------------------------------------------
    async def _write(self, rows: list[Row]) -> None:
        assert self.store is not None
        await self.store.register_many(rows, self.current().poll.interval_seconds)

    async def created(self, job_id: str, kind: str, group: str, model: str | None) -> None:
        row = (job_id, kind, group, SOURCE, model or "")
        task = asyncio.ensure_future(self._commit.add(row))
        try:
            await asyncio.wait_for(asyncio.shield(task), COMMIT_WAIT_SECONDS)
            return
        except asyncio.TimeoutError:
            task.add_done_callback(_quiet)
        except Exception as exc:
            if self.health is not None:
                self.health.failed(exc)
        # Not in the database in time: the journal has it before the answer goes back.
        self.stats.error("commit_late")
        now = time.time()
        try:
            self.journal.append(Entry(job_id, kind, group, SOURCE, model or "", now,
                                      now + self.current().poll.interval_seconds))
            self._late += 1
        except OSError as exc:
            log.error("proxied create neither in the database nor in the journal job_id=%s: %s", job_id, exc)

    async def _replay(self, startup: bool = False) -> int:
        """Journaled creates into the database; the segments covered are deleted once committed
        (at start, those an earlier process left; later, those this one wrote up to now)."""
        segments = self.journal.segments()
        if not segments or self.store is None:
            return 0
        upto = self.journal.rotate()
        entries = self.journal.recover()
        if entries:
            await self.store.register_many([(e.id, e.kind, e.group, e.source, e.model) for e in entries],
                                           self.current().poll.interval_seconds)
        if startup:
            for _, path in segments:
                os.unlink(path)
        else:
            self.journal.retire(upto)
        self._late = 0
        if entries:
            log.warning("%d proxied create(s) taken from the create journal into the state database", len(entries))
        return len(entries)

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(REPLAY_SECONDS)
            try:
                await self._replay()
            except Exception as exc:
                log.debug("create journal replay deferred: %s", exc)

    # -- result answers ------------------------------------------------------------------------------
    def observed(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        try:
            self._observed.put_nowait((job_id, kind, group, model, body))
        except asyncio.QueueFull:
            self.stats.error("dropped")

    async def _observe_loop(self) -> None:
        while True:
            job_id, kind, group, model, body = await self._observed.get()
            try:
                await self._apply(job_id, kind, group, model, body)
            except InvalidBody:
                self.stats.error("observe")
            except Exception as exc:  # the database is away: the job's own polls will see it
                if self.health is not None:
                    self.health.failed(exc)

    async def _apply(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        assert self.store is not None
        result = parse_result(body, kind)
        interval = self.current().poll.interval_seconds
        if is_final(result.status):
            if await self.store.apply_final(job_id, result) is Applied.UNKNOWN:
                await self.store.register([job_id], kind, group, SOURCE, model or "", interval)
                await self.store.apply_final(job_id, result)
        else:
            await self.store.defer(job_id, interval)
        self.stats.observed_answer(kind)

    @property
    def url(self) -> str | None:
        return self.listener.url

    def overview(self) -> dict[str, Any] | None:
        """What the status page's proxy section shows (the answers of this replica's own polls beside
        those its proxy saw); None when the proxy is off."""
        return self.listener.overview(sum(n for (_kind, code), n in self.api.requests.items() if code == "200"))


def _quiet(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a late commit that failed is in the journal already
