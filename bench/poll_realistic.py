"""`poll_throughput`: the poll loop on realistic traffic, and the upstream it polls.

100,000 ids over 3 kinds (60% chat, 30% images, 10% speech), 10 groups and 20 models. The upstream
(`python -m bench.poll_realistic JOBS_TSV`, below) holds one precomputed answer per id and status,
with the shapes of shared/distribute-api/result-schemas.json, and answers each id QUEUED at its
first poll, PROCESSING at its second and final (COMPLETED, or ERROR for one in 20) from the third on,
so every job makes two status changes and three state writes before it is done. It is a bare
asyncio protocol that only looks the id up, so that it stays far from being the bottleneck: its CPU
is measured and reported, and `wrk` against it in the same run gives its ceiling.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.procs import REPO, Exporter, baseline_repo, metric, wait_for, wrk

KIND_SHARES = (("chat", 0.6), ("images", 0.3), ("speech", 0.1))
GROUPS = {"chat": [f"chat-{g}" for g in range(6)], "images": [f"images-{g}" for g in range(3)],
          "speech": ["speech-0"]}  # 10 groups
MODELS = {"chat": [f"chat-model-{m:02d}" for m in range(12)], "images": [f"image-model-{m}" for m in range(5)],
          "speech": [f"speech-model-{m}" for m in range(3)]}  # 20 models
WRK_ID = "00000000-0000-4000-8000-000000000000"  # answered by the upstream, tracked by no exporter
RESET_ID = b"reset-poll-counts"  # a request for it makes the upstream forget how often each id was polled


def make_jobs(workdir: Path, count: int, seed: int = 13) -> list[tuple[str, str, str, str]]:
    """(id, kind, group, model) for `count` jobs; written as the upstream's table and the ids files."""
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        pick, kind = rng.random(), "speech"
        if pick < KIND_SHARES[0][1]:
            kind = "chat"
        elif pick < KIND_SHARES[0][1] + KIND_SHARES[1][1]:
            kind = "images"
        jobs.append((str(uuid.UUID(int=rng.getrandbits(128), version=4)), kind, rng.choice(GROUPS[kind]),
                     rng.choice(MODELS[kind])))
    (workdir / "jobs.tsv").write_text("".join("\t".join(j) + "\n" for j in jobs + [(WRK_ID, "chat", "", "chat-model-00")]))
    for kind, groups in GROUPS.items():
        for group in groups:
            (workdir / f"{group}.txt").write_text("".join(j[0] + "\n" for j in jobs if j[2] == group))
    return jobs


def answers(job_id: str, kind: str, model: str, rng: random.Random, now: float) -> list[bytes]:
    """The QUEUED, PROCESSING and final bodies of one job, as the API would write them."""
    created = now - rng.uniform(5, 600)
    # Half the answers write times as ISO strings (the first published examples), half as numbers.
    iso = rng.random() < 0.5

    def stamp(t: float) -> object:
        if not iso:
            return round(t, 3)
        moment = time.gmtime(t)
        return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{int(t % 1 * 1000):03d}Z"

    base = {"id": job_id, "status": "QUEUED", "created": stamp(created), "model": model}
    bodies = [dict(base), dict(base, status="PROCESSING")]
    final = dict(base, finished=stamp(created + rng.lognormvariate(2.5, 1.0)))
    if rng.random() < 0.05:
        final["status"] = "ERROR"
    else:
        final["status"] = "COMPLETED"
        if kind == "chat":
            final.update(_chat(rng))
        elif kind == "images":
            final["results"] = [{"url": f"https://cdn.invalid/{job_id}/{n}.png",
                                 "revised_prompt": "a lighthouse at dusk, oil on canvas"}
                                for n in range(rng.randint(1, 4))]
        else:
            final["results"] = [{"url": f"https://cdn.invalid/{job_id}.wav"}]
    bodies.append(final)
    return [json.dumps(b).encode() for b in bodies]


def _chat(rng: random.Random) -> dict:
    prompt, completion = rng.randint(10, 2000), rng.randint(10, 800)
    choices = []
    for index in range(1 if rng.random() < 0.9 else 2):
        message: dict = {"role": "assistant", "content": "The answer, in a few sentences of plain text. " * rng.randint(1, 6)}
        reason = "stop"
        if rng.random() < 0.2:
            reason, message["content"] = "tool_calls", ""
            message["tool_calls"] = [{"id": f"call_{n}", "type": "function",
                                      "function": {"name": "lookup", "arguments": '{"q": "weather"}'}}
                                     for n in range(rng.randint(1, 3))]
        choices.append({"index": index, "finish_reason": reason, "message": message})
    return {"service_tier": "default", "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


# ---- the upstream ---------------------------------------------------------------------------------

class _Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive; every request is a POST whose body holds one id."""

    def __init__(self, table: dict[bytes, list[bytes]], polls: dict[bytes, int]) -> None:
        self.table, self.polls, self.buffer = table, polls, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = self.buffer[:head_end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
            if len(self.buffer) < head_end + 4 + length:
                break
            body = self.buffer[head_end + 4:head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length:]
            out.append(self._answer(body))
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]

    def _answer(self, body: bytes) -> bytes:
        start = body.find(b'"id"')
        start = body.find(b'"', start + 4) + 1
        job_id = body[start:body.find(b'"', start)]
        bodies = self.table.get(job_id)
        if job_id == RESET_ID:  # a new exporter polls the same jobs: each starts QUEUED again
            self.polls.clear()
            return _response(200, b"{}")
        if bodies is None:
            return _response(404, b'{"message": "Not Found"}')
        seen = self.polls.get(job_id, 0)
        self.polls[job_id] = seen + 1
        return bodies[min(seen, 2)]


def _response(code: int, body: bytes) -> bytes:
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (code, b"OK" if code == 200 else b"Not Found", len(body))) + body


def serve(table_path: Path, port_file: Path) -> None:
    rng, now = random.Random(5), time.time()
    table = {}
    for line in table_path.read_text().splitlines():
        job_id, kind, _, model = line.split("\t")
        table[job_id.encode()] = [_response(200, b) for b in answers(job_id, kind, model, rng, now)]
    polls: dict[bytes, int] = {}
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: _Upstream(table, polls), "127.0.0.1", 0, backlog=512))
    port = server.sockets[0].getsockname()[1]
    port_file.with_suffix(".tmp").write_text(str(port))
    port_file.with_suffix(".tmp").rename(port_file)  # whole, or not there
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()


class Upstream:
    def __init__(self, workdir: Path) -> None:
        port_file = workdir / "upstream.port"
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.poll_realistic", str(workdir / "jobs.tsv"),
                                      str(port_file)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.port = int(wait_for(lambda: port_file.exists() and port_file.read_text(), 120, "upstream"))
        self.url = f"http://127.0.0.1:{self.port}"
        socket.create_connection(("127.0.0.1", self.port), timeout=5).close()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset(self) -> None:
        """Every id answered QUEUED again at its next poll (once this returns)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", "/async/chat/result", body=json.dumps({"id": RESET_ID.decode()}))
            if conn.getresponse().status != 200:
                raise RuntimeError("the bench upstream did not reset its poll counts")
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ---- the benchmark ----------------------------------------------------------------------------------

def poll_throughput(workdir: Path, ids: int, wrk_seconds: int = 5, check: bool = False) -> dict[str, float]:
    """Polls per second, CPU per poll and the share of wrk's rate against the realistic upstream; with
    `check`, also what the state file holds at the end (for the small test). With BENCH_BASELINE, the
    baseline's exporter polls its own copy of the same jobs on the same upstream (its poll counts reset
    between the two), first in one run and second in the next: a load that moves during a run then
    favours each code as often, and the median of the runs' ratios is the comparison."""
    workdir.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(workdir, ids)
    upstream = Upstream(workdir)
    try:
        baseline = baseline_repo()
        if baseline is None:
            figures = _poll_once(workdir / "new", upstream, ids, check, REPO)
        else:
            baseline_first = next(_PAIRS) % 2 == 0
            runs = [("baseline", baseline), ("new", REPO)]
            measured = {name: _poll_once(workdir / name, upstream, ids, check and name == "new", repo)
                        for name, repo in (runs if baseline_first else runs[::-1])}
            figures, before = measured["new"], measured["baseline"]
            figures.update({"baseline_polls_per_second": before["polls_per_second"],
                            "baseline_cpu_us_per_poll": before["cpu_us_per_poll"],
                            "poll_rate_ratio": figures["polls_per_second"] / before["polls_per_second"],
                            "cpu_per_poll_ratio": figures["cpu_us_per_poll"] / before["cpu_us_per_poll"],
                            "baseline_first": float(baseline_first)})
        ceiling = wrk(f"{upstream.url}/async/chat/result", json.dumps({"id": WRK_ID}), wrk_seconds)["rps"]
    finally:
        upstream.stop()
    figures.update({"wrk_rps": ceiling, "ratio_to_wrk": figures["polls_per_second"] / ceiling})
    if check:
        figures.update(_state_figures(workdir / "new" / "state.db", jobs))
    return figures


_PAIRS = itertools.count()  # which run of the process this is: the order of the pair alternates


def _poll_once(workdir: Path, upstream: Upstream, ids: int, check: bool, repo: Path) -> dict[str, float]:
    """One exporter polls its own copy of the ids files until every job is final."""
    workdir.mkdir(parents=True, exist_ok=True)
    for group in (g for names in GROUPS.values() for g in names):
        shutil.copyfile(workdir.parent / f"{group}.txt", workdir / f"{group}.txt")
    upstream.reset()
    groups = "".join(f"  - {{kind: {kind}, group: {g}, ids_file: {g}.txt}}\n"
                     for kind, names in GROUPS.items() for g in names)
    exporter = Exporter(workdir, f"""
api: {{base_url: '{upstream.url}', max_requests_per_second: 0, max_concurrency: 32}}
poll: {{interval_seconds: 0.2, max_interval_seconds: 60}}
jobs:
{groups}state: {{path: state.db}}
""", repo=repo)
    try:
        exporter.wait_ready()
        started, cpu0, up0 = time.monotonic(), exporter.cpu_seconds(), upstream.cpu_seconds()
        polls0 = metric(exporter.metrics(), "distribute_exporter_polls_total")
        seen: dict[str, float] = {}

        def all_final() -> bool:
            text = exporter.metrics()
            if check:  # the intermediate statuses the jobs were seen in, at their peak
                for status in ("QUEUED", "PROCESSING"):
                    seen[status] = max(seen.get(status, 0), metric(text, "distribute_jobs", f'status="{status}"'))
            return metric(text, "distribute_jobs_finished_total") >= ids

        wait_for(all_final, 1200, "every job final", 0.2 if not check else 0.02)
        elapsed, cpu = time.monotonic() - started, exporter.cpu_seconds() - cpu0
        up_cpu = upstream.cpu_seconds() - up0
        polls = metric(exporter.metrics(), "distribute_exporter_polls_total") - polls0
    finally:
        exporter.stop()
    figures = {"polls_per_second": polls / elapsed, "cpu_us_per_poll": cpu / polls * 1e6,
               "upstream_cpu_share": up_cpu / elapsed, "polls_per_job": (polls + polls0) / ids}
    figures.update({f"peak_{status.lower()}": n for status, n in seen.items()})
    return figures


def _state_figures(path: Path, jobs: list[tuple[str, str, str, str]]) -> dict[str, float]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = dict(db.execute("SELECT id, status || '/' || final || '/' || polls || '/' || model FROM jobs"))
    models = {j[0]: j[3] for j in jobs}
    finals = sum(1 for i, v in rows.items() if v.split("/")[0] in ("COMPLETED", "ERROR") and v.split("/")[1] == "1")
    return {"state_rows": len(rows), "state_finals": finals,
            "state_three_polls": sum(1 for v in rows.values() if v.split("/")[2] == "3"),
            "state_models_right": sum(1 for i, v in rows.items() if v.split("/")[3] == models.get(i))}


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]))
