"""The pass-through proxy with real processes: the simulator (or a tiny echo server) upstream, the
exporter with its proxy listener, and clients that are not the project's code (curl, httpx)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import tool
from helpers import REPO, ExporterProc, free_port, holds_for, http, parse_samples, total, wait_for, write_config
from test_exporter import exporter_totals, truth_totals

APP_KEY = "app-key-7f3a9c1e-never-to-be-seen"
EXPORTER_KEY = "exporter-own-key-0b5d"
TOKEN = "registration-token-1"
EXPORTER_AGENT = "distribute-exporter/"
FAST_BODY = {"model": "Kokoro", "input": "hello", "voice": "nora"}  # a short speech job


def proxy_config(tmp_path: Path, upstream: str, port: int, poll: float = 2.0, flush: float = 0.2,
                 **proxy: object) -> Path:
    keys = ", ".join(f"{k}: {json.dumps(v)}" for k, v in proxy.items())
    (tmp_path / "key").write_text(EXPORTER_KEY)
    (tmp_path / "key").chmod(0o600)
    return write_config(tmp_path, (
        f"api: {{base_url: '{upstream}', api_key_file: key, max_requests_per_second: 0}}\n"
        f"poll: {{interval_seconds: {poll}, max_interval_seconds: {max(poll, 4)}, not_found_grace_seconds: 30}}\n"
        f"state: {{path: state.db, flush_interval_seconds: {flush}}}\n"
        f"proxy: {{listen_address: '127.0.0.1:{port}'{', ' + keys if keys else ''}}}\n"))


@pytest.fixture
def proxied(tmp_path, simulator, exporter):
    """Start the simulator and an exporter proxying to it; answer (sim, exporter, proxy URL). The
    simulator knows one key only, so it checks none unless `auth`: then the exporter's own polls fail."""

    def start(*sim_args: str, poll: float = 2.0, auth: bool = False, **proxy: object):
        sim = simulator(*(("--api-key", APP_KEY) if auth else ()), *sim_args)
        port = free_port()
        exp = exporter(proxy_config(tmp_path, sim.url, port, poll, **proxy), "--log.level", "debug",
                       env={"DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN": TOKEN})
        return sim, exp, f"http://127.0.0.1:{port}"

    return start


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("curl"), "-sS", *args], capture_output=True, timeout=120)


def record(exp: ExporterProc, job_id: str) -> dict | None:
    status, body, _ = http("GET", f"{exp.url}/api/v1/jobs/{job_id}", headers={"X-Registration-Token": TOKEN})
    return json.loads(body) if status == 200 else None


def agents(sim, job_id: str) -> dict[str, int]:
    status, body, _ = http("GET", f"{sim.url}/__admin/stats?agents=1&ids=0")
    return json.loads(body)["by_id_agent"].get(job_id, {})


def exporter_requests(sim, job_id: str) -> int:
    return sum(n for agent, n in agents(sim, job_id).items() if agent.startswith(EXPORTER_AGENT))


def follow(client: httpx.Client, proxy: str, kind: str, job_id: str, every: float = 0.2) -> dict:
    """Poll a job through the proxy until it is final (within 60 s), as an application would."""
    deadline = time.monotonic() + 60
    while True:
        answer = client.post(f"{proxy}/async/{kind}/result", json={"id": job_id})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if body["status"] in ("COMPLETED", "ERROR"):
            return body
        assert time.monotonic() < deadline, f"{job_id} not final after 60 s: {body['status']}"
        time.sleep(every)


# -- creates and results -----------------------------------------------------------------------------

def test_creates_with_and_without_group_header_are_tracked_from_the_proxy(proxied):
    sim, exp, proxy = proxied(poll=30, auth=True)  # the application's key is what reaches the API
    done = curl("-H", f"authorization: {APP_KEY}", "-H", "X-Distribute-Group: nightly", "-H",
                "Content-Type: application/json", "--data", json.dumps(FAST_BODY), f"{proxy}/async/speech/create")
    with_group = json.loads(done.stdout)["id"]
    answer = httpx.post(f"{proxy}/async/chat/create", headers={"authorization": APP_KEY},
                        json={"model": "Qwen2.5 7B", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200
    without = answer.json()["id"]
    # Stored before the answer came back: the very next look-up finds both.
    first, second = record(exp, with_group), record(exp, without)
    assert (first["kind"], first["group"], first["source"], first["model"]) == ("speech", "nightly", "proxy", "Kokoro")
    assert (second["kind"], second["group"], second["source"]) == ("chat", "default", "proxy")
    assert second["model"] == "Qwen2.5 7B"  # from the create's body, before any answer
    jobs = exp.samples("distribute_jobs")
    assert total(jobs, group="nightly", kind="speech", status="UNKNOWN") == 1
    # The group header never reaches the API; the first own poll waits poll.interval_seconds.
    assert exporter_requests(sim, with_group) == 0 and exporter_requests(sim, without) == 0


def test_an_application_polling_through_the_proxy_costs_the_exporter_no_request(proxied):
    sim, exp, proxy = proxied("--speed", "40", poll=3)
    ids = []
    with httpx.Client(headers={"authorization": APP_KEY}) as client:
        for kind, body in (("speech", FAST_BODY), ("speech", {**FAST_BODY, "model": "Chatterbox"}),
                           ("chat", {"model": "Llama-3.1 8B", "messages": [{"role": "user", "content": "x"}]})):
            ids.append((kind, client.post(f"{proxy}/async/{kind}/create", json=body).json()["id"]))
        finals = [follow(client, proxy, kind, job_id) for kind, job_id in ids]
        for (kind, job_id), final in zip(ids, finals):  # asked again after the end: counted once all the same
            assert follow(client, proxy, kind, job_id) == final
    truth = sim.truth()
    expected = truth_totals(truth, [i for _, i in ids])
    wait_for(lambda: exporter_totals(exp.metrics()) == expected, 10, what="metrics equal the simulator's truth")
    assert all(exporter_requests(sim, job_id) == 0 for _, job_id in ids), [agents(sim, i) for _, i in ids]
    observed = exp.samples("distribute_proxy_observed_answers_total")
    assert total(observed) >= 3
    assert all(record(exp, i)["final"] for _, i in ids)


def test_each_answer_through_the_proxy_pushes_the_own_poll_back(proxied):
    # Real-time jobs of a few seconds and a 1 s poll interval: without the push-back the exporter
    # would ask about each job a second after its create.
    sim, exp, proxy = proxied(poll=1)
    with httpx.Client(headers={"authorization": APP_KEY}) as client:
        ids = [client.post(f"{proxy}/async/speech/create", json=FAST_BODY).json()["id"] for _ in range(2)]
        finals: dict[str, dict] = {}
        deadline = time.monotonic() + 60
        while len(finals) < len(ids):
            assert time.monotonic() < deadline, f"not final after 60 s: {set(ids) - set(finals)}"
            for job_id in ids:
                if job_id not in finals:
                    answer = client.post(f"{proxy}/async/speech/result", json={"id": job_id}).json()
                    if answer["status"] in ("COMPLETED", "ERROR"):
                        finals[job_id] = answer
            time.sleep(0.3)
    expected = truth_totals(sim.truth(), ids)
    wait_for(lambda: exporter_totals(exp.metrics()) == expected, 10, what="metrics equal the simulator's truth")
    polled = {i: record(exp, i)["polls"] for i in ids}
    assert all(exporter_requests(sim, i) == 0 for i in ids), [agents(sim, i) for i in ids]
    assert all(n >= 2 for n in polled.values()), polled  # every answer the application got was applied


def test_a_job_the_application_stops_polling_is_finished_by_the_exporter(proxied):
    sim, exp, proxy = proxied("--speed", "40", poll=0.5)
    with httpx.Client(headers={"authorization": APP_KEY}) as client:
        job_id = client.post(f"{proxy}/async/speech/create", json=FAST_BODY).json()["id"]
        client.post(f"{proxy}/async/speech/result", json={"id": job_id})  # once, then it forgets the job
        wait_for(lambda: (record(exp, job_id) or {}).get("final"), 20, what="the exporter finishes the job")
        assert exporter_requests(sim, job_id) >= 1
        # The application comes back and reads the final answer many times: still counted once.
        for _ in range(3):
            follow(client, proxy, "speech", job_id)
    expected = truth_totals(sim.truth(), [job_id])
    wait_for(lambda: exporter_totals(exp.metrics()) == expected, 10, what="counted exactly once")
    # and it stays so while the queued observations of the re-reads are applied (checked all along)
    holds_for(lambda: exporter_totals(exp.metrics()) == expected
              and total(exp.samples("distribute_jobs_finished_total")) == 1, 1.0, what="still counted once")


def test_a_result_for_an_untracked_id_starts_tracking_it(proxied):
    sim, exp, proxy = proxied(poll=30)
    job_id = sim.create("images", 1)[0]
    answer = httpx.post(f"{proxy}/async/images/result", json={"id": job_id},
                        headers={"authorization": APP_KEY, "X-Distribute-Group": "renders"})
    assert answer.status_code == 200
    found = wait_for(lambda: record(exp, job_id), 10, what="tracked from the result")
    assert (found["group"], found["source"], found["status"]) == ("renders", "proxy", answer.json()["status"])


def test_a_create_survives_kill_9_right_after_its_answer(tmp_path, simulator):
    sim = simulator("--api-key", APP_KEY)
    port = free_port()
    config = proxy_config(tmp_path, sim.url, port, 30, flush=600)  # only the create's own commit can save it
    exp = ExporterProc(config)
    try:
        async def creates() -> list[str]:
            async with httpx.AsyncClient(headers={"authorization": APP_KEY}) as client:
                answers = await asyncio.gather(*(client.post(f"http://127.0.0.1:{port}/async/speech/create",
                                                             json=FAST_BODY) for _ in range(20)))
            return [a.json()["id"] for a in answers]

        ids = asyncio.run(creates())
        exp.popen.send_signal(signal.SIGKILL)  # no flush, no shutdown: only what was stored before each answer
        exp.popen.wait(10)
    finally:
        exp.stop()
    assert list(tmp_path.glob("state.db-creates.*")), "the creates' journal is where they wait for a flush"
    again = ExporterProc(config, env={"DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN": TOKEN})
    try:
        assert total(again.samples("distribute_jobs"), kind="speech") == 20
    finally:
        again.stop()
    # Start-up took them into the state file itself (durably) and then dropped the journal.
    with sqlite3.connect(tmp_path / "state.db") as db:
        rows = dict(db.execute(f"SELECT id, source FROM jobs WHERE id IN ({','.join('?' * len(ids))})", ids))
    assert rows == {i: "proxy" for i in ids}
    assert not list(tmp_path.glob("state.db-creates.*"))


# -- failures ---------------------------------------------------------------------------------------------

def test_the_simulator_hanging_on_create_is_504_and_nothing_is_tracked(proxied):
    sim, exp, proxy = proxied(timeout_seconds=1)
    sim.faults(hang_ratio=1.0)
    answer = httpx.post(f"{proxy}/async/chat/create", headers={"authorization": APP_KEY}, timeout=20,
                        json={"messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 504 and answer.json()["message"]
    assert total(exp.samples("distribute_proxy_requests_total"), endpoint="create", code="504") == 1
    assert total(exp.samples("distribute_jobs")) == 0


def test_two_hundred_concurrent_clients_no_failed_request(proxied):
    sim, exp, proxy = proxied(poll=30)

    async def client_work(client: httpx.AsyncClient, i: int) -> tuple[int, int]:
        created = await client.post(f"{proxy}/async/speech/create", json=FAST_BODY)
        job_id = created.json()["id"]
        result = await client.post(f"{proxy}/async/speech/result", json={"id": job_id})
        return created.status_code, result.status_code

    async def run() -> list[tuple[int, int]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(headers={"authorization": APP_KEY}, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(client_work(client, i) for i in range(200)))

    codes = asyncio.run(run())
    assert codes == [(200, 200)] * 200
    wait_for(lambda: total(exp.samples("distribute_jobs"), kind="speech") == 200, 10, what="200 jobs tracked")


# -- secrets and the other listener -----------------------------------------------------------------------

def test_the_application_key_is_in_no_log_metric_page_or_state(proxied, tmp_path):
    sim, exp, proxy = proxied("--speed", "40", poll=0.5)
    with httpx.Client(headers={"authorization": APP_KEY}) as client:
        job_id = client.post(f"{proxy}/async/speech/create", json=FAST_BODY).json()["id"]
        follow(client, proxy, "speech", job_id)
        client.post(f"{proxy}/async/speech/result", json={"id": "not-a-uuid"})
        client.get(f"{proxy}/v1/models")
    pages = exp.metrics() + http("GET", exp.url + "/")[1].decode()
    exp.stop()
    log = exp.log_path.read_text()
    assert APP_KEY not in pages
    assert APP_KEY not in log and "proxy listening" in log  # a debug log was written, without the key
    assert APP_KEY.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))


def test_basic_auth_of_metrics_does_not_apply_to_the_proxy_and_tls_does(tmp_path, simulator):
    from test_security import PASSWORD, https, make_pki, web_config

    pki = make_pki(tmp_path)
    web_config(tmp_path, pki, {"prom": PASSWORD})
    sim = simulator("--api-key", APP_KEY)
    port = free_port()
    config = proxy_config(tmp_path, sim.url, port)
    exp = ExporterProc(config, "--web.config.file", str(tmp_path / "web-config.yml"), wait_ready=False)
    try:
        wait_for(lambda: https(f"https://127.0.0.1:{exp.port}/-/ready", pki["ca.crt"], "prom", PASSWORD)[0] == 200,
                 30, what="exporter ready over TLS")
        proxy = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca.crt"]))) as client:
            # The application's key, not the scraper's password: the proxy passes it to the API.
            created = client.post(f"{proxy}/async/speech/create", json=FAST_BODY, headers={"authorization": APP_KEY})
            assert created.status_code == 200
            refused = client.post(f"{proxy}/async/speech/create", json=FAST_BODY)
            assert refused.status_code == 401 and refused.json() == {"message": "Unauthorized"}  # the API's own answer
            assert "x-frame-options" not in refused.headers  # web config headers are not added
            # And the API's key does not open /metrics.
            metrics = client.get(f"https://127.0.0.1:{exp.port}/metrics", headers={"authorization": APP_KEY})
            assert metrics.status_code == 401
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{port}/async/speech/create", json=FAST_BODY, timeout=5)  # TLS only
    finally:
        exp.stop()


def test_proxy_config_and_flag(tmp_path, simulator):
    sim = simulator()
    bad = write_config(tmp_path, "proxy: {listen_address: 'nonsense'}\n")
    out = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(bad), "--config.check"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1 and out.stdout.startswith("invalid: proxy.listen_address:")
    plain = write_config(tmp_path, f"api: {{base_url: '{sim.url}'}}\nstate: {{path: s.db}}\n")
    port = free_port()
    exp = ExporterProc(plain, "--proxy.listen-address", f"127.0.0.1:{port}")
    try:
        status, body, _ = http("POST", f"http://127.0.0.1:{port}/async/chat/create",
                               {"messages": [{"role": "user", "content": "x"}]})
        assert status == 200 and json.loads(body)["id"]
        assert parse_samples(exp.metrics(), "distribute_proxy_requests_total")
    finally:
        exp.stop()
