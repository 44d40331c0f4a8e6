"""`postgres`: the shared PostgreSQL state measured against SQLite in one run, same upstream.

- Poll throughput of one replica on SQLite, one on PostgreSQL and three on PostgreSQL against the
  realistic upstream of bench/poll_realistic.py (three replicas cannot beat one on 2 cores: the
  rates are reported as ratios to SQLite, with PostgreSQL's share of the CPU).
- The p99 of the claim, apply (non-final and final) and register statements, one session, in
  process.
- `/metrics/jobs` at `facts_jobs` jobs: a state file prepared as for scrape_1m, copied in with
  `state export`; the p99 of the database read behind it (uncached) and of the route through a
  replica (its 1 s cache included).

A PostgreSQL cluster of its own is initialised in a temporary directory (as the postgres user when run
as root), with the server's default durability settings.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.fixtures import prepare_state
from bench.poll_realistic import GROUPS, Upstream, make_jobs
from bench.procs import REPO, Exporter, free_port, get, metric, wait_for

PASSWORD = "bench-password"


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
        # A directory of its own under the system's temporary one: the postgres user must reach it,
        # and a work directory's parents may not let it.
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.port = free_port()
        self.password_file = self.dir / "password"
        self.password_file.write_text(PASSWORD + "\n")
        os.chmod(self.password_file, 0o644)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", self.dir / "data", "-U", "postgres", "-A", "scram-sha-256", "--auth-local=trust",
                  f"--pwfile={self.password_file}")
        self._run("pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log", "-w", "-o",
                  f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                  "-c max_connections=200 -c shared_buffers=256MB", "start")

    def _run(self, tool: str, *args: object) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, str(self.bin / tool), *map(str, args)], check=True, capture_output=True,
                       timeout=300)

    def database(self, name: str) -> str:
        self._run("createdb", "-h", self.dir, "-p", self.port, "-U", "postgres", name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def cpu_seconds(self) -> float:
        """CPU time of this cluster's server processes: its postmaster and the postmaster's children
        (by parent pid: other clusters on the machine are not counted)."""
        try:
            postmaster = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        total, tick = 0.0, os.sysconf("SC_CLK_TCK")
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(stat.split("/")[2])
            if pid == postmaster:  # its own time and its children's that have exited
                total += sum(int(f) for f in fields[11:15]) / tick
            elif int(fields[1]) == postmaster:  # fields[1]: the parent's pid
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.dir / "data", "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _config(upstream: str, state: str) -> str:
    groups = "".join(f"  - {{kind: {kind}, group: {g}, ids_file: {g}.txt}}\n"
                     for kind, names in GROUPS.items() for g in names)
    return (f"api: {{base_url: '{upstream}', max_requests_per_second: 0, max_concurrency: 32}}\n"
            "poll: {interval_seconds: 0.2, max_interval_seconds: 60}\n"
            f"jobs:\n{groups}state: {{{state}}}\n")


def _polls(workdir: Path, name: str, ids: int, replicas: int, state: str, cluster: Cluster | None) -> tuple[float, float]:
    """(polls per second until every job is final, PostgreSQL's CPU share of the elapsed time)."""
    run = workdir / name
    run.mkdir()
    make_jobs(run, ids)
    upstream = Upstream(run)
    procs: list[Exporter] = []
    try:
        for i in range(replicas):
            folder = run / f"replica-{i}"
            for txt in run.glob("*.txt"):
                folder.mkdir(exist_ok=True)
                shutil.copy(txt, folder / txt.name)
            procs.append(Exporter(folder, _config(upstream.url, state)))
        for proc in procs:
            proc.wait_ready()
        started, pg0 = time.monotonic(), cluster.cpu_seconds() if cluster else 0.0
        jobs_port = procs[0].port

        def finished() -> float:
            text = get(jobs_port, "/metrics/jobs")[1].decode()
            return metric(text, "distribute_jobs_finished_total")
        wait_for(lambda: finished() >= ids, 1800, f"{name}: every job final", 0.2)
        elapsed = time.monotonic() - started
        polls = sum(metric(p.metrics(), "distribute_exporter_polls_total") for p in procs)
        pg_cpu = (cluster.cpu_seconds() - pg0) if cluster else 0.0
    finally:
        for proc in procs:
            proc.stop()
        upstream.stop()
    return polls / elapsed, pg_cpu / elapsed


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] * 1000


async def _statements(url: str, password_file: str, ids: int) -> dict[str, float]:
    from exporter.api.results import JobResult
    from exporter.tracking.pg.connect import create_pool
    from exporter.tracking.pg.store import PgJobStore

    store = PgJobStore(await create_pool(url, password_file, max_size=2), (1.0, 10.0, 60.0))
    await store.migrate()
    timings: dict[str, list[float]] = {"register": [], "claim": [], "apply": [], "apply_final": []}
    try:
        all_ids = [f"bench-{i:08d}" for i in range(ids)]
        for start in range(0, ids, 100):
            t = time.perf_counter()
            await store.register(all_ids[start:start + 100], "chat", "g", "bench")
            timings["register"].append(time.perf_counter() - t)
        now = time.time()
        while True:
            t = time.perf_counter()
            claims = await store.claim(32, 60)
            timings["claim"].append(time.perf_counter() - t)
            if not claims:
                break
            for n, claim in enumerate(claims):
                final = n % 2 == 0
                result = (JobResult("COMPLETED", model="m", created=now - 5, finished=now, prompt_tokens=5,
                                    completion_tokens=9) if final else JobResult("PROCESSING", model="m"))
                t = time.perf_counter()
                await store.apply(claim, result, 3600)
                timings["apply_final" if final else "apply"].append(time.perf_counter() - t)
    finally:
        await store.pool.close()
    return {f"{k}_p99_ms": _p99(v) for k, v in timings.items()}


async def _facts_p99(url: str, password_file: str, reads: int) -> float:
    from exporter.config import DEFAULT_DURATION_BUCKETS
    from exporter.tracking.pg.connect import create_pool
    from exporter.tracking.pg.store import PgJobStore

    store = PgJobStore(await create_pool(url, password_file, max_size=1), DEFAULT_DURATION_BUCKETS)
    times = []
    try:
        for _ in range(reads):
            t = time.perf_counter()
            await store.facts()
            times.append(time.perf_counter() - t)
    finally:
        await store.pool.close()
    return _p99(times)


def postgres(workdir: Path, ids: int, facts_jobs: int, statement_ids: int = 5_000, scrapes: int = 200) -> dict[str, float]:
    cluster = Cluster(workdir)
    pw = str(cluster.password_file)
    try:
        sqlite_rate, _ = _polls(workdir, "sqlite", ids, 1, "path: state.db", None)
        state = f"url: '{cluster.database('one')}', password_file: '{pw}'"
        one_rate, one_cpu = _polls(workdir, "pg-one", ids, 1, state, cluster)
        state = f"url: '{cluster.database('three')}', password_file: '{pw}'"
        three_rate, three_cpu = _polls(workdir, "pg-three", ids, 3, state, cluster)
        figures = {"sqlite_polls_per_second": sqlite_rate, "pg_one_ratio": one_rate / sqlite_rate,
                   "pg_three_ratio": three_rate / sqlite_rate, "pg_one_cpu_share": one_cpu,
                   "pg_three_cpu_share": three_cpu}
        figures.update(asyncio.run(_statements(cluster.database("statements"), pw, statement_ids)))
        # /metrics/jobs at facts_jobs jobs: a prepared state file copied in with `state export`.
        prepare_state(workdir / "big.db", facts_jobs)
        url = cluster.database("big")
        started = time.monotonic()
        export = subprocess.run([sys.executable, "-m", "exporter", "state", "export", "--to", url, "--password-file",
                                 pw, str(workdir / "big.db")], cwd=REPO, capture_output=True, timeout=3600,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        if export.returncode != 0:  # the poll figures above still count; the /metrics/jobs ones are left out
            last = (export.stderr or export.stdout).decode(errors="replace").strip().splitlines()[-1:]
            print(f"postgres: state export of {facts_jobs:,} jobs failed ({last[0] if last else export.returncode}); "
                  "no /metrics/jobs figures this run", flush=True)
            return figures
        figures["export_seconds"] = time.monotonic() - started
        figures["facts_read_p99_ms"] = asyncio.run(_facts_p99(url, pw, 30))
        replica = Exporter(workdir / "facts", f"api: {{base_url: 'http://127.0.0.1:9'}}\n"
                                              f"state: {{url: '{url}', password_file: '{pw}'}}\n")
        try:
            replica.wait_ready()
            times = []
            for _ in range(scrapes):
                t = time.perf_counter()
                status, _body = get(replica.port, "/metrics/jobs")
                times.append(time.perf_counter() - t)
                assert status == 200
                time.sleep(0.02)
            figures["metrics_jobs_p99_ms"] = _p99(times)
            figures["metrics_jobs_median_ms"] = statistics.median(times) * 1000
        finally:
            replica.stop()
    finally:
        cluster.stop()
    return figures
