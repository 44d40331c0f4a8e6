"""The job facts cache of a replica on PostgreSQL (app/shared_facts.py): kept fresh in the background
while asked for, so that a scrape does not wait for the database; quiet when nobody asks."""

from __future__ import annotations

import asyncio
import time

import pytest

from exporter.app import shared_facts
from exporter.tracking.aggregates import JobAggregates


class SlowStore:
    """A store whose reads count themselves and can be held."""

    def __init__(self) -> None:
        self.reads = 0
        self.open = asyncio.Event()
        self.open.set()
        self.fail = False

    async def facts(self, max_age: float | None = None) -> JobAggregates:
        await self.open.wait()
        if self.fail:
            raise ConnectionError("database away")
        self.reads += 1
        agg = JobAggregates((1.0,))
        agg.version = self.reads
        return agg


async def _until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(shared_facts, "FACTS_CACHE_SECONDS", 0.1)
    monkeypatch.setattr(shared_facts, "FRESH_SECONDS", 5.0)
    monkeypatch.setattr(shared_facts, "ACTIVE_SECONDS", 0.6)


def test_scrapes_do_not_wait_for_a_slow_read(quick) -> None:
    async def main() -> None:
        cache, store = shared_facts.FactsCache(), SlowStore()
        cache.store = store  # type: ignore[assignment]
        first = await cache.get()
        assert first is not None and store.reads == 1
        # Read again in the background while asked for, without any scrape waiting for it.
        await _until(lambda: store.reads >= 3, 5, "background reads")
        assert cache.last is not None and cache.last.version >= 3
        store.open.clear()  # the database stalls: scrapes still answer at once, from the kept answer
        kept = cache.last
        started = time.monotonic()
        for _ in range(5):
            assert await asyncio.wait_for(cache.get(), 1.0) is kept
        assert time.monotonic() - started < 1.0
        store.open.set()
        await _until(lambda: cache.last is not kept, 5, "a new answer once the database answers")
        await cache.close()
    asyncio.run(main())


def test_no_reads_when_nobody_asks(quick) -> None:
    async def main() -> None:
        cache, store = shared_facts.FactsCache(), SlowStore()
        cache.store = store  # type: ignore[assignment]
        await cache.get()
        await _until(lambda: cache._refresher is not None and cache._refresher.done(), 5,
                     "the background reads stop after ACTIVE_SECONDS without a scrape")
        reads = store.reads
        assert reads >= 2
        await asyncio.sleep(0.3)
        assert store.reads == reads
        # An asker that does not come again (the timeline sample) starts no background reads.
        cache._at = 0.0
        await cache.get(keep_warm=False)
        await asyncio.sleep(0.3)
        assert store.reads == reads + 1
        assert cache._refresher.done()
        await cache.close()
    asyncio.run(main())


def test_an_old_answer_waits_for_a_read_and_failures_keep_the_last(quick, monkeypatch) -> None:
    monkeypatch.setattr(shared_facts, "FRESH_SECONDS", 0.05)
    async def main() -> None:
        cache, store = shared_facts.FactsCache(), SlowStore()
        cache.store = store  # type: ignore[assignment]
        await cache.get(keep_warm=False)
        await asyncio.sleep(0.1)
        fresh = await cache.get(keep_warm=False)  # older than FRESH_SECONDS: a new read, waited for
        assert fresh is not None and fresh.version == 2
        store.fail = True
        await asyncio.sleep(0.1)
        assert await cache.get(keep_warm=False) is fresh  # the database away: the last answer
        await cache.close()
    asyncio.run(main())


def test_a_new_answer_is_prepared_before_anyone_gets_it(quick) -> None:
    async def main() -> None:
        cache, store = shared_facts.FactsCache(), SlowStore()
        cache.store = store  # type: ignore[assignment]
        prepared: list[tuple[int, int]] = []
        gate = asyncio.Event()

        async def prepare(agg: JobAggregates, generation: int) -> None:
            prepared.append((agg.version, generation))
            await gate.wait()
            if agg.version == 3:
                raise RuntimeError("render failed")

        cache.prepare = prepare
        first = await cache.get(keep_warm=False)  # the first answer is not prepared: it is awaited anyway
        assert first is not None and prepared == [] and cache.generation == 1
        reading = asyncio.ensure_future(cache._read())
        await _until(lambda: prepared == [(2, 2)], 5, "the second answer prepared as generation 2")
        assert cache.last is first and cache.generation == 1  # not handed out while it is prepared
        gate.set()
        await reading
        assert cache.last is not None and cache.last.version == 2 and cache.generation == 2
        await cache._read()  # a failed preparation still hands the answer out (the scrape renders it)
        assert cache.last.version == 3 and cache.generation == 3
        await cache.close()
    asyncio.run(main())
