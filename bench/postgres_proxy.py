"""`postgres_proxy`: what the proxy of a replica on PostgreSQL adds to an application's create.

The `proxy` benchmark's paced measurement (bench/proxy.py: wrk at about 500 requests per second,
exponential waits over 25 connections, straight to nginx and then through the proxy, p99
difference), with the replica's state in PostgreSQL: every create through the proxy is committed to
the database before its answer goes back (creates arriving together share one statement and
commit). The same replica's result requests are measured too (their answers are applied after they
went back), and, as context in the same run, a proxy on SQLite in front of the same nginx.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.postgres import Cluster
from bench.procs import Exporter, Nginx, free_port, metric
from bench.proxy import CREATE_BODY, CREATE_LOCATION, RESULT_BODY, UUID_MAP, _paced


def _replica(workdir: Path, upstream: str, proxy_port: int, state: str, fsync: bool = False) -> Exporter:
    """A replica whose only work is its proxy (its own polls an hour away)."""
    return Exporter(workdir, f"""
api: {{base_url: '{upstream}', max_requests_per_second: 0}}
poll: {{interval_seconds: 3600, max_interval_seconds: 3600}}
state: {{{state}}}
proxy: {{listen_address: '127.0.0.1:{proxy_port}', fsync_creates: {str(fsync).lower()}}}
""")


def _sql(cluster: Cluster, database: str, sql: str) -> str:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    out = subprocess.run([*prefix, str(cluster.bin / "psql"), "-h", str(cluster.dir), "-p", str(cluster.port),
                          "-U", "postgres", "-d", database, "-At", "-c", sql],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return out.strip()


def _added(direct: str, through: str, path: str, body: str, rate: float, seconds: float) -> dict[str, float]:
    """Paced wrk straight to the upstream, then through the proxy: p50/p99 of each and the differences."""
    plain = _paced(f"{direct}/async/speech/{path}", body, rate, seconds)
    proxied = _paced(f"{through}/async/speech/{path}", body, rate, seconds)
    figures = {f"{path}_paced_rps": proxied["rps"], f"{path}_errors": plain["errors"] + proxied["errors"]}
    for label in ("p50", "p99"):
        figures[f"{path}_direct_{label}_ms"] = plain[label]
        figures[f"{path}_added_{label}_ms"] = proxied[label] - plain[label]
    return figures


def _flush_p99_ms(workdir: Path, writes: int = 200) -> float:
    """The disk's floor under a durable commit: p99 of one 8 kB write and fdatasync, here."""
    times = []
    with open(workdir / "flush-probe", "wb") as probe:
        for _ in range(writes):
            t = time.perf_counter()
            probe.write(b"x" * 8192)
            probe.flush()
            os.fdatasync(probe.fileno())
            times.append(time.perf_counter() - t)
    times.sort()
    return times[int(len(times) * 0.99)] * 1000


def postgres_proxy(workdir: Path, seconds: int = 10, rate: float = 500) -> dict[str, float]:
    cluster = Cluster(workdir)
    nginx = Nginx(http_extra=UUID_MAP, locations=CREATE_LOCATION)
    direct = f"http://127.0.0.1:{nginx.port}"
    figures: dict[str, float] = {"disk_flush_p99_ms": _flush_p99_ms(workdir)}
    try:
        url = cluster.database("proxy")
        port = free_port()
        replica = _replica(workdir / "pg", direct, port,
                           f"url: '{url}', password_file: '{cluster.password_file}'")
        try:
            replica.wait_ready()
            through = f"http://127.0.0.1:{port}"
            figures.update(_added(direct, through, "create", CREATE_BODY, rate, seconds))
            figures.update(_added(direct, through, "result", RESULT_BODY, rate, seconds))
            # The same creates with the server's WAL flush off: what the proxy and the statement add
            # beyond the disk (context only: the product never runs so).
            _sql(cluster, "proxy", "ALTER SYSTEM SET fsync = off")
            _sql(cluster, "proxy", "SELECT pg_reload_conf()")
            unflushed = _added(direct, through, "create", CREATE_BODY, rate, seconds)
            figures["create_added_p99_ms_fsync_off"] = unflushed["create_added_p99_ms"]
            figures["create_added_p50_ms_fsync_off"] = unflushed["create_added_p50_ms"]
            figures["create_errors"] += unflushed["create_errors"]
            text = replica.metrics()
            figures["creates_forwarded"] = metric(text, "distribute_proxy_requests_total", 'endpoint="create"')
            figures["commit_late"] = metric(text, "distribute_proxy_errors_total", 'reason="commit_late"')
        finally:
            replica.stop()
        # Every create answered is a row (none late, none lost).
        figures["creates_stored"] = float(_sql(cluster, "proxy", "SELECT count(*) FROM jobs"))
        # Context, same run: the proxy on SQLite, as by default (the create journal written, not
        # flushed) and with proxy.fsync_creates (flushed: the same durability as a commit).
        for name, fsync in (("sqlite", False), ("sqlite_fsync", True)):
            port = free_port()
            sqlite = _replica(workdir / name, direct, port, "path: state.db", fsync)
            try:
                sqlite.wait_ready()
                context = _added(direct, f"http://127.0.0.1:{port}", "create", CREATE_BODY, rate, seconds)
                figures[f"{name}_create_added_p99_ms"] = context["create_added_p99_ms"]
                figures[f"{name}_create_added_p50_ms"] = context["create_added_p50_ms"]
            finally:
                sqlite.stop()
    finally:
        nginx.stop()
        cluster.stop()
    figures["paced_failures"] = figures.get("create_errors", 0.0) + figures.get("result_errors", 0.0)
    return figures
