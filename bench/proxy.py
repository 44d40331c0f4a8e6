"""The proxy's benchmarks: what it costs an application (rate and added latency, through the proxy
against straight to the same fast upstream, in the same run) and what it saves the exporter (own
result requests per job an application follows through the proxy)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.procs import REPO, Exporter, Nginx, Simulator, baseline_repo, free_port, metric, wait_for, wrk

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


def _paced(url: str, body: str, rate: float, seconds: float, connections: int = 25) -> dict[str, float]:
    """wrk at about `rate` requests per second: each of `connections` connections waits a random
    (exponential) time of mean connections/rate seconds between its requests (wrk's delay(); the
    answer's own time comes on top, so the rate reached is a little lower: reported); answer p50/p99
    in ms, the rate and errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                     'wrk.headers["Content-Type"] = "application/json"\n'
                     "math.randomseed(7)\n"
                     # Exponential waits: the connections drift apart and requests arrive as
                     # independent events (a fixed wait would send all of them in one burst).
                     f"function delay() return -math.log(1 - math.random()) * {connections * 1000 / rate:.3f} end\n")
    try:
        out = subprocess.run(["wrk", "--latency", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", script.name, url],
                             capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(script.name)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    figures = {}
    for share in ("50", "99"):
        found = re.search(rf"{share}%\s+([\d.]+)(us|ms|s)", out)
        figures[f"p{share}"] = float(found.group(1)) * scale[found.group(2)] if found else float("nan")
    figures["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["errors"] = float(errors.group(1)) if errors else 0.0
    return figures


def _proxying(workdir: Path, upstream: str, proxy_port: int, repo: Path = REPO) -> Exporter:
    """An exporter whose only work is its proxy to `upstream` (its own polls an hour away)."""
    return Exporter(workdir, f"""
api: {{base_url: '{upstream}', max_requests_per_second: 0}}
poll: {{interval_seconds: 3600, max_interval_seconds: 3600}}
state: {{path: state.db}}
proxy: {{listen_address: '127.0.0.1:{proxy_port}'}}
""", repo=repo)


def _forwarded(exporter: Exporter, url: str, seconds: int) -> tuple[float, float]:
    """wrk's rate of result requests through `exporter`'s proxy at `url`, and the exporter's CPU per
    forwarded result in µs (its process CPU over the requests it counted)."""
    text = exporter.metrics()
    count0 = metric(text, "distribute_proxy_requests_total", 'endpoint="result"')
    cpu0 = exporter.cpu_seconds()
    rps = wrk(url, RESULT_BODY, seconds)["rps"]
    cpu = exporter.cpu_seconds() - cpu0
    count = metric(exporter.metrics(), "distribute_proxy_requests_total", 'endpoint="result"') - count0
    return rps, cpu / max(count, 1) * 1e6


def _against_baseline(workdir: Path, nginx: Nginx, exporter: Exporter, through: str, baseline: Path,
                      seconds: int) -> dict[str, float]:
    """This code's proxy and the baseline's, on the same upstream, alternated twice (new, old, new,
    old): the rate and CPU per forwarded result of each (medians of the two), and their ratios."""
    port = free_port()
    old = _proxying(workdir / "baseline", f"http://127.0.0.1:{nginx.port}", port, repo=baseline)
    new_runs, old_runs = [], []
    try:
        old.wait_ready()
        for _ in range(2):
            new_runs.append(_forwarded(exporter, f"{through}/async/speech/result", seconds))
            old_runs.append(_forwarded(old, f"http://127.0.0.1:{port}/async/speech/result", seconds))
    finally:
        old.stop()
    new_rps, new_cpu = (sum(r[i] for r in new_runs) / 2 for i in (0, 1))
    old_rps, old_cpu = (sum(r[i] for r in old_runs) / 2 for i in (0, 1))
    return {"alt_proxy_rps": new_rps, "baseline_proxy_rps": old_rps, "proxy_rate_ratio": new_rps / old_rps,
            "alt_cpu_us_per_result": new_cpu, "baseline_cpu_us_per_result": old_cpu,
            "cpu_per_result_ratio": new_cpu / old_cpu}


def _bare_forwarder_rps(upstream_port: int, seconds: int) -> float:
    """The ceiling: wrk's rate through bench/bare_forwarder.py (the least a Python process does to
    forward a request) to the same upstream."""
    port = free_port()
    forwarder = subprocess.Popen([sys.executable, str(Path(__file__).with_name("bare_forwarder.py")),
                                  str(upstream_port), str(port)], stdout=subprocess.PIPE)
    try:
        assert forwarder.stdout is not None and forwarder.stdout.readline().strip() == b"ready"
        return wrk(f"http://127.0.0.1:{port}/async/speech/result", RESULT_BODY, seconds)["rps"]
    finally:
        forwarder.kill()
        forwarder.wait()


def proxy(workdir: Path, seconds: int = 10, rate: float = 500, wrk_seconds: int = 5) -> dict[str, float]:
    """Rates with wrk (16 connections) and latency at about `rate`/s, direct and through the proxy,
    for result requests (read and applied) and creates (stored before the answer goes back)."""
    nginx = Nginx(http_extra=UUID_MAP, locations=CREATE_LOCATION)
    proxy_port = free_port()
    exporter = _proxying(workdir, f"http://127.0.0.1:{nginx.port}", proxy_port)
    figures: dict[str, float] = {}
    try:
        exporter.wait_ready()
        direct, through = f"http://127.0.0.1:{nginx.port}", f"http://127.0.0.1:{proxy_port}"
        figures["direct_rps"] = wrk(f"{direct}/async/speech/result", RESULT_BODY, wrk_seconds)["rps"]
        count0 = metric(exporter.metrics(), "distribute_proxy_requests_total", 'endpoint="result"')
        cpu0 = exporter.cpu_seconds()
        via = wrk(f"{through}/async/speech/result", RESULT_BODY, wrk_seconds)
        forwarded = metric(exporter.metrics(), "distribute_proxy_requests_total", 'endpoint="result"') - count0
        figures["cpu_us_per_result"] = (exporter.cpu_seconds() - cpu0) / max(forwarded, 1) * 1e6
        figures["proxy_rps"] = via["rps"]
        figures["rps_ratio"] = figures["proxy_rps"] / figures["direct_rps"]
        figures["wrk_errors"] = via["non_2xx"] + via["socket_errors"]
        figures["bare_forwarder_rps"] = _bare_forwarder_rps(nginx.port, wrk_seconds)
        figures["bare_forwarder_ratio"] = figures["bare_forwarder_rps"] / figures["direct_rps"]
        baseline = baseline_repo()
        if baseline is not None:
            figures.update(_against_baseline(workdir, nginx, exporter, through, baseline, wrk_seconds))
        failed = 0.0
        for path, body in (("result", RESULT_BODY), ("create", CREATE_BODY)):
            plain = _paced(f"{direct}/async/speech/{path}", body, rate, seconds)
            proxied = _paced(f"{through}/async/speech/{path}", body, rate, seconds)
            failed += plain["errors"] + proxied["errors"]
            figures[f"{path}_paced_rps"] = proxied["rps"]
            for label in ("p50", "p99"):
                figures[f"{path}_direct_{label}_ms"] = plain[label]
                figures[f"{path}_proxy_{label}_ms"] = proxied[label]
                figures[f"{path}_added_{label}_ms"] = proxied[label] - plain[label]
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


def proxy_economy(workdir: Path, jobs: int = 2000, speed: float = 4, app_poll: float = 5,
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
        wait_for(lambda: metric(exporter.metrics(), "distribute_jobs_finished_total") >= jobs, 300,
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



def proxy_simulator(workdir: Path, wrk_seconds: int = 5) -> dict[str, float]:
    """Context for `proxy`, not its target: the same wrk rate comparison with the project's simulator
    (a Python aiohttp server, like the proxy) as the upstream instead of nginx; the result polled is a
    real job's, so the proxy also applies every answer it forwards."""
    sim = Simulator("--speed", "4")
    proxy_port = free_port()
    exporter = _proxying(workdir, sim.url, proxy_port)
    try:
        exporter.wait_ready()
        body = json.dumps({"id": sim.create("speech", 1)[0]})
        direct = wrk(f"{sim.url}/async/speech/result", body, wrk_seconds)
        via = wrk(f"http://127.0.0.1:{proxy_port}/async/speech/result", body, wrk_seconds)
    finally:
        exporter.stop()
        sim.stop()
    return {"sim_direct_rps": direct["rps"], "sim_proxy_rps": via["rps"], "sim_rps_ratio": via["rps"] / direct["rps"],
            "wrk_errors": direct["non_2xx"] + direct["socket_errors"] + via["non_2xx"] + via["socket_errors"]}
