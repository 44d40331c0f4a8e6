"""Writes the jobs' SLOs from prometheus/slo/slos.yaml: Prometheus rules, a Sloth spec, Pyrra resources.

    python prometheus/generate_slo.py            # after changing slos.yaml
    python prometheus/generate_slo.py --check    # exit 1 if a committed file is stale

Written: prometheus/slo/rules.yaml (event counters, error ratios per window, the remaining budget,
multiwindow multi-burn-rate alerts), prometheus/slo/sloth.yaml (`version: prometheus/v1`) and
prometheus/slo/pyrra.yaml (ServiceLevelObjective resources). Each SLO is judged per (kind, group).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parent.parent
SLO_DIR = REPO / "prometheus" / "slo"
SPEC = SLO_DIR / "slos.yaml"
RUNBOOKS = "https://github.com/distribute-exporter/distribute-exporter/blob/main/docs/runbooks.md"  # the default

sys.path.insert(0, str(REPO))
from exporter import KINDS  # noqa: E402
from exporter.config.model import DEFAULT_DURATION_BUCKETS  # noqa: E402  (the exporter's own buckets)
from prometheus_client.utils import floatToGoString  # noqa: E402  (how the exporter writes `le`)

# (severity, [(burn rate, long window, short window)]): the SRE workbook's multiwindow, multi-burn-rate
# alerts. 14.4x for an hour spends 2% of a 30-day budget; 6x for six hours, 5%; 1x for three days, 10%.
ALERTS = (("critical", ((14.4, "1h", "5m"), (6, "6h", "30m"))), ("warning", ((1, "3d", "6h"),)))
RATIO_WINDOWS = ("5m", "30m", "1h", "6h", "3d")
ALERT_NAMES = {"availability": "DistributeJobsAvailabilityBudgetBurn", "latency": "DistributeJobsLatencyBudgetBurn"}
JOBS_LINK = ('{{ with query "max by (external_url) (distribute_exporter_web_info)" }}'
             '{{ (. | first).Labels.external_url }}{{ end }}'
             '/jobs?kind={{ $labels.kind | urlquery }}&group={{ $labels.group | urlquery }}')
BAD, ALL = "distribute_slo:bad_events:sum", "distribute_slo:events:sum"


class SpecError(ValueError):
    """slos.yaml cannot be used; the message names the culprit."""


@dataclass(frozen=True)
class Slo:
    kind: str
    sli: str  # availability | latency
    objective: float  # percent
    threshold: float | None = None  # latency only: seconds, a bucket boundary

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.sli}"

    @property
    def budget(self) -> str:
        """1 - objective, as a short decimal (0.01, not 0.010000000000000009)."""
        return f"{round(1 - self.objective / 100, 10):g}"

    @property
    def le(self) -> str:
        return floatToGoString(self.threshold)

    def what(self) -> str:
        if self.sli == "availability":
            return f"{self.objective:g}% of finished {self.kind} jobs are COMPLETED"
        return f"{self.objective:g}% of {self.kind} jobs COMPLETE within {self.threshold:g} s"


@dataclass(frozen=True)
class Spec:
    window: str
    min_events: int
    slos: tuple[Slo, ...]
    runbook_base: str = RUNBOOKS  # docs/runbooks.md, or a fork's copy: the alerts link <base>#<alert>


def load_spec(text: str, buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS) -> Spec:
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("slos"), list):
        raise SpecError("slos.yaml: needs a list `slos`")
    window = str(data.get("window", "30d"))
    if not re.fullmatch(r"\d+[dhw]", window):
        raise SpecError(f"slos.yaml: window {window!r} is not a duration such as 30d")
    min_events = data.get("min_events", 20)
    if not isinstance(min_events, int) or min_events < 1:
        raise SpecError("slos.yaml: min_events must be a whole number of at least 1")
    runbook_base = data.get("runbook_base", RUNBOOKS)
    if not isinstance(runbook_base, str) or not re.fullmatch(r"https?://\S+", runbook_base):
        raise SpecError(f"slos.yaml: runbook_base {runbook_base!r} is not an http(s) URL")
    slos = []
    for i, entry in enumerate(data["slos"]):
        where = f"slos.yaml: slos[{i}]"
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS:
            raise SpecError(f"{where}: kind must be one of {', '.join(KINDS)}")
        for sli in ("availability", "latency"):
            slos.append(_slo(entry["kind"], sli, entry.get(sli) or {}, f"{where}.{sli}", buckets))
    if len({s.name for s in slos}) != len(slos):
        raise SpecError("slos.yaml: a kind is listed twice")
    return Spec(window, min_events, tuple(slos), runbook_base.rstrip("#"))


def _slo(kind: str, sli: str, entry: dict, where: str, buckets: tuple[float, ...]) -> Slo:
    objective = entry.get("objective", 99 if sli == "availability" else 95)
    if isinstance(objective, bool) or not isinstance(objective, (int, float)) or not 0 < objective < 100:
        raise SpecError(f"{where}.objective: must be a percentage above 0 and below 100, not {objective!r}")
    if sli == "availability":
        return Slo(kind, sli, float(objective))
    threshold = entry.get("threshold_seconds", 60 if kind == "chat" else 120)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or float(threshold) not in buckets:
        raise SpecError(f"{where}.threshold_seconds: {threshold!r} is not a bucket boundary of "
                        f"distribute_job_duration_seconds ({', '.join(f'{b:g}' for b in buckets)})")
    return Slo(kind, sli, float(objective), float(threshold))


# -- the SLIs, from the exporter's counters ---------------------------------------------------------

def _sum_of(first: str, second: str) -> str:
    """first + second where both exist, else whichever does (a group's deadline series appears with
    its first stuck job; an exporter before that counter has none)."""
    return f"({first} + {second})\nor {first}\nor {second}"


def _events(slo: Slo, good_or_bad: str, rate_window: str | None = None) -> str:
    """A PromQL sum of the SLO's events, bad or all: per target (counters) without rate_window, else
    the rate over it per (kind, group) (Sloth's queries, `{{.window}}`)."""
    kind = f'kind="{slo.kind}"'

    def counter(metric: str, matchers: str, dropped: str) -> str:
        if rate_window is None:
            return f"sum without ({dropped}) ({metric}{{{matchers}}})"
        return f"sum by (kind, group) (rate({metric}{{{matchers}}}[{rate_window}]))"

    deadline = counter("distribute_jobs_deadline_exceeded_total", kind, "")
    if slo.sli == "availability":
        status = ', status="ERROR"' if good_or_bad == "bad" else ""
        return _sum_of(counter("distribute_jobs_finished_total", kind + status, "model, status"), deadline)
    done = counter("distribute_job_duration_seconds_count", kind + ', status="COMPLETED"', "model, status")
    if good_or_bad == "all":
        return _sum_of(done, deadline)
    fast = counter("distribute_job_duration_seconds_bucket", f'{kind}, status="COMPLETED", le="{slo.le}"',
                   "model, status, le")
    return _sum_of(f"({done} - {fast})", deadline)


# -- prometheus/slo/rules.yaml --------------------------------------------------------------------

def event_rules(spec: Spec) -> list[dict[str, Any]]:
    """Per target, the SLOs' bad and all events as counters (the exporter's counters are kept across
    its restarts, so their sums per target only grow): what the ratios and Pyrra rate."""
    rules = []
    for slo in spec.slos:
        labels = {"slo": slo.name}
        rules.append({"record": BAD, "expr": _events(slo, "bad"), "labels": labels})
        rules.append({"record": ALL, "expr": _events(slo, "all"), "labels": labels})
    return rules


def ratio_rules(spec: Spec) -> list[dict[str, Any]]:
    rules = []
    for window in (*RATIO_WINDOWS, spec.window):
        # A group with no bad series yet (no ERROR nor deadline pass so far) has a ratio of 0, not none.
        total = f"sum by (slo, kind, group) (rate({ALL}[{window}]))"
        rules.append({"record": f"distribute_slo:error_ratio:rate{window}",
                      "expr": f"(sum by (slo, kind, group) (rate({BAD}[{window}])) or 0 * {total})\n/ {total}"})
    for window in dict.fromkeys(long for _, rows in ALERTS for _, long, _ in rows):
        rules.append({"record": f"distribute_slo:events:increase{window}",
                      "expr": f"sum by (slo, kind, group) (increase({ALL}[{window}]))"})
    for slo in spec.slos:
        rules.append({"record": "distribute_slo:objective:ratio", "expr": f"vector({slo.objective / 100:g})",
                      "labels": {"slo": slo.name, "kind": slo.kind}})
    rules.append({"record": "distribute_slo:error_budget_remaining:ratio",
                  "expr": f"1 - distribute_slo:error_ratio:rate{spec.window}\n"
                          "/ on (slo, kind) group_left () (1 - distribute_slo:objective:ratio)"})
    return rules


def alert_rules(spec: Spec) -> list[dict[str, Any]]:
    rules = []
    for slo in spec.slos:
        for severity, rows in ALERTS:
            rules.append(_alert(slo, severity, rows, spec.min_events, spec.runbook_base))
    return rules


def _alert(slo: Slo, severity: str, rows: tuple, min_events: int, runbooks: str = RUNBOOKS) -> dict[str, Any]:
    sel = f'{{slo="{slo.name}"}}'
    conditions = [f"(\n  distribute_slo:error_ratio:rate{long}{sel} > {burn:g} * {slo.budget}\n"
                  f"  and distribute_slo:error_ratio:rate{short}{sel} > {burn:g} * {slo.budget}\n"
                  f"  and distribute_slo:events:increase{long}{sel} >= {min_events}\n)"
                  for burn, long, short in rows]
    pace = " or ".join(f"{burn:g}x over {long} and {short}" for burn, long, short in rows)
    name = ALERT_NAMES[slo.sli]
    return {"alert": name, "expr": "\nor\n".join(conditions), "labels": {"severity": severity, "slo": slo.name},
            "annotations": {
                "summary": f"{{{{ $labels.kind }}}} jobs of group {{{{ $labels.group }}}} burn the {slo.sli} "
                           f"budget: {{{{ $value | humanizePercentage }}}} bad",
                "description": f"SLO: {slo.what()}, per group. Its error budget is being spent at "
                               f"{pace} the sustainable rate (at least {min_events} events in the long "
                               "window). Bad events: " + _bad_events(slo) + ".",
                "runbook_url": f"{runbooks}#{name.lower()}",
                "jobs": JOBS_LINK}}


def _bad_events(slo: Slo) -> str:
    if slo.sli == "availability":
        return "jobs that ended in ERROR, and jobs still unfinished metrics.job_deadline_seconds after creation"
    return (f"COMPLETED jobs slower than {slo.threshold:g} s, and jobs still unfinished "
            "metrics.job_deadline_seconds after creation")


RULES_HEADER = """\
# GENERATED from prometheus/slo/slos.yaml by prometheus/generate_slo.py: edit slos.yaml, then run
# `python prometheus/generate_slo.py` (a test fails when the two differ). Unit tests: rules.test.yaml.
# Every SLO is judged per (kind, group): recorded per target as counters of bad and all events, then
# as error ratios over the alert windows, and as the budget left over the SLO window.
"""


def render_rules(spec: Spec) -> str:
    doc = {"groups": [{"name": "distribute-slo-events", "rules": event_rules(spec)},
                      {"name": "distribute-slo-ratios", "rules": ratio_rules(spec)},
                      {"name": "distribute-slo-alerts", "rules": alert_rules(spec)}]}
    return RULES_HEADER + _dump(doc)


# -- prometheus/slo/sloth.yaml --------------------------------------------------------------------

SLOTH_HEADER = """\
# GENERATED from prometheus/slo/slos.yaml by prometheus/generate_slo.py. For teams that use Sloth:
# `sloth generate -i prometheus/slo/sloth.yaml` writes the same SLOs as Sloth's own rules, straight from
# the exporter's metrics (nothing of rules.yaml is needed). Ratios are per (kind, group).
"""


def render_sloth(spec: Spec) -> str:
    slos = []
    for slo in spec.slos:
        name = ALERT_NAMES[slo.sli]
        slos.append({
            "name": slo.name, "objective": slo.objective, "description": f"{slo.what()} (per group).",
            "sli": {"events": {"error_query": _events(slo, "bad", "{{.window}}"),
                               "total_query": _events(slo, "all", "{{.window}}")}},
            "alerting": {"name": name, "annotations": {"runbook_url": f"{spec.runbook_base}#{name.lower()}"},
                         "page_alert": {"labels": {"severity": "critical"}},
                         "ticket_alert": {"labels": {"severity": "warning"}}}})
    return SLOTH_HEADER + _dump({"version": "prometheus/v1", "service": "distribute-jobs", "slos": slos})


# -- prometheus/slo/pyrra.yaml --------------------------------------------------------------------

PYRRA_HEADER = """\
# GENERATED from prometheus/slo/slos.yaml by prometheus/generate_slo.py. For teams that use Pyrra:
# `kubectl apply -f prometheus/slo/pyrra.yaml`. Pyrra's ratio indicator takes one counter for errors and
# one for the total, and an SLO's events are sums of two of the exporter's counters: load the group
# distribute-slo-events of prometheus/slo/rules.yaml too (it records those sums per target).
"""


def render_pyrra(spec: Spec) -> str:
    docs = []
    for slo in spec.slos:
        docs.append({
            "apiVersion": "pyrra.dev/v1alpha1", "kind": "ServiceLevelObjective",
            "metadata": {"name": f"distribute-jobs-{slo.name}",
                         "labels": {"app.kubernetes.io/name": "distribute-exporter"}},
            "spec": {"target": f"{slo.objective:g}", "window": spec.window,
                     "description": f"{slo.what()} (per group).",
                     "indicator": {"ratio": {"errors": {"metric": f'{BAD}{{slo="{slo.name}"}}'},
                                             "total": {"metric": f'{ALL}{{slo="{slo.name}"}}'},
                                             "grouping": ["kind", "group"]}},
                     "alerting": {"name": ALERT_NAMES[slo.sli]}}})
    return PYRRA_HEADER + "---\n".join(_dump(d) for d in docs)


# -- writing ----------------------------------------------------------------------------------------

class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # each rule spelled out, no &id001 anchors
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100_000, allow_unicode=True)


def outputs(spec_text: str) -> Iterator[tuple[Path, str]]:
    spec = load_spec(spec_text)
    yield SLO_DIR / "rules.yaml", render_rules(spec)
    yield SLO_DIR / "sloth.yaml", render_sloth(spec)
    yield SLO_DIR / "pyrra.yaml", render_pyrra(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file is stale")
    args = parser.parse_args(argv)
    try:
        written = list(outputs(SPEC.read_text()))
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    stale = [path for path, text in written if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} is stale: run python prometheus/generate_slo.py")
        return 1 if stale else 0
    for path, text in written:
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
