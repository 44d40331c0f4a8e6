"""Writes grafana/dashboards/*.json. Run `python grafana/generate.py` after changing a panel; a test
checks that the committed files are what this script writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance", kind=~"$kind", group=~"$group", model=~"$model"'
SEL_KG = 'instance=~"$instance", kind=~"$kind", group=~"$group"'
SEL_GM = 'instance=~"$instance", group=~"$group", model=~"$model"'
SEL_I = 'instance=~"$instance"'
SEL_IK = 'instance=~"$instance", kind=~"$kind"'
RI = "$__rate_interval"
EXPORTER_URL = "http://localhost:9877"  # docker-compose.yml publishes the exporter there
# process_* metrics carry no exporter-specific name: keep only this exporter's targets.
OWN = "* on (instance, job) group_left () distribute_exporter_build_info"


def panel(title: str, description: str, unit: str, targets: list[tuple[str, str]], kind: str = "timeseries",
          width: int = 12, height: int = 8, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "fieldConfig": {"defaults": {"unit": unit, **extra.pop("defaults", {})}, "overrides": []},
            "options": extra.pop("options", {"legend": {"displayMode": "list", "placement": "bottom"},
                                             "tooltip": {"mode": "multi", "sort": "desc"}}),
            "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend,
                         **({"format": "heatmap"} if kind == "heatmap" else {})}
                        for i, (expr, legend) in enumerate(targets)],
            "gridPos": {"w": width, "h": height}, **extra}


def stat(title: str, description: str, unit: str, expr: str, legend: str = "", **extra: Any) -> dict[str, Any]:
    return panel(title, description, unit, [(expr, legend)], kind="stat", width=6, height=5,
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "value", "graphMode": "area", "textMode": "auto"}, **extra)


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": f"{name}-query"},
            "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*", "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def templating(with_jobs: bool) -> dict[str, Any]:
    items = [{"name": "datasource", "label": "Data Source", "type": "datasource", "query": "prometheus",
              "current": {}, "hide": 0, "refresh": 1},
             variable("instance", "Instance", "label_values(distribute_exporter_build_info, instance)")]
    if with_jobs:
        items += [variable("kind", "Kind", 'label_values(distribute_jobs{instance=~"$instance"}, kind)'),
                  variable("group", "Group", 'label_values(distribute_jobs{instance=~"$instance", kind=~"$kind"}, group)'),
                  variable("model", "Model", 'label_values(distribute_jobs{instance=~"$instance", kind=~"$kind", group=~"$group"}, model)'),
                  # where people's browsers reach the exporter: the latency panel's links open its jobs API
                  {"name": "exporter_url", "label": "Exporter URL", "type": "textbox", "query": EXPORTER_URL,
                   "current": {"text": EXPORTER_URL, "value": EXPORTER_URL}, "hide": 0},
                  # The tracing data source (Tempo; tracing.endpoint sends the traces there through a
                  # collector): the latency panel's trace link opens its jobs' traces in Explore. With
                  # none configured the variable is empty and the link leads nowhere useful.
                  {"name": "tracing_datasource", "label": "Traces", "type": "datasource", "query": "tempo",
                   "current": {}, "hide": 0, "refresh": 1}]
    else:
        items += [variable("kind", "Kind", 'label_values(distribute_api_requests_total{instance=~"$instance"}, kind)')]
    return {"list": items}


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give panels ids and grid positions, left to right, top to bottom."""
    x = y = row_height = 0
    for number, p in enumerate(panels, start=1):
        p["id"] = number
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y = 0, y + row_height
            row_height = 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        row_height = max(row_height, h)
        if p["type"] == "row":
            x, y, row_height = 0, y + h, 0
    return panels


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]], with_jobs: bool) -> dict[str, Any]:
    return {"uid": uid, "title": title, "description": description, "tags": ["distribute", "prometheus"],
            "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"}, "timepicker": {}, "timezone": "",
            "annotations": {"list": []}, "links": [], "templating": templating(with_jobs), "panels": layout(panels)}


def latency_panel(buckets: str) -> dict[str, Any]:
    """Quantiles with the exemplars Prometheus stored (each a job id, and its trace id with tracing
    on: the datasource's exemplarTraceIdDestinations link them to /jobs/<id> and to the trace), a
    link to the slowest jobs' list and one to the series' traces ($tracing_datasource)."""
    latency = panel("Latency p50 / p90 / p99 by kind and model", "Quantiles of finished - created, from the "
                    "distribute_job_duration_seconds histogram (interpolated within buckets). The dots are "
                    "exemplars: a recent job of each bucket; hover one and follow job_id to the job's page on the "
                    "exporter (needs Prometheus with --enable-feature=exemplar-storage).", "s",
                    [(f"histogram_quantile({q}, sum by (kind, model, le) (rate({buckets}[{RI}])))",
                      f"p{int(q * 100)} {{{{kind}}}} {{{{model}}}}") for q in (0.5, 0.9, 0.99)], width=24)
    for target in latency["targets"]:
        target["exemplar"] = True
    latency["fieldConfig"]["defaults"]["links"] = [{
        "title": "Slowest ${__field.labels.kind} jobs of ${__field.labels.model} on the exporter",
        "url": "${exporter_url}/api/v1/jobs?kind=${__field.labels.kind}&model=${__field.labels.model:percentencode}"
               "&sort=-duration&finished_after=${__from:date:seconds}", "targetBlank": True},
        {"title": "Traces of ${__field.labels.kind} jobs of ${__field.labels.model} (${tracing_datasource})",
         "url": TRACES_EXPLORE, "targetBlank": True}]
    return latency


# Grafana Explore on the tracing data source, with a TraceQL search for the series' jobs (their root
# spans carry distribute.job.kind and gen_ai.response.model, see README, Traces).
TRACEQL = ('{ span.distribute.job.kind = \\"${__field.labels.kind}\\" && '
           'span.gen_ai.response.model = \\"${__field.labels.model}\\" }')
TRACES_EXPLORE = ('/explore?left={"datasource":"${tracing_datasource}","queries":[{"refId":"A",'
                  '"queryType":"traceql","query":"' + TRACEQL + '"}],"range":{"from":"${__from}","to":"${__to}"}}')


def jobs_dashboard() -> dict[str, Any]:
    finished = f"distribute_jobs_finished_total{{{SEL}}}"
    buckets = f"distribute_job_duration_seconds_bucket{{{SEL}}}"
    panels = [
        row("Jobs"),
        panel("Jobs by current status", "Tracked jobs by their last known status (distribute_jobs), summed "
              "across replicas. UNKNOWN: not answered yet; NOT_FOUND: 404 past the grace period.", "short",
              [(f"sum by (status) (distribute_jobs{{{SEL}}})", "{{status}}")],
              defaults={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 20}}),
        panel("Finished jobs per second", "Jobs reaching COMPLETED or ERROR per second, by kind and status.",
              "ops", [(f"sum by (kind, status) (rate({finished}[{RI}]))", "{{kind}} {{status}}")]),
        panel("Error ratio", "Share of finished jobs that ended in ERROR, by kind.", "percentunit",
              [(f'sum by (kind) (rate(distribute_jobs_finished_total{{{SEL}, status="ERROR"}}[{RI}])) / '
                f"sum by (kind) (rate({finished}[{RI}]))", "{{kind}}")], defaults={"min": 0, "max": 1}),
        panel("Age of the oldest unfinished job", "How long ago the oldest job not yet COMPLETED or ERROR was "
              "created, by kind and group.", "s",
              [(f"time() - min by (kind, group) (distribute_oldest_unfinished_job_created_timestamp_seconds{{{SEL_KG}}})",
                "{{kind}} {{group}}")]),
        row("Latency (created to finished)"),
        latency_panel(buckets),
        panel("Latency heatmap", "How many jobs finished in each duration bucket per interval.", "s",
              [(f"sum by (le) (increase({buckets}[{RI}]))", "{{le}}")], kind="heatmap", width=24,
              options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                       "color": {"mode": "scheme", "scheme": "Oranges"}}),
        row("Output"),
        panel("Tokens per second by model and type", "usage.prompt_tokens and usage.completion_tokens of "
              "finished chat jobs, per second.", "short",
              [(f"sum by (model, token_type) (rate(distribute_tokens_total{{{SEL_GM}}}[{RI}]))", "{{model}} {{token_type}}")]),
        panel("Result items per second", "Image and audio URLs returned by finished jobs, per second.", "short",
              [(f"sum by (kind, model) (rate(distribute_results_total{{{SEL}}}[{RI}]))", "{{kind}} {{model}}")]),
        panel("Share of chat choices ending in tool calls", "Choices with finish_reason tool_calls over all "
              "choices of finished chat jobs, by model.", "percentunit",
              [(f'sum by (model) (rate(distribute_chat_choices_total{{{SEL_GM}, finish_reason="tool_calls"}}[{RI}])) / '
                f"sum by (model) (rate(distribute_chat_choices_total{{{SEL_GM}}}[{RI}]))", "{{model}}")],
              defaults={"min": 0, "max": 1}),
        panel("Tool calls per second", "Tool calls in the choices of finished chat jobs, per second.", "short",
              [(f"sum by (model) (rate(distribute_chat_tool_calls_total{{{SEL_GM}}}[{RI}]))", "{{model}}")]),
    ]
    return dashboard("distribute-jobs", "Distribute.ai async jobs", "Jobs tracked by distribute-exporter: "
                     "status, latency, tokens, results, estimated cost and SLOs.", panels + cost_row() + slo_row(),
                     with_jobs=True)


def cost_row() -> list[dict[str, Any]]:
    """Estimated cost (only with pricing.file): spend, cost per 1,000 jobs, unpriced jobs."""
    cost = f"distribute_estimated_cost_total{{{SEL}}}"
    finished = f"sum by (kind) (rate(distribute_jobs_finished_total{{{SEL}}}[{RI}]))"
    unpriced = f"sum by (kind) (rate(distribute_unpriced_jobs_total{{{SEL}}}[{RI}]))"
    return [
        row("Estimated cost"),
        panel("Estimated spend per hour by group and model", "Estimated cost of finished jobs per hour at the "
              "current rate (distribute_estimated_cost_total): your pricing.file times the tokens, result items "
              "and requests the API reported. Not a bill.", "short",
              [(f"3600 * sum by (group, model, currency) (rate({cost}[{RI}]))", "{{group}} {{model}} ({{currency}})")],
              defaults={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 20}}),
        panel("Estimated cost per 1,000 jobs", "Estimated cost of 1,000 priced finished jobs, by kind: spend "
              "over finished jobs that matched a price (unpriced jobs are left out of both).", "short",
              [(f"1000 * sum by (kind, currency) (rate({cost}[{RI}])) / on (kind) group_left () "
                f"({finished} - ({unpriced} or {finished} * 0))", "{{kind}} ({{currency}})")]),
        panel("Unpriced jobs", "Finished jobs whose model matched no entry of pricing.file "
              "(distribute_unpriced_jobs_total): their cost is in no total. Add a price and reload.", "short",
              [(f"sum by (kind, group, model) (increase(distribute_unpriced_jobs_total{{{SEL}}}[{RI}]))",
                "{{kind}} {{group}} {{model}}")], width=24),
    ]


def slo_row() -> list[dict[str, Any]]:
    """The SLOs of prometheus/slo/ (its rules must be loaded): budget left and burn rate per SLO and group.
    Judged across replicas, so these series carry no instance label."""
    sel = 'kind=~"$kind", group=~"$group"'
    legend = "{{slo}} {{group}}"
    return [
        row("SLOs (prometheus/slo/slos.yaml)"),
        panel("Error budget left over the SLO window", "1 - (bad events / all events over the SLO window, 30 "
              "days by default) / (1 - objective), per SLO and group "
              "(distribute_slo:error_budget_remaining:ratio, recorded by prometheus/slo/rules.yaml). 100%: "
              "nothing spent; 0: spent; below 0: overspent. Bad events: ERROR jobs (availability), jobs slower "
              "than the threshold (latency), and jobs unfinished past metrics.job_deadline_seconds (both).",
              "percentunit", [(f"distribute_slo:error_budget_remaining:ratio{{{sel}}}", legend)], kind="bargauge",
              options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True},
              defaults={"min": 0, "max": 1, "thresholds": {"mode": "absolute", "steps": [
                  {"color": "red", "value": None}, {"color": "orange", "value": 0.25},
                  {"color": "green", "value": 0.5}]}}),
        panel("Burn rate over 1 h", "How fast each SLO's budget is spent: the error ratio over the last hour "
              "divided by the allowed one (1 - objective). 1 spends the budget exactly over the SLO window; the "
              "page fires above 14.4 (with the 5 m ratio too) or 6 (over 6 h and 30 m).", "short",
              [(f"distribute_slo:error_ratio:rate1h{{{sel}}} / on (slo, kind) group_left () "
                "(1 - distribute_slo:objective:ratio)", legend)]),
    ]


def exporter_dashboard() -> dict[str, Any]:
    panels = [
        row("API"),
        stat("API up", "distribute_up: 1 when the last result request got a well-formed answer (200 or 404).",
             "bool", f"min(distribute_up{{{SEL_I}}})"),
        stat("Time since the last successful poll", "Seconds since a result request last got a well-formed answer.",
             "s", f"time() - max(distribute_last_successful_poll_timestamp_seconds{{{SEL_I}}})"),
        stat("Config reload", "distribute_config_last_reload_successful: 0 means the last reload failed and "
             "the previous config is still running.", "bool", f"min(distribute_config_last_reload_successful{{{SEL_I}}})"),
        stat("Tracked jobs", "Jobs being polled (unfinished) across replicas.", "short",
             f'sum(distribute_exporter_tracked_jobs{{{SEL_I}, state="polled"}})'),
        panel("API requests per second by code", "Result requests sent, by HTTP status of the answer "
              "('error': no answer).", "reqps",
              [(f"sum by (code) (rate(distribute_api_requests_total{{{SEL_IK}}}[{RI}]))", "{{code}}")]),
        panel("API errors per second by reason", "Failed result requests: timeout, connect, unauthorized, "
              "rate_limited, http_4xx, http_5xx, invalid_body.", "reqps",
              [(f"sum by (reason) (rate(distribute_api_request_errors_total{{{SEL_IK}}}[{RI}]))", "{{reason}}")]),
        panel("API latency p50 / p99", "Time to answer a result request, by kind.", "s",
              [(f"histogram_quantile({q}, sum by (kind, le) (rate(distribute_api_request_duration_seconds_bucket{{{SEL_IK}}}[{RI}])))",
                f"p{int(q * 100)} {{{{kind}}}}") for q in (0.5, 0.99)], width=24),
        row("Proxy"),
        panel("Proxied requests per second", "Requests applications sent through the proxy, by endpoint "
              "(create, result, other) and the code they got (502/504: the API unreachable or too slow).", "reqps",
              [(f"sum by (endpoint, code) (rate(distribute_proxy_requests_total{{{SEL_I}}}[{RI}]))",
                "{{endpoint}} {{code}}")]),
        panel("Job answers: through the proxy vs own polls", "Share of the result answers (200) the exporter "
              "learned from applications' own requests through the proxy, and from its own polls.", "percentunit",
              [(f"sum(rate(distribute_proxy_observed_answers_total{{{SEL_IK}}}[{RI}])) / "
                f"(sum(rate(distribute_proxy_observed_answers_total{{{SEL_IK}}}[{RI}])) + "
                f'sum(rate(distribute_api_requests_total{{{SEL_IK}, code="200"}}[{RI}])))', "through the proxy"),
               (f'sum(rate(distribute_api_requests_total{{{SEL_IK}, code="200"}}[{RI}])) / '
                f"(sum(rate(distribute_proxy_observed_answers_total{{{SEL_IK}}}[{RI}])) + "
                f'sum(rate(distribute_api_requests_total{{{SEL_IK}, code="200"}}[{RI}])))', "own polls")],
              defaults={"min": 0, "max": 1, "custom": {"stacking": {"mode": "normal"}, "fillOpacity": 20}}),
        panel("Proxy upstream latency p50 / p99", "Time from a proxied request to the API's answer headers, "
              "by endpoint.", "s",
              [(f"histogram_quantile({q}, sum by (endpoint, le) (rate(distribute_proxy_upstream_duration_seconds_bucket"
                f"{{{SEL_I}}}[{RI}])))", f"p{int(q * 100)} {{{{endpoint}}}}") for q in (0.5, 0.99)]),
        panel("Proxy errors per second by reason", "connect and timeout: the application got 502/504; observe, "
              "commit, dropped: the exporter could not use what it saw (the application's answer was unchanged).",
              "reqps", [(f"sum by (reason) (rate(distribute_proxy_errors_total{{{SEL_I}}}[{RI}]))", "{{reason}}")]),
        row("Process"),
        panel("CPU", "CPU seconds per second used by each exporter process.", "percentunit",
              [(f"rate(process_cpu_seconds_total{{{SEL_I}}}[{RI}]) {OWN}", "{{instance}}")]),
        panel("Memory", "Resident memory of each exporter process.", "bytes",
              [(f"process_resident_memory_bytes{{{SEL_I}}} {OWN}", "{{instance}}")]),
    ]
    return dashboard("distribute-exporter", "distribute-exporter health", "The exporter's own health: "
                     "requests to the API, errors, latency, reloads and resources.", panels, with_jobs=False)


DASHBOARDS = {"distribute-jobs.json": jobs_dashboard, "distribute-exporter.json": exporter_dashboard}


def render(builder) -> str:
    return json.dumps(builder(), indent=2) + "\n"


if __name__ == "__main__":
    for name, builder in DASHBOARDS.items():
        (HERE / "dashboards" / name).write_text(render(builder))
        print(f"wrote grafana/dashboards/{name}")
