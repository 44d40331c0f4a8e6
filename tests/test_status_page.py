"""The status page and a job page in a real browser (Debian's headless Chromium): the charts are
drawn with data, the tables link to job pages, nothing is loaded from elsewhere, no secret shows.
Screenshots are saved with the test's other outputs (its tmp_path, and $SCREENSHOT_DIR if set)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from conftest import tool
from helpers import get_json, http, total, wait_for, write_config
from test_exporter import OLD

TOKEN = "status-page-token-5678"
API_KEY = "sk-status-page-secret-91011"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def chromium(tmp_path: Path, url: str, name: str) -> str:
    """Render `url`; save a screenshot as <name>.png; answer the DOM after rendering."""
    shot = tmp_path / f"{name}.png"
    profile = tmp_path / f"chromium-{name}"
    args = [tool("chromium"), *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,2200"]
    subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    assert shot.exists() and shot.stat().st_size > 10_000, "an empty screenshot"
    if os.environ.get("SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["SCREENSHOT_DIR"]) / shot.name)
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, timeout=120, check=True, text=True)
    return dom.stdout


def svgs(dom: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)


def test_status_page_and_job_page_in_a_browser(simulator, exporter, tmp_path):
    sim = simulator("--seed", "3", "--timestamps", "epoch-ms", "--speed", "0.01", "--api-key", API_KEY)
    waiting = sim.create("chat", 4, age_seconds=20) + sim.create("images", 2, age_seconds=10)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    key = tmp_path / "key"
    key.write_text(API_KEY + "\n")
    key.chmod(0o600)
    cfg = write_config(tmp_path, f"api: {{base_url: '{sim.url}', max_requests_per_second: 0, api_key_file: {key}}}\n"
                       "poll: {interval_seconds: 0.2, max_interval_seconds: 1}\n"
                       f"web: {{registration_token_file: {token}}}\n"
                       "state: {path: state.db, flush_interval_seconds: 0.2, retention_seconds: 100000000}\n"
                       f"jobs:\n  - {{kind: chat, group: nightly, ids: {json.dumps(waiting[:4])}}}\n"
                       f"  - {{kind: images, group: renders, ids: {json.dumps(waiting[4:])}}}\n")
    proc = exporter(cfg)
    # Jobs that finish after the start: in the last hour's charts. Slowed down 100 times, jobs
    # created 90 minutes ago have run 54 s: many have finished, a good share within the last hour.
    done = {kind: sim.create(kind, n, age_seconds=OLD) for kind, n in (("chat", 20), ("images", 8), ("speech", 8))}
    done["chat"] += sim.create("chat", 30, age_seconds=5400)
    for kind, ids in done.items():
        status, _, _ = http("POST", f"{proc.url}/api/v1/jobs", {"kind": kind, "group": "late", "ids": ids},
                            {"Authorization": f"Bearer {TOKEN}"})
        assert status == 202
    truth = sim.truth()
    final = sum(1 for ids in done.values() for i in ids if truth[i]["status"] in ("COMPLETED", "ERROR"))
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == final, 30, what="the jobs finished")
    wait_for(lambda: get_json(f"{proc.url}/api/v1/jobs?unfinished=false&finished_after=-1h&limit=1")["jobs"], 10,
             what="a job finished in the last hour")
    slowest_ids = [j["id"] for j in get_json(f"{proc.url}/api/v1/jobs?unfinished=false&finished_after=-1h"
                                              "&sort=-duration&limit=10")["jobs"]]
    failed = [j["id"] for j in get_json(f"{proc.url}/api/v1/jobs?status=ERROR&status=NOT_FOUND"
                                          "&finished_after=-1h&limit=10")["jobs"]]

    dom = chromium(tmp_path, proc.url + "/", "status-page")
    assert "distribute-exporter" in dom and API_KEY not in dom and TOKEN not in dom
    for link in ("metrics", "-/healthy", "-/ready"):  # today's links stay at the top
        assert f'href="{link}"' in dom.split("<h2>")[0]
    charts = svgs(dom)
    assert len(charts) == 4
    for chart in charts:  # each drawn, with data: lines with points or bars with a height
        assert 'data-empty="false"' in chart, chart[:300]
        points = re.findall(r'<polyline[^>]*points="([^"]+)"', chart)
        heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]*height="([\d.]+)"', chart)]
        assert any(len(p.split()) >= 2 for p in points) or any(h > 0 for h in heights), chart[:300]
    # nothing loaded from anywhere but the exporter
    assert not re.search(r'<(script|link|img|iframe)\b[^>]*\b(src|href)="(https?:)?//', dom)
    # the tables: oldest unfinished first, and every id a link to its page
    oldest = get_json(f"{proc.url}/api/v1/jobs?unfinished=true&sort=created&limit=10")["jobs"]
    table = dom.split("Oldest unfinished jobs")[1].split("</table>")[0]
    assert re.findall(r'href="jobs/([0-9a-f-]{36})"', table) == [j["id"] for j in oldest]
    slowest = dom.split("Slowest jobs finished")[1].split("</table>")[0]
    assert re.findall(r'href="jobs/([0-9a-f-]{36})"', slowest) == slowest_ids
    failed_table = dom.split("Failed jobs of the last hour")[1].split("</table>")[0]
    assert re.findall(r'href="jobs/([0-9a-f-]{36})"', failed_table) == failed

    job_id = done["chat"][0]
    page = chromium(tmp_path, f"{proc.url}/jobs/{job_id}", "job-page")
    record = get_json(f"{proc.url}/api/v1/jobs/{job_id}")
    assert job_id in page and record["status"] in page and API_KEY not in page
    history = page.split("Status history")[1]
    assert [h["status"] for h in record["history"]] == re.findall(r'<td class="id">([A-Z_]+)</td>', history)
    assert http("GET", f"{proc.url}/jobs/3b241101-e2bb-4255-8caf-4136c566a962")[0] == 404


def test_the_ring_has_a_fixed_size_and_the_per_minute_counts_add_up():
    from exporter.http.charts import charts, per_minute
    from exporter.tracking.aggregates import ApiAggregates, JobAggregates
    from exporter.tracking.timeline import Timeline

    jobs, api = JobAggregates((1.0, 10.0)), ApiAggregates((0.1,))
    ring = Timeline(jobs, api, size=30)
    start = 1_000_000.0
    for i in range(100):  # 100 samples 10 s apart, a job finishing before each
        jobs.record_finished(("chat", "g", "m", "COMPLETED"), 5.0, 1, 1, 0, {}, 0)
        api.record("chat", "200", 0.05, None, start + i * 10)
        ring.sample(start + i * 10)
    assert len(ring.ring) == 30
    now = start + 99 * 10
    samples = ring.samples(now)
    minutes = per_minute(samples, now, lambda s: s.finished)
    assert sum(m.get("chat", 0) for m in minutes) == 29  # the growth over the 30 samples kept
    drawn = charts(samples, jobs.bounds, now)
    assert len(drawn) == 4 and not drawn[1]["empty"] and drawn[1]["bars"]
    assert sum(1 for bar in drawn[2]["bars"]) == 1 and "≤10s" in drawn[2]["bars"][0]["title"]
