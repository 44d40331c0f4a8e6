"""Exemplars name real jobs: a real Prometheus with exemplar storage scrapes the exporter's
OpenMetrics exposition and returns, through /api/v1/query_exemplars, ids of tracked jobs whose
durations lie in the bucket that carries them. The classic text format has none and stays clean."""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.parse

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import tool
from helpers import get_json, http, wait_for, write_config
from prom import Prometheus, local_prometheus_config
from test_exporter import OLD, config_text

OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}


def exemplars(prom: Prometheus, expr: str) -> list[dict]:
    query = urllib.parse.urlencode({"query": expr, "start": time.time() - 30 * 86400, "end": time.time() + 60})
    answer = get_json(f"{prom.url}/api/v1/query_exemplars?{query}")
    assert answer["status"] == "success", answer
    return answer["data"]


def test_prometheus_stores_exemplars_that_name_tracked_jobs_in_their_bucket(simulator, exporter, tmp_path):
    sim = simulator("--seed", "5", "--timestamps", "epoch-ms")
    chat = sim.create("chat", 30, age_seconds=OLD)
    images = sim.create("images", 10, age_seconds=OLD)
    speech = sim.create("speech", 10, age_seconds=OLD)
    groups = (f"  - {{kind: chat, group: nightly, ids: {json.dumps(chat)}}}\n"
              f"  - {{kind: images, group: renders, ids: {json.dumps(images)}}}\n"
              f"  - {{kind: speech, ids: {json.dumps(speech)}}}\n")
    proc = exporter(write_config(tmp_path, config_text(sim.url, groups)))
    wait_for(lambda: len(get_json(f"{proc.url}/api/v1/jobs?unfinished=false&limit=100")["jobs"]) == 50, 30,
             what="all 50 jobs final")

    # the classic text format: no exemplar, promtool clean
    text = proc.metrics()
    assert " # {" not in text
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # OpenMetrics: prometheus_client's own parser reads it, exemplars included
    status, body, headers = http("GET", f"{proc.url}/metrics", headers=OPENMETRICS)
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    parsed = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples if s.exemplar]
    assert {s.name for s in parsed} == {"distribute_job_duration_seconds_bucket", "distribute_jobs_finished_total"}
    records = {i: get_json(f"{proc.url}/api/v1/jobs/{i}") for i in chat + images + speech}
    for sample in parsed:
        job = records[sample.exemplar.labels["job_id"]]
        assert (job["kind"], job["group"], job["model"], job["status"]) == tuple(
            sample.labels[k] for k in ("kind", "group", "model", "status"))
        assert math.isclose(sample.exemplar.timestamp, job["ended"], abs_tol=0.01)

    prom = Prometheus(tmp_path / "prom", local_prometheus_config([f"127.0.0.1:{proc.port}"], []),
                      "--enable-feature=exemplar-storage")
    try:
        wait_for(prom.targets_up, 30, what="the exporter target up")
        found = wait_for(lambda: exemplars(prom, "distribute_job_duration_seconds_bucket"), 30,
                         what="exemplars stored by Prometheus")
        checked = 0
        for series in found:
            labels = series["seriesLabels"]
            upper = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            bounds = sorted(float(b["seriesLabels"]["le"]) for b in found if b["seriesLabels"]["le"] != "+Inf")
            lower = max([b for b in bounds if b < upper], default=-math.inf)
            for exemplar in series["exemplars"]:
                job = records[exemplar["labels"]["job_id"]]  # a real tracked job
                assert labels["kind"] == job["kind"] and labels["model"] == job["model"]
                assert math.isclose(float(exemplar["value"]), job["duration"], rel_tol=1e-9)
                # in this bucket, and not in the one below (Prometheus stores each bucket's own)
                assert job["duration"] <= upper
                assert job["duration"] > lower or not any(
                    float(b["seriesLabels"]["le"]) == lower and b["seriesLabels"]["model"] == labels["model"]
                    and b["seriesLabels"]["status"] == labels["status"] for b in found)
                checked += 1
        assert checked >= 10
        finished = wait_for(lambda: exemplars(prom, "distribute_jobs_finished_total"), 30,
                            what="exemplars of the finished counter")
        assert all(e["labels"]["job_id"] in records for s in finished for e in s["exemplars"])
    finally:
        prom.stop()


def test_the_latency_panel_shows_exemplars_linked_to_job_pages():
    """Checked statically (no Grafana server here): exemplars asked for on the latency panel, the
    datasource links job_id to /jobs/<id>, and the compose Prometheus stores exemplars."""
    import yaml

    from helpers import REPO

    board = json.loads((REPO / "grafana" / "dashboards" / "distribute-jobs.json").read_text())
    latency = next(p for p in board["panels"] if p["title"].startswith("Latency p50"))
    assert latency["targets"] and all(t["exemplar"] is True for t in latency["targets"])
    assert all("distribute_job_duration_seconds_bucket" in t["expr"] for t in latency["targets"])
    link = latency["fieldConfig"]["defaults"]["links"][0]["url"]
    assert link.startswith("${exporter_url}/api/v1/jobs?") and "sort=-duration" in link
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["exporter_url"]["type"] == "textbox"
    source = yaml.safe_load((REPO / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    destinations = source["datasources"][0]["jsonData"]["exemplarTraceIdDestinations"]
    # $$ is Grafana's escape for a literal $ in provisioning files
    assert destinations == [{"name": "job_id", "url": "http://localhost:9877/jobs/$${__value.raw}",
                             "urlDisplayLabel": "Open the job on the exporter"}]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert "--enable-feature=exemplar-storage" in compose["services"]["prometheus"]["command"]
