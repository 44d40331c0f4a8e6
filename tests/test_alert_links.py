"""From an alert to its jobs: the `jobs` annotation of the job alerts, filled in by promtool from a
firing alert (with the external URL a real exporter publishes), requested from that exporter, lists
exactly the jobs behind the alert. Also the /jobs page, the external URL and the closed-set filters."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import yaml

from conftest import tool
from helpers import REPO, get_json, http, total, wait_for, write_config

ALERTS = REPO / "prometheus" / "alerts.yaml"
GROUP = "night shift/a&b"  # a space, a slash and an ampersand: the link must escape them
KEY_ENV = {"DISTRIBUTE_API_KEY": "alert-links-key-0001"}


def exporter_config(tmp_path: Path, sim_url: str, groups: str, web: str = "") -> Path:
    return write_config(tmp_path, f"api: {{base_url: '{sim_url}', max_requests_per_second: 0}}\n"
                                  "poll: {interval_seconds: 0.2, max_interval_seconds: 1}\n"
                                  f"state: {{path: state.db, flush_interval_seconds: 0.2, retention_seconds: 100000000}}\n"
                                  f"{web}jobs:\n{groups}")


def fired_annotations(tmp_path: Path, alertname: str, series: dict[str, str], eval_time: str) -> list[dict]:
    """The alerts `alertname` fires at `eval_time` over `series`, as promtool reports them: a rule
    unit test that expects none fails and prints what it got, labels and filled-in annotations."""
    test = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
                       "alert_rule_test": [{"eval_time": eval_time, "alertname": alertname, "exp_alerts": []}]}]}
    path = tmp_path / "fire.test.yaml"
    path.write_text(yaml.safe_dump(test))
    run = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True)
    report = run.stdout + run.stderr
    assert run.returncode == 1 and "got:[" in report, report  # it fired
    return [_labels(text) for text in re.findall(r"Annotations:(\{.*\})", report)]


def _labels(text: str) -> dict[str, str]:
    """A label set as Prometheus prints it: {name="Go-quoted value", ...}."""
    return {m.group(1): json.loads(f'"{m.group(2)}"') for m in re.finditer(r'(\w+)="((?:[^"\\]|\\.)*)"', text)}


def listed(url: str) -> list[str]:
    status, body, headers = http("GET", url)
    assert status == 200 and headers["Content-Type"].startswith("text/html"), (url, status, body[:300])
    return re.findall(r'<a href="jobs/([0-9a-f-]{36})">', body.decode())


def test_an_error_ratio_alerts_link_lists_exactly_its_error_jobs(simulator, exporter, tmp_path):
    sim = simulator("--seed", "11")
    mine = sim.create("chat", 150, age_seconds=600)  # finished a few minutes ago, a few in ERROR
    other_group = sim.create("chat", 60, age_seconds=600)
    other_kind = sim.create("speech", 60, age_seconds=600)
    groups = (f"  - {{kind: chat, group: '{GROUP}', ids: {json.dumps(mine)}}}\n"
              f"  - {{kind: chat, group: other, ids: {json.dumps(other_group)}}}\n"
              f"  - {{kind: speech, group: '{GROUP}', ids: {json.dumps(other_kind)}}}\n")
    proc = exporter(exporter_config(tmp_path, sim.url, groups), env=KEY_ENV)

    def settled() -> set[str] | None:
        truth = sim.truth()
        final = sum(truth[i]["status"] in ("COMPLETED", "ERROR") for i in mine + other_group + other_kind)
        if total(proc.samples("distribute_jobs_finished_total")) != final:
            return None
        return {i for i in mine if truth[i]["status"] == "ERROR"}
    expected = wait_for(lambda: settled() is not None and settled(), 60, what="every finished job seen")
    truth = sim.truth()
    assert any(truth[i]["status"] == "ERROR" for i in other_group + other_kind)  # ones the link must leave out

    [external_url] = [dict(k)["external_url"] for k in proc.samples("distribute_exporter_web_info")]
    assert external_url == proc.url  # derived from the listen address
    web_info = f'distribute_exporter_web_info{{instance="a:9877", external_url="{external_url}"}}'
    models = {dict(k)["model"] for k in proc.samples("distribute_jobs_finished_total")
              if dict(k)["group"] == GROUP and dict(k)["kind"] == "chat"}
    series = {web_info: "1x40"}
    for model in models:  # half of the jobs in ERROR: well over the alert's 10%
        for status in ("ERROR", "COMPLETED"):
            labels = f'kind="chat", group="{GROUP}", model="{model}", status="{status}"'
            series[f"distribute_jobs_finished_total{{{labels}}}"] = "0+1x40"
    [annotations] = fired_annotations(tmp_path, "DistributeJobErrorRatioHigh", series, "35m")
    link = annotations["jobs"]
    assert link.startswith(f"{external_url}/jobs?") and urllib.parse.quote_plus(GROUP) in link, link
    assert sorted(listed(link)) == sorted(expected)
    api = link.replace("/jobs?", "/api/v1/jobs?", 1)
    assert sorted(j["id"] for j in get_json(api)["jobs"]) == sorted(expected)
    # each listed id links to its job page, which shows it as ERROR
    first = sorted(expected)[0]
    status, body, _ = http("GET", f"{proc.url}/jobs/{first}")
    assert status == 200 and ">ERROR<" in body.decode()
    assert "error reason</th><td class=\"id\">none given" in body.decode()  # the API publishes none


def test_a_stuck_jobs_alerts_link_lists_exactly_the_old_unfinished_jobs(simulator, exporter, tmp_path):
    sim = simulator("--speed", "0.0001")  # nothing finishes during the test
    stuck = sim.create("images", 4, age_seconds=7200)
    fresh = sim.create("images", 3)
    groups = f"  - {{kind: images, group: renders, ids: {json.dumps(stuck + fresh)}}}\n"
    external = "http://exporter.example.test:9877/distribute"
    config = exporter_config(tmp_path, sim.url, groups, web="web: {external_url: 'http://overridden.example'}\n")
    proc = exporter(config, "--web.external-url", external + "/", env=KEY_ENV)
    wait_for(lambda: total(proc.samples("distribute_jobs")) == 7 and not total(proc.samples("distribute_jobs"),
             status="UNKNOWN"), 30, what="every job answered")
    [labels] = proc.samples("distribute_exporter_web_info")
    assert dict(labels)["external_url"] == external  # the flag's over the config's, without its trailing slash
    oldest = proc.samples("distribute_oldest_unfinished_job_created_timestamp_seconds")
    [(key, created)] = oldest.items()
    web_info = f'distribute_exporter_web_info{{instance="a:9877", external_url="{external}"}}'
    series = {web_info: "1x90",
              'distribute_oldest_unfinished_job_created_timestamp_seconds{kind="images", group="renders"}': "0x90"}
    [annotations] = fired_annotations(tmp_path, "DistributeJobsStuck", series, "75m")
    link = annotations["jobs"]
    assert link.startswith(f"{external}/jobs?"), link
    # the link names the exporter as users reach it; here that is the test's own address
    local = proc.url + link[len(external):]
    assert sorted(listed(local)) == sorted(stuck)


def test_jobs_list_filters_sources_and_refuses_unknown_values(simulator, exporter, tmp_path):
    sim = simulator("--speed", "0.0001")
    inline = sim.create("chat", 2)
    in_a, in_b = sim.create("chat", 3), sim.create("chat", 2)
    (tmp_path / "ids").mkdir()
    (tmp_path / "ids" / "a.txt").write_text("\n".join(in_a) + "\n")
    (tmp_path / "ids" / "b.txt").write_text("\n".join(in_b) + "\n")
    groups = (f"  - {{kind: chat, group: inline, ids: {json.dumps(inline)}}}\n"
              f"  - {{kind: chat, group: files, ids_file: 'ids/*.txt'}}\n")
    proc = exporter(exporter_config(tmp_path, sim.url, groups), env=KEY_ENV)
    wait_for(lambda: total(proc.samples("distribute_exporter_tracked_jobs")) == 7, 30, what="7 ids tracked")

    def ids(**params: object) -> list[str]:
        query = urllib.parse.urlencode(params, doseq=True)
        return sorted(j["id"] for j in get_json(f"{proc.url}/api/v1/jobs?{query}")["jobs"])
    assert ids(source="file") == sorted(in_a + in_b)
    assert ids(source=f"file:{tmp_path / 'ids' / 'a.txt'}") == sorted(in_a)
    assert ids(source=["file", "config"]) == sorted(inline + in_a + in_b)
    assert ids(source="config") == sorted(inline)
    assert ids(source="proxy") == [] and ids(source="api") == []
    # the HTML list takes the same parameters
    assert sorted(listed(f"{proc.url}/jobs?source=file")) == sorted(in_a + in_b)
    for name, value in (("source", "files"), ("source", "file:"), ("status", "FAILED"), ("kind", "video")):
        status, body, _ = http("GET", f"{proc.url}/api/v1/jobs?{name}={value}")
        answer = json.loads(body)
        assert status == 400 and answer["parameter"] == name and repr(value) in answer["error"], answer
        status, body, _ = http("GET", f"{proc.url}/jobs?{name}={value}")
        assert status == 400 and f"{name}: unknown value" in body.decode()


def test_external_url_from_the_config_and_its_checks(tmp_path):
    config = write_config(tmp_path, "web: {external_url: 'https://user:pw@exporter.example'}\n")
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(config)],
                         capture_output=True, text=True, cwd=REPO, env=None)
    assert run.returncode == 1 and run.stdout.startswith("invalid: web.external_url:") and "pw" not in run.stdout
    config.write_text("web: {external_url: 'exporter.example:9877'}\n")
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(config)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1 and "web.external_url: must be an http:// or https:// URL" in run.stdout
