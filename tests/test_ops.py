"""Running it as Prometheus users run exporters: Operator resources, runbooks, the installable package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import tool
from helpers import REPO, Proc, free_port, http, parse_samples, wait_for

sys.path.insert(0, str(REPO / "prometheus"))
import generate_operator  # noqa: E402

from exporter import __version__  # noqa: E402

KUBE = REPO / "deploy" / "kubernetes"
OPERATOR = KUBE / "operator"
RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/distribute-exporter/distribute-exporter/blob/main/docs/runbooks.md"
# Alerts the other open issues add to prometheus/alerts.yaml (see ../shared/decisions.md and the brief):
# their runbook sections are written already, so the runbook test covers them the moment they land.
ANNOUNCED = {"DistributeJobsUnpriced", "DistributeSpendHigh",
             "DistributeProxyUpstreamFailing"}
# Level-2 sections of docs/runbooks.md that are not about one alert.
GENERAL_SECTIONS = {"Tools for every alert", "Silencing an alert"}


def alert_rules(text: str | None = None) -> list[dict]:
    doc = yaml.safe_load(text if text is not None else (REPO / "prometheus" / "alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomized(base: Path) -> list[dict]:
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    return [d for resource in kustomization["resources"] for d in load_docs(base / resource)]


# --- PrometheusRule: generated from alerts.yaml ------------------------------------------------------

def test_prometheus_rule_is_what_the_generator_writes_and_holds_the_same_groups():
    rule_text = (OPERATOR / "prometheusrule.yaml").read_text()
    assert rule_text == generate_operator.render((REPO / "prometheus" / "alerts.yaml").read_text()), \
        "run python prometheus/generate_operator.py (deploy/kubernetes/operator/prometheusrule.yaml is stale)"
    rule = yaml.safe_load(rule_text)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((REPO / "prometheus" / "alerts.yaml").read_text())["groups"]
    check = subprocess.run([sys.executable, str(REPO / "prometheus" / "generate_operator.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_the_generator_notices_drift_and_refuses_what_it_cannot_carry():
    alerts = (REPO / "prometheus" / "alerts.yaml").read_text()
    changed = alerts.replace("for: 5m", "for: 6m", 1)
    assert generate_operator.render(changed) != (OPERATOR / "prometheusrule.yaml").read_text()
    with pytest.raises(ValueError, match="top-level"):
        generate_operator.render(alerts + "extra: 1\n")
    with pytest.raises(ValueError, match="groups"):
        generate_operator.render("rules: []\n")


def _extracted_rules(tmp_path: Path, rule_text: str, tests_text: str) -> Path:
    """The PrometheusRule's spec as a plain rule file, beside the unit tests that name alerts.yaml."""
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(yaml.safe_load(rule_text)["spec"], sort_keys=False))
    (tmp_path / "alerts.test.yaml").write_text(tests_text)
    return tmp_path


def _promtool_rules(directory: Path) -> None:
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"]):
        run = subprocess.run([tool("promtool"), *args], cwd=directory, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_prometheus_rule_spec_passes_promtool_and_the_rule_unit_tests(tmp_path):
    _promtool_rules(_extracted_rules(tmp_path, (OPERATOR / "prometheusrule.yaml").read_text(),
                                     (REPO / "prometheus" / "alerts.test.yaml").read_text()))


def test_a_fork_changes_the_runbook_base_in_one_step(tmp_path):
    fork = "https://git.example.org/sre/distribute-exporter/-/blob/main/docs/runbooks.md"
    alerts = (REPO / "prometheus" / "alerts.yaml").read_text()
    tests = (REPO / "prometheus" / "alerts.test.yaml").read_text()
    assert generate_operator.runbook_bases(alerts) == {RUNBOOK_BASE}
    moved_alerts, moved_tests = generate_operator.rebase(alerts, fork), generate_operator.rebase(tests, fork)
    assert generate_operator.runbook_bases(moved_alerts) == {fork} == generate_operator.runbook_bases(moved_tests)
    for rule in alert_rules(moved_alerts):
        assert rule["annotations"]["runbook_url"] == f"{fork}#{rule['alert'].lower()}"
    # the unit tests still pass against the moved rules, as the generated PrometheusRule
    _promtool_rules(_extracted_rules(tmp_path, generate_operator.render(moved_alerts), moved_tests))


# --- PodMonitor (/metrics per pod) and ScrapeConfig (/metrics/jobs once, through the Service) ---------

def _drop_regex(relabelings: list[dict]) -> str:
    [rule] = [r for r in relabelings if r.get("action") == "drop"]
    assert rule["sourceLabels"] == ["__name__"]
    return rule["regex"]


def test_pod_monitor_scrapes_each_pod_and_the_scrape_config_the_service_once():
    from exporter.metrics.facts import JOB_FACT_NAMES

    base, extra = kustomized(KUBE), kustomized(OPERATOR)
    kinds = {d["kind"] for d in extra}
    assert kinds == {"PodMonitor", "ScrapeConfig", "PrometheusRule"}
    assert not kinds & {d["kind"] for d in base}, "the default kustomization must work without the Operator's CRDs"
    namespace = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["namespace"]
    assert yaml.safe_load((OPERATOR / "kustomization.yaml").read_text())["namespace"] == namespace

    deployment = next(d for d in base if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = yaml.safe_load((KUBE / "exporter-config.yaml").read_text())
    assert config["web"]["listen_address"].rsplit(":", 1)[1] == str(ports["metrics"])

    monitor = next(d for d in extra if d["kind"] == "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"
    assert container["readinessProbe"]["httpGet"]["port"] == endpoint["port"]
    assert _drop_regex(endpoint["metricRelabelings"]) == JOB_FACT_NAMES
    # the job label is the pods' label named by jobLabel: the exporter-down alert must look for it
    job = pod["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    down = next(r for r in alert_rules() if r["alert"] == "DistributeExporterDown")
    assert f'job="{job}"' in down["expr"]
    assert "basicAuth" in (OPERATOR / "podmonitor.yaml").read_text()  # the commented settings
    assert "tlsConfig" in (OPERATOR / "podmonitor.yaml").read_text()

    scrape = next(d for d in extra if d["kind"] == "ScrapeConfig")
    assert scrape["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    assert scrape["spec"]["metricsPath"] == "/metrics/jobs"
    service = next(d for d in base if d["kind"] == "Service")
    port = next(p for p in service["spec"]["ports"] if p["targetPort"] == "metrics")
    assert scrape["spec"]["staticConfigs"] == [
        {"targets": [f"{service['metadata']['name']}.{namespace}.svc:{port['port']}"]}]  # one target: once
    assert {"targetLabel": "job", "replacement": "distribute-exporter-jobs"} in scrape["spec"]["relabelings"]
    assert "metricRelabelings" not in scrape["spec"]


def test_kustomize_builds_both_and_labels_only_metadata():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize) is not installed; the YAML cross-checks above still ran")
    built = {}
    for base in (KUBE, OPERATOR):
        run = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        built[base] = [d for d in yaml.safe_load_all(run.stdout) if d]
    operator = {d["kind"]: d for d in built[OPERATOR]}
    assert set(operator) == {"PodMonitor", "ScrapeConfig", "PrometheusRule"}
    for doc in operator.values():
        assert doc["metadata"]["namespace"] == "distribute-exporter"
        assert "release" in doc["metadata"]["labels"]
    deployment = next(d for d in built[KUBE] if d["kind"] == "Deployment")
    assert operator["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()


# --- Runbooks ----------------------------------------------------------------------------------------

def github_anchors(markdown: str) -> dict[str, str]:
    """Heading text by the anchor GitHub gives it: lower case, punctuation dropped, spaces to '-',
    repeats numbered -1, -2 ..."""
    anchors: dict[str, str] = {}
    seen: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        text = match.group(2)
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors[slug if count == 0 else f"{slug}-{count}"] = text
    return anchors


def test_github_anchors_follow_githubs_rules():
    anchors = github_anchors("# A title\n## `DistributeX` fires\n```\n# not a heading\n```\n## A title\n")
    assert anchors == {"a-title": "A title", "distributex-fires": "`DistributeX` fires", "a-title-1": "A title"}


def test_every_alert_links_its_runbook_section():
    markdown = RUNBOOKS.read_text()
    anchors = github_anchors(markdown)
    rules = alert_rules()
    assert rules
    for rule in rules:
        url = rule["annotations"].get("runbook_url")
        assert url == f"{RUNBOOK_BASE}#{rule['alert'].lower()}", (rule["alert"], url)
        anchor = url.split("#", 1)[1]
        assert anchor in anchors, f"docs/runbooks.md has no heading for #{anchor}"
        assert anchors[anchor] == rule["alert"]


def test_every_runbook_section_is_an_alert_and_says_what_to_do():
    markdown = RUNBOOKS.read_text()
    sections = re.split(r"^## ", markdown, flags=re.M)[1:]
    names = {section.splitlines()[0].strip() for section in sections}
    alerts = {rule["alert"] for rule in alert_rules()}
    assert names - GENERAL_SECTIONS <= alerts | ANNOUNCED, "a runbook section for no alert"
    assert alerts | ANNOUNCED <= names, "an alert without a runbook section"
    for section in sections:
        name = section.splitlines()[0].strip()
        if name in GENERAL_SECTIONS:
            continue
        for part in ("**Means**", "**Check first**", "**Fix**", "**Silence**"):
            assert part in section, (name, part)
        assert "```promql" in section, (name, "a query to run")


def runbook_queries(markdown: str) -> list[str]:
    """The expressions of the ```promql blocks; an indented line continues the one before."""
    queries: list[str] = []
    for block in re.findall(r"```promql\n(.*?)```", markdown, flags=re.S):
        for line in block.splitlines():
            if line.strip() and line[0].isspace() and queries:
                queries[-1] += " " + line.strip()
            elif line.strip():
                queries.append(line.strip())
    return queries


def test_every_runbook_query_is_valid_promql(tmp_path):
    queries = runbook_queries(RUNBOOKS.read_text())
    assert len(queries) >= 12
    rules = {"groups": [{"name": "runbooks", "rules": [{"record": f"runbook:query{i}", "expr": q}
                                                        for i, q in enumerate(queries)]}]}
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules))
    run = subprocess.run([tool("promtool"), "check", "rules", "queries.yaml"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_runbooks_quote_real_log_lines():
    """Every log line a runbook tells the reader to look for is one the code writes."""
    source = "\n".join(p.read_text() for p in (REPO / "exporter").rglob("*.py"))
    quoted = re.findall(r"`msg=\"([^\"`]+)\"", RUNBOOKS.read_text())
    assert len(quoted) >= 8
    for text in quoted:
        # "…" stands for what the code fills in; a line break in the markdown is a space
        for fragment in re.sub(r"\s+", " ", text).split("…"):
            assert fragment in source, f"docs/runbooks.md quotes a log line the code does not write: {text!r}"


def test_readme_links_the_runbooks_and_the_operator_resources():
    readme = REPO / "README.md"
    text = readme.read_text()
    assert "docs/runbooks.md" in text and "deploy/kubernetes/operator" in text
    assert "## Kubernetes with the Prometheus Operator" in text


# --- Packaging ---------------------------------------------------------------------------------------

def test_the_version_is_written_once():
    docker = (REPO / "Dockerfile").read_text()
    label = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', docker)
    assert label and label.group(1) == __version__
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exporter.__version__"}
    images = re.findall(r"image: distribute-exporter:(\S+)", (KUBE / "deployment.yaml").read_text())
    assert images == [__version__]


def _copy_source(destination: Path) -> Path:
    skip = shutil.ignore_patterns(".venv", ".git", "*.egg-info", "__pycache__", "build", "dist", "*.db*")
    return Path(shutil.copytree(REPO, destination, ignore=skip))


@pytest.mark.slow
def test_sdist_and_wheel_build_check_and_run_from_a_fresh_venv(tmp_path):
    source = _copy_source(tmp_path / "src")  # the build writes egg-info beside the sources
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [sdist] = dist.glob("*.tar.gz")
    [wheel] = dist.glob("*.whl")
    assert wheel.name == f"distribute_exporter-{__version__}-py3-none-any.whl"
    twine = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                           capture_output=True, text=True, timeout=120)
    assert twine.returncode == 0, twine.stdout + twine.stderr

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"distribute_exporter-{__version__}.dist-info/METADATA").decode()
    # every file of the package, templates and any static file included (package-data in pyproject)
    package = {p.relative_to(REPO).as_posix() for p in (REPO / "exporter").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert "exporter/http/templates/landing.html" in package
    assert not package - names, f"missing from the wheel: {sorted(package - names)}"
    assert f"distribute_exporter-{__version__}.dist-info/licenses/LICENSE" in names
    for field in ("License-Expression: Apache-2.0", "Project-URL: Source, ", "Classifier: Topic :: System :: Monitoring",
                  "Description-Content-Type: text/markdown", "Requires-Dist: aiohttp"):
        assert field in metadata, field
    with tarfile.open(sdist) as tar:
        top = f"distribute_exporter-{__version__}"
        members = set(tar.getnames())
        for name in ("LICENSE", "config.yaml", "prometheus/alerts.yaml", "docs/runbooks.md",
                     "deploy/kubernetes/operator/prometheusrule.yaml", "tests/helpers.py"):
            assert f"{top}/{name}" in members, name
        tar.extract(f"{top}/config.yaml", tmp_path / "sdist", filter="data")
    shipped_config = tmp_path / "sdist" / top / "config.yaml"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    _run_installed(venv, shipped_config, tmp_path)


def _run_installed(venv: Path, shipped_config: Path, workdir: Path) -> None:
    exe = str(venv / "bin" / "distribute-exporter")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import exporter; print(exporter.__file__)"],
                           capture_output=True, text=True, cwd=workdir, check=True)
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not the checkout
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, cwd=workdir, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"distribute-exporter {__version__}"
    check = subprocess.run([exe, "--config.check", "--config.file", str(shipped_config)],
                           capture_output=True, text=True, cwd=workdir, timeout=60)
    assert check.returncode == 0 and check.stdout.startswith("valid:"), check.stdout + check.stderr

    port = free_port()
    demo = Proc([exe, "--demo", "--web.listen-address", f"127.0.0.1:{port}"], cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if demo.popen.poll() is not None:
                raise AssertionError(f"the demo exited {demo.popen.returncode}: {demo.log()}")
            return http("GET", f"{url}/-/ready", timeout=2)[0] == 200
        wait_for(ready, 60, what="the installed demo ready")
        status, body, _ = http("GET", f"{url}/metrics")
        assert status == 200
        build = parse_samples(body.decode(), "distribute_exporter_build_info")
        assert [dict(labels)["version"] for labels in build] == [__version__]
        status, page, _ = http("GET", f"{url}/")  # rendered from the wheel's templates
        assert status == 200 and __version__.encode() in page
    finally:
        assert demo.stop() == 0, demo.log()


def test_compose_publishes_the_metrics_and_proxy_ports():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert {"9877:9877", "9878:9878"} <= set(compose["services"]["exporter-1"]["ports"])
    published = [set(compose["services"][r]["ports"]) for r in ("exporter-1", "exporter-2")]
    assert all({p.split(":")[1] for p in ports} == {"9877", "9878"} for ports in published)
    assert not published[0] & published[1]  # each replica on host ports of its own
    # The demo's exporters must run their proxy where compose publishes it.
    from exporter.config.load import parse_config
    secret = REPO / compose["secrets"]["postgres-password"]["file"]
    text = (REPO / "deploy" / "compose" / "exporter.yaml").read_text()
    config = parse_config(text.replace("/run/secrets/postgres-password", str(secret)), env={})
    assert config.proxy.listen_address == "0.0.0.0:9878"
