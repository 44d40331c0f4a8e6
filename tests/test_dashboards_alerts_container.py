"""Dashboards, alert rules, the container image and the compose demo, checked for real."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml

from conftest import tool
from helpers import REPO, free_port, http, wait_for, write_config, Proc
from prom import Prometheus, local_prometheus_config
from test_exporter import OLD, config_text

sys.path.insert(0, str(REPO / "grafana"))
import generate  # noqa: E402

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
VARIABLES = {"instance", "kind", "group", "model"}


def all_panels(dashboard: dict) -> list[dict]:
    panels = []
    for p in dashboard["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))
    return panels


def substitute(expr: str, rate_interval: str = "10s") -> str:
    """Grafana's variables as they are with every variable at All."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", "5s")
    for name in VARIABLES:
        expr = expr.replace("${" + name + "}", ".*").replace("$" + name, ".*")
    assert "$" not in expr, expr
    return expr


def targets() -> list[tuple[str, str, str]]:
    found = []
    for path in DASHBOARDS:
        for p in all_panels(json.loads(path.read_text())):
            for t in p.get("targets", []):
                found.append((path.name, p["title"], t["expr"]))
    return found


def test_committed_dashboards_are_what_the_generator_writes():
    assert [p.name for p in DASHBOARDS] == sorted(generate.DASHBOARDS)
    for name, builder in generate.DASHBOARDS.items():
        assert (REPO / "grafana" / "dashboards" / name).read_text() == generate.render(builder), \
            f"run python grafana/generate.py ({name} is stale)"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    text = path.read_text()
    board = json.loads(text)
    assert board["uid"] and len(board["uid"]) <= 40 and board["schemaVersion"] >= 39
    assert "__inputs" not in board and "${DS_" not in text
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["label"] == "Data Source"
    assert variables["datasource"]["query"] == "prometheus"
    expected_vars = {"instance", "kind", "group", "model"} if "jobs" in path.name else {"instance", "kind"}
    for name in expected_vars:
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"], name
        assert v["definition"].startswith("label_values(") and v["datasource"]["uid"] == "${datasource}"
    ids = set()
    for p in all_panels(board):
        assert p["id"] not in ids
        ids.add(p["id"])
        assert p.get("title"), p
        if p["type"] == "row":
            continue
        assert p.get("description"), p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            _check_expr(t["expr"], p["title"])


def _check_expr(expr: str, title: str) -> None:
    # every _total counter sits inside rate() or increase()
    for match in re.finditer(r"[a-z_]+_total\b", expr):
        before = expr[:match.start()]
        opened = max(before.rfind("rate("), before.rfind("increase("))
        assert opened >= 0 and before[opened:].count("(") > before[opened:].count(")"), (title, expr)
    for call in re.finditer(r"\b(rate|increase)\(", expr):
        window = re.search(r"\[([^\]]+)\]", expr[call.end():])
        assert window and window.group(1) == "$__rate_interval", (title, expr)
    # The SLO series (prometheus/slo/rules.yaml) are judged across replicas: recorded without instance.
    across_replicas = expr.startswith("distribute_slo:") and "instance" not in expr
    assert across_replicas or "=~\"$instance\"" in expr, (title, "every query filters by $instance")


def test_grid_positions_do_not_overlap():
    for path in DASHBOARDS:
        cells = set()
        for p in json.loads(path.read_text())["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, (path.name, p["title"])
                    cells.add((x, y))


def test_provisioning_matches_the_compose_mounts():
    datasource = yaml.safe_load((REPO / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((REPO / "grafana/provisioning/dashboards/distribute.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_alert_rules_check_and_unit_tests():
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"]):
        run = subprocess.run([tool("promtool"), *args], cwd=REPO / "prometheus", capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
    rules = yaml.safe_load((REPO / "prometheus/alerts.yaml").read_text())["groups"][0]["rules"]
    tested = {t["alertname"] for test in yaml.safe_load((REPO / "prometheus/alerts.test.yaml").read_text())["tests"]
              for t in test["alert_rule_test"]}
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool unit test"


def test_dockerfile_lints_clean_and_runs_as_non_root():
    hadolint = Path(sys.executable).parent / "hadolint"
    run = subprocess.run([str(hadolint) if hadolint.exists() else tool("hadolint"), "Dockerfile"], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout
    lines = [l.strip() for l in (REPO / "Dockerfile").read_text().splitlines()]
    users = [l.split()[1] for l in lines if l.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(re.match(r"FROM python:3\.\d+\.\d+-slim", l) for l in lines)
    assert sum(l.startswith("FROM ") for l in lines) >= 2  # multi-stage
    assert "EXPOSE 9877" in lines and any(l.startswith("HEALTHCHECK") for l in lines)
    assert any(l.startswith('ENTRYPOINT ["') for l in lines)


def _docker_instruction(name: str) -> str:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return [l for l in text.splitlines() if l.startswith(name + " ")][-1][len(name) + 1:].strip()


def test_entrypoint_and_healthcheck_run_as_processes(simulator, tmp_path):
    sim = simulator()
    ids = sim.create("chat", 2, age_seconds=OLD)
    config = write_config(tmp_path, config_text(sim.url, f"  - {{kind: chat, ids: {json.dumps(ids)}}}\n"))
    entry = json.loads(_docker_instruction("ENTRYPOINT"))
    cmd = [a.replace("/etc/distribute-exporter/config.yaml", str(config)) for a in json.loads(_docker_instruction("CMD"))]
    port = free_port()
    exe = Path(sys.executable).parent / entry[0]
    proc = Proc([str(exe), *entry[1:], *cmd, f"--web.listen-address=127.0.0.1:{port}"], cwd=tmp_path)
    try:
        wait_for(lambda: http("GET", f"http://127.0.0.1:{port}/-/ready", timeout=2)[0] == 200, 30, what="entrypoint ready")
        check = json.loads(_docker_instruction("HEALTHCHECK").split("CMD", 1)[1].strip())
        check = [a.replace("9877", str(port)) for a in check]
        assert subprocess.run([sys.executable if check[0] == "python" else check[0], *check[1:]]).returncode == 0
    finally:
        assert proc.stop() == 0
    bad = subprocess.run([sys.executable if check[0] == "python" else check[0], *check[1:]], capture_output=True)
    assert bad.returncode != 0  # and it fails when nothing answers


def test_compose_file_validates_offline(tmp_path):
    run = subprocess.run([tool("docker-compose"), "-f", "docker-compose.yml", "config", "-q"], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"simulator", "postgres", "exporter-1", "exporter-2", "prometheus", "grafana"}
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), mount
    for secret in compose["secrets"].values():
        assert (REPO / secret["file"]).is_file(), secret
    # two replicas of one exporter, on one database, both reachable as `exporter` (the Service's part)
    replicas = [services["exporter-1"], services["exporter-2"]]
    assert replicas[0]["command"] == replicas[1]["command"] and replicas[0]["image"] == replicas[1]["image"]
    assert all(r["networks"]["default"]["aliases"] == ["exporter"] for r in replicas)
    assert all("postgres" in r["depends_on"] for r in replicas)
    assert {v.split(":")[0] for r in replicas for v in r["volumes"] if v.startswith("state")} == {"state-1", "state-2"}
    scrape = {j["job_name"]: j for j in yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())["scrape_configs"]}
    assert scrape["distribute-exporter"]["static_configs"][0]["targets"] == ["exporter-1:9877", "exporter-2:9877"]
    assert scrape["distribute-exporter-jobs"]["static_configs"][0]["targets"] == ["exporter:9877"]
    # the config both replicas read, checked as the exporter checks it (the secret at its local path)
    config = yaml.safe_load((REPO / "deploy/compose/exporter.yaml").read_text())
    assert config["state"]["url"].startswith("postgresql://distribute_exporter@postgres:5432/")
    secret = services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"]
    assert config["state"]["password_file"] == secret
    local = tmp_path / "exporter.yaml"
    local.write_text((REPO / "deploy/compose/exporter.yaml").read_text().replace(
        secret, str(REPO / compose["secrets"]["postgres-password"]["file"])))
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(local)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout


def test_every_panel_query_returns_data_from_a_real_prometheus(simulator, exporter, tmp_path):
    sim = simulator("--seed", "8")
    done = {k: sim.create(k, n, age_seconds=OLD) for k, n in (("chat", 40), ("images", 10), ("speech", 10))}
    # The running jobs have a group of their own: they may finish at any time while the test waits, and
    # the waits below count only the groups whose jobs are all already final (an exact count).
    running = sim.create("chat", 3)
    groups = "".join(f"  - {{kind: {k}, group: g-{k}, ids: {json.dumps(ids)}}}\n" for k, ids in done.items())
    groups += f"  - {{kind: chat, group: running, ids: {json.dumps(running)}}}\n"
    # Prices for chat and images, none for speech: the cost row has spend and unpriced jobs to draw.
    (tmp_path / "prices.yaml").write_text(
        "prices:\n  - {kind: chat, model_regex: '.*', effective_from: 2020-01-01, per_million_prompt_tokens: 1,"
        " per_million_completion_tokens: 2}\n  - {kind: images, model_regex: '.*', effective_from: 2020-01-01,"
        " per_image: 0.01}\n")
    proxy_port = free_port()
    proc = exporter(write_config(tmp_path, "pricing: {file: prices.yaml}\n" + config_text(
        sim.url, groups, poll="interval_seconds: 0.5, max_interval_seconds: 1")),
                    "--proxy.listen-address", f"127.0.0.1:{proxy_port}")
    proxied = lambda: _proxy_traffic(f"http://127.0.0.1:{proxy_port}", done["chat"][:3])  # noqa: E731
    proxied()
    # jobs keep finishing while Prometheus watches, so rate() over the window sees them
    rules = [REPO / "prometheus" / "alerts.yaml", REPO / "prometheus" / "slo" / "rules.yaml"]
    prom = Prometheus(tmp_path / "prom", local_prometheus_config([f"127.0.0.1:{proc.port}"], rules))
    try:
        wait_for(prom.targets_up, 30, what="the exporter scraped")
        wait_for(lambda: (prom.value("count(distribute_jobs_finished_total)") or 0) > 0, 30, what="series")
        extra = sim.create("chat", 20, age_seconds=OLD) + sim.create("images", 5, age_seconds=OLD)
        proxied()
        status, body, _ = http("POST", f"{proc.url}/-/reload")  # no-op reload keeps the status 1
        wait_for(lambda: prom.value('sum(distribute_jobs_finished_total{group=~"g-.*"})') == 60, 30, what="all finished")
        _register_more(proc, tmp_path, sim, extra)
        wait_for(lambda: prom.value('sum(distribute_jobs_finished_total{group="wave2"})') == 25, 30, what="the second wave")
        # the SLO panels read rates of recorded series: two evaluations of the SLO rules after the jobs
        wait_for(lambda: len(prom.query("distribute_slo:error_budget_remaining:ratio")) >= 6, 30,
                 what="the SLO rules evaluated over the jobs")
        empty = []
        for board, title, expr in targets():
            if not prom.query(substitute(expr)):
                empty.append((board, title, expr))
        assert not empty, empty
        rules_state = [r for g in json.loads(http("GET", f"{prom.url}/api/v1/rules")[1])["data"]["groups"]
                       for r in g["rules"]]
        rules_in_files = [r for path in rules for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
        assert len(rules_state) == len(rules_in_files) and all(r["health"] == "ok" for r in rules_state)
        _check_variable_queries(prom)
    finally:
        prom.stop()


def _proxy_traffic(proxy: str, ids: list[str]) -> None:
    """An application reading answers through the proxy (of jobs already final: nothing changes)."""
    for job_id in ids:
        assert http("POST", f"{proxy}/async/chat/result", {"id": job_id})[0] == 200
    assert http("GET", f"{proxy}/")[0] == 200  # any other path is forwarded too


def _register_more(proc, tmp_path, sim, extra):
    config = tmp_path / "config.yaml"
    text = config.read_text()
    config.write_text(text + f"  - {{kind: chat, group: wave2, ids: {json.dumps(extra[:20])}}}\n"
                             f"  - {{kind: images, group: wave2, ids: {json.dumps(extra[20:])}}}\n")
    assert http("POST", f"{proc.url}/-/reload")[0] == 200


def _check_variable_queries(prom: Prometheus) -> None:
    for path in DASHBOARDS:
        for v in json.loads(path.read_text())["templating"]["list"]:
            if v["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((?:(.+), )?(\w+)\)", v["definition"])
            assert match, v["definition"]
            selector, label = match.group(1), match.group(2)
            query = f"?match[]={urllib.parse.quote(substitute(selector))}" if selector else ""
            values = json.loads(http("GET", f"{prom.url}/api/v1/label/{label}/values{query}")[1])["data"]
            assert values, (path.name, v["name"])
