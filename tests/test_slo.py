"""The SLOs of prometheus/slo/: generated from slos.yaml without drift, valid for Prometheus, Sloth and
Pyrra, every alert unit-tested by promtool and linked to its runbook and to the jobs list."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import tool
from helpers import REPO
from test_ops import github_anchors

sys.path.insert(0, str(REPO / "prometheus"))
import generate_slo  # noqa: E402

from exporter.config.model import DEFAULT_DURATION_BUCKETS  # noqa: E402

SLO = REPO / "prometheus" / "slo"
SPEC_TEXT = (SLO / "slos.yaml").read_text()
JOBS_LINK = ('{{ with query "max by (external_url) (distribute_exporter_web_info)" }}'
             '{{ (. | first).Labels.external_url }}{{ end }}'
             '/jobs?kind={{ $labels.kind | urlquery }}&group={{ $labels.group | urlquery }}')


def rules_doc() -> dict:
    return yaml.safe_load((SLO / "rules.yaml").read_text())


def alert_rules() -> list[dict]:
    return [r for g in rules_doc()["groups"] for r in g["rules"] if "alert" in r]


def promtool(*args: str, cwd: Path = SLO) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# --- generated, never edited ------------------------------------------------------------------------

def test_committed_files_are_what_the_generator_writes_from_the_spec():
    written = dict(generate_slo.outputs(SPEC_TEXT))
    assert set(written) == {SLO / "rules.yaml", SLO / "sloth.yaml", SLO / "pyrra.yaml"}
    for path, text in written.items():
        assert path.read_text() == text, f"run python prometheus/generate_slo.py ({path.name} is stale)"
    check = subprocess.run([sys.executable, str(REPO / "prometheus" / "generate_slo.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_a_changed_objective_changes_every_output():
    changed = SPEC_TEXT.replace("latency: {objective: 95, threshold_seconds: 60}",
                                "latency: {objective: 97.5, threshold_seconds: 30}", 1)
    assert changed != SPEC_TEXT
    for (path, before), (_, after) in zip(generate_slo.outputs(SPEC_TEXT), generate_slo.outputs(changed)):
        assert before != after, path.name
    rules = dict(generate_slo.outputs(changed))[SLO / "rules.yaml"]
    assert 'le="30.0"' in rules and "vector(0.975)" in rules and "2.5 * 0.025" not in rules


@pytest.mark.parametrize("spec, culprit", [
    ("slos: [{kind: chat, latency: {threshold_seconds: 45}}]", "slos[0].latency.threshold_seconds: 45 is not a bucket"),
    ("slos: [{kind: chat, availability: {objective: 100}}]", "slos[0].availability.objective"),
    ("slos: [{kind: chat, availability: {objective: '99'}}]", "slos[0].availability.objective"),
    ("slos: [{kind: video}]", "slos[0]: kind must be one of chat, images, speech"),
    ("slos: [{kind: chat}, {kind: chat}]", "a kind is listed twice"),
    ("window: 30 days\nslos: []", "window '30 days'"),
    ("min_events: 0\nslos: []", "min_events"),
    ("[]", "needs a list `slos`"),
])
def test_a_bad_spec_is_refused_naming_the_culprit(spec, culprit):
    with pytest.raises(generate_slo.SpecError) as caught:
        generate_slo.load_spec(spec)
    assert culprit in str(caught.value) and "\n" not in str(caught.value)


def test_the_generator_says_what_is_wrong_in_one_line_without_a_traceback(tmp_path, monkeypatch):
    bad = tmp_path / "slos.yaml"
    bad.write_text("slos: [{kind: chat, latency: {threshold_seconds: 61}}]\n")
    monkeypatch.setattr(generate_slo, "SPEC", bad)
    assert generate_slo.main(["--check"]) == 2


def test_latency_thresholds_are_buckets_the_exporter_writes():
    spec = generate_slo.load_spec(SPEC_TEXT)
    latency = {s.kind: s for s in spec.slos if s.sli == "latency"}
    assert {k: s.threshold for k, s in latency.items()} == {"chat": 60, "images": 120, "speech": 120}
    rules = (SLO / "rules.yaml").read_text()
    for slo in latency.values():
        assert slo.threshold in DEFAULT_DURATION_BUCKETS
        assert f'kind="{slo.kind}", status="COMPLETED", le="{slo.le}"' in rules
    # the exporter's own exposition spells `le` the same way
    from exporter.tracking.aggregates import Histogram
    written = dict(Histogram(tuple(float(b) for b in DEFAULT_DURATION_BUCKETS)).cumulative())
    assert all(s.le in written for s in latency.values())


# --- Prometheus: valid rules, unit-tested alerts -----------------------------------------------------

def test_rules_pass_promtool_check_and_the_unit_tests():
    for args in (["check", "rules", "rules.yaml"], ["test", "rules", "rules.test.yaml"]):
        run = promtool(*args)
        assert run.returncode == 0, run.stdout + run.stderr


def test_every_slo_alert_is_unit_tested_firing_for_every_kind_and_severity():
    tests = yaml.safe_load((SLO / "rules.test.yaml").read_text())
    fired = {(t["alertname"], a["exp_labels"]["slo"], a["exp_labels"]["severity"])
             for test in tests["tests"] for t in test["alert_rule_test"] for a in t["exp_alerts"]}
    rules = {(r["alert"], r["labels"]["slo"], r["labels"]["severity"]) for r in alert_rules()}
    assert len(rules) == 12 and rules <= fired
    groups = {a["exp_labels"]["group"] for test in tests["tests"] for t in test["alert_rule_test"]
              for a in t["exp_alerts"]}
    # the silent groups are in the input and in no expected alert (promtool matches the list exactly)
    series = " ".join(s["series"] for test in tests["tests"] for s in test["input_series"])
    for silent in ("healthy", "tiny"):
        assert f'group="{silent}"' in series and silent not in groups
    assert "distribute_exporter_web_info" in series


def test_every_alert_has_a_guard_a_runbook_section_and_the_jobs_link():
    anchors = github_anchors((REPO / "docs" / "runbooks.md").read_text())
    for rule in alert_rules():
        annotations = rule["annotations"]
        assert annotations["jobs"] == JOBS_LINK, rule["alert"]
        assert annotations["summary"] and annotations["description"]
        anchor = annotations["runbook_url"].split("#", 1)[1]
        assert anchors.get(anchor) == rule["alert"], f"docs/runbooks.md has no section #{anchor}"
        assert rule["labels"]["severity"] in ("critical", "warning")
        # every condition judges only a group with enough events in its long window
        for condition in rule["expr"].split("\nor\n"):
            assert re.search(r"distribute_slo:events:increase\w+\{[^}]+\} >= \d+", condition), condition


# --- Sloth: the prometheus/v1 spec ----------------------------------------------------------------

# Our JSON Schemas of the two formats (tests/data/, written from the projects' documented fields:
# no registry CI reaches ships Sloth's or Pyrra's own schema); unknown keys are refused. When the
# projects' own files are given (PYRRA_CRD, SLOTH_EXAMPLES), the last tests check against those too.
DATA = REPO / "tests" / "data"
SLOTH_SCHEMA = json.loads((DATA / "sloth-prometheus-v1.schema.json").read_text())
PYRRA_SCHEMA = json.loads((DATA / "pyrra-servicelevelobjective.schema.json").read_text())


@pytest.mark.parametrize("schema", [SLOTH_SCHEMA, PYRRA_SCHEMA], ids=["sloth", "pyrra"])
def test_the_schemas_are_valid_json_schemas(schema):
    jsonschema.Draft202012Validator.check_schema(schema)


def _valid_promql(tmp_path: Path, queries: dict[str, str]) -> None:
    rules = {"groups": [{"name": "q", "rules": [{"record": f"q:{name}", "expr": q} for name, q in queries.items()]}]}
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(rules))
    run = promtool("check", "rules", "q.yaml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_sloth_spec_follows_sloths_schema_and_rules(tmp_path):
    spec = yaml.safe_load((SLO / "sloth.yaml").read_text())
    jsonschema.validate(spec, SLOTH_SCHEMA)
    queries = {}
    for slo in spec["slos"]:
        events = slo["sli"]["events"]
        assert events["error_query"] != events["total_query"]
        for which, query in events.items():
            assert re.search(r"{{ *\.window *}}", query), (slo["name"], which)  # Sloth requires the variable
            queries[f"{slo['name'].replace('-', '_')}_{which}"] = re.sub(r"{{ *\.window *}}", "5m", query)
    _valid_promql(tmp_path, queries)
    assert {s["name"] for s in spec["slos"]} == {s.name for s in generate_slo.load_spec(SPEC_TEXT).slos}


def test_sloth_recognises_the_file_as_a_prometheus_v1_spec():
    # Sloth tells its formats apart by a top-level `version: prometheus/v1` line of its own.
    assert re.search(r"""(?m)^version: +['"]?prometheus/v1['"]? *$""", (SLO / "sloth.yaml").read_text())


def _broken(change) -> dict:
    spec = yaml.safe_load((SLO / "sloth.yaml").read_text())
    change(spec)
    return spec


@pytest.mark.parametrize("change", [
    lambda s: s["slos"][0]["sli"]["events"].__setitem__("errors_query", s["slos"][0]["sli"]["events"].pop("error_query")),
    lambda s: s["slos"][0]["sli"]["events"].__setitem__("total_query", "sum(rate(x[5m]))"),  # no {{.window}}
    lambda s: s["slos"][0].__setitem__("objective", 0),
    lambda s: s["slos"][0].__setitem__("name", "-chat"),
    lambda s: s["slos"][0]["alerting"].pop("name"),
    lambda s: s["slos"][0]["sli"].__setitem__("raw", {"error_ratio_query": "x"}),  # two SLI types
    lambda s: s.pop("service"),
], ids=["typo", "no-window", "objective-0", "name", "alert-name", "two-slis", "service"])
def test_a_sloth_schema_violation_is_caught(change):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_broken(change), SLOTH_SCHEMA)


# --- Pyrra: ServiceLevelObjective resources -------------------------------------------------------

def pyrra_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((SLO / "pyrra.yaml").read_text()) if d]


def test_pyrra_resources_follow_the_crd_and_read_series_rules_yaml_records(tmp_path):
    docs = pyrra_docs()
    assert len(docs) == 6
    recorded = {(r["record"], r["labels"]["slo"]) for g in rules_doc()["groups"] if g["name"] == "distribute-slo-events"
                for r in g["rules"]}
    queries = {}
    for doc in docs:
        jsonschema.validate(doc, PYRRA_SCHEMA)
        assert 0 < float(doc["spec"]["target"]) < 100
        ratio = doc["spec"]["indicator"]["ratio"]
        for which in ("errors", "total"):
            match = re.fullmatch(r'([\w:]+)\{slo="([\w-]+)"\}', ratio[which]["metric"])
            assert match and (match.group(1), match.group(2)) in recorded, ratio[which]["metric"]
            queries[f"{doc['metadata']['name'].replace('-', '_')}_{which}"] = ratio[which]["metric"]
    _valid_promql(tmp_path, queries)


@pytest.mark.parametrize("change", [
    lambda d: d["spec"].__setitem__("target", 99.0),  # a string in the resource
    lambda d: d["spec"].pop("window"),
    lambda d: d["spec"]["indicator"]["ratio"].__setitem__("error", d["spec"]["indicator"]["ratio"].pop("errors")),
    lambda d: d["spec"]["alerting"].__setitem__("disable", True),  # Pyrra spells it `disabled`
    lambda d: d.__setitem__("apiVersion", "pyrra.dev/v1"),
    lambda d: d["metadata"].__setitem__("name", "Chat_Latency"),
], ids=["target-number", "no-window", "typo", "alerting-key", "api-version", "name"])
def test_a_pyrra_schema_violation_is_caught(change):
    doc = pyrra_docs()[0]
    doc["spec"].setdefault("alerting", {})
    jsonschema.validate(doc, PYRRA_SCHEMA)
    change(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, PYRRA_SCHEMA)


def _upstream(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} not set (the projects' own files, fetched for comparison; CI has no copy)")
    return Path(value)


def test_pyrra_resources_and_our_schema_against_pyrras_own_crd():
    """PYRRA_CRD: Pyrra's config/crd/bases/pyrra.dev_servicelevelobjectives.yaml. Our resources pass
    its schema, and every key our schema allows is in it with the same type."""
    version = yaml.safe_load(_upstream("PYRRA_CRD").read_text())["spec"]["versions"][0]
    theirs = version["schema"]["openAPIV3Schema"]
    for doc in pyrra_docs():
        assert doc["apiVersion"].split("/")[1] == version["name"]
        jsonschema.validate(doc, theirs)
    ours = _typed_paths(PYRRA_SCHEMA["properties"]["spec"], PYRRA_SCHEMA)
    upstream = _typed_paths(theirs["properties"]["spec"], theirs)
    assert ours and {path: kind for path, kind in ours.items() if upstream.get(path) != kind} == {}


def test_pyrra_examples_pass_our_schema():
    """PYRRA_EXAMPLES: a folder of Pyrra's example ServiceLevelObjectives: our schema is no stricter."""
    seen = 0
    for path in sorted(_upstream("PYRRA_EXAMPLES").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ServiceLevelObjective":
                jsonschema.validate(doc, PYRRA_SCHEMA)
                seen += 1
    assert seen


def test_sloth_spec_and_our_schema_against_sloths_own_examples():
    """SLOTH_EXAMPLES: Sloth's examples/ folder. Its prometheus/v1 specs pass our schema (it is no
    stricter than Sloth), and every key path of sloth.yaml appears in them."""
    theirs, seen = set(), 0
    for path in sorted(_upstream("SLOTH_EXAMPLES").glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("version") == "prometheus/v1":
                jsonschema.validate(doc, SLOTH_SCHEMA)
                theirs |= _key_paths(doc)
                seen += 1
    assert seen and _key_paths(yaml.safe_load((SLO / "sloth.yaml").read_text())) <= theirs


def _typed_paths(node: dict, root: dict, prefix: str = "") -> dict[str, str | None]:
    """path -> JSON type of every property below `node` (local $refs followed)."""
    out: dict[str, str | None] = {}
    for key, sub in node.get("properties", {}).items():
        while "$ref" in sub:
            sub = root["$defs"][sub["$ref"].rsplit("/", 1)[1]]
        out[f"{prefix}.{key}"] = sub.get("type")
        out.update(_typed_paths(sub, root, f"{prefix}.{key}"))
    return out


def _key_paths(node: object, prefix: str = "") -> set[str]:
    """Every key path of a document, lists folded, maps of free keys (labels, annotations) cut short."""
    if isinstance(node, list):
        return set().union(*(_key_paths(item, prefix + "[]") for item in node)) if node else set()
    if not isinstance(node, dict) or prefix.endswith(("labels", "annotations")):
        return set()
    paths = set()
    for key, value in node.items():
        paths.add(f"{prefix}.{key}")
        paths |= _key_paths(value, f"{prefix}.{key}")
    return paths


# --- wiring: every Prometheus this repository configures loads the SLO rules ------------------------

def test_the_compose_prometheus_loads_the_slo_rules_from_a_mounted_file():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = dict(m.split(":")[1::-1] for m in compose["services"]["prometheus"]["volumes"])  # target -> source
    rule_files = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    sources = {mounts[f].lstrip("./") for f in rule_files}  # each rule file is mounted from the repository
    assert sources == {"prometheus/alerts.yaml", "prometheus/slo/rules.yaml"}
    assert all((REPO / s).is_file() for s in sources)


# --- end to end: a real exporter, a real Prometheus, the SLO rules ------------------------------------

def test_recorded_events_equal_the_simulators_truth(simulator, exporter, tmp_path):
    """Every bad and every counted event, per SLO, as the simulator's truth says: ERROR jobs, jobs over
    the latency threshold, and jobs past the deadline (here 45 s: finished later than that after their
    creation, so counted when first seen final)."""
    from helpers import wait_for, write_config
    from prom import Prometheus, local_prometheus_config
    from test_exporter import OLD, config_text

    limit = 45
    sim = simulator("--seed", "31")
    chat, images = sim.create("chat", 60, age_seconds=OLD), sim.create("images", 20, age_seconds=OLD)
    groups = (f"  - {{kind: chat, group: nightly, ids: {json.dumps(chat)}}}\n"
              f"  - {{kind: images, group: renders, ids: {json.dumps(images)}}}\n")
    text = config_text(sim.url, groups).replace("jobs:\n", f"metrics: {{job_deadline_seconds: {limit}}}\njobs:\n", 1)
    proc = exporter(write_config(tmp_path, text))
    truth = sim.truth()
    expected = {}
    for kind, ids in (("chat", chat), ("images", images)):
        jobs = [truth[i] for i in ids]
        late = sum(1 for j in jobs if j["finished"] - j["created"] > limit)
        completed = [j for j in jobs if j["status"] == "COMPLETED"]
        threshold = {"chat": 60, "images": 120}[kind]
        slow = sum(1 for j in completed if j["finished"] - j["created"] > threshold)
        expected[f"{kind}-availability"] = (sum(1 for j in jobs if j["status"] == "ERROR") + late, len(jobs) + late)
        expected[f"{kind}-latency"] = (slow + late, len(completed) + late)
    assert any(bad for bad, _ in expected.values()) and expected["chat-availability"][0] < 60

    rules = [REPO / "prometheus" / "slo" / "rules.yaml"]
    prom = Prometheus(tmp_path / "prom", local_prometheus_config([f"127.0.0.1:{proc.port}"], rules))
    try:
        wait_for(prom.targets_up, 30, what="the exporter scraped")
        wait_for(lambda: prom.value("sum(distribute_jobs_finished_total)") == 80, 30, what="all jobs finished")

        def recorded() -> dict[str, tuple[float, float]]:
            bad = {r["metric"]["slo"]: float(r["value"][1]) for r in prom.query("sum by (slo) (distribute_slo:bad_events:sum)")}
            all_ = {r["metric"]["slo"]: float(r["value"][1]) for r in prom.query("sum by (slo) (distribute_slo:events:sum)")}
            return {slo: (bad.get(slo), all_[slo]) for slo in all_}

        wait_for(lambda: {k: v for k, v in recorded().items() if k in expected} == expected, 30,
                 what=f"the recorded events {recorded()} equal the truth {expected}")
    finally:
        prom.stop()
