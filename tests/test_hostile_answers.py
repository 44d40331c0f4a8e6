"""A real exporter polling a real hostile API on loopback (tests/hostile_upstream.py): each malformed
answer fails its own request, counted with its reason; `/metrics` keeps answering within a second,
the other jobs keep being polled, and SIGTERM still stops the process."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from helpers import REPO, ExporterProc, Proc, http, parse_samples, total, wait_for, write_config

sys.path.insert(0, str(REPO / "tests"))
import hostile_upstream  # noqa: E402  (the case table, shared with the server process)

GOOD = "00000000-0000-4000-8000-999999999999"
REASON = {  # what each case is counted as (distribute_api_request_errors_total's reason)
    "negative_chunk_size": "protocol",
    "endless_chunk": "invalid_body",  # over api.max_response_bytes
    "huge_content_length": "invalid_body",
    "two_content_lengths": "protocol",
    "te_and_cl": "protocol",
    "garbage_after": "protocol",
    "status_2000": "protocol",
}


@pytest.fixture(scope="module")
def upstream():
    proc = Proc([sys.executable, str(REPO / "tests" / "hostile_upstream.py")])
    assert proc.popen.stdout is not None
    port = int(proc.popen.stdout.readline())
    yield proc, f"http://127.0.0.1:{port}"
    proc.stop()


def polls(base: str, job_id: str) -> int:
    return int(http("GET", f"{base}/__count/{job_id}")[1])


def scrape_within_a_second(proc: ExporterProc) -> str:
    started = time.monotonic()
    status, body, _ = http("GET", f"{proc.url}/metrics", timeout=1)
    assert status == 200 and time.monotonic() - started < 1.0
    return body.decode()


@pytest.mark.parametrize("case", sorted(hostile_upstream.HOSTILE))
def test_a_hostile_answer_fails_only_its_request(case, upstream, tmp_path):
    _, base = upstream
    bad = next(i for i, name in hostile_upstream.IDS.items() if name == case)
    (tmp_path / "bad.txt").write_text(bad + "\n")
    (tmp_path / "good.txt").write_text(GOOD + "\n")
    config = write_config(tmp_path, (
        f"api: {{base_url: '{base}', max_requests_per_second: 0, max_response_bytes: 65536, timeout_seconds: 5}}\n"
        "poll: {interval_seconds: 0.2, max_interval_seconds: 0.5}\n"
        "state: {path: state.db, flush_interval_seconds: 0.2}\n"
        "jobs:\n  - {kind: chat, group: bad, ids_file: bad.txt}\n  - {kind: images, group: good, ids_file: good.txt}\n"))
    proc = ExporterProc(config, wait_ready=False)  # killed in `finally` even if it never gets ready
    try:
        wait_for(proc._ready, 30, what="exporter ready")
        good_before = polls(base, GOOD)

        def errors() -> dict:
            return parse_samples(scrape_within_a_second(proc), "distribute_api_request_errors_total")

        # Every scrape on the way answers within a second; the hostile job is asked several times.
        wait_for(lambda: total(errors(), kind="chat", reason=REASON[case]) >= 3, 30, interval=0.2,
                 what=f"{case} counted as {REASON[case]}")
        assert polls(base, bad) >= 3
        counted = errors()
        assert total(counted, kind="chat") == total(counted, kind="chat", reason=REASON[case])
        assert total(counted, kind="images") == 0
        # The good job is still polled while the hostile one keeps failing.
        mark = polls(base, GOOD)
        assert mark > good_before
        wait_for(lambda: polls(base, GOOD) >= mark + 3 and scrape_within_a_second(proc), 30, interval=0.2,
                 what="the good job polled again")
        proc.popen.send_signal(signal.SIGTERM)
        try:
            code = proc.popen.wait(5)
        except Exception:  # noqa: BLE001 (reported below)
            code = None
        assert code == 0, f"SIGTERM did not stop the exporter within 5 s: {proc.log()[-2000:]}"
    finally:
        proc.stop(signal.SIGKILL)
