"""Three replicas share the ids without overlap, and their sums equal a single exporter's figures."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import yaml

from conftest import tool
from exporter.tracking.shard import owner
from helpers import REPO, get_json, http, parse_samples, total, wait_for, write_config
from test_exporter import OLD, config_text

FAMILIES = ("distribute_jobs_finished_total", "distribute_tokens_total", "distribute_results_total",
            "distribute_job_duration_seconds_count", "distribute_job_duration_seconds_sum", "distribute_jobs")


def summed(texts: list[str]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for name in FAMILIES:
        acc: Counter = Counter()
        for text in texts:
            for labels, value in parse_samples(text, name).items():
                acc[labels] += value
        out[name] = Counter({k: round(v, 6) for k, v in acc.items() if v})
    return out


def test_three_replicas_split_the_ids_and_sum_to_one_exporter(simulator, exporter, tmp_path):
    sim = simulator("--seed", "31")
    ids = {k: sim.create(k, n, age_seconds=OLD) for k, n in (("chat", 60), ("images", 30), ("speech", 30))}
    ghost = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(9)]  # unknown: polled on and on
    (tmp_path / "ids").mkdir()
    (tmp_path / "ids" / "images.txt").write_text("\n".join(ids["images"]) + "\n")
    groups = (f"  - {{kind: chat, group: g, ids: {json.dumps(ids['chat'] + ghost)}}}\n"
              f"  - {{kind: images, group: g, ids_file: 'ids/*.txt'}}\n")
    token = "shard-token-123"
    env = {"DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN": token}
    replicas = []
    for index in range(3):
        folder = tmp_path / f"replica-{index}"
        folder.mkdir()
        (folder / "ids").symlink_to(tmp_path / "ids")
        cfg = write_config(folder, config_text(sim.url, groups))
        replicas.append(exporter(cfg, "--shard.index", f"distribute-exporter-{index}", "--shard.count", "3", env=env))
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    (single_dir / "ids").symlink_to(tmp_path / "ids")

    # registration: each replica stores only what it owns and says how many it did not
    stored = 0
    for proc in replicas:
        status, body, _ = http("POST", f"{proc.url}/api/v1/jobs", {"kind": "speech", "group": "g", "ids": ids["speech"]},
                               {"Authorization": f"Bearer {token}"})
        answer = json.loads(body)
        assert status == 202 and answer["accepted"] + answer["not_owned"] == len(ids["speech"])
        stored += answer["accepted"]
    assert stored == len(ids["speech"])

    every = ids["chat"] + ids["images"] + ids["speech"]
    wait_for(lambda: sum(total(p.samples("distribute_jobs_finished_total")) for p in replicas) == len(every), 30,
             what="all jobs finished across the replicas")
    agents = get_json(f"{sim.url}/__admin/stats?agents=1")["by_id_agent"]
    for job_id in every + ghost:
        asked_by = {agent for agent in agents.get(job_id, {})}
        assert len(asked_by) == 1, (job_id, asked_by)  # exactly one replica polls each id
        assert f"(shard {owner(job_id, 3)}/3)" in asked_by.pop()
    for index, proc in enumerate(replicas):
        assert parse_samples(proc.metrics(), "distribute_exporter_shard_info") == {
            (("count", "3"), ("index", str(index))): 1.0}
    sharded = summed([p.metrics() for p in replicas])

    single = exporter(write_config(single_dir, config_text(sim.url, groups + (
        f"  - {{kind: speech, group: g, ids: {json.dumps(ids['speech'])}}}\n"))))
    wait_for(lambda: total(single.samples("distribute_jobs_finished_total")) == len(every), 30, what="single done")
    assert summed([single.metrics()]) == sharded


def test_shard_flags_are_checked():
    for args, message in ((["--shard.index", "3", "--shard.count", "3"], "not below"),
                          (["--shard.index", "web-x"], "not a number")):
        run = subprocess.run([sys.executable, "-m", "exporter", "--config.file", "config.yaml", *args],
                             capture_output=True, text=True, cwd=REPO, timeout=30)
        assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr


def test_kubernetes_manifests_parse_and_agree(tmp_path):
    base = REPO / "deploy" / "kubernetes"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((base / resource).read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"StatefulSet", "Service"} <= set(kinds)
    sts = kinds["StatefulSet"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    count = int(next(a.split("=", 1)[1] for a in args if a.startswith("--shard.count=")))
    assert count == sts["spec"]["replicas"]
    assert any(a.startswith("--shard.index=$(POD_NAME)") for a in args)
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    security = sts["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert sts["spec"]["serviceName"] in {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    for generator in kustomization.get("configMapGenerator", []):
        for item in generator.get("files", []):
            # the pod's secret files, stood in for by local ones
            secrets = tmp_path / "secret"
            secrets.mkdir(exist_ok=True)
            for name in ("api-key", "registration-token"):
                (secrets / name).write_text("x" * 16)
                (secrets / name).chmod(0o600)
            config = tmp_path / "exporter-config.yaml"
            config.write_text((base / item.split("=", 1)[-1]).read_text().replace(
                "/etc/distribute-exporter/secret", str(secrets)))
            check = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(config)],
                                   capture_output=True, text=True, cwd=REPO)
            assert check.returncode == 0, check.stdout
    scrape = yaml.safe_load((base / "prometheus-scrape.yaml").read_text())
    job = scrape["scrape_configs"][0]
    discovery = job.pop("kubernetes_sd_configs")
    assert discovery[0]["role"] == "endpoints"
    assert discovery[0]["namespaces"]["names"] == [kustomization["namespace"]]
    # Debian's Prometheus is built without Kubernetes discovery: promtool checks the rest (relabelling
    # included) with a static target standing in for it.
    job["static_configs"] = [{"targets": ["127.0.0.1:9877"]}]
    full = tmp_path / "prometheus.yml"
    full.write_text(yaml.safe_dump({"scrape_configs": [job]}))
    check = subprocess.run([tool("promtool"), "check", "config", str(full)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
