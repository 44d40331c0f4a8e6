"""/metrics/jobs: the job facts alone, beside /metrics with everything; one scrape layout (prometheus.yml)
that counts every job once, against a real exporter and a real Prometheus."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client.parser import text_string_to_metric_families

from balancer import Balancer
from exporter.metrics.facts import JOB_FACT_NAMES
from helpers import REPO, free_port, http, total, parse_samples, wait_for, write_config
from prom import Prometheus, local_prometheus_config
from test_exporter import OLD, config_text
from test_security import PASSWORD, https, make_pki, web_config

# The job facts a priced exporter serves, and the process facts it serves beside them.
JOB_FAMILIES = {"distribute_jobs", "distribute_jobs_finished", "distribute_job_duration_seconds",
                "distribute_oldest_unfinished_job_created_timestamp_seconds", "distribute_tokens",
                "distribute_results", "distribute_chat_choices", "distribute_chat_tool_calls",
                "distribute_estimated_cost", "distribute_unpriced_jobs"}
PROCESS_FAMILIES = {"distribute_api_requests", "distribute_api_request_duration_seconds", "distribute_up",
                    "distribute_exporter_polls", "distribute_exporter_tracked_jobs", "distribute_proxy_requests",
                    "distribute_config_last_reload_successful", "process_cpu_seconds"}
PRICES = ("prices:\n  - {kind: chat, model_regex: '.*', effective_from: 2020-01-01, per_million_prompt_tokens: 1,"
          " per_million_completion_tokens: 2}\n")


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _job_samples(text: str) -> set[tuple]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value)
            for name, samples in families(text).items() if name in JOB_FAMILIES for s in samples}


def _priced_exporter(simulator, exporter, tmp_path, *extra: str):
    sim = simulator("--seed", "17")
    chat = sim.create("chat", 12, age_seconds=OLD)
    images = sim.create("images", 6, age_seconds=OLD)
    (tmp_path / "prices.yaml").write_text(PRICES)  # images unpriced: the unpriced counter has series
    groups = (f"  - {{kind: chat, group: g, ids: {json.dumps(chat)}}}\n"
              f"  - {{kind: images, group: g, ids: {json.dumps(images + sim.create('images', 2))}}}\n")
    proc = exporter(write_config(tmp_path, "pricing: {file: prices.yaml}\n" + config_text(sim.url, groups)), *extra)
    return sim, proc, len(chat) + len(images)


def test_job_facts_on_both_routes_process_facts_on_metrics_only(simulator, exporter, tmp_path):
    proxy_port = free_port()
    _, proc, finished = _priced_exporter(simulator, exporter, tmp_path,
                                         "--proxy.listen-address", f"127.0.0.1:{proxy_port}")
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == finished, 30, what="jobs finished")
    status, body, headers = http("GET", f"{proc.url}/metrics/jobs")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    jobs, everything = families(body.decode()), families(proc.metrics())
    assert JOB_FAMILIES <= set(jobs) and JOB_FAMILIES <= set(everything)
    assert PROCESS_FAMILIES <= set(everything) and not PROCESS_FAMILIES & set(jobs)
    # the job facts and the build info alone: nothing else rides along on /metrics/jobs
    assert set(jobs) == JOB_FAMILIES | {"distribute_exporter_build_info"}
    # the same values on both routes (the in-process aggregates with SQLite), taken between two equal
    # reads of /metrics/jobs so that a job finishing meanwhile cannot make them differ
    def same_on_both() -> bool:
        before = _job_samples(http("GET", f"{proc.url}/metrics/jobs")[1].decode())
        middle = _job_samples(proc.metrics())
        return before == middle == _job_samples(http("GET", f"{proc.url}/metrics/jobs")[1].decode())
    wait_for(same_on_both, 30, what="the same job facts on /metrics and /metrics/jobs")
    # the scrape configs' drop rule names exactly the job facts' sample names
    fact = re.compile(JOB_FACT_NAMES)
    for name, samples in everything.items():
        for sample in samples:
            assert bool(fact.fullmatch(sample.name)) == (name in JOB_FAMILIES), sample.name
    # gzip and OpenMetrics as on /metrics
    status, _, headers = http("GET", f"{proc.url}/metrics/jobs", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    status, body, headers = http("GET", f"{proc.url}/metrics/jobs",
                                 headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert b"distribute_jobs_finished_total" in body and b"distribute_api_requests" not in body
    # the ring's list parameter is gone: an unknown parameter
    status, body, _ = http("GET", f"{proc.url}/api/v1/jobs?local=true")
    assert status == 400 and json.loads(body)["parameter"] == "local"
    status, body, _ = http("GET", f"{proc.url}/api/v1/jobs?limit=5")
    assert status == 200 and set(json.loads(body)) == {"jobs", "next_cursor"}


def test_metrics_jobs_behind_the_same_tls_and_basic_auth(simulator, exporter, tmp_path):
    pki = make_pki(tmp_path)
    wc = web_config(tmp_path, pki, {"prometheus": PASSWORD})
    sim = simulator()
    ids = sim.create("chat", 3, age_seconds=OLD)
    proc = exporter(write_config(tmp_path, config_text(sim.url, f"  - {{kind: chat, ids: {json.dumps(ids)}}}\n")),
                    "--web.config.file", str(wc), wait_ready=False)
    base = f"https://127.0.0.1:{proc.port}"
    wait_for(lambda: https(f"{base}/-/ready", pki["ca.crt"], "prometheus", PASSWORD)[0] == 200, 30, what="ready")
    assert https(f"{base}/metrics/jobs", pki["ca.crt"])[0] == 401
    assert https(f"{base}/metrics/jobs", pki["ca.crt"], "prometheus", "wrong")[0] == 401
    wait_for(lambda: b'status="COMPLETED"' in https(f"{base}/metrics/jobs", pki["ca.crt"], "prometheus", PASSWORD)[1]
             or b'status="ERROR"' in https(f"{base}/metrics/jobs", pki["ca.crt"], "prometheus", PASSWORD)[1],
             30, what="job facts over TLS")


def _drop_rule(job: dict) -> str:
    [rule] = [r for r in job.get("metric_relabel_configs", []) if r.get("action") == "drop"]
    assert rule["source_labels"] == ["__name__"]
    return rule["regex"]


def test_the_shipped_scrape_layout_drops_exactly_the_job_facts():
    shipped = {j["job_name"]: j for j in yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())["scrape_configs"]}
    assert _drop_rule(shipped["distribute-exporter"]) == JOB_FACT_NAMES
    assert shipped["distribute-exporter-jobs"]["metrics_path"] == "/metrics/jobs"
    assert "metric_relabel_configs" not in shipped["distribute-exporter-jobs"]
    assert len(shipped["distribute-exporter-jobs"]["static_configs"][0]["targets"]) == 1  # scraped once


def test_a_real_prometheus_counts_each_job_once_with_the_shipped_layout(simulator, exporter, tmp_path):
    """/metrics of the exporter and /metrics/jobs through a balancer (the Service's stand-in), as
    prometheus.yml lays them out: every job fact once, process facts per instance, the rules healthy."""
    _, proc, finished = _priced_exporter(simulator, exporter, tmp_path)
    balancer = Balancer(tmp_path / "nginx", [proc.port])
    rules = [REPO / "prometheus" / "alerts.yaml"]
    config = local_prometheus_config([f"127.0.0.1:{proc.port}"], rules, jobs_target=f"127.0.0.1:{balancer.port}")
    prom = Prometheus(tmp_path / "prom", config)
    try:
        wait_for(prom.targets_up, 30, what="both scrape jobs up")
        wait_for(lambda: prom.value("sum(distribute_jobs_finished_total)") == finished, 30, what="all finished")
        by_job = {r["metric"]["job"]: float(r["value"][1])
                  for r in prom.query("count by (job) ({__name__=~'distribute_.*'})")}
        assert set(by_job) == {"distribute-exporter", "distribute-exporter-jobs"}
        for name in ("distribute_jobs_finished_total", "distribute_jobs", "distribute_tokens_total",
                     "distribute_job_duration_seconds_bucket", "distribute_unpriced_jobs_total",
                     "distribute_estimated_cost_total"):
            jobs = {r["metric"]["job"] for r in prom.query(name)}
            assert jobs == {"distribute-exporter-jobs"}, (name, jobs)  # once, not twice
        for name in ("distribute_api_requests_total", "distribute_up", "process_cpu_seconds_total"):
            assert {r["metric"]["job"] for r in prom.query(name)} == {"distribute-exporter"}, name
        # the build info on both: the unpriced alert's "scraped an hour ago" join finds it beside either
        assert {r["metric"]["job"] for r in prom.query("distribute_exporter_build_info")} == \
            {"distribute-exporter", "distribute-exporter-jobs"}
        assert prom.value("sum(distribute_jobs)") == finished + 2
        rules_state = json.loads(http("GET", f"{prom.url}/api/v1/rules")[1])["data"]["groups"][0]["rules"]
        assert rules_state and all(r["health"] == "ok" for r in rules_state)
        # the jobs stay countable while the exporter is scraped through the balancer only
        assert parse_samples(http("GET", f"{balancer.url}/metrics/jobs")[1].decode(),
                             "distribute_jobs_finished_total")
    finally:
        prom.stop()
        balancer.stop()
