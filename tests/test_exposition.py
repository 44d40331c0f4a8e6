"""The fast text renderer writes exactly what prometheus_client writes, through every kind of change."""

from __future__ import annotations

import gzip
import random
import subprocess

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest

from conftest import tool
from exporter.tracking.aggregates import ApiAggregates, JobAggregates
from exporter.metrics.collectors import ApiCollector, ExporterCollector, ExporterStatus, JobsCollector, Sampled
from exporter.metrics.exposition import GzipParts, TextRenderer, render_parts, render_registry


def build():
    jobs, api, status = JobAggregates((0.5, 1, 60)), ApiAggregates((0.1, 1.0)), ExporterStatus()
    registry = CollectorRegistry(auto_describe=False)
    for collector in (JobsCollector(jobs, lambda job_id, created: True), ApiCollector(api), ExporterCollector(status)):
        registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry, jobs, api


def mutate(rng: random.Random, jobs: JobAggregates, api: ApiAggregates) -> None:
    kind = rng.choice(["chat", "images", "speech"])
    labels = (kind, rng.choice(["a", 'we"ird\\grp\n']), rng.choice(["", "m1", "m2"]), rng.choice(["QUEUED", "COMPLETED", "ERROR"]))
    step = rng.randrange(5)
    if step == 0:
        jobs.move(None, labels)
    elif step == 1:
        jobs.record_finished(labels, rng.uniform(0, 100), rng.randrange(50), rng.randrange(50), rng.randrange(3),
                             {"stop": 1}, rng.randrange(2))
    elif step == 2:
        jobs.note_unfinished(kind, "a", rng.uniform(1e9, 2e9), "id")
    elif step == 3:
        api.record(kind, rng.choice(["200", "404", "error"]), rng.uniform(0, 2), rng.choice([None, "timeout"]), 1e9)
    else:
        jobs.declare_group(kind, "new")


def test_fast_text_equals_generate_latest_after_every_change():
    registry, jobs, api = build()
    renderer = TextRenderer()
    rng = random.Random(5)
    for round_ in range(300):
        if round_ % 3:
            mutate(rng, jobs, api)
        fast = render_registry(registry, renderer).decode()
        slow = generate_latest(registry).decode()
        strip = lambda text: [l for l in text.splitlines() if not l.startswith(("process_", "python_"))]
        assert strip(fast) == strip(slow), round_


def test_gzip_members_decode_to_the_plain_text_and_promtool_accepts_it():
    registry, jobs, api = build()
    renderer, packer = TextRenderer(), GzipParts()
    rng = random.Random(9)
    for _ in range(50):
        mutate(rng, jobs, api)
        parts = render_parts(registry, renderer)
        assert gzip.decompress(packer.compress(parts)) == b"".join(b for _, b in parts)
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=render_registry(registry, renderer),
                           capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


class CountingCollector:
    """A prometheus_client-style collector whose value is how often it was read."""

    def __init__(self) -> None:
        self.reads = 0

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        self.reads += 1
        yield GaugeMetricFamily("reads", "times read", value=self.reads)


def test_a_sampled_collector_is_read_once_per_period_and_its_text_reused():
    now = [100.0]
    inner = CountingCollector()
    sampled = Sampled(inner, 1.0, clock=lambda: now[0])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(sampled)
    renderer = TextRenderer()
    first = render_parts(registry, renderer)
    now[0] += 0.5
    again = render_parts(registry, renderer)
    assert inner.reads == 1 and again[0][1] is first[0][1] and b"reads 1.0" in first[0][1]
    now[0] += 0.6
    later = render_registry(registry, renderer)
    assert inner.reads == 2 and b"reads 2.0" in later
    assert later == generate_latest(registry)  # the same sample through prometheus_client
    assert inner.reads == 2


def test_a_chunked_collector_writes_the_same_text_and_rewrites_only_changed_chunks():
    """SharedJobsCollector's parts (metrics/shared_state.py): byte for byte prometheus_client's text
    after every change; an unchanged chunk keeps its bytes and gzip member, a changed one does not."""
    from exporter.metrics.shared_state import SharedJobsCollector

    jobs, api = JobAggregates((0.5, 1, 60)), ApiAggregates((0.1,))
    generation = [0]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedJobsCollector(lambda: jobs, lambda: generation[0]))
    renderer, packer = TextRenderer(), GzipParts()
    rng = random.Random(11)
    for kind in ("chat", "images", "speech"):
        for group in range(40):  # enough series for many chunks
            jobs.record_finished((kind, f"g{group}", "m", "COMPLETED"), rng.uniform(0, 100), 1, 1, 1, {}, 0)
    for round_ in range(60):
        before = {key: body for key, body in render_parts(registry, renderer) if key is not None}
        mutate(rng, jobs, api)
        generation[0] += 1
        parts = render_parts(registry, renderer)
        assert len(parts) >= 20
        assert b"".join(b for _, b in parts).decode() == generate_latest(registry).decode(), round_
        assert gzip.decompress(packer.compress(parts)) == b"".join(b for _, b in parts)
        kept = [key for key, body in parts if key in before and before[key] is body]
        # One change touches a chunk in each family it changes (a job finishing: up to seven), not the rest.
        assert len(parts) - len(kept) <= 7, round_


def test_render_ahead_prepares_the_next_version_without_holding_the_loop():
    """exposition.render_ahead: the parts (and gzip members) of the next version are made a slice at a
    time, with the event loop free in between; the scrape that sees that version then renders
    nothing, and its text is byte for byte prometheus_client's."""
    import asyncio

    from exporter.metrics.exposition import render_ahead
    from exporter.metrics.shared_state import SharedJobsCollector

    rng = random.Random(5)
    current, generation = [JobAggregates((0.5, 1, 60))], [0]
    for kind in ("chat", "images", "speech"):
        for group in range(400):
            current[0].record_finished((kind, f"g{group}", "m", "COMPLETED"), rng.uniform(0, 100), 1, 1, 1, {}, 0)
    collector = SharedJobsCollector(lambda: current[0], lambda: generation[0])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    renderer, packer = TextRenderer(), GzipParts()
    old_text = b"".join(b for _, b in render_parts(registry, renderer))

    following = JobAggregates((0.5, 1, 60))  # the next read: some values changed
    for kind in ("chat", "images", "speech"):
        for group in range(400):
            following.record_finished((kind, f"g{group}", "m", "COMPLETED"), rng.uniform(0, 100), 1, 1, 1, {}, 0)

    async def ahead() -> tuple[int, list[bytes]]:
        turns, seen = 0, []

        async def scraper() -> None:  # scrapes meanwhile: served from the version before
            nonlocal turns
            while True:
                turns += 1
                seen.append(b"".join(b for _, b in render_parts(registry, renderer)))
                await asyncio.sleep(0)

        task = asyncio.ensure_future(scraper())
        await render_ahead(renderer, packer, collector, 1, collector.families_of(following))
        task.cancel()
        return turns, seen

    turns, seen = asyncio.run(ahead())
    assert turns >= 3  # the loop ran other work between slices
    assert all(text == old_text for text in seen)  # nobody saw a half-made version
    current[0], generation[0] = following, 1

    def walked(*args, **kwargs):
        raise AssertionError("the scrape walked the series again")

    renderer.iter_chunks = walked  # type: ignore[method-assign]
    parts = render_parts(registry, renderer)
    text = b"".join(b for _, b in parts)
    assert text.decode() == generate_latest(registry).decode() and text != old_text
    members = packer._members
    assert all(packer._members[key[0]][0] == key for key, _ in parts if key is not None)  # compressed ahead too
    assert gzip.decompress(packer.compress(parts)) == text and packer._members is members
