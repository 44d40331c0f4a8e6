"""An application's key never reaches a log line or an answer body, whatever malformed head carries
it: a real exporter process (debug level, both log formats) with its proxy, raw sockets sending the
heads (on the fast path, and on a connection handed to aiohttp's server first)."""

from __future__ import annotations

import json

import pytest

from helpers import ExporterProc, exchange, free_port, parse_samples, total, wait_for, write_config

KEY = "sk-live-5c0ffee-do-not-log-me"
BAD_HEADS = {
    "stray CR": b"Authorization: " + KEY.encode() + b"\r\r\n",
    "space before the colon": b"Authorization : " + KEY.encode() + b"\r\n",
    "control byte": b"Authorization: " + KEY.encode() + b"\x01x\r\n",
    "NUL": b"Authorization: " + KEY.encode() + b"\x00\r\n",
    "obs-fold": b"X-A: 1\r\n " + KEY.encode() + b"\r\n",
    "bad request line": b"",
    "unparseable absolute target": b"",
}


def request(case: str) -> bytes:
    if case == "bad request line":
        return b"POST /async/chat/" + KEY.encode() + b" x HTTP/1.1\r\nHost: p\r\n\r\n"
    if case == "unparseable absolute target":  # once raised in data_received: a traceback in the log
        return b"POST http://[" + KEY.encode() + b"/async/chat/result HTTP/1.1\r\nHost: p\r\n\r\n"
    return b"POST /async/chat/result HTTP/1.1\r\nHost: p\r\n" + BAD_HEADS[case] + b"Content-Length: 2\r\n\r\n{}"


HAND_OVER = (b"POST /v1/x HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_a_key_in_a_malformed_head_is_in_no_log_line_and_no_answer(tmp_path, fmt):
    port = free_port()
    dead = free_port()  # nothing listens there: what is forwarded gets the proxy's own 502
    config = write_config(tmp_path, (
        f"api: {{base_url: 'http://127.0.0.1:{dead}', max_requests_per_second: 0}}\n"
        "state: {path: state.db}\n"
        f"proxy: {{listen_address: '127.0.0.1:{port}', timeout_seconds: 5}}\n"))
    proc = ExporterProc(config, "--log.level", "debug", "--log.format", fmt, wait_ready=False)
    try:
        wait_for(proc._ready, 30, what="exporter ready")
        answers = {}
        for case in BAD_HEADS:
            answers[("fast", case)] = exchange(port, request(case))
            # The same head after a chunked request, which hands the connection to aiohttp's server.
            answers[("handed over", case)] = exchange(port, HAND_OVER + request(case))
        refused = total(parse_samples(proc.metrics(), "distribute_proxy_requests_total"), endpoint="other", code="400")
    finally:
        proc.stop()
    log = proc.log_path.read_text(errors="replace")
    for (path, case), answer in answers.items():
        assert KEY.encode() not in answer, (path, case, answer)
        assert b" 400 " in answer.split(b"\r\n", 1)[0] or path == "handed over", (path, case, answer)
    assert KEY not in log and KEY.replace("-", "") not in log
    assert "Traceback" not in log
    if fmt == "json":
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert lines and all(KEY not in json.dumps(line) for line in lines)
    # Every fast-path refusal is counted; the summary is written once for all of them (a minute).
    assert refused >= len(BAD_HEADS)
    assert sum("refused" in line and "malformed" in line for line in log.splitlines()) == 1


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_library_records_keep_only_their_fixed_words(fmt, capsys):
    """The net under aiohttp's and asyncio's loggers: a record quoting a request (in its arguments or
    its exception) is written without them, at every level; the exporter's own records are untouched."""
    import logging

    from exporter.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("debug", fmt)
    try:
        emit_hostile_records(logging)
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert KEY not in err and err.count("ValueError") == 5
    assert "own line kept" in err


def emit_hostile_records(logging) -> None:
    try:
        raise ValueError(f"Invalid header value char: b'Authorization: {KEY}\\r'")
    except ValueError as exc:
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            logging.getLogger("aiohttp.server").log(level, "Error handling request from %s: %s", "1.2.3.4", KEY,
                                                    exc_info=exc)
        logging.getLogger("asyncio").error("Task failed %r", KEY, exc_info=exc)
    logging.getLogger("distribute.proxy").warning("own line %s", "kept")
