"""A real Prometheus (Debian's package) on a free loopback port, with a throw-away TSDB."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from conftest import tool
from helpers import REPO, Proc, free_port, http, wait_for


def local_prometheus_config(targets: list[str], rules: list[Path], interval: str = "1s",
                            jobs_target: str | None = None) -> dict[str, Any]:
    """The shipped prometheus/prometheus.yml with its two exporter jobs pointed at local targets:
    /metrics of every one of `targets`, /metrics/jobs of `jobs_target` (default: the first)."""
    shipped = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    shipped["global"]["scrape_interval"] = interval
    shipped["global"]["evaluation_interval"] = interval
    shipped["rule_files"] = [str(r) for r in rules]
    jobs = {j["job_name"]: j for j in shipped["scrape_configs"]}
    assert {"distribute-exporter", "distribute-exporter-jobs"} <= set(jobs), \
        "prometheus.yml must have the distribute-exporter and distribute-exporter-jobs scrape jobs"
    jobs["distribute-exporter"]["static_configs"] = [{"targets": targets}]
    jobs["distribute-exporter-jobs"]["static_configs"] = [{"targets": [jobs_target or targets[0]]}]
    shipped["scrape_configs"] = [jobs["distribute-exporter"], jobs["distribute-exporter-jobs"]]
    return shipped


class Prometheus(Proc):
    def __init__(self, workdir: Path, config: dict[str, Any], *extra: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([tool("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                          "--log.level=warn", *extra], cwd=workdir)
        wait_for(lambda: http("GET", f"{self.url}/-/ready", timeout=2)[0] == 200, 30, what="prometheus ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        status, body, _ = http("GET", f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> bool:
        """Every target of both exporter jobs scraped successfully."""
        result = self.query('up{job=~"distribute-exporter|distribute-exporter-jobs"}')
        return {r["metric"]["job"] for r in result} == {"distribute-exporter", "distribute-exporter-jobs"} \
            and all(r["value"][1] == "1" for r in result)
