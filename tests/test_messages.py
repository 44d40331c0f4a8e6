"""What the exporter says to its user, as real processes: the API going down and coming back, no API
key, bad listen addresses, abbreviated flags, ids files that grow fast or cannot be read, and the
demo's first minute."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from helpers import REPO, Proc, free_port, http, parse_samples, total, wait_for, write_config

KEY = "msgs-secret-key-7f3a9c"


def events(proc: Proc) -> list[dict]:
    """The JSON log lines of a process (--log.format json)."""
    text = proc.log() if not proc._log.closed else proc.log_path.read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def when(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def simulator_on(port: int) -> Proc:
    """The simulator on a given port (so that it can come back where it was), waited on until it listens."""
    sim = Proc([sys.executable, "-m", "exporter.simulator", "--web.listen-address", f"127.0.0.1:{port}",
                "--print-port"], cwd=REPO)
    assert sim.popen.stdout is not None
    assert sim.popen.stdout.readline().decode().strip() == str(port), sim.log()
    return sim


def exporter_proc(config: Path, *extra: str, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()) -> Proc:
    port = free_port()
    proc = Proc([*wrap, sys.executable, "-m", "exporter", "--config.file", str(config), "--web.listen-address",
                 f"127.0.0.1:{port}", "--log.format", "json", *extra], cwd=config.parent, env=env)
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]

    def ready() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"exporter exited {proc.popen.returncode}: {proc.log()}")
        return http("GET", f"{proc.url}/-/ready", timeout=2)[0] == 200  # type: ignore[attr-defined]
    wait_for(ready, 30, what="exporter ready")
    return proc


# --- the API goes down and comes back ------------------------------------------------------------------

def test_api_down_is_one_warning_then_spaced_reminders_then_one_recovery_line(tmp_path):
    interval, reminder = 2.0, 3.0
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    ids = [str(uuid.uuid4()) for _ in range(3)]  # unknown to the simulator: a 404 is an answer, polled on
    config = write_config(tmp_path, (
        f"api: {{base_url: '{base_url}', max_requests_per_second: 0, timeout_seconds: 2}}\n"
        f"poll: {{interval_seconds: {interval}, max_interval_seconds: {interval}, not_found_grace_seconds: 100000, "
        f"failing_reminder_seconds: {reminder}}}\n"
        f"state: {{path: state.db}}\njobs:\n  - {{kind: chat, ids: {json.dumps(ids)}}}\n"))
    sim = simulator_on(port)
    proc = exporter_proc(config, "--log.level", "debug", env={"DISTRIBUTE_API_KEY": KEY})
    try:
        wait_for(lambda: total(parse(proc, "distribute_up")) == 1, 30, what="the API answering")
        sim.stop()
        wait_for(lambda: any("polling the API is failing" in e["msg"] for e in events(proc)), 60,
                 what="the warning that polling fails")
        # down in colour on the status page, with the reason
        page = http("GET", f"{proc.url}/")[1].decode()  # type: ignore[attr-defined]
        assert 'class="api-down"' in page and 'class="api-error"' in page and "connect" in page, page[:2000]
        wait_for(lambda: sum("still fails" in e["msg"] for e in events(proc)) >= 2, 60, what="two reminders")
        sim = simulator_on(port)
        wait_for(lambda: any("the API answers again" in e["msg"] for e in events(proc)), 60,
                 what="the recovery line")
        page = http("GET", f"{proc.url}/")[1].decode()  # type: ignore[attr-defined]
        assert 'class="api-up"' in page and 'class="api-down"' not in page
    finally:
        proc.stop()
        sim.stop()
    log = events(proc)
    assert KEY not in proc.log_path.read_text()
    assert not any("no API key" in e["msg"] for e in log)
    [warning] = [e for e in log if "polling the API is failing" in e["msg"]]
    assert warning["level"] == "warning" and f"base_url={base_url}" in warning["msg"]
    assert "reason=connect" in warning["msg"], warning
    # within two polls: no job failed more than twice before the warning, and by the exporter's own
    # clock it came at most two poll intervals after the first failure
    before = log[:log.index(warning)]
    failures = [e for e in before if e["msg"].startswith("poll failed")]
    assert failures and max(Counter(re.search(r"job_id=(\S+)", e["msg"])[1] for e in failures).values()) <= 2
    assert when(warning) - when(failures[0]) <= 2 * interval
    reminders = [e for e in log if "still fails" in e["msg"]]
    said = [when(warning)] + [when(e) for e in reminders]
    assert all(b - a >= reminder - 0.01 for a, b in zip(said, said[1:])), said  # at most one per interval
    assert all(e["level"] == "warning" and f"base_url={base_url}" in e["msg"] for e in reminders)
    [recovered] = [e for e in log if "the API answers again" in e["msg"]]
    assert log.index(recovered) > log.index(reminders[-1]) and f"base_url={base_url}" in recovered["msg"]
    after = log[log.index(recovered):]
    assert not any("polling the API" in e["msg"] for e in after)


def parse(proc: Proc, name: str) -> dict:
    return parse_url(proc.url, name)  # type: ignore[attr-defined]


# --- no API key -------------------------------------------------------------------------------------

def test_no_api_key_is_a_warning_at_start_and_in_config_check(simulator, tmp_path):
    sim = simulator()
    config = write_config(tmp_path, f"api: {{base_url: '{sim.url}'}}\nstate: {{path: state.db}}\n"
                                    f"jobs:\n  - {{kind: chat, ids: ['{uuid.uuid4()}']}}\n")
    env = {k: v for k, v in os.environ.items() if k != "DISTRIBUTE_API_KEY"}
    check = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(config)],
                           capture_output=True, text=True, cwd=REPO, env=env)
    lines = check.stdout.splitlines()
    assert check.returncode == 0 and lines[0].startswith("valid:"), check.stdout + check.stderr
    assert lines[1:] == ["warning: no API key: neither api.api_key_file nor DISTRIBUTE_API_KEY is set; result "
                         "requests go without one and the API will refuse them"]
    proc = exporter_proc(config, env={"DISTRIBUTE_API_KEY": ""})
    try:
        wait_for(lambda: any("ready:" in e["msg"] for e in events(proc)), 10, what="ready line")
        start = [e for e in events(proc) if e["level"] == "warning"]
        assert len(start) == 1 and "no API key" in start[0]["msg"], start
    finally:
        proc.stop()
    with_key = {**env, "DISTRIBUTE_API_KEY": KEY}
    check = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(config)],
                           capture_output=True, text=True, cwd=REPO, env=with_key)
    assert check.returncode == 0 and check.stdout.count("\n") == 1 and KEY not in check.stdout


# --- listen addresses and flags -------------------------------------------------------------------

BAD_ADDRESSES = ["127.0.0.1:99999", "localhost", "127.0.0.1:abc", "no-such-host.invalid:9877"]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env={**os.environ, "DISTRIBUTE_API_KEY": KEY})


def one_error_line(run: subprocess.CompletedProcess) -> str:
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1 and "Traceback" not in run.stderr, run.stdout + run.stderr
    return lines[0]


@pytest.mark.parametrize("flag", ["--web.listen-address", "--proxy.listen-address"])
@pytest.mark.parametrize("value", BAD_ADDRESSES)
def test_a_bad_listen_flag_is_one_line_naming_flag_and_value(tmp_path, flag, value):
    config = write_config(tmp_path, f"state: {{path: {tmp_path / 'state.db'}}}\n")
    line = one_error_line(run_cli("--config.file", str(config), flag, value))
    assert flag in line and value in line, line
    assert not (tmp_path / "state.db").exists()  # refused before anything started


@pytest.mark.parametrize("key", ["web.listen_address", "proxy.listen_address"])
@pytest.mark.parametrize("value", BAD_ADDRESSES)
def test_a_bad_listen_address_in_the_config_is_one_line_naming_key_and_value(tmp_path, key, value):
    section, name = key.split(".")
    config = write_config(tmp_path, f"state: {{path: {tmp_path / 'state.db'}}}\n{section}: {{{name}: '{value}'}}\n")
    line = one_error_line(run_cli("--config.file", str(config)))
    assert key in line and value in line, line
    assert not (tmp_path / "state.db").exists()
    check = run_cli("--config.check", "--config.file", str(config))
    assert check.returncode == 1 and check.stdout.startswith("invalid:") and key in check.stdout


def test_the_demo_and_the_external_url_flag_are_checked_before_start_too(tmp_path):
    line = one_error_line(run_cli("--demo", "--web.listen-address", "localhost"))
    assert "--web.listen-address" in line and "localhost" in line
    line = one_error_line(run_cli("--web.external-url", "ftp://x", "--config.check"))
    assert "--web.external-url" in line and "ftp://x" in line


def test_abbreviated_flags_are_refused(tmp_path):
    config = write_config(tmp_path, "state: {path: state.db}\n")
    run = run_cli("--config.fil", str(config), "--web.listen-address", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert run.returncode == 2 and "unrecognized arguments: --config.fil" in run.stderr, run.stderr
    assert not (tmp_path / "state.db").exists()


# --- ids files --------------------------------------------------------------------------------------------

def test_ids_file_additions_are_summed_up_not_one_line_each(simulator, tmp_path):
    sim = simulator("--speed", "0.01")
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("")
    config = write_config(tmp_path, f"api: {{base_url: '{sim.url}', max_requests_per_second: 0}}\n"
                                    "poll: {interval_seconds: 0.4}\nstate: {path: state.db}\n"
                                    f"jobs:\n  - {{kind: chat, group: g, ids_file: {ids_file}}}\n")
    proc = exporter_proc(config, env={"DISTRIBUTE_API_KEY": KEY})
    try:
        added = []
        for round_no in range(6):  # six separate additions, each seen by its own scan
            new = sim.create("chat", 2)
            added += new
            with ids_file.open("a") as handle:
                handle.write("".join(f"{i}\n" for i in new))
            wait_for(lambda: total(parse(proc, "distribute_exporter_tracked_jobs")) == len(added), 20,
                     what=f"round {round_no} tracked")
    finally:
        proc.stop()
    summaries = [e for e in events(proc) if e["msg"].startswith("ids files added")]
    # the first addition is said at once; the rest wait for the minute to pass
    assert len(summaries) == 1 and summaries[0]["level"] == "info", summaries
    assert "chat/g=2" in summaries[0]["msg"]


def without_dac() -> tuple[str, ...]:
    """A prefix that runs a command unable to read a mode-000 file: root reads anything unless the
    DAC-override capabilities are dropped."""
    if os.geteuid() != 0:
        return ()
    setpriv = "/usr/bin/setpriv"
    if not Path(setpriv).exists():
        pytest.fail("setpriv (util-linux) is needed to drop root's DAC override for this test")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search")


def test_an_unreadable_ids_file_is_warned_about_once_per_change_and_by_config_check(simulator, tmp_path):
    sim = simulator("--speed", "0.01")
    folder = tmp_path / "ids"
    folder.mkdir()
    readable, unreadable = folder / "a.txt", folder / "b.txt"
    readable.write_text(sim.create("chat")[0] + "\n")
    hidden = sim.create("chat")[0]
    unreadable.write_text(hidden + "\n")
    unreadable.chmod(0o000)
    config = write_config(tmp_path, f"api: {{base_url: '{sim.url}', max_requests_per_second: 0}}\n"
                                    "poll: {interval_seconds: 0.2}\nstate: {path: state.db}\n"
                                    f"jobs:\n  - {{kind: chat, ids_file: '{folder}/*.txt'}}\n")
    wrap = without_dac()
    check = subprocess.run([*wrap, sys.executable, "-m", "exporter", "--config.check", "--config.file", str(config)],
                           capture_output=True, text=True, cwd=REPO, env={**os.environ, "DISTRIBUTE_API_KEY": KEY})
    assert check.returncode == 0 and check.stdout.startswith("valid:"), check.stdout + check.stderr
    assert f"warning: jobs[0].ids_file: cannot read {unreadable}: Permission denied" in check.stdout.splitlines()
    proc = exporter_proc(config, env={"DISTRIBUTE_API_KEY": KEY}, wrap=wrap)

    def warnings() -> list[dict]:
        return [e for e in events(proc) if e["msg"].startswith(f"cannot read ids file file={unreadable}")]

    def tracked() -> float:
        return total(parse(proc, "distribute_exporter_tracked_jobs"))
    try:
        wait_for(lambda: warnings(), 20, what="the first warning")
        # many scans later (each appended id needs one), still one warning
        for n in range(2, 6):
            with readable.open("a") as handle:
                handle.write(sim.create("chat")[0] + "\n")
            wait_for(lambda: tracked() == n, 20, what=f"{n} ids tracked")
        assert len(warnings()) == 1 and warnings()[0]["level"] == "warning"
        unreadable.chmod(0o644)
        wait_for(lambda: any(e["msg"] == f"ids file readable again file={unreadable}" for e in events(proc)), 20,
                 what="readable again")
        wait_for(lambda: tracked() == 6, 20, what="the hidden id tracked")
        unreadable.chmod(0o000)
        wait_for(lambda: len(warnings()) == 2, 20, what="the warning when it is unreadable again")
        with readable.open("a") as handle:
            handle.write(sim.create("chat")[0] + "\n")
        wait_for(lambda: tracked() == 7, 20, what="a later scan")
        assert len(warnings()) == 2
    finally:
        proc.stop()
        unreadable.chmod(0o644)


# --- the demo -----------------------------------------------------------------------------------------

def test_the_demo_says_little_while_its_files_grow(tmp_path):
    port = free_port()
    demo = Proc([sys.executable, "-m", "exporter", "--demo", "--web.listen-address", f"127.0.0.1:{port}"],
                cwd=tmp_path)
    try:
        # the simulator writes 2 ids a second into the demo's files: wait for 40 of them (~20 s)
        wait_for(lambda: total(parse_url(f"http://127.0.0.1:{port}", "distribute_exporter_tracked_jobs")) >= 40
                 and "ready:" in demo.log(), 120, interval=0.5, what="40 ids tracked from the files")
        lines = [line for line in demo.log().splitlines() if line.strip()]
    finally:
        demo.stop()
    info = [line for line in lines if "level=info" in line or "level=warn" in line or "level=error" in line]
    assert len(info) <= 20, "\n".join(info)
    # the files' additions: one line so far (the next comes a minute after it), not one per scan
    assert sum("ids files added" in line for line in info) == 1, "\n".join(info)
    assert not any("level=warn" in line or "level=error" in line for line in info), "\n".join(info)


def parse_url(url: str, name: str) -> dict:
    return parse_samples(http("GET", f"{url}/metrics", timeout=5)[1].decode(), name)


@pytest.mark.parametrize("flag, listener", [("--web.listen-address", "web"), ("--proxy.listen-address", "proxy")])
def test_a_listen_address_in_use_is_one_line_naming_it(tmp_path, flag, listener):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = write_config(tmp_path, "state: {path: state.db}\n")
        line = one_error_line(run_cli("--config.file", str(config), flag, address, cwd=tmp_path))
    assert f"{listener} listen address {address}" in line and "in use" in line, line


# --- the rules behind the lines, on a clock the test turns ------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_blip_is_no_outage_and_reminders_keep_their_interval(caplog):
    from exporter.polling.health import ApiHealth

    clock = Clock()
    health = ApiHealth(lambda: "http://api.test", lambda: 10.0, lambda: 300.0, clock=clock)
    caplog.set_level("INFO", logger="distribute.poller")
    for _ in range(5):  # one failure between good answers, again and again: counted, not said
        health.failed("http_5xx", "HTTP 503")
        clock.now += 1
        health.ok()
    two_at_once = [health.failed("timeout", "timed out") for _ in range(2)]  # two in the same instant
    assert two_at_once and caplog.messages == [] and not health.failing
    clock.now += 5  # half a poll interval after the streak began: an outage
    health.failed("timeout", "timed out")
    assert health.failing and len(caplog.messages) == 1 and "reason=timeout" in caplog.messages[0]
    for _ in range(60):  # a failure every 10 s for 10 minutes: two reminders, 300 s apart
        clock.now += 10
        health.failed("connect", "ConnectionRefusedError")
    reminders = [m for m in caplog.messages if "still fails" in m]
    assert len(reminders) == 2 and "for 5m now" in reminders[0] and "for 10m now" in reminders[1], reminders
    health.ok()
    assert caplog.messages[-1].startswith("the API answers again base_url=http://api.test after 10m")
    health.ok()
    assert len(caplog.messages) == 4 and health.down_since() is None


def test_ids_file_summaries_come_at_most_once_per_interval(caplog):
    from exporter.sources.sync import AdditionSummary

    clock = Clock()
    summary = AdditionSummary(every=60.0, clock=clock)
    caplog.set_level("INFO", logger="distribute.exporter")
    for second in range(180):  # a line a second for three minutes, from two groups
        summary.add("chat", "a", 1)
        if second % 2:
            summary.add("images", "b", 2)
        summary.maybe_log()
        clock.now += 1
    assert len(caplog.messages) == 3, caplog.messages  # at once, then a minute later, and again
    assert caplog.messages[0] == "ids files added 1 ids: chat/a=1"
    assert caplog.messages[1] == "ids files added 120 ids in the last 60s: chat/a=60 images/b=60"
    clock.now -= 0.5  # 59.5 s after the last line: what came since waits
    summary.maybe_log()
    assert len(caplog.messages) == 3
    clock.now += 0.5
    summary.maybe_log()
    assert caplog.messages[3] == "ids files added 119 ids in the last 60s: chat/a=59 images/b=60"
