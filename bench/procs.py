"""Processes the benchmarks drive: the exporter, the simulator, nginx and wrk, on loopback."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_json(port: int, path: str, body: Any) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return json.loads(response.read())
    finally:
        conn.close()


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of `name` whose label text contains `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if labels in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


class Exporter:
    def __init__(self, workdir: Path, config: str, *args: str, repo: Path = REPO, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(config)
        self.port = port or free_port()  # given when others must know it before the start
        self.log = open(workdir / "exporter.log", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", "config.yaml",
                                      "--web.listen-address", f"127.0.0.1:{self.port}", "--log.level", "warn", *args],
                                     cwd=workdir, stdout=self.log, stderr=self.log,
                                     env={**os.environ, "PYTHONPATH": str(repo), **(env or {})})

    def wait_ready(self, timeout: float = 120) -> float:
        wait_for(lambda: self.proc.poll() is None and get(self.port, "/-/ready", timeout=5)[0] == 200 or
                 (_raise(self) if self.proc.poll() is not None else False), timeout, "exporter ready", 0.02)
        return time.monotonic() - self.started

    def metrics(self) -> str:
        return get(self.port, "/metrics")[1].decode()

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _raise(exporter: Exporter) -> bool:
    exporter.log.flush()
    raise RuntimeError(f"exporter exited: {(Path(exporter.log.name)).read_text()[-2000:]}")


class Simulator:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "exporter.simulator", "--web.listen-address",
                                      "127.0.0.1:0", "--print-port", *args], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def create(self, kind: str, count: int, **extra: Any) -> list[str]:
        ids: list[str] = []
        while len(ids) < count:
            batch = min(50_000, count - len(ids))
            ids += post_json(self.port, "/__admin/jobs", {"kind": kind, "count": batch, **extra})["ids"]
        return ids

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Nginx:
    """nginx answering every POST with one fixed, valid COMPLETED body."""

    BODY = ('{"id": "3b241101-e2bb-4255-8caf-4136c566a962", "status": "COMPLETED", '
            '"created": 1763900000.0, "finished": 1763900012.5, "model": "Chatterbox", '
            '"results": [{"url": "https://cdn.invalid/a.wav"}]}')

    def __init__(self, http_extra: str = "", locations: str = "") -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.port = free_port()
        (self.dir / "logs").mkdir()
        (self.dir / "nginx.conf").write_text(f"""
worker_processes 1;
user root;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;{http_extra}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{ default_type application/json; return 200 '{self.BODY}'; }}{locations}
  }}
}}
""")
        self.proc = subprocess.Popen([binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1), 10, "nginx")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def wrk(url: str, body: str, seconds: int, connections: int = 16, threads: int = 1, method: str = "POST",
        latency: bool = False) -> dict[str, float]:
    """Run wrk; answer requests per second, errors and (with latency) the p99 in ms."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if method == "POST":
            script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                         'wrk.headers["Content-Type"] = "application/json"\n')
        else:
            script.write('wrk.headers["Accept-Encoding"] = "gzip"\n')
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url]
    if latency:
        args.insert(1, "--latency")
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60).stdout
    os.unlink(script.name)
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
              "non_2xx": float((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1]),
              "socket_errors": sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)",
                                                                 (re.search(r"Socket errors:.*", out) or [""])[0]))}
    if latency:
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
        result["p99_ms"] = float(p99.group(1)) * scale
    return result
