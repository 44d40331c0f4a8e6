"""Shared test helpers: free ports, waiting on conditions, and real processes that stop themselves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO.parent / "shared" / "distribute-api" / "result-schemas.json"
if not SCHEMA_PATH.exists():  # CI clones beside shared/; a copy ships with the tests for elsewhere
    SCHEMA_PATH = REPO / "tests" / "data" / "result-schemas.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exchange(port: int, data: bytes) -> bytes:
    """Send raw `data` on a new loopback connection; everything the server sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # not up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


def holds_for(condition, seconds: float, interval: float = 0.05, what: str = "condition") -> None:
    """Check `condition` again and again for `seconds`: fail the first time it is false."""
    deadline = time.monotonic() + seconds
    checks = 0
    while checks < 2 or time.monotonic() < deadline:
        assert condition(), f"{what}: false after {checks} checks"
        checks += 1
        time.sleep(interval)


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0, raw: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def get_json(url: str) -> Any:
    status, body, _ = http("GET", url)
    assert status == 200, (url, status, body[:200])
    return json.loads(body)


class Proc:
    """A child process; killed at the end of the test whatever happens."""

    def __init__(self, args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"proc-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                      stderr=self._log, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


class Simulator(Proc):
    """`python -m exporter.simulator` on a free loopback port."""

    def __init__(self, *extra: str) -> None:
        super().__init__([sys.executable, "-m", "exporter.simulator", "--web.listen-address", "127.0.0.1:0",
                          "--print-port", *extra], cwd=REPO)
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline().decode().strip()
        assert line.isdigit(), f"simulator did not start: {self.log()}"
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"

    def create(self, kind: str, count: int = 1, **extra: Any) -> list[str]:
        status, body, _ = http("POST", f"{self.url}/__admin/jobs", {"kind": kind, "count": count, **extra})
        assert status == 200, body
        return json.loads(body)["ids"]

    def faults(self, **settings: Any) -> dict[str, Any]:
        status, body, _ = http("POST", f"{self.url}/__admin/faults", settings)
        assert status == 200, body
        return json.loads(body)

    def stats(self) -> dict[str, Any]:
        return get_json(f"{self.url}/__admin/stats")

    def truth(self) -> dict[str, Any]:
        return get_json(f"{self.url}/__admin/jobs")


class ExporterProc(Proc):
    """`python -m exporter` with a config file, on a free loopback port, waited on until ready."""

    def __init__(self, config_file: Path, *extra: str, env: dict[str, str] | None = None,
                 wait_ready: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "exporter", "--config.file", str(config_file),
                          "--web.listen-address", f"127.0.0.1:{self.port}", *extra],
                         cwd=config_file.parent, env=env)
        if wait_ready:
            wait_for(self._ready, 30, what=f"exporter ready ({self.args})")

    def _ready(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"exporter exited {self.popen.returncode}: {self.log()}")
        return http("GET", f"{self.url}/-/ready", timeout=2)[0] == 200

    def metrics(self) -> str:
        status, body, _ = http("GET", f"{self.url}/metrics")
        assert status == 200
        return body.decode()

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return parse_samples(self.metrics(), name)


def parse_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric name, keyed by their sorted label pairs."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def total(samples: dict[tuple[tuple[str, str], ...], float], **match: str) -> float:
    return sum(v for labels, v in samples.items() if all(dict(labels).get(k) == m for k, m in match.items()))


def write_config(directory: Path, text: str) -> Path:
    path = directory / "config.yaml"
    path.write_text(text)
    return path
