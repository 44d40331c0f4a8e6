"""The status page with two replicas on one real PostgreSQL: the last hour's charts and spend
today come from the shared database, so both replicas draw the same page, equal to the truth (the
simulator's jobs and the replicas' own request counters)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from helpers import free_port, http, parse_samples, total, wait_for, write_config
from test_cost import PRICE_FILE, PRICES, job_cost
from test_exporter import OLD
from test_pg_replicas import ENV, register

FINISHED_CHART = "Jobs finished per minute, by kind"
DURATION_CHART = "Duration of jobs finished in the last hour, by kind"
API_CHART = "API result requests per minute (ok and failed)"


def charts(url: str) -> dict[str, str]:
    """The page's charts by title (the SVG the browser draws)."""
    status, body, _ = http("GET", f"{url}/")
    assert status == 200, body
    page = body.decode()
    found = re.findall(r"<figcaption>(.*?)</figcaption>\s*(<svg\b.*?</svg>)", page, flags=re.S)
    assert len(found) == 4, page[:2000]
    return dict(found)


def bar_counts(svg: str, pattern: str) -> Counter:
    """The numbers in the bars' tooltips, summed by the key `pattern` captures."""
    counts: Counter = Counter()
    for key, n in re.findall(pattern, svg):
        counts[key] += int(n)
    return counts


def spend_rows(url: str) -> list[tuple[str, ...]]:
    page = http("GET", f"{url}/")[1].decode()
    assert "Estimated spend today" in page, page[-2000:]
    table = page.split("Estimated spend today")[1]
    return re.findall(r"<tr><th>([^<]+)</th><td>([A-Z]+)</td><td>([\d.]+)</td><td>(\d+)</td><td>(\d+)</td></tr>",
                      table)


@pytest.mark.slow
def test_two_replicas_draw_the_same_charts_and_spend_today_from_the_database(
        simulator, exporter, tmp_path, pg_db, pg_server):
    url, password_file = pg_db
    sim = simulator("--seed", "29", "--speed", "10")
    (tmp_path / "prices.yaml").write_text(PRICE_FILE)
    cfg = write_config(tmp_path, (
        f"api: {{base_url: '{sim.url}', max_requests_per_second: 0, timeout_seconds: 2}}\n"
        "poll: {interval_seconds: 0.3, max_interval_seconds: 1, not_found_grace_seconds: 30}\n"
        f"state: {{url: '{url}', password_file: '{password_file}', retention_seconds: 100000000}}\n"
        "pricing: {file: prices.yaml}\njobs: []\n"))
    replicas = [exporter(cfg, env=ENV, port=free_port()) for _ in range(2)]
    db = url.rsplit("/", 1)[1]
    # The timeline's leader has written a sample before any job exists: all growth is on the charts.
    wait_for(lambda: int(pg_server.psql("SELECT count(*) FROM timeline", db=db)) >= 1, 60, 0.3,
             what="a first shared sample")

    # Jobs finished days ago (counted, but not in today's spend) and jobs that finish now, priced
    # (Chatterbox) and unpriced (Kokoro), registered through either replica.
    old = sim.create("chat", 12, age_seconds=OLD) + sim.create("images", 6, age_seconds=OLD)
    today = sim.create("speech", 5, model="Chatterbox")
    odd = sim.create("speech", 3, model="Kokoro")
    assert register(replicas[0].url, "chat", old[:12]) == (12, 0)
    assert register(replicas[1].url, "images", old[12:]) == (6, 0)
    registered = [register(replicas[i].url, "speech", ids) for i, ids in ((0, today), (1, odd))]
    assert registered == [(5, 0), (3, 0)]
    every = old + today + odd
    truth = wait_for(lambda: (t := sim.truth()) and all(t[i]["status"] in ("COMPLETED", "ERROR") for i in every)
                     and t, 60, 0.3, what="every simulated job final")
    by_kind = Counter(truth[i]["kind"] for i in every)
    wait_for(lambda: total(parse_samples(http("GET", f"{replicas[0].url}/metrics/jobs")[1].decode(),
                                          "distribute_jobs_finished_total")) == len(every), 60, 0.3,
             what="every job counted")

    def api_requests() -> int:
        return int(sum(total(r.samples("distribute_api_requests_total")) for r in replicas))

    def drawn() -> tuple[dict[str, str], dict[str, str]]:
        return charts(replicas[0].url), charts(replicas[1].url)

    # A sample after the last job finished (at most 10 s later), with every replica's requests.
    def settled() -> bool:
        one, two = drawn()
        finished = bar_counts(one[FINISHED_CHART], r"<title>\d\d:\d\d (\w+): (\d+)</title>")
        api = bar_counts(one[API_CHART], r"<title>\d\d:\d\d (ok|failed): (\d+)</title>")
        return one == two and finished == by_kind and sum(api.values()) == api_requests()
    wait_for(settled, 90, 0.5, what="both replicas' charts equal to the truth")
    one, two = drawn()
    assert one == two
    durations = bar_counts(one[DURATION_CHART], r"<title>(\w+) [^<]*: (\d+)</title>")
    assert durations == by_kind  # every job has a duration, each in one bucket
    assert api_requests() >= len(every)  # each job asked at least once, by one replica or the other

    # Spend today: the jobs that finished today, priced or not, per group; the same on both.
    cost = sum(job_cost(truth[i], PRICES[("speech", "Chatterbox")]) for i in today)
    want = [("g", "USD", f"{cost:.4f}", "5", "3")]
    assert [spend_rows(r.url) for r in replicas] == [want, want]
    # ... exact from the shared row: the jobs of the day in the database say the same.
    summed = pg_server.psql("SELECT round(sum(estimated_cost)::numeric, 4), count(estimated_cost), "
                            "count(*) - count(estimated_cost) FROM jobs "
                            "WHERE final = 1 AND ended >= floor(extract(epoch from now()) / 86400) * 86400", db=db)
    assert summed.strip().split("|") == [f"{cost:.4f}", "5", "3"]
