"""Writes the Prometheus Operator's PrometheusRules from prometheus/alerts.yaml and prometheus/slo/rules.yaml.

    python prometheus/generate_operator.py                  # after changing alerts.yaml or the SLOs
    python prometheus/generate_operator.py --check          # exit 1 if a committed rule is stale
    python prometheus/generate_operator.py --runbook-base https://github.com/ME/FORK/blob/main/docs/runbooks.md

--runbook-base points every `runbook_url` (alerts.yaml and the expected annotations of alerts.test.yaml;
the SLOs' runbook_base in prometheus/slo/slos.yaml, whose files are then generated again) at another
copy of docs/runbooks.md, for a fork or an internal wiki, then regenerates.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "prometheus" / "alerts.yaml"
ALERT_TESTS = REPO / "prometheus" / "alerts.test.yaml"
RULE = REPO / "deploy" / "kubernetes" / "operator" / "prometheusrule.yaml"
SLO_RULES = REPO / "prometheus" / "slo" / "rules.yaml"
SLO_RULE = REPO / "deploy" / "kubernetes" / "operator" / "prometheusrule-slo.yaml"
SLO_SPEC = REPO / "prometheus" / "slo" / "slos.yaml"
SLO_TESTS = REPO / "prometheus" / "slo" / "rules.test.yaml"

HEADER = """\
# GENERATED from prometheus/{source} by prometheus/generate_operator.py: edit {edit}, then run
# `python prometheus/generate_operator.py` (a test fails when this file and {source} differ).
# The groups are {source}'s, unchanged; kube-prometheus-stack picks the rule up by the labels that
# deploy/kubernetes/operator/kustomization.yaml adds (see docs/replicas.md, "Kubernetes with the Prometheus Operator").
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: distribute-exporter
spec:
"""
# (source, what to edit, resource name) of each PrometheusRule, by the file it is written to
RULES = {RULE: ("alerts.yaml", "alerts.yaml", "distribute-exporter"),
         SLO_RULE: ("slo/rules.yaml", "slo/slos.yaml (then run generate_slo.py)", "distribute-exporter-slo")}

RUNBOOK_URL = re.compile(r"(runbook_url:\s*)(\S+?)#")
RUNBOOK_BASE = re.compile(r"^(runbook_base:\s*)(\S+)", re.M)  # in prometheus/slo/slos.yaml


def render(alerts_text: str, target: Path = RULE) -> str:
    """The PrometheusRule: the rule file from `groups:` on, indented under `spec:` (comments and block
    scalars kept as written, so the diff of a rule change reads the same in both files)."""
    source, edit, name = RULES[target]
    lines = alerts_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise ValueError(f"{source} has no top-level `groups:` key")
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines[start:])
    text = HEADER.format(source=source, edit=edit, name=name) + body
    if yaml.safe_load(text)["spec"] != {"groups": yaml.safe_load(alerts_text)["groups"]}:
        raise ValueError(f"{source} has top-level keys after `groups:`; only `groups:` can be carried over")
    return text


def runbook_bases(text: str) -> set[str]:
    return {match.group(2) for match in RUNBOOK_URL.finditer(text)}


def rebase(text: str, new_base: str) -> str:
    """Every runbook_url's part before `#` replaced by new_base; the anchors stay."""
    return RUNBOOK_URL.sub(lambda m: f"{m.group(1)}{new_base.rstrip('#')}#", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed PrometheusRule is stale")
    parser.add_argument("--runbook-base", metavar="URL", help="point every runbook_url at URL#<alert>")
    args = parser.parse_args(argv)
    if args.runbook_base:
        for path in (ALERTS, ALERT_TESTS, SLO_TESTS):
            path.write_text(rebase(path.read_text(), args.runbook_base))
        SLO_SPEC.write_text(RUNBOOK_BASE.sub(lambda m: f"{m.group(1)}{args.runbook_base.rstrip('#')}",
                                             SLO_SPEC.read_text()))
        import generate_slo  # beside this file
        if generate_slo.main([]) != 0:
            return 1
    expected = {RULE: render(ALERTS.read_text(), RULE), SLO_RULE: render(SLO_RULES.read_text(), SLO_RULE)}
    stale = [path for path, text in expected.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} is stale: run python prometheus/generate_operator.py")
        return 1 if stale else 0
    for path, text in expected.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
