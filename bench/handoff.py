"""`handoff`: what routing by ownership costs. Two replicas (shards 0 and 1 of 2) with peers, each
with its proxy on, the project's simulator as their API; the application talks to replica 0 only.

- Added latency, registration route (`POST /api/v1/jobs`): requests at a fixed rate (500/s), one new
  id each: first only ids replica 0 owns (stored there; the baseline), then alternating between those
  and ids replica 1 owns (stored in replica 0's outbox in the same transaction, then delivered by its
  sender, which runs meanwhile). `added_p99_ms` compares the two classes of the second phase (same
  load, same moment: what an id of another shard costs over an own one); `sender_load_p99_ms` is
  p99(own ids, second phase) - p99(baseline): what the sender's work costs every request (phases
  apart in time: noisy).
- Added latency, proxied create (the issue's figure): creates at a fixed rate (500/s) through replica
  0's proxy; the simulator mints the ids, so each create is classed after its answer by the shard
  owning its id: replica 0's own (tracked there before the answer) or replica 1's (put in replica 0's
  outbox before the answer, delivered by the sender meanwhile). Both classes interleave at random
  in one run; `proxy_create_added_p99_ms` = p99(other shard's) - p99(own).
- Hand-offs per second one replica sustains: with the owner down, replica 0 takes `backlog` ids the
  owner owns (its outbox fills); the owner starts, and the entries delivered from the first
  delivery until replica 0's outbox is empty, over that time, give the rate.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

from bench.procs import Exporter, Simulator, free_port, metric, wait_for
from exporter.tracking.shard import owner

TOKEN = "bench-handoff-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
CREATE_BODY = json.dumps({"model": "Kokoro", "input": "hello", "voice": "nora"})
Figures = dict[str, float]


def _ids(count: int, shard: int, rng: random.Random) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if owner(job_id, 2) == shard:
            out.append(job_id)
    return out


def _config(api: str) -> str:
    # Polled rarely (the registered ids are unknown to the API): what is measured is the intake.
    return (f"api: {{base_url: '{api}', max_requests_per_second: 1}}\n"
            "poll: {interval_seconds: 3600, max_interval_seconds: 3600, not_found_grace_seconds: 36000}\n"
            "state: {path: state.db}\njobs: []\n")


def _replica(workdir: Path, index: int, ports: list[int], api: str, proxy_port: int) -> Exporter:
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    return Exporter(workdir / f"replica-{index}", _config(api), "--shard.index", str(index), "--shard.count", "2",
                    "--proxy.listen-address", f"127.0.0.1:{proxy_port}",
                    "--shard.peers", peers, port=ports[index],
                    env={"DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN": TOKEN})


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _paced(port: int, own: list[str], other: list[str], rate: float) -> dict[str, list[float]]:
    """One request per id at `rate` per second, own and other alternating; latencies in ms."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/api/v1/jobs"
    latencies: dict[str, list[float]] = {"own": [], "other": []}
    failures = 0

    async def one(session: aiohttp.ClientSession, cls: str, job_id: str) -> None:
        nonlocal failures
        started = time.perf_counter()
        async with session.post(url, json={"kind": "chat", "group": "bench", "ids": [job_id]},
                                headers=HEADERS) as answer:
            await answer.read()
            if answer.status != 202:
                failures += 1
        latencies[cls].append((time.perf_counter() - started) * 1000)

    plan = [("own", i) for i in own]
    if other:
        plan = [x for pair in zip(plan, [("other", i) for i in other]) for x in pair]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        await _at_rate(len(plan), rate, lambda n: one(session, *plan[n]))
    if failures:
        raise RuntimeError(f"{failures} registrations not accepted")
    return latencies


async def _at_rate(count: int, rate: float, send: Callable[[int], Awaitable[None]]) -> None:
    """Start send(0) .. send(count - 1) one every 1/rate s (not waiting for answers); wait for all."""
    tasks = []
    start = time.perf_counter()
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(n)))
    await asyncio.gather(*tasks)


async def _proxied_creates(port: int, count: int, rate: float) -> dict[str, list[float]]:
    """`count` creates at `rate` per second through the proxy on `port` (replica 0's), each classed
    after its answer by the shard owning the id the API minted; latencies in ms."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/async/speech/create"
    latencies: dict[str, list[float]] = {"own": [], "other": []}
    failures = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        started = time.perf_counter()
        async with session.post(url, data=CREATE_BODY, headers={"Content-Type": "application/json"}) as answer:
            body = await answer.read()
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status != 200:
            failures += 1
            return
        latencies["own" if owner(json.loads(body)["id"], 2) == 0 else "other"].append(elapsed)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        await _at_rate(count, rate, lambda n: one(session))
    if failures:
        raise RuntimeError(f"{failures} proxied creates not answered 200")
    return latencies


def handoff(workdir: Path, seconds: float = 10, rate: float = 500, backlog: int = 50_000) -> Figures:
    rng = random.Random(18)
    ports, proxy_ports = [free_port(), free_port()], [free_port(), free_port()]
    sim = Simulator()

    def replica(index: int) -> Exporter:
        return _replica(workdir, index, ports, sim.url, proxy_ports[index])

    here, owner_proc = replica(0), replica(1)
    try:
        here.wait_ready()
        owner_proc.wait_ready()
        per_class = int(seconds * rate / 2)
        # warm-up (connections, first pages of the state file), not measured
        asyncio.run(_paced(here.port, _ids(50, 0, rng), _ids(50, 1, rng), rate))
        # baseline: only ids this replica owns (no sender at work); then the two alternating
        alone = asyncio.run(_paced(here.port, _ids(2 * per_class, 0, rng), [], rate))["own"]
        lat = asyncio.run(_paced(here.port, _ids(per_class, 0, rng), _ids(per_class, 1, rng), rate))
        wait_for(lambda: metric(here.metrics(), "distribute_handoff_pending") == 0, 120, "outbox drained")
        asyncio.run(_proxied_creates(proxy_ports[0], 100, rate))  # warm-up of the proxy's connections
        creates = asyncio.run(_proxied_creates(proxy_ports[0], int(seconds * rate), rate))
        wait_for(lambda: metric(here.metrics(), "distribute_handoff_pending") == 0, 120, "outbox drained")

        owner_proc.stop()  # the owner is down: the outbox fills
        backlog_ids = _ids(backlog, 1, rng)
        for start in range(0, backlog, 2000):
            _post(here.port, backlog_ids[start:start + 2000])
        wait_for(lambda: metric(here.metrics(), "distribute_handoff_pending") >= backlog, 120, "backlog queued")
        owner_proc = replica(1)
        owner_proc.wait_ready()
        # From the first delivery on: the sender's back-off after the owner's absence is not its rate.
        wait_for(lambda: metric(owner_proc.metrics(), "distribute_handoff_total", 'outcome="received"') > 0, 120,
                 "first delivery", 0.01)
        started = time.monotonic()
        first = metric(owner_proc.metrics(), "distribute_handoff_total", 'outcome="received"')
        wait_for(lambda: metric(here.metrics(), "distribute_handoff_pending") == 0, 600, "backlog delivered", 0.02)
        drained = time.monotonic() - started
        if first >= backlog:
            raise RuntimeError(f"backlog {backlog} went in one delivery: too small to measure a rate")
        received = metric(owner_proc.metrics(), "distribute_handoff_total", 'outcome="received"')
        if received < backlog:
            raise RuntimeError(f"the owner applied {received} of {backlog} hand-offs")
    finally:
        here.stop()
        owner_proc.stop()
        sim.stop()
    alone_p99, own_p99, other_p99 = _p99(alone), _p99(lat["own"]), _p99(lat["other"])
    return {"own_alone_p99_ms": alone_p99, "own_p99_ms": own_p99, "other_p99_ms": other_p99,
            "added_p99_ms": other_p99 - own_p99, "sender_load_p99_ms": own_p99 - alone_p99,
            "own_median_ms": statistics.median(alone), "other_median_ms": statistics.median(lat["other"]),
            "handoffs_per_second": (backlog - first) / drained, **_create_figures(creates)}


def _create_figures(creates: dict[str, list[float]]) -> Figures:
    figures: Figures = {}
    for cls in ("own", "other"):
        figures[f"proxy_create_{cls}_p50_ms"] = statistics.median(creates[cls])
        figures[f"proxy_create_{cls}_p99_ms"] = _p99(creates[cls])
        figures[f"proxy_creates_{cls}"] = float(len(creates[cls]))
    figures["proxy_create_added_p99_ms"] = figures["proxy_create_other_p99_ms"] - figures["proxy_create_own_p99_ms"]
    return figures


def _post(port: int, ids: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/api/v1/jobs", body=json.dumps({"kind": "chat", "group": "bench", "ids": ids}),
                     headers=HEADERS)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 202:
            raise RuntimeError(f"registration refused: {answer.status} {body[:200]!r}")
    finally:
        conn.close()

