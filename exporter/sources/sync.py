"""Keeping the tracked ids in step with the config: its inline `ids` lists and its `ids_file` globs.

At start and on every reload the config's ids are tracked and what it no longer lists is forgotten;
the files are scanned every second for appended or rewritten lines.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Protocol

from exporter.config import Config, expand_ids_file
from exporter.sources.files import IdsFileWatcher, source_name

log = logging.getLogger("distribute.exporter")

SOURCE_COUNTS_TTL = 15.0


class JobBook(Protocol):
    """What id sources may do with the tracked jobs."""

    async def track(self, ids: list[str], kind: str, group: str, source: str,
                    now: float) -> tuple[list[str], int]: ...
    async def untrack(self, job_id: str, now: float) -> bool: ...
    async def ids_from_source(self, source: str) -> set[str]: ...
    async def count_by_source(self) -> dict[str, int]: ...
    async def group_of(self, job_id: str) -> tuple[str, str] | None: ...


class ConfigSources:
    """The config's ids and ids files, tracked."""

    def __init__(self, jobs: JobBook, on_invalid_line: Callable[[], None]) -> None:
        self.jobs = jobs
        self.on_invalid_line = on_invalid_line
        self.watchers: dict[tuple[int, str], IdsFileWatcher] = {}
        self._source_counts: tuple[float, dict[str, int]] = (0.0, {})

    async def sync(self, config: Config, initial: bool = False) -> None:
        """Track the config's ids and files; forget what the config no longer lists."""
        now = time.time()
        wanted: set[str] = set()
        for group in config.jobs:
            wanted.update(group.ids)
            accepted, _ = await self.jobs.track(list(group.ids), group.kind, group.group, "config", now)
            if accepted and not initial:
                log.info("config added %d ids kind=%s group=%s", len(accepted), group.kind, group.group)
        keep = {(g.kind, g.group) for g in config.jobs if not g.forget_removed}
        dropped = 0
        for job_id in await self.jobs.ids_from_source("config") - wanted:
            if await self.jobs.group_of(job_id) not in keep:
                dropped += await self.jobs.untrack(job_id, now)
        if dropped:
            log.info("stopped tracking %d ids no longer in the config", dropped)
        await self.scan_files(config)

    async def scan_files(self, config: Config) -> None:
        now = time.time()
        for index, group in enumerate(config.jobs):
            if not group.ids_file:
                continue
            watcher = self.watchers.setdefault((index, group.ids_file), IdsFileWatcher())
            changes, gone = watcher.scan(expand_ids_file(config, group.ids_file))
            added = 0
            for change in changes:
                for bad in change.bad:
                    self.on_invalid_line()
                    log.warning("skipping invalid id file=%s line=%d text=%r", change.path, bad.line_no, bad.text)
                accepted, _ = await self.jobs.track(change.ids, group.kind, group.group, source_name(change.path), now)
                added += len(accepted)
                if change.complete and group.forget_removed:
                    await self._forget_missing(source_name(change.path), set(change.ids), now)
            if group.forget_removed:
                for path in gone:
                    await self._forget_missing(source_name(path), set(), now)
            if added:
                # Not flushed here: the file itself keeps these ids until the next batch does.
                log.info("ids files added %d ids kind=%s group=%s pattern=%s", added, group.kind,
                         group.group, group.ids_file)

    async def _forget_missing(self, source: str, present: set[str], now: float) -> None:
        missing = await self.jobs.ids_from_source(source) - present
        for job_id in missing:
            await self.jobs.untrack(job_id, now)
        if missing:
            log.info("stopped tracking %d ids removed from %s", len(missing), source[5:])

    async def counts(self) -> dict[str, int]:
        """Tracked jobs per source kind (config, file, api, ...), cached for a few seconds."""
        stamp, counts = self._source_counts
        if time.monotonic() - stamp > SOURCE_COUNTS_TTL:
            total: Counter[str] = Counter()
            for source, n in (await self.jobs.count_by_source()).items():
                total[source.split(":", 1)[0]] += n
            counts = dict(total)
            self._source_counts = (time.monotonic(), counts)
        return counts
