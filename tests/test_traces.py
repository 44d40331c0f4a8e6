"""Traces of finished jobs (tracing.*): a real OTLP/HTTP receiver (tests/otlp_receiver.py) decodes
what the exporter sends with opentelemetry-proto; the simulator's truth is what the spans must say."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter

import pytest

from helpers import REPO, http, parse_samples, total, wait_for, holds_for, write_config
from otlp_receiver import Receiver
from test_exporter import OLD, config_text

# Honoured by the SDK's exporter: a failed export (with the SDK's own retries) ends within 2 s.
FAST_TIMEOUT = {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2"}
ERROR_CODE = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR


@pytest.fixture
def receiver():
    started = Receiver()
    yield started
    started.stop()


def tracing_config(sim_url: str, groups: str, endpoint: str, extra: str = "") -> str:
    return (config_text(sim_url, groups, poll="interval_seconds: 0.2, max_interval_seconds: 0.4, "
                        "not_found_grace_seconds: 30")
            + f"tracing: {{endpoint: '{endpoint}', service_name: traced-test{extra}}}\n")


def ids_groups(tmp_path, ids_by_kind: dict[str, list[str]]) -> str:
    lines = ""
    for kind, ids in ids_by_kind.items():
        (tmp_path / f"{kind}.txt").write_text("\n".join(ids) + "\n")
        lines += f"  - {{kind: {kind}, group: g-{kind}, ids_file: {kind}.txt}}\n"
    return lines


def traces_metric(proc, outcome: str) -> float:
    return total(proc.samples("distribute_exporter_traces_total"), outcome=outcome)


def pending(proc) -> float:
    return total(proc.samples("distribute_exporter_traces_pending"))


def once_each(receiver: Receiver) -> Counter:
    return Counter(s["trace_id"] for s in receiver.roots())


def test_every_final_job_has_one_trace_that_matches_the_simulator(simulator, exporter, receiver, tmp_path):
    sim = simulator("--seed", "7", "--speed", "10", "--timestamps", "epoch-ms")
    old = {"chat": sim.create("chat", 40, age_seconds=OLD), "images": sim.create("images", 8, age_seconds=OLD),
           "speech": sim.create("speech", 8, age_seconds=OLD)}
    cfg = write_config(tmp_path, tracing_config(sim.url, ids_groups(tmp_path, old), receiver.url))
    proc = exporter(cfg)
    live = sim.create("chat", 6)  # seen QUEUED, PROCESSING ... before they finish: phase spans
    with open(tmp_path / "chat.txt", "a") as ids_file:
        ids_file.write("\n".join(live) + "\n")
    old["chat"] += live
    every = [i for ids in old.values() for i in ids]
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == len(every), 60, what="all final")
    wait_for(lambda: traces_metric(proc, "exported") == len(every), 60, what="every trace exported")
    assert pending(proc) == 0

    truth = sim.truth()
    roots = {s["trace_id"]: s for s in receiver.roots()}
    assert once_each(receiver) == Counter({i.replace("-", ""): 1 for i in every})  # one root per job
    errors = 0
    for job_id in every:
        job, root = truth[job_id], roots[job_id.replace("-", "")]
        attrs = root["attributes"]
        assert root["start"] == pytest.approx(job["created"] * 1e9, abs=1e6)
        assert (root["end"] - root["start"]) / 1e9 == pytest.approx(job["finished"] - job["created"], abs=1e-3)
        assert root["name"] == ("chat " if job["kind"] == "chat" else "generate_content ") + job["model"]
        assert attrs["distribute.job.id"] == job_id and attrs["distribute.job.status"] == job["status"]
        assert attrs["distribute.job.group"] == f"g-{job['kind']}" and attrs["gen_ai.response.model"] == job["model"]
        assert root["resource"]["service.name"] == "traced-test"
        if job["status"] == "ERROR":
            errors += 1
            assert root["status"] == ERROR_CODE
        else:
            assert root["status"] != ERROR_CODE
        if job["kind"] == "chat" and "usage" in job:
            assert attrs["gen_ai.usage.input_tokens"] == job["usage"]["prompt_tokens"]
            assert attrs["gen_ai.usage.output_tokens"] == job["usage"]["completion_tokens"]
            reasons = sorted({c["finish_reason"] for c in job.get("choices", [])})
            assert attrs.get("gen_ai.response.finish_reasons", []) == reasons
    assert errors >= 1, "the seed gives no ERROR job: the ERROR status went unchecked"

    # The live jobs were seen in earlier statuses: one child span per phase, inside the root.
    by_trace: dict[str, list] = {}
    for span in receiver.spans:
        by_trace.setdefault(span["trace_id"], []).append(span)
    phased = 0
    for job_id in live:
        spans = by_trace[job_id.replace("-", "")]
        root = [s for s in spans if not s["parent"]][0]
        children = sorted((s for s in spans if s["parent"]), key=lambda s: s["start"])
        assert all(c["parent"] == root["span_id"] and root["start"] <= c["start"] <= c["end"] <= root["end"]
                   for c in children)
        history = [h["status"] for h in json.loads(http("GET", f"{proc.url}/api/v1/jobs/{job_id}")[1])["history"]]
        assert [c["name"] for c in children] == [h for h in history if h not in ("COMPLETED", "ERROR")]
        phased += bool(children)
    assert phased, "no live job was seen before it finished: the phase spans went unchecked"

    # Exemplars carry the trace id beside the job id, within OpenMetrics' 128 characters.
    status, body, _ = http("GET", f"{proc.url}/metrics", headers={"Accept": "application/openmetrics-text"})
    exemplars = [line.split(" # ")[1] for line in body.decode().splitlines()
                 if line.startswith("distribute_job_duration_seconds_bucket") and " # " in line]
    assert exemplars
    for exemplar in exemplars:
        labels = exemplar[exemplar.index("{") + 1:exemplar.index("}")]
        pairs = dict(p.split("=", 1) for p in labels.split(","))
        assert pairs["trace_id"].strip('"') == pairs["job_id"].strip('"').replace("-", "")
        assert len(pairs["job_id"].strip('"')) + len("job_id") + len(pairs["trace_id"].strip('"')) + len("trace_id") <= 128


def test_kill_9_before_export_then_restart_loses_and_repeats_none(simulator, exporter, receiver, tmp_path):
    sim = simulator("--seed", "8")
    ids = sim.create("chat", 30, age_seconds=OLD)
    cfg = write_config(tmp_path, tracing_config(sim.url, ids_groups(tmp_path, {"chat": ids[:20]}), receiver.url))
    receiver.mode = "down"  # final jobs are owed their traces, none can go out
    first = exporter(cfg, env=FAST_TIMEOUT)
    wait_for(lambda: pending(first) == 20 and traces_metric(first, "failed") > 0, 60, what="20 traces owed")
    assert not receiver.roots()
    first.stop(signal.SIGKILL)

    receiver.mode = "up"
    (tmp_path / "chat.txt").write_text("\n".join(ids) + "\n")  # 10 more finish after the restart
    second = exporter(cfg)
    want = Counter({i.replace("-", ""): 1 for i in ids})
    wait_for(lambda: once_each(receiver) == want, 60, what="every trace once")
    wait_for(lambda: pending(second) == 0, 30, what="nothing owed")
    second.stop()

    third = exporter(cfg)  # a clean restart: nothing is owed, nothing is sent again
    assert pending(third) == 0
    holds_for(lambda: once_each(receiver) == want, 3, what="no trace sent twice")


def test_collector_down_then_up_gets_every_trace_once(simulator, exporter, receiver, tmp_path):
    sim = simulator("--seed", "9")
    ids = sim.create("speech", 25, age_seconds=OLD)
    cfg = write_config(tmp_path, tracing_config(sim.url, ids_groups(tmp_path, {"speech": ids}), receiver.url))
    receiver.mode = "down"
    proc = exporter(cfg, env=FAST_TIMEOUT)
    wait_for(lambda: pending(proc) == 25 and traces_metric(proc, "failed") >= 25, 60, what="owed and failing")
    receiver.mode = "up"  # the back-off is at most a minute; at this point a second or two
    wait_for(lambda: once_each(receiver) == Counter({i.replace("-", ""): 1 for i in ids}), 90, what="every trace once")
    wait_for(lambda: pending(proc) == 0 and traces_metric(proc, "exported") == 25, 30, what="settled")


def test_a_collector_that_never_answers_does_not_stall_polling(simulator, exporter, receiver, tmp_path):
    sim = simulator("--seed", "10", "--speed", "50")
    first = sim.create("chat", 5, age_seconds=OLD)
    cfg = write_config(tmp_path, tracing_config(sim.url, ids_groups(tmp_path, {"chat": first}), receiver.url))
    receiver.mode = "hang"
    proc = exporter(cfg)
    wait_for(lambda: receiver.requests >= 1, 30, what="an export stuck on the collector")
    live = sim.create("chat", 40)  # tracked and polled to the end while the export hangs
    with open(tmp_path / "chat.txt", "a") as ids_file:
        ids_file.write("\n".join(live) + "\n")
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 45, 90, what="all 45 polled to the end")
    wait_for(lambda: pending(proc) == 45, 30, what="45 owed")
    assert not receiver.roots()
    assert proc.stop() == 0  # stops promptly (what is owed stays owed)


def test_tracing_without_the_otel_extra_is_one_clear_line(tmp_path):
    cfg = write_config(tmp_path, "tracing: {endpoint: 'http://127.0.0.1:4318'}\n")
    code = ("import sys; sys.modules['opentelemetry'] = None; from exporter.cli import main; "
            f"sys.exit(main(['--config.file', {str(cfg)!r}, '--config.check']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [l for l in (done.stdout + done.stderr).splitlines() if l.strip()]
    assert len(lines) == 1 and "tracing.endpoint" in lines[0] and "distribute-exporter[otel]" in lines[0], lines


def test_headers_file_is_sent_and_never_shown(simulator, exporter, receiver, tmp_path):
    key = "sk-vendor-SECRET-8f3a1c"
    (tmp_path / "otel-headers").write_text(f"# vendor key\nx-honeycomb-team: {key}\n")
    (tmp_path / "bad-headers").write_text(f"x-ok: fine\nthis line has no colon {key}\n")
    sim = simulator("--seed", "11")
    ids = sim.create("chat", 3, age_seconds=OLD)
    bad = write_config(tmp_path, tracing_config(sim.url, ids_groups(tmp_path, {"chat": ids}), receiver.url,
                                                ", headers_file: bad-headers"))
    done = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(bad), "--config.check"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "bad-headers line 2" in done.stdout + done.stderr
    assert key not in done.stdout + done.stderr
    cfg = write_config(tmp_path, tracing_config(sim.url, ids_groups(tmp_path, {"chat": ids}), receiver.url,
                                                ", headers_file: otel-headers"))
    proc = exporter(cfg, "--log.level", "debug")
    wait_for(lambda: len(receiver.roots()) == 3, 60, what="3 traces")
    assert all(h.get("x-honeycomb-team") == key for h in receiver.headers)
    proc.stop()
    assert key not in proc.log_path.read_text(errors="replace")


def test_the_latency_panel_links_to_the_tracing_data_source():
    import json as _json

    dashboard = _json.loads((REPO / "grafana" / "dashboards" / "distribute-jobs.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["tracing_datasource"]["type"] == "datasource" and variables["tracing_datasource"]["query"] == "tempo"
    latency = [p for p in dashboard["panels"] if p["title"].startswith("Latency p50")][0]
    trace_links = [l for l in latency["fieldConfig"]["defaults"]["links"] if "${tracing_datasource}" in l["url"]]
    assert len(trace_links) == 1
    left = _json.loads(trace_links[0]["url"].split("left=", 1)[1])  # Explore's pane state is valid JSON
    assert left["datasource"] == "${tracing_datasource}" and "span.distribute.job.kind" in left["queries"][0]["query"]


def test_a_proxied_create_links_the_applications_trace_and_names_the_requested_model(simulator, exporter, receiver,
                                                                                        tmp_path):
    import httpx

    from helpers import free_port

    sim = simulator("--seed", "12", "--speed", "50")
    port = free_port()
    cfg = write_config(tmp_path, (
        f"api: {{base_url: '{sim.url}', max_requests_per_second: 0}}\n"
        "poll: {interval_seconds: 0.3, max_interval_seconds: 1, not_found_grace_seconds: 30}\n"
        "state: {path: state.db, flush_interval_seconds: 0.2}\n"
        f"proxy: {{listen_address: '127.0.0.1:{port}'}}\n"
        f"tracing: {{endpoint: '{receiver.url}'}}\n"))
    exporter(cfg)
    proxy = f"http://127.0.0.1:{port}"
    app_trace, app_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    body = {"model": "Qwen2.5 7B", "messages": [{"role": "user", "content": "hi"}]}
    fast = httpx.post(f"{proxy}/async/chat/create", json=body, timeout=20,
                      headers={"traceparent": f"00-{app_trace}-{app_span}-01"}).json()["id"]
    # A body past the fast path's 64 KiB goes through the other (aiohttp) path.
    big = {**body, "messages": [{"role": "user", "content": "x" * 70_000}]}
    slow = httpx.post(f"{proxy}/async/chat/create", json=big, timeout=20,
                      headers={"traceparent": f"00-{app_trace}-{'1' * 16}-00"}).json()["id"]
    bare = httpx.post(f"{proxy}/async/chat/create", json=body, timeout=20,
                      headers={"traceparent": "not-a-traceparent"}).json()["id"]
    wait_for(lambda: len(receiver.roots()) == 3, 90, what="3 traces")
    roots = {s["attributes"]["distribute.job.id"]: s for s in receiver.roots()}
    assert roots[fast]["links"] == [(app_trace, app_span)]
    assert roots[slow]["links"] == [(app_trace, "1" * 16)]
    assert roots[bare]["links"] == []  # a malformed traceparent is not kept
    for job_id in (fast, slow, bare):
        attrs = roots[job_id]["attributes"]
        assert attrs["gen_ai.request.model"] == "Qwen2.5 7B" and attrs["distribute.job.source"] == "proxy"
        assert roots[job_id]["trace_id"] == job_id.replace("-", "")
