"""The proxy's forwarding with real processes: what passes through unchanged, what is dropped, and
what the application gets when the API is down, hangs or a hook fails."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time

import httpx
import pytest

from helpers import REPO, Proc, free_port, total, wait_for
from test_proxy import APP_KEY, FAST_BODY, curl, proxy_config


@pytest.fixture
def upstream():
    """tests/upstream.py: echoes bodies and headers, sends big answers, hangs on /hang."""
    proc = Proc([sys.executable, str(REPO / "tests" / "upstream.py")])
    assert proc.popen.stdout is not None
    port = int(proc.popen.stdout.readline().decode().strip())
    yield f"http://127.0.0.1:{port}"
    proc.stop()


# -- failures ---------------------------------------------------------------------------------------

def test_upstream_down_is_502_at_once_and_a_hang_is_504_after_the_timeout(tmp_path, exporter, upstream):
    port = free_port()
    exp = exporter(proxy_config(tmp_path, f"http://127.0.0.1:{free_port()}", port, timeout_seconds=30))
    # curl gives up after 10 s: a 502 that waited for the 30 s timeout would fail here.
    down = curl("-m", "10", "-w", "\n%{http_code}", "-d", "{}", f"http://127.0.0.1:{port}/async/chat/create")
    body, code = down.stdout.decode().rsplit("\n", 1)
    assert code == "502" and "message" in json.loads(body)
    hang_port = free_port()
    (tmp_path / "slow").mkdir()
    slow = exporter(proxy_config(tmp_path / "slow", upstream, hang_port, timeout_seconds=1))
    started = time.monotonic()
    hung = curl("-m", "20", "-w", "\n%{http_code}", f"http://127.0.0.1:{hang_port}/hang")
    body, code = hung.stdout.decode().rsplit("\n", 1)
    assert code == "504" and "within 1s" in json.loads(body)["message"]
    assert time.monotonic() - started >= 1
    assert total(exp.samples("distribute_proxy_requests_total"), endpoint="create", code="502") == 1
    assert total(slow.samples("distribute_proxy_requests_total"), endpoint="other", code="504") == 1
    assert total(slow.samples("distribute_proxy_errors_total"), reason="timeout") == 1


# -- transparency ---------------------------------------------------------------------------------------

def test_ten_mib_bodies_pass_byte_identical_both_ways_chunked_and_not(tmp_path, exporter, upstream):
    port = free_port()
    exporter(proxy_config(tmp_path, upstream, port))
    proxy = f"http://127.0.0.1:{port}"
    data = hashlib.sha256(b"seed").digest() * (10 * 1024 * 1024 // 32)
    (tmp_path / "big.bin").write_bytes(data)
    for extra in ((), ("-H", "Transfer-Encoding: chunked")):
        out = curl(*extra, "-H", "Content-Type: application/octet-stream", "--data-binary",
                   f"@{tmp_path / 'big.bin'}", f"{proxy}/echo")
        assert out.returncode == 0 and out.stdout == data
    sys.path.insert(0, str(REPO / "tests"))
    from upstream import pattern
    for query in ("n=10485760", "n=10485760&chunked=1"):
        answer = httpx.get(f"{proxy}/big?{query}")
        assert answer.status_code == 200 and answer.content == pattern(10485760)

    def chunks():
        for start in range(0, len(data), 1 << 20):
            yield data[start:start + (1 << 20)]

    answer = httpx.post(f"{proxy}/headers", content=chunks())  # a generator: sent chunked by httpx
    seen = answer.json()
    assert seen["body_sha256"] == hashlib.sha256(data).hexdigest() and seen["body_length"] == len(data)


def test_headers_hop_by_hop_host_and_group_are_handled_and_connections_kept_alive(tmp_path, exporter, upstream):
    port = free_port()
    exporter(proxy_config(tmp_path, upstream, port))
    proxy = f"http://127.0.0.1:{port}"
    with httpx.Client() as client:
        answers = [client.post(f"{proxy}/headers/x?a=%2F&b=1", content=b"body", headers={
            "authorization": APP_KEY, "X-Distribute-Group": "g", "Connection": "keep-alive, X-Private",
            "X-Private": "hop", "X-Custom": "kept", "Proxy-Authorization": "Basic eA==", "TE": "trailers"})
            for _ in range(3)]
    seen = {k.lower(): v for k, v in answers[0].json()["headers"]}
    assert answers[0].json()["path_qs"] == "/headers/x?a=%2F&b=1"
    assert seen["authorization"] == APP_KEY and seen["x-custom"] == "kept"
    assert seen["host"] == upstream.removeprefix("http://")
    for name in ("x-distribute-group", "x-private", "proxy-authorization", "te", "connection"):
        assert name not in seen, name
    assert len({a.json()["peer_port"] for a in answers}) == 1  # one pooled connection to the upstream
    back = {k.lower() for k in answers[0].headers}
    assert "x-upstream" in back and "x-hop" not in back and "keep-alive" not in back
    # Keep-alive towards the application: curl reuses its one connection for two requests.
    both = curl("-v", f"{proxy}/headers/a", f"{proxy}/headers/b")
    assert b"Re-using existing connection" in both.stderr or b"Reusing existing connection" in both.stderr


def test_a_failing_hook_never_changes_the_answer(simulator):
    """The hooks promise not to raise; if one does anyway (a bug, a wrapper), the application still
    gets the API's answer unchanged and the failure is counted."""
    from exporter.config import ProxyConfig
    from exporter.metrics.proxy import ProxyStats
    from exporter.sources.proxy import Proxy, ProxyHooks

    sim = simulator()

    async def created(*args: object) -> None:
        raise RuntimeError("state write failed")

    def observed(*args: object) -> None:
        raise RuntimeError("queue broken")

    async def run() -> tuple[list[httpx.Response], ProxyStats]:
        stats = ProxyStats()
        proxy = Proxy(ProxyHooks(created, observed), stats, ProxyConfig, lambda: sim.url, 1 << 20)
        await proxy.start("127.0.0.1", 0, None)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}") as client:
                made = await client.post("/async/speech/create", json=FAST_BODY)
                read = await client.post("/async/speech/result", json={"id": made.json()["id"]})
        finally:
            await proxy.stop()
        return [made, read], stats

    (made, read), stats = asyncio.run(run())
    assert made.status_code == 200 and made.json()["id"] in sim.truth()
    assert read.status_code == 200 and read.json()["id"] == made.json()["id"]
    assert stats.errors[("commit",)] == 1 and stats.errors[("observe",)] == 1


def test_an_absolute_form_request_target_is_forwarded_to_the_api_by_its_path(tmp_path, exporter, upstream):
    """RFC 9112 3.2.2: a server accepts the absolute form (sent by a client told to use the proxy as
    an HTTP proxy). The API is still `api.base_url`: only the path and query pass, never the host."""
    port = free_port()
    exporter(proxy_config(tmp_path, upstream, port))
    out = curl("-w", "\n%{http_code}", "--request-target", "http://elsewhere.invalid/headers/x?a=%2F&b=1",
               "-H", f"authorization: {APP_KEY}", "-d", "body", f"http://127.0.0.1:{port}/")
    body, code = out.stdout.decode().rsplit("\n", 1)
    assert code == "200", body
    seen = json.loads(body)
    assert seen["path_qs"] == "/headers/x?a=%2F&b=1"
    assert {k.lower(): v for k, v in seen["headers"]}["host"] == upstream.removeprefix("http://")


def test_a_create_answered_with_gzip_is_tracked_and_goes_back_compressed(tmp_path, exporter, upstream):
    """Applications ask for gzip by default (requests, httpx, aiohttp): the API may compress its
    answer. The application gets the very bytes the API sent; the exporter reads the id all the same."""
    import gzip

    from test_proxy import record
    from upstream import GZIP_JOB_ID

    port = free_port()
    exp = exporter(proxy_config(tmp_path, upstream, port))
    out = curl("-D", "-", "-o", str(tmp_path / "answer"), "-H", "Accept-Encoding: gzip",
               "-H", "Content-Type: application/json", "-d", '{"model": "Llama-X"}',
               f"http://127.0.0.1:{port}/async/chat/create")
    assert b"200" in out.stdout.split(b"\r\n")[0] and b"content-encoding: gzip" in out.stdout.lower()
    assert json.loads(gzip.decompress((tmp_path / "answer").read_bytes())) == {"id": GZIP_JOB_ID}
    job = record(exp, GZIP_JOB_ID)  # committed before the answer went back: no waiting needed
    assert job is not None and job["source"] == "proxy" and job["model"] == "Llama-X", job


def test_result_answers_chunked_or_over_64_kib_are_applied_too(tmp_path, exporter, upstream):
    """A result answer the API sends chunked (as it does behind a compressing CDN) or longer than the
    proxy reads whole is streamed back, and applied all the same once it went back whole."""
    from test_proxy import record
    from upstream import RESULT_JOB_IDS

    port = free_port()
    exp = exporter(proxy_config(tmp_path, upstream, port))
    for how, job_id in RESULT_JOB_IDS.items():
        out = curl("-w", "\n%{http_code}", "-d", json.dumps({"id": job_id}),
                   f"http://127.0.0.1:{port}/async/chat/result?how={how}")
        body, code = out.stdout.decode().rsplit("\n", 1)
        assert code == "200" and json.loads(body)["id"] == job_id
    wait_for(lambda: all((record(exp, i) or {}).get("final") for i in RESULT_JOB_IDS.values()), 20, 0.05,
             "both answers applied")
    assert total(exp.samples("distribute_jobs_finished_total")) == 2


def test_answers_waiting_to_be_applied_are_bounded_in_bytes_too():
    """Up to 50,000 answers of up to api.max_response_bytes each could hold gigabytes while the
    state file is slow: past a byte budget an answer is dropped (counted), never queued."""
    from exporter.metrics.proxy import ProxyStats
    from exporter.sources.proxy_observe import OBSERVE_BYTES, ProxyTracking

    async def run() -> tuple[int, ProxyStats, int]:
        stats = ProxyStats()
        tracking = ProxyTracking(None, lambda job, until: None, stats, lambda: None)  # type: ignore[arg-type]
        body = b"x" * (1 << 20)
        for n in range(OBSERVE_BYTES // len(body) + 10):
            tracking.observed(f"id-{n}", "chat", "g", None, body)
        return tracking._queue.qsize(), stats, tracking.queued_bytes

    queued, stats, held = asyncio.run(run())
    assert queued == OBSERVE_BYTES // (1 << 20) and held <= OBSERVE_BYTES
    assert stats.errors[("dropped",)] == 10


def test_a_base_url_holding_credentials_is_refused_without_showing_them(tmp_path):
    """`https://user:password@host` in api.base_url would be shown on the status page and in logs,
    and would make the proxy's HTTP library refuse every request that carries the application's
    own Authorization header: refused at load, one line naming the key, the password never shown."""
    import os
    import subprocess

    from helpers import write_config

    config = write_config(tmp_path, "api: {base_url: 'https://user:s3cret-pass@api.example.test'}\njobs: []\n")
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(config)], capture_output=True,
                         text=True, cwd=REPO, timeout=30, env=dict(os.environ))
    assert run.returncode == 1 and "api.base_url" in run.stderr, run.stderr
    assert "s3cret-pass" not in run.stderr and "Traceback" not in run.stderr, run.stderr
