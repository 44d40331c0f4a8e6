"""The Kubernetes manifests (deploy/kubernetes): a Deployment of interchangeable replicas on
PostgreSQL, its PodDisruptionBudget and Service, the exporter's config and the scrape jobs, parsed
and checked against each other, the config by the exporter itself and the scrape jobs by promtool.
(`kubectl kustomize` is not needed; tests/test_ops.py builds them with it where it is installed.)"""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import urlsplit

import yaml

from conftest import tool
from exporter.metrics.facts import JOB_FACT_NAMES
from helpers import REPO

BASE = REPO / "deploy" / "kubernetes"


def manifests() -> tuple[dict, dict[str, dict]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = [d for resource in kustomization["resources"] for d in yaml.safe_load_all((BASE / resource).read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert len(kinds) == len(docs), "one of each kind"
    return kustomization, {d["kind"]: d for d in docs}


def test_a_deployment_of_two_with_a_disruption_budget_and_one_balanced_service():
    _, kinds = manifests()
    assert set(kinds) == {"Namespace", "Deployment", "PodDisruptionBudget", "Service"}  # no StatefulSet
    deployment, pdb, service = kinds["Deployment"], kinds["PodDisruptionBudget"], kinds["Service"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and "volumeClaimTemplates" not in spec
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    # the budget covers exactly these pods and always leaves one running
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert pdb["spec"].get("maxUnavailable", spec["replicas"] - pdb["spec"].get("minAvailable", 0)) < spec["replicas"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # the balanced Service: the proxy and the HTTP port (API, reads, /metrics/jobs) of every pod
    assert service["spec"].get("clusterIP") != "None" and service["spec"]["selector"].items() <= labels.items()
    [container] = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    by_target = {p["targetPort"]: p["port"] for p in service["spec"]["ports"]}
    assert by_target == {"proxy": 9878, "metrics": 9877} and ports == {"metrics": 9877, "proxy": 9878}
    args = dict(a.split("=", 1) for a in container["args"])
    assert args["--proxy.listen-address"].endswith(f":{ports['proxy']}")
    assert not [a for a in container["args"] if a.startswith("--shard.")]
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    security = spec["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert set(mounts) == set(volumes) and "emptyDir" in volumes["state"]


def test_the_config_points_state_url_at_postgresql_with_the_password_from_the_secret(tmp_path):
    kustomization, kinds = manifests()
    [container] = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    [generator] = kustomization["configMapGenerator"]
    [item] = generator["files"]
    key, source = item.split("=", 1)
    config = yaml.safe_load((BASE / source).read_text())
    assert f"{mounts['config']}" == f"/etc/distribute-exporter/{key}"
    url = urlsplit(config["state"]["url"])
    assert url.scheme == "postgresql" and url.password is None and url.hostname.startswith("postgres")
    secret_dir = mounts["secret"]
    for name in ("password_file",):
        assert config["state"][name].startswith(secret_dir + "/")
    assert config["state"]["path"].startswith(mounts["state"] + "/")
    # the exporter's own check, with the Secret's files stood in for by local ones (no connection)
    secrets = tmp_path / "secret"
    secrets.mkdir()
    for path in (config["api"]["api_key_file"], config["web"]["registration_token_file"],
                 config["state"]["password_file"]):
        local = secrets / path.rsplit("/", 1)[1]
        local.write_text("x" * 16)
        local.chmod(0o600)
    local_config = tmp_path / "config.yaml"
    local_config.write_text((BASE / source).read_text().replace(secret_dir, str(secrets)))
    check = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(local_config)],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert check.returncode == 0 and "PostgreSQL" in check.stdout, check.stdout


def test_the_scrape_jobs_take_each_pod_once_and_the_job_facts_once_through_the_service(tmp_path):
    kustomization, kinds = manifests()
    scrape = {j["job_name"]: j for j in yaml.safe_load((BASE / "prometheus-scrape.yaml").read_text())["scrape_configs"]}
    assert set(scrape) == {"distribute-exporter", "distribute-exporter-jobs"}
    pods, jobs = scrape["distribute-exporter"], scrape["distribute-exporter-jobs"]
    [discovery] = pods.pop("kubernetes_sd_configs")
    assert discovery["role"] == "pod" and discovery["namespaces"]["names"] == [kustomization["namespace"]]
    keep = next(r for r in pods["relabel_configs"] if r["action"] == "keep")
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert keep["regex"] == f"{labels['app.kubernetes.io/name']};metrics"
    [drop] = pods["metric_relabel_configs"]
    assert (drop["action"], drop["source_labels"], drop["regex"]) == ("drop", ["__name__"], JOB_FACT_NAMES)
    # and the same rule as the compose demo's prometheus.yml
    shipped = {j["job_name"]: j for j in yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())["scrape_configs"]}
    assert shipped["distribute-exporter"]["metric_relabel_configs"] == pods["metric_relabel_configs"]
    service = kinds["Service"]
    port = next(p["port"] for p in service["spec"]["ports"] if p["targetPort"] == "metrics")
    assert jobs["metrics_path"] == "/metrics/jobs"
    assert jobs["static_configs"] == [{"targets": [
        f"{service['metadata']['name']}.{kustomization['namespace']}.svc:{port}"]}]
    # Debian's Prometheus is built without Kubernetes discovery: promtool checks the rest (relabelling
    # included) with a static target standing in for it.
    pods["static_configs"] = [{"targets": ["127.0.0.1:9877"]}]
    full = tmp_path / "prometheus.yml"
    full.write_text(yaml.safe_dump({"scrape_configs": [pods, jobs]}))
    check = subprocess.run([tool("promtool"), "check", "config", str(full)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
