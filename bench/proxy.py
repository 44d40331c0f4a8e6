"""The proxy's benchmarks: what it costs an application (rate and added latency, through the proxy
against straight to the same fast upstream, in the same run) and what it saves the exporter (own
result requests per job an application follows through the proxy)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import aiohttp

from bench.procs import Exporter, Nginx, Simulator, free_port, metric, wait_for, wrk

RESULT_BODY = json.dumps({"id": "3b241101-e2bb-4255-8caf-4136c566a962"})
CREATE_BODY = json.dumps({"model": "Kokoro", "input": "hello", "voice": "nora"})
# nginx answers a create with a fresh UUID v4 made of its request id, as the API would.
CREATE_LOCATION = r"""
  location ~ ^/async/[a-z]+/create$ {
    default_type application/json;
    return 200 '{"id": "$uuid"}';
  }"""
UUID_MAP = r"""
map $request_id $uuid {
  "~^(?<a>.{8})(?<b>.{4}).(?<c>.{3}).(?<d>.{3})(?<e>.{12})$" "$a-$b-4$c-8$d-$e";
}"""
WARM_UP = 200  # requests per phase not counted: connections being opened


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _paced(url: str, body: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Send `rate` requests per second for `seconds`, each at its planned time (not after the last
    answer: an open loop, as applications behave); answer the latencies in ms and the failures."""
    latencies: list[float] = []
    failures = 0
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"}) as session:
        start = loop.time() + 0.1

        async def one(i: int) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            if not ok:
                failures += 1
            elif i >= WARM_UP:
                latencies.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(one(i) for i in range(int(rate * seconds) + WARM_UP)))
    return latencies, failures


def proxy(workdir: Path, seconds: int = 10, rate: float = 500, wrk_seconds: int = 5) -> dict[str, float]:
    """Rates with wrk (16 connections) and paced latency at `rate`/s, direct and through the proxy,
    for result requests (read and applied) and creates (stored before the answer goes back)."""
    nginx = Nginx(http_extra=UUID_MAP, locations=CREATE_LOCATION)
    proxy_port = free_port()
    exporter = Exporter(workdir, f"""
api: {{base_url: 'http://127.0.0.1:{nginx.port}', max_requests_per_second: 0}}
poll: {{interval_seconds: 3600, max_interval_seconds: 3600}}
state: {{path: state.db}}
proxy: {{listen_address: '127.0.0.1:{proxy_port}'}}
""")
    figures: dict[str, float] = {}
    try:
        exporter.wait_ready()
        direct, through = f"http://127.0.0.1:{nginx.port}", f"http://127.0.0.1:{proxy_port}"
        figures["direct_rps"] = wrk(f"{direct}/async/speech/result", RESULT_BODY, wrk_seconds)["rps"]
        via = wrk(f"{through}/async/speech/result", RESULT_BODY, wrk_seconds)
        figures["proxy_rps"] = via["rps"]
        figures["rps_ratio"] = figures["proxy_rps"] / figures["direct_rps"]
        figures["wrk_errors"] = via["non_2xx"] + via["socket_errors"]
        failed = 0
        for path, body, name in (("result", RESULT_BODY, "result"), ("create", CREATE_BODY, "create")):
            plain, f1 = asyncio.run(_paced(f"{direct}/async/speech/{path}", body, rate, seconds))
            proxied, f2 = asyncio.run(_paced(f"{through}/async/speech/{path}", body, rate, seconds))
            failed += f1 + f2
            for share, label in ((0.5, "p50"), (0.99, "p99")):
                d, p = _percentile(plain, share), _percentile(proxied, share)
                figures[f"{name}_direct_{label}_ms"], figures[f"{name}_proxy_{label}_ms"] = d, p
                figures[f"{name}_added_{label}_ms"] = p - d
        figures["paced_failures"] = failed
        text = exporter.metrics()
        figures["creates_tracked"] = metric(text, "distribute_exporter_tracked_jobs", 'state="polled"')
    finally:
        exporter.stop()
        nginx.stop()
    return figures


async def _follow_all(url: str, jobs: int, create_rate: float, poll_seconds: float) -> dict[str, int]:
    from exporter.simulator.application import Application

    rng = random.Random(11)
    async with Application(url, poll_seconds=poll_seconds) as app:
        tasks = []
        for _ in range(jobs):
            await asyncio.sleep(1 / create_rate)
            kind = rng.choices(("chat", "images", "speech"), weights=(5, 2, 3))[0]
            tasks.append(asyncio.create_task(app.create_and_follow(kind)))
        await asyncio.gather(*tasks)
        return dict(app.stats)


def proxy_economy(workdir: Path, jobs: int = 2000, speed: float = 10, app_poll: float = 5,
                  interval: float = 15, create_rate: float = 100) -> dict[str, float]:
    """`jobs` jobs an application creates and polls every `app_poll` s through the proxy to their end:
    the exporter's own result requests per job (it would poll every `interval` s without the proxy)."""
    sim = Simulator("--speed", str(speed))
    proxy_port = free_port()
    exporter = Exporter(workdir, f"""
api: {{base_url: '{sim.url}', max_requests_per_second: 0}}
poll: {{interval_seconds: {interval}, max_interval_seconds: 300}}
state: {{path: state.db}}
proxy: {{listen_address: '127.0.0.1:{proxy_port}'}}
""")
    try:
        exporter.wait_ready()
        stats = asyncio.run(_follow_all(f"http://127.0.0.1:{proxy_port}", jobs, create_rate, app_poll))
        wait_for(lambda: metric(exporter.metrics(), "distribute_jobs_finished_total") >= jobs, 60,
                 "every job counted", 0.2)
        text = exporter.metrics()
    finally:
        exporter.stop()
        sim.stop()
    own = metric(text, "distribute_exporter_polls_total")
    app_results = sum(n for key, n in stats.items() if key.startswith("result "))
    return {"own_requests_per_job": own / jobs, "app_requests_per_job": app_results / jobs,
            "jobs_counted": metric(text, "distribute_jobs_finished_total"),
            "followed_to_the_end": stats.get("followed to the end", 0), "app_failures": stats.get("failed", 0),
            "observed_answers": metric(text, "distribute_proxy_observed_answers_total")}

