"""The exporter's own web listener (/metrics, the status page...) answers a request its parser refuses
with a fixed 400 that echoes nothing, and logs no byte of it: a real exporter process (debug level,
both log formats), raw sockets sending a malformed request line and a key with a stray CR."""

from __future__ import annotations

import json

import pytest

from helpers import ExporterProc, exchange, free_port, wait_for, write_config

SECRET = "secret-web-7e1f00d-never-log-me"
MALFORMED = {
    "request line": b"GET /metrics?" + SECRET.encode() + b" x HTTP/1.1\r\nHost: p\r\n\r\n",
    "stray CR": b"GET /metrics HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer " + SECRET.encode() + b"\r\r\n\r\n",
    "not HTTP": SECRET.encode() + b"\r\n\r\n",
}


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_a_malformed_request_gets_a_fixed_400_and_no_log_line_holds_it(tmp_path, fmt):
    config = write_config(tmp_path, (f"api: {{base_url: 'http://127.0.0.1:{free_port()}', max_requests_per_second: 0}}\n"
                                     "state: {path: state.db}\n"))
    proc = ExporterProc(config, "--log.level", "debug", "--log.format", fmt, wait_ready=False)
    try:
        wait_for(proc._ready, 30, what="exporter ready")
        answers = {case: exchange(proc.port, data) for case, data in MALFORMED.items()}
        served = exchange(proc.port, b"GET /metrics HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    finally:
        proc.stop()
    log = proc.log_path.read_text(errors="replace")
    for case, answer in answers.items():
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and head.split(b" ")[1] == b"400", (case, answer)
        assert body == b"400 Bad Request\n", (case, answer)
        assert SECRET.encode() not in answer
    assert served.startswith(b"HTTP/1.1 200 ") and b"distribute_" in served  # the listener goes on
    assert SECRET not in log and "GET /metrics?" not in log and "Bearer" not in log
    assert "Traceback" not in log
    if fmt == "json":
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert lines and all(SECRET not in json.dumps(line) for line in lines)
    # One summary for all three (a minute), naming the parser's errors by type only.
    summaries = [line for line in log.splitlines() if "web: refused" in line]
    assert len(summaries) == 1 and "malformed" in summaries[0]
