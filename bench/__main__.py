"""`python -m bench [--quick] [--repeats N] [--only NAME]`: run the benchmarks, write bench/RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench import benchmarks as b
from bench import config_load, cost, poll_realistic, tracing
from bench import postgres as pg
from bench.postgres_proxy import postgres_proxy
from bench import postgres_facts as pgf
from bench import proxy as p
from bench.jobs_query import jobs_query

HERE = Path(__file__).resolve().parent

# name -> (function, full-size kwargs, quick kwargs, [(figure, target text, check)])
def economy_figures(interval: float) -> list:
    """The API-economy figures and targets: a third of fixed polling's requests, delay <= 2 intervals."""
    return [("requests_per_job", "reported", None), ("fixed_requests_per_job", "reported", None),
            ("ratio_to_fixed", "<= 0.333", lambda v: v <= 1 / 3),
            ("delay_median_real_s", f"<= {2 * interval:g} s (interval {interval:g} s x 2)",
             lambda v: v <= 2 * interval),
            ("fixed_delay_median_real_s", "reported", None)]


def tracing_figures() -> list:
    """The tracing figures: the realistic case's with the targets, then the worst case's (every poll
    final, so every poll owes a trace), reported with no target."""
    worst = "reported (worst case, every poll final: "
    return [
        ("rate_ratio_on", ">= 0.9 (tracing on / off; median of the rounds' ratios)", lambda v: v >= 0.9),
        ("rate_ratio_on_lowest", "reported (the lowest round of a run)", None),
        ("rate_ratio_on_highest", "reported (the highest round of a run)", None),
        ("rate_ratio_hang", ">= 0.95 (a collector that never answers / off; median of the rounds)",
         lambda v: v >= 0.95),
        ("rate_ratio_hang_lowest", "reported (the lowest round of a run)", None),
        ("rate_ratio_hang_highest", "reported (the highest round of a run)", None),
        ("cpu_ratio_on", "reported (CPU per poll while polling, on / off, median of the rounds)", None),
        ("cpu_ratio_hang", "reported (CPU per poll while polling, never answers / off)", None),
        ("cpu_ratio_on_until_exported", "reported (CPU from the start until the last trace went out, per poll, / off)",
         None),
        ("polls_per_second_off", "reported", None), ("polls_per_second_on", "reported", None),
        ("polls_per_second_hang", "reported", None),
        ("cpu_us_per_poll_off", "reported", None), ("cpu_us_per_poll_on", "reported", None),
        ("cpu_us_per_poll_hang", "reported", None),
        ("polls_per_job_on", "reported (QUEUED, PROCESSING, final: 3)", None),
        ("spans_per_second", "reported (spans the collector took, first to last)", None),
        ("spans_exported", "reported (per run: a root and a child per status phase, per job)", None),
        ("final_rate_ratio_on", worst + "on / off, median of the rounds)", None),
        ("final_rate_ratio_on_lowest", worst + "the lowest round)", None),
        ("final_rate_ratio_on_highest", worst + "the highest round)", None),
        ("final_rate_ratio_hang", worst + "never answers / off, median of the rounds)", None),
        ("final_rate_ratio_hang_lowest", worst + "the lowest round)", None),
        ("final_rate_ratio_hang_highest", worst + "the highest round)", None),
        ("final_cpu_ratio_on", worst + "CPU per poll, on / off)", None),
        ("final_cpu_ratio_hang", worst + "CPU per poll, never answers / off)", None),
        ("final_polls_per_second_off", worst + "off)", None),
        ("final_spans_per_second", worst + "spans the collector took, first to last)", None),
        ("final_spans_exported", worst + "per run, one per job)", None)]


PLAN: dict[str, tuple[Callable, dict, dict, list[tuple[str, str, Callable[[float], bool] | None]]]] = {
    "poll_throughput": (poll_realistic.poll_throughput, {"ids": 100_000}, {"ids": 10_000}, [
        ("polls_per_second", ">= 3,000 /s", lambda v: v >= 3000),
        ("cpu_us_per_poll", "<= 300 µs", lambda v: v <= 300),
        ("wrk_rps", "(wrk, same POST, same upstream)", None),
        ("ratio_to_wrk", "reported", None),
        ("upstream_cpu_share", "reported (cores busy in the upstream)", None),
        ("polls_per_job", "3 (QUEUED, PROCESSING, final)", None),
        ("baseline_polls_per_second", "reported (BENCH_BASELINE's exporter, same run and upstream, its own copy of the jobs, first in alternate runs)", None),
        ("poll_rate_ratio", ">= 1.0 (to BENCH_BASELINE, same run; median of the runs' ratios)", lambda v: v >= 1.0),
        ("cpu_per_poll_ratio", "reported (to BENCH_BASELINE)", None)]),
    "poll_throughput_simple": (b.poll_throughput, {"ids": 100_000}, {"ids": 5_000}, [
        ("polls_per_second", ">= 3,000 /s", lambda v: v >= 3000),
        ("cpu_us_per_poll", "<= 300 µs", lambda v: v <= 300),
        ("wrk_rps", "(wrk, same POST, same nginx)", None),
        ("ratio_to_wrk", "reported", None)]),
    "scrape_1k": (b.scrape_latency, {"jobs": 1_000}, {"jobs": 1_000, "scrapes": 50}, [
        ("gzip_p99_ms", "reported", None), ("gzip_median_ms", "reported", None),
        ("identity_p99_ms", "reported", None), ("series_lines", "reported", None)]),
    "scrape_100k": (b.scrape_latency, {"jobs": 100_000}, {"jobs": 20_000, "scrapes": 50}, [
        ("gzip_p99_ms", "reported", None), ("gzip_median_ms", "reported", None),
        ("identity_p99_ms", "reported", None)]),
    "scrape_1m": (b.scrape_latency, {"jobs": 1_000_000}, {"jobs": 100_000, "scrapes": 50}, [
        ("gzip_p99_ms", "<= 50 ms", lambda v: v <= 50), ("gzip_median_ms", "reported", None),
        ("identity_p99_ms", "reported (uncompressed)", None), ("identity_median_ms", "reported", None),
        ("rss_mb", "<= 300 MB (1M jobs, 100k unfinished)", lambda v: v <= 300),
        ("startup_seconds", "<= 10 s to /-/ready", lambda v: v <= 10), ("series_lines", "reported", None)]),
    "api_economy_15s": (b.api_economy, {"jobs": 10_000, "speed": 10, "interval": 15},
                        {"jobs": 600, "speed": 40, "interval": 15}, economy_figures(15)),
    "api_economy_2s": (b.api_economy, {"jobs": 1_000, "speed": 4, "interval": 2},
                       {"jobs": 300, "speed": 8, "interval": 2}, economy_figures(2)),
    "id_files": (b.id_files, {"lines": 1_000_000}, {"lines": 50_000}, [
        ("first_load_seconds", "<= 10 s", lambda v: v <= 10),
        ("persisted_seconds", "reported (start to every id in the state file)", None),
        ("append_pickup_seconds", "<= 1 s", lambda v: v <= 1)]),
    "scrape_load": (b.scrape_load, {"jobs": 10_000}, {"jobs": 2_000, "seconds": 10}, [
        ("failed_scrapes", "0", lambda v: v == 0), ("scrape_p99_ms", "reported", None),
        ("scrapes_per_second", "reported", None), ("poll_rate_quiet", "reported", None),
        ("poll_rate_ratio", ">= 0.9 (unaffected)", lambda v: v >= 0.9)]),
    "poll_priced": (cost.priced_polls, {"ids": 50_000}, {"ids": 5_000}, [
        ("polls_per_second_plain", "reported", None), ("polls_per_second_priced", "reported", None),
        ("rate_ratio", ">= 0.9 (pricing costs the poll loop little)", lambda v: v >= 0.9),
        ("ratio_to_wrk_plain", "reported", None), ("ratio_to_wrk_priced", "reported", None),
        ("cpu_us_per_poll_plain", "reported", None), ("cpu_us_per_poll_priced", "reported", None),
        ("cpu_ratio", "reported", None)]),
    "tracing": (tracing.traced_polls, {"ids": 4_000, "rounds": 9, "final_ids": 4_000, "final_rounds": 3},
                {"ids": 1_000, "rounds": 3, "final_ids": 1_000, "final_rounds": 3}, tracing_figures()),
    "jobs_query": (jobs_query, {"jobs": 1_000_000}, {"jobs": 100_000, "requests": 50, "scrapes": 60}, [
        ("oldest_unfinished_p99_ms", "<= 50 ms", lambda v: v <= 50),
        ("slowest_last_hour_p99_ms", "<= 50 ms", lambda v: v <= 50),
        ("group_status_p99_ms", "<= 50 ms", lambda v: v <= 50),
        ("metrics_gzip_p99_ms", "reported (text format, gzip as Prometheus asks)", None),
        ("metrics_gzip_p99_ratio", "<= 1.10 (to the baseline commit 85216f8, same run)", lambda v: v <= 1.10),
        ("metrics_gzip_cpu_ratio", "reported (CPU per scrape, to the baseline)", None),
        ("metrics_identity_p99_ms", "reported (text format, uncompressed)", None),
        ("metrics_identity_p99_ratio", "reported (to the baseline)", None),
        ("metrics_identity_cpu_ratio", "reported (CPU per scrape, to the baseline)", None),
        ("rss_mb", "reported (1M jobs, 100k unfinished)", None),
        ("status_page_rss_growth_mb", "reported (100 status page loads)", None),
        ("ring_kb", "reported (a full ring: bounded)", None)]),
    "proxy": (p.proxy, {"seconds": 10}, {"seconds": 4, "wrk_seconds": 3}, [
        ("proxy_rps", "reported", None), ("direct_rps", "reported (wrk, same upstream, same run)", None),
        ("cpu_us_per_result", "reported (the exporter's CPU per forwarded result, wrk at full rate)", None),
        ("baseline_proxy_rps", "reported (BENCH_BASELINE's proxy, same upstream, alternated twice)", None),
        ("proxy_rate_ratio", ">= 1.0 (to BENCH_BASELINE, same run)", lambda v: v >= 1.0),
        ("alt_cpu_us_per_result", "reported (this code, in the alternated runs)", None),
        ("baseline_cpu_us_per_result", "reported (BENCH_BASELINE, in the alternated runs)", None),
        ("cpu_per_result_ratio", "reported (to BENCH_BASELINE)", None),
        ("rps_ratio", ">= 0.5", lambda v: v >= 0.5),
        ("bare_forwarder_rps", "reported (ceiling: bench/bare_forwarder.py, same upstream, same run)", None),
        ("bare_forwarder_ratio", "reported (the most any Python proxy could reach here)", None),
        ("paced_failures", "0", lambda v: v == 0),
        ("result_added_p50_ms", "reported", None), ("result_added_p99_ms", "<= 2 ms at 500/s", lambda v: v <= 2),
        ("create_added_p50_ms", "reported", None), ("create_added_p99_ms", "<= 2 ms at 500/s", lambda v: v <= 2),
        ("result_direct_p99_ms", "reported", None), ("create_direct_p99_ms", "reported", None)]),
    # Context for the row above, not a target: a Python upstream (the simulator) instead of nginx.
    "proxy_simulator": (p.proxy_simulator, {"wrk_seconds": 5}, {"wrk_seconds": 3}, [
        ("sim_proxy_rps", "reported (context: simulator upstream)", None),
        ("sim_direct_rps", "reported (wrk straight to the simulator, same run)", None),
        ("sim_rps_ratio", "reported (context; the target is on nginx, row proxy)", None),
        ("wrk_errors", "0", lambda v: v == 0)]),
    "proxy_economy": (p.proxy_economy, {"jobs": 2000, "speed": 4}, {"jobs": 300, "speed": 10}, [
        ("own_requests_per_job", "<= 0.05", lambda v: v <= 0.05), ("app_requests_per_job", "reported", None),
        ("jobs_counted", "= jobs", None)]),
    "config_50k_inline": (config_load.config_load, {"ids": 50_000}, {"ids": 50_000}, [
        ("healthy_seconds", "<= 1 s (process start to /-/healthy)", lambda v: v <= 1),
        ("ready_seconds", "reported (process start to /-/ready)", None),
        ("check_seconds", "<= 1 s (--config.check, whole process)", lambda v: v <= 1)]),
    "postgres": (pg.postgres, {"ids": 20_000, "facts_jobs": 1_000_000}, {"ids": 2_000, "facts_jobs": 50_000}, [
        ("sqlite_polls_per_second", "reported (one replica on SQLite, same upstream)", None),
        ("pg_one_ratio", ">= 0.7 (one replica on PostgreSQL / SQLite)", lambda v: v >= 0.7),
        ("pg_three_ratio", "reported (three replicas on PostgreSQL / SQLite; 2 cores)", None),
        ("pg_one_cpu_share", "reported (cores busy in PostgreSQL, one replica)", None),
        ("pg_three_cpu_share", "reported (cores busy in PostgreSQL, three replicas)", None),
        ("claim_p99_ms", "reported (32 due jobs, SKIP LOCKED)", None),
        ("apply_p99_ms", "reported (a non-final answer)", None),
        ("apply_final_p99_ms", "reported (a final answer with its counters, one transaction)", None),
        ("register_p99_ms", "reported (100 ids)", None),
        ("export_seconds", "reported (state export of the prepared file)", None),
        ("facts_read_p99_ms", "reported (the database read behind /metrics/jobs, uncached)", None),
        ("metrics_jobs_p99_ms", "<= 50 ms", lambda v: v <= 50),
        ("metrics_jobs_median_ms", "reported", None)]),
    "postgres_proxy": (postgres_proxy, {"seconds": 10}, {"seconds": 4}, [
        ("create_added_p99_ms", "<= 2 ms at 500/s (committed to PostgreSQL before the answer)", lambda v: v <= 2),
        ("create_added_p50_ms", "reported", None), ("create_direct_p99_ms", "reported", None),
        ("create_paced_rps", "reported (the rate reached through the proxy)", None),
        ("sqlite_create_added_p99_ms", "reported (the proxy on SQLite, journal not flushed: the default)", None),
        ("sqlite_fsync_create_added_p99_ms", "reported (the proxy on SQLite with proxy.fsync_creates)", None),
        ("sqlite_create_added_p50_ms", "reported", None), ("sqlite_fsync_create_added_p50_ms", "reported", None),
        ("create_added_p50_ms_fsync_off", "reported", None),
        ("result_added_p99_ms", "reported (answers applied after they went back)", None),
        ("create_added_p99_ms_fsync_off", "reported (PostgreSQL's WAL flush off: the code's share)", None),
        ("disk_flush_p99_ms", "reported (8 kB write + fdatasync here: a durable commit's floor)", None),
        ("commit_late", "0", lambda v: v == 0),
        ("creates_stored", ">= creates_forwarded (one in flight when wrk stops: stored, not counted)", None),
        ("creates_forwarded", "reported", None),
        ("paced_failures", "0", lambda v: v == 0)]),
    "postgres_facts": (pgf.postgres_facts, {"jobs": 1_000_000}, {"jobs": 100_000, "scrapes": 200, "reads": 30}, [
        ("metrics_jobs_p99_ms", "<= 50 ms (through a replica: facts read every 1 s in the background while scraped, jobs finishing meanwhile)", lambda v: v <= 50),
        ("metrics_jobs_median_ms", "reported", None),
        ("metrics_jobs_max_ms", "reported (the slowest of the scrapes)", None),
        ("replica_cpu_share", "reported (cores the replica used while scraped, 20/s, with 100 finals/s)", None),
        ("facts_read_p99_ms", "reported (the database read behind a cache miss: rows changed since the last)", None),
        ("facts_read_median_ms", "reported", None),
        ("facts_whole_read_ms", "reported (a replica's first read: every counter row)", None),
        ("gauges_refresh_median_ms", "reported (the gauges leader's scan of the unfinished jobs, every 2 s)", None),
        ("finished_during", "reported (final answers applied while measuring)", None),
        ("truth_mismatch", "0 (the route's totals - the rows)", lambda v: v == 0),
        ("fill_seconds", "reported (the state written by generate_series)", None)]),
    "simulator": (b.simulator_throughput, {"jobs": 100_000}, {"jobs": 10_000}, [
        ("answers_per_second", ">= 2,000 /s", lambda v: v >= 2000)]),
}


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, {platform.platform()}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (minutes, not tens of minutes)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each benchmark (default 3)")
    parser.add_argument("--only", action="append", choices=sorted(PLAN), help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="where to write the table")
    parser.add_argument("--rewrite", action="store_true",
                        help="run nothing: write RESULTS.md again from its table and NOTES.md, and quote it in docs/benchmarks.md")
    args = parser.parse_args()
    if args.rewrite:
        old = args.out.read_text()
        runs = re.search(r"^- runs per benchmark: (\d+)", old, re.M)
        write(args.out, merged(old, []), int(runs.group(1)) if runs else args.repeats, False)
        return 0
    repeats = 1 if args.quick else args.repeats
    cache = Path(tempfile.gettempdir()) / "distribute-bench-cache"
    rows = []
    for name in args.only or list(PLAN):
        fn, full, quick, figures = PLAN[name]
        kwargs = dict(quick if args.quick else full)
        if fn in (b.scrape_latency, jobs_query):
            kwargs["cache"] = cache
        runs = []
        for attempt in range(repeats):
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as work:
                started = time.monotonic()
                runs.append(fn(Path(work), **kwargs))
                print(f"{name} run {attempt + 1}/{repeats} ({time.monotonic() - started:.0f}s): "
                      + ", ".join(f"{k}={v:.4g}" for k, v in runs[-1].items()), flush=True)
        size = ", ".join(f"{k}={v:,}" for k, v in kwargs.items() if k != "cache")
        for figure, target, check in figures:
            values = [r[figure] for r in runs if figure in r]
            if not values:
                continue  # a figure of the comparison with BENCH_BASELINE, when none was given
            median = statistics.median(values)
            verdict = "–" if check is None else ("met" if check(median) else "**missed**")
            rows.append((name, size, figure, median, min(values), max(values), target, verdict))
    stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"
    rows = [(*row, stamp) for row in rows]
    if args.only and args.out.exists():
        rows = merged(args.out.read_text(), rows)
    write(args.out, rows, repeats, args.quick)
    print(f"wrote {args.out}")
    return 0


def merged(old_text: str, rows: list) -> list:
    """`rows` in place of the same benchmarks' rows of an earlier table; the others kept, in order."""
    fresh = {row[0] for row in rows}
    dated = re.search(r"^- date: (.+?)( UTC)?$", old_text, re.M)  # tables from before rows were dated
    kept = []
    for line in old_text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or not line.startswith("| ") or cells[0] in ("benchmark", "---") or cells[0] in fresh:
            continue
        stamp = cells[7] if len(cells) > 7 else (dated.group(1) if dated else "")
        kept.append((*cells[:5], None, cells[5], cells[6], stamp))
    order = list(PLAN)
    order.insert(order.index("scrape_1m") + 1, "scrape_ratio")
    return sorted(kept + rows, key=lambda row: order.index(row[0]) if row[0] in order else len(order))


def with_ratio(rows: list) -> list:
    """Add the issue's scrape target, p99(1M) / p99(1k), from the two medians (a derived row)."""
    rows = [row for row in rows if row[0] != "scrape_ratio"]
    p99 = {row[0]: (float(str(row[3]).replace(",", "")), row[8]) for row in rows if row[2] == "gzip_p99_ms"}
    if "scrape_1m" in p99 and "scrape_1k" in p99:
        ratio = p99["scrape_1m"][0] / p99["scrape_1k"][0]
        stamp = max(p99["scrape_1m"][1], p99["scrape_1k"][1])
        row = ("scrape_ratio", "1M / 1k jobs", "gzip_p99_ratio", ratio, ratio, ratio, "<= 1.5 (of the medians)",
               "met" if ratio <= 1.5 else "**missed**", stamp)
        at = max(i for i, r in enumerate(rows) if r[0] == "scrape_1m") + 1
        rows = rows[:at] + [row] + rows[at:]
    return rows


def write(path: Path, rows, repeats: int, quick: bool) -> None:
    rows = with_ratio(rows)
    lines = [f"# Benchmark results{' (quick sizes)' if quick else ''}", "",
             f"- machine: {machine()}", f"- runs per benchmark: {repeats} (median, and min–max spread)",
             f"- command: `python -m bench{' --quick' if quick else ''}` (`--only NAME` re-runs one "
             "benchmark and keeps the other rows; each row says when it was measured)", "",
             TABLE_HEAD,
             "|---|---|---|---|---|---|---|---|"]
    for name, size, figure, median, low, high, target, verdict, stamp in rows:
        if isinstance(median, str):  # kept from the earlier table as written
            lines.append(f"| {name} | {size} | {figure} | {median} | {low} | {target} | {verdict} | {stamp} |")
            continue
        lines.append(f"| {name} | {size} | {figure} | {median:,.3g} | {low:,.3g}–{high:,.3g} | {target} | {verdict} "
                     f"| {stamp} |")
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    path.write_text("\n".join(lines) + "\n")
    if path == HERE / "RESULTS.md" and not quick:
        quote_in_docs(lines[lines.index(TABLE_HEAD):lines.index(TABLE_HEAD) + 2 + len(rows)])


TABLE_HEAD = "| benchmark | size | figure | median | spread | target | verdict | measured (UTC) |"
BENCH_PAGE = HERE.parent / "docs" / "benchmarks.md"
MARKS = ("<!-- bench:table -->\n", "<!-- /bench:table -->\n")


def quote_in_docs(table: list[str]) -> None:
    """Put the table between the benchmarks page's markers, so that the manual quotes what was measured."""
    text = BENCH_PAGE.read_text()
    start, end = text.index(MARKS[0]) + len(MARKS[0]), text.index(MARKS[1])
    BENCH_PAGE.write_text(text[:start] + "\n".join(table) + "\n" + text[end:])


if __name__ == "__main__":
    sys.exit(main())
