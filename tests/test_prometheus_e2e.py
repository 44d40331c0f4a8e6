"""Simulator + exporter + a real Prometheus: PromQL answers agree with the simulator's truth."""

from __future__ import annotations

import json


from helpers import wait_for, write_config
from prom import Prometheus, local_prometheus_config
from test_exporter import OLD, config_text


def test_promql_answers_match_the_truth(simulator, exporter, tmp_path):
    sim = simulator("--seed", "21")
    chat = sim.create("chat", 40, age_seconds=OLD)
    images = sim.create("images", 15, age_seconds=OLD)
    groups = (f"  - {{kind: chat, group: nightly, ids: {json.dumps(chat)}}}\n"
              f"  - {{kind: images, group: renders, ids: {json.dumps(images)}}}\n")
    proc = exporter(write_config(tmp_path, config_text(sim.url, groups)))
    truth = sim.truth()
    completed = sum(1 for i in chat + images if truth[i]["status"] == "COMPLETED")
    prompt = sum(truth[i].get("usage", {}).get("prompt_tokens", 0) for i in chat)
    durations = sorted(truth[i]["finished"] - truth[i]["created"] for i in chat + images)

    prom = Prometheus(tmp_path / "prom", local_prometheus_config([f"127.0.0.1:{proc.port}"], []))
    try:
        wait_for(prom.targets_up, 30, what="the exporter target up")
        wait_for(lambda: prom.value('sum(distribute_jobs_finished_total)') == len(chat) + len(images), 30,
                 what="all jobs finished in Prometheus")
        assert prom.value('sum(distribute_jobs{status="COMPLETED"})') == completed
        assert prom.value('sum(distribute_jobs_finished_total{status="COMPLETED"})') == completed
        assert prom.value('sum(distribute_tokens_total{token_type="prompt"})') == prompt
        p50 = prom.value('histogram_quantile(0.5, sum by (le) (distribute_job_duration_seconds_bucket))')
        true_median = durations[len(durations) // 2]
        buckets = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
        lower = max([0] + [b for b in buckets if b <= true_median])
        upper = min([b for b in buckets if b >= true_median] + [7200])
        assert lower <= p50 <= upper, (p50, true_median)  # within the bucket holding the true median
        assert prom.value('distribute_up') == 1
        assert prom.value('sum(distribute_results_total{kind="images"})') == sum(
            len(truth[i].get("results", [])) for i in images if truth[i]["status"] == "COMPLETED")
    finally:
        prom.stop()
