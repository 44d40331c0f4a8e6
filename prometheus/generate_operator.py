"""Writes the Prometheus Operator's PrometheusRule from prometheus/alerts.yaml, the one source of the rules.

    python prometheus/generate_operator.py                  # after changing alerts.yaml
    python prometheus/generate_operator.py --check          # exit 1 if the committed rule is stale
    python prometheus/generate_operator.py --runbook-base https://github.com/ME/FORK/blob/main/docs/runbooks.md

--runbook-base points every `runbook_url` (alerts.yaml and the expected annotations of alerts.test.yaml)
at another copy of docs/runbooks.md, for a fork or an internal wiki, then regenerates.
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

HEADER = """\
# GENERATED from prometheus/alerts.yaml by prometheus/generate_operator.py: edit alerts.yaml, then run
# `python prometheus/generate_operator.py` (a test fails when this file and alerts.yaml differ).
# The groups are alerts.yaml's, unchanged; kube-prometheus-stack picks the rule up by the labels that
# deploy/kubernetes/operator/kustomization.yaml adds (see docs/replicas.md, "Kubernetes with the Prometheus Operator").
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: distribute-exporter
  labels:
    app.kubernetes.io/name: distribute-exporter
spec:
"""

RUNBOOK_URL = re.compile(r"(runbook_url:\s*)(\S+?)#")


def render(alerts_text: str) -> str:
    """The PrometheusRule: alerts.yaml from `groups:` on, indented under `spec:` (comments and block
    scalars kept as written, so the diff of a rule change reads the same in both files)."""
    lines = alerts_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise ValueError("alerts.yaml has no top-level `groups:` key")
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines[start:])
    text = HEADER + body
    if yaml.safe_load(text)["spec"] != {"groups": yaml.safe_load(alerts_text)["groups"]}:
        raise ValueError("alerts.yaml has top-level keys after `groups:`; only `groups:` can be carried over")
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
        for path in (ALERTS, ALERT_TESTS):
            path.write_text(rebase(path.read_text(), args.runbook_base))
    expected = render(ALERTS.read_text())
    if args.check:
        if not RULE.exists() or RULE.read_text() != expected:
            print(f"{RULE.relative_to(REPO)} is stale: run python prometheus/generate_operator.py")
            return 1
        return 0
    RULE.parent.mkdir(parents=True, exist_ok=True)
    RULE.write_text(expected)
    print(f"wrote {RULE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
