"""`config_50k_inline`: a config file listing 50,000 ids inline, from process start to `/-/healthy`
and to `/-/ready`, and the run of `--config.check` on the same file."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.procs import REPO, Exporter, get, wait_for


def write_config(workdir: Path, ids: int, seed: int = 3) -> Path:
    rng = random.Random(seed)
    lines = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(ids)]
    half = ids // 2  # two groups, as a config that lists ids inline by hand would have
    text = ("api: {base_url: 'http://127.0.0.1:9', max_requests_per_second: 1}\n"
            "state: {path: state.db}\njobs:\n"
            "  - kind: chat\n    group: inline-a\n    ids:\n" + "".join(f"      - {i}\n" for i in lines[:half]) +
            "  - kind: images\n    group: inline-b\n    ids:\n" + "".join(f"      - {i}\n" for i in lines[half:]))
    (workdir / "config.yaml").write_text(text)
    return workdir / "config.yaml"


def config_load(workdir: Path, ids: int) -> dict[str, float]:
    config = write_config(workdir, ids)
    began = time.monotonic()
    check = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(config), "--config.check"],
                           cwd=workdir, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    check_seconds = time.monotonic() - began
    assert check.returncode == 0 and f"{ids} ids listed inline" in check.stdout, check.stdout + check.stderr
    exporter = Exporter(workdir, config.read_text())
    try:
        wait_for(lambda: get(exporter.port, "/-/healthy", timeout=5)[0] == 200, 120, "healthy", 0.01)
        healthy = time.monotonic() - exporter.started
        ready = exporter.wait_ready()
    finally:
        exporter.stop()
    return {"healthy_seconds": healthy, "ready_seconds": ready, "check_seconds": check_seconds}
