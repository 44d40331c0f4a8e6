"""Small versions of every benchmark, so that `python -m bench` stays runnable. They check what each
run measured (counts, ratios, no failed scrape), never how fast: timings are the bench command's."""

from __future__ import annotations

import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO))
from bench import benchmarks as b  # noqa: E402
from bench import config_load, poll_realistic  # noqa: E402
from bench import proxy as p  # noqa: E402
from bench.fixtures import prepare_state  # noqa: E402
from exporter.tracking.store import StateStore  # noqa: E402


def test_prepared_state_is_consistent(tmp_path):
    counts = prepare_state(tmp_path / "s.db", 3000)
    store = StateStore(str(tmp_path / "s.db"))
    store.open()
    closed = sum(n for _, n in store.closed_counts())
    counters = store.load_counters()
    finished = sum(v for family, _, v in counters if family == "finished")
    assert sorted(store.closed_counts()) == sorted((l, v) for f, l, v in counters if f == "closed")
    assert closed == counts["final"] and len(store.load_open_jobs()) == counts["unfinished"]
    assert 0 < finished <= closed  # NOT_FOUND jobs are closed but never finished
    store.close()


def test_poll_throughput_realistic_small(tmp_path):
    """Every job passes QUEUED and PROCESSING before its final status, each answer is one poll, and
    the state file holds every job final with the model the upstream named."""
    figures = poll_realistic.poll_throughput(tmp_path, ids=1500, wrk_seconds=1, check=True)
    assert figures["polls_per_job"] == 3
    assert figures["peak_queued"] > 0 and figures["peak_processing"] > 0
    assert figures["state_rows"] == figures["state_finals"] == figures["state_three_polls"] == 1500
    assert figures["state_models_right"] == 1500
    assert figures["polls_per_second"] > 0 and 0 < figures["ratio_to_wrk"] < 1
    assert figures["cpu_us_per_poll"] > 0 and figures["upstream_cpu_share"] > 0


def test_realistic_answers_have_the_shapes_of_the_schema():
    import json
    import random

    from exporter.api.results import parse_result

    rng = random.Random(1)
    kinds = {"chat": 0, "images": 0, "speech": 0}
    for n in range(300):
        kind = ("chat", "images", "speech")[n % 3]
        queued, processing, final = (json.loads(b) for b in poll_realistic.answers(f"id-{n}", kind, "m", rng, 1.7e9))
        assert (queued["status"], processing["status"]) == ("QUEUED", "PROCESSING")
        assert final["status"] in ("COMPLETED", "ERROR") and "finished" in final
        result = parse_result(json.dumps(final).encode())
        if final["status"] == "COMPLETED":
            kinds[kind] += 1
            if kind == "chat":
                assert final["usage"]["total_tokens"] == result.prompt_tokens + result.completion_tokens
                assert result.choices
            else:
                assert 1 <= result.results <= (4 if kind == "images" else 1)
    assert min(kinds.values()) > 50


def test_config_load_small(tmp_path):
    figures = config_load.config_load(tmp_path, ids=2000)
    assert figures["ready_seconds"] >= figures["healthy_seconds"] > 0 and figures["check_seconds"] > 0


def test_poll_throughput_small(tmp_path):
    figures = b.poll_throughput(tmp_path, ids=2000, wrk_seconds=1)
    assert figures["polls_per_second"] > 0 and figures["wrk_rps"] > 0
    assert 0 < figures["ratio_to_wrk"] < 1 and figures["cpu_us_per_poll"] > 0


def test_scrape_latency_small(tmp_path):
    figures = b.scrape_latency(tmp_path, jobs=3000, scrapes=20)
    assert figures["series_lines"] > 1000 and figures["rss_mb"] > 0
    assert figures["gzip_p99_ms"] >= figures["gzip_median_ms"] > 0


def test_api_economy_small(tmp_path):
    figures = b.api_economy(tmp_path, jobs=120, speed=40, interval=2)
    assert figures["fixed_requests_per_job"] >= figures["requests_per_job"] >= 1
    assert figures["delay_median_real_s"] >= 0


def test_id_files_small(tmp_path):
    figures = b.id_files(tmp_path, lines=5000, appended=100)
    assert figures["persisted_seconds"] >= figures["first_load_seconds"] > 0
    assert figures["append_pickup_seconds"] > 0


def test_scrape_load_small(tmp_path):
    figures = b.scrape_load(tmp_path, jobs=300, scrapers=10, seconds=5, rate=100)
    assert figures["failed_scrapes"] == 0 and figures["scrapes_per_second"] > 0
    assert figures["poll_rate_quiet"] > 0 and figures["poll_rate_loaded"] > 0


def test_simulator_throughput_small(tmp_path):
    assert b.simulator_throughput(tmp_path, jobs=1000, seconds=1)["answers_per_second"] > 0


def test_proxy_small(tmp_path):
    figures = p.proxy(tmp_path, seconds=2, rate=100, wrk_seconds=1)
    assert figures["proxy_rps"] > 0 and figures["direct_rps"] > 0 and figures["rps_ratio"] > 0
    assert figures["bare_forwarder_rps"] > 0 and figures["bare_forwarder_ratio"] > 0
    assert figures["paced_failures"] == 0 and figures["wrk_errors"] == 0
    assert figures["creates_tracked"] > 0 and figures["create_proxy_p99_ms"] > 0


def test_proxy_simulator_small(tmp_path):
    figures = p.proxy_simulator(tmp_path, wrk_seconds=1)
    assert figures["sim_proxy_rps"] > 0 and figures["sim_direct_rps"] > 0 and figures["wrk_errors"] == 0


def test_proxy_economy_small(tmp_path):
    figures = p.proxy_economy(tmp_path, jobs=40, speed=20, app_poll=1, interval=5, create_rate=40)
    assert figures["jobs_counted"] == 40 and figures["followed_to_the_end"] == 40
    assert figures["app_failures"] == 0 and figures["app_requests_per_job"] >= 1
    assert 0 <= figures["own_requests_per_job"] < 1


def test_the_benchmarks_page_quotes_the_results_table_as_measured():
    results = (REPO / "bench" / "RESULTS.md").read_text()
    page = (REPO / "docs" / "benchmarks.md").read_text()
    quoted = page.split("<!-- bench:table -->\n")[1].split("<!-- /bench:table -->")[0]
    table = [line for line in results.splitlines() if line.startswith("|")]
    assert quoted.strip().splitlines() == table


def test_poll_priced_small(tmp_path):
    from bench.cost import priced_polls

    figures = priced_polls(tmp_path, ids=1000, wrk_seconds=1)
    assert figures["polls_per_second_plain"] > 0 and figures["polls_per_second_priced"] > 0
    assert figures["cpu_us_per_poll_priced"] > 0 and 0 < figures["ratio_to_wrk_priced"] < 1
    prices = (tmp_path / "priced" / "prices.yaml").read_text()
    assert prices.count("kind:") == 60 and "Chatter" in prices
    for run, priced in (("plain", 0), ("priced", 1000)):  # every job of the priced run priced, once
        store = StateStore(str(tmp_path / run / "state.db"))
        store.open()
        assert store.db.execute("SELECT count(estimated_cost), total(estimated_cost) FROM jobs").fetchone() == \
            (priced, pytest.approx(priced * 0.001))
        store.close()
def test_jobs_query_small(tmp_path):
    from bench.jobs_query import jobs_query

    # No baseline build here (it needs the baseline commit in the clone): the full bench has it.
    figures = jobs_query(tmp_path, jobs=3000, requests=5, scrapes=20, pages=5, baseline=None)
    for name in ("oldest_unfinished", "slowest_last_hour", "group_status"):
        assert figures[f"{name}_p99_ms"] >= figures[f"{name}_median_ms"] > 0 and figures[f"{name}_jobs"] > 0
    assert figures["metrics_gzip_p99_ms"] > 0 and figures["metrics_identity_p99_ms"] > 0
    assert "metrics_gzip_p99_ratio" not in figures
    assert figures["ring_kb"] > 0 and figures["rss_mb"] > 0


def test_postgres_small(tmp_path):
    from bench.postgres import postgres

    figures = postgres(tmp_path, ids=300, facts_jobs=3000, statement_ids=500, scrapes=20)
    assert figures["sqlite_polls_per_second"] > 0 and 0 < figures["pg_one_ratio"] and 0 < figures["pg_three_ratio"]
    assert 0 < figures["pg_one_cpu_share"] < 2 and 0 < figures["pg_three_cpu_share"] < 2  # this cluster's only
    for name in ("claim", "apply", "apply_final", "register", "facts_read", "metrics_jobs"):
        assert figures[f"{name}_p99_ms"] > 0, name
    assert figures["export_seconds"] > 0


def test_tracing_small(tmp_path):
    from bench.tracing import traced_polls

    figures = traced_polls(tmp_path, ids=300, rounds=2, final_ids=300, final_rounds=1)
    for prefix, polls_per_job in (("", 3), ("final_", 1)):  # realistic: QUEUED, PROCESSING, final
        assert figures[prefix + "polls_per_second_off"] > 0 and figures[prefix + "polls_per_second_on"] > 0
        assert figures[prefix + "polls_per_second_hang"] > 0 and figures[prefix + "spans_per_second"] > 0
        for variant in ("off", "on", "hang"):
            assert figures[f"{prefix}polls_per_job_{variant}"] == polls_per_job
        assert figures[prefix + "traces_exported_fewest"] == 300  # one root span per job, every "on" round
        for variant in ("on", "hang"):
            low, mid, high = (figures[f"{prefix}rate_ratio_{variant}{s}"] for s in ("_lowest", "", "_highest"))
            assert 0 < low <= mid <= high and figures[f"{prefix}cpu_ratio_{variant}"] > 0
    # Realistic jobs' traces carry a child span per status phase seen; every poll final, none.
    assert figures["spans_exported"] > 300 and figures["final_spans_exported"] == 300
    for case, rounds in (("realistic", 2), ("final", 1)):  # each round ran every variant on its own copy
        for round_no in range(rounds):
            for run, owed in (("off", 0), ("on", 0), ("hang", 300)):  # sent, or still owed to a silent collector
                store = StateStore(str(tmp_path / case / f"round{round_no}" / run / "state.db"))
                store.open()
                assert store.db.execute("SELECT count(*) FROM traces_owed").fetchone()[0] == owed
                assert store.db.execute("SELECT count(*) FROM jobs WHERE final = 1").fetchone()[0] == 300
                store.close()


def test_postgres_proxy_small(tmp_path):
    from bench.postgres_proxy import postgres_proxy

    figures = postgres_proxy(tmp_path, seconds=2, rate=100)
    assert figures["paced_failures"] == 0 and figures["commit_late"] == 0
    # every create answered through the proxy is a row in PostgreSQL (one in flight when wrk stops
    # may be stored without being counted as answered)
    assert figures["creates_stored"] >= figures["creates_forwarded"] > 0
    for name in ("create_direct_p99_ms", "sqlite_create_added_p99_ms", "sqlite_fsync_create_added_p99_ms",
                 "create_added_p99_ms_fsync_off", "disk_flush_p99_ms"):
        assert figures[name] == figures[name], name  # measured (not NaN)
    assert figures["disk_flush_p99_ms"] > 0 and figures["create_paced_rps"] > 0


def test_postgres_facts_small(tmp_path):
    from bench.postgres_facts import postgres_facts

    figures = postgres_facts(tmp_path, jobs=3000, scrapes=30, reads=10, rate=50.0)
    assert figures["truth_mismatch"] == 0  # the route's totals equal the rows, finals applied meanwhile
    assert figures["finished_during"] > 0
    for name in ("metrics_jobs_p99_ms", "metrics_jobs_median_ms", "facts_read_p99_ms", "facts_whole_read_ms",
                 "gauges_refresh_median_ms"):
        assert figures[name] > 0, name
