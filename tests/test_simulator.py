"""The simulator agrees with the shared schema and docs/simulator.md, and each of its knobs does what it says."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time

import jsonschema
import pytest

from exporter.api.ids import is_uuid4
from exporter.simulator.faults import Faults
from exporter.simulator.jobs import STATUSES_IN_ORDER, draw_job, validate_create, SAMPLE_CREATE_BODIES
from exporter.api.timestamps import parse_timestamp
from helpers import REPO, SCHEMA_PATH, http, wait_for

SCHEMA = json.loads(SCHEMA_PATH.read_text())
ORDER = {s: i for i, s in enumerate(STATUSES_IN_ORDER + ("COMPLETED",))} | {"ERROR": len(STATUSES_IN_ORDER)}
AGES = [0, 0.3, 2, 5, 10, 20, 40, 80, 200, 600, 3600, 5 * 3600]


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{kind}"}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def result(sim, kind: str, job_id: str, headers=None):
    return http("POST", f"{sim.url}/async/{kind}/result", {"id": job_id}, headers)


@pytest.mark.parametrize("style", ["iso", "epoch-s", "epoch-ms"])
def test_every_answer_of_every_kind_and_stage_validates(simulator, style):
    sim = simulator("--timestamps", style, "--seed", "7")
    seen: dict[str, set[str]] = {}
    for kind in ("chat", "images", "speech"):
        check = validator(kind)
        for age in AGES:
            for job_id in sim.create(kind, 15, age_seconds=age):
                status, body, _ = result(sim, kind, job_id)
                assert status == 200
                answer = json.loads(body)
                errors = list(check.iter_errors(answer))
                assert not errors, (kind, answer, errors[0].message)
                assert answer["id"] == job_id
                seen.setdefault(kind, set()).add(answer["status"])
                _check_consistency(kind, style, answer)
    for kind, statuses in seen.items():  # the sample covers the whole lifecycle
        assert {"CREATED", "QUEUED", "PROCESSING", "COMPLETED", "ERROR"} <= statuses, (kind, statuses)


def _check_consistency(kind: str, style: str, answer: dict) -> None:
    created = answer["created"]
    if style == "iso":
        assert isinstance(created, str) and created.endswith("Z")
    elif style == "epoch-s":
        assert isinstance(created, float) and 1e9 < created < 1e10
    else:
        assert isinstance(created, int) and 1e12 < created < 1e13
    final = answer["status"] in ("COMPLETED", "ERROR")
    assert ("finished" in answer) == final
    if final:
        assert parse_timestamp(answer["finished"]) >= parse_timestamp(created)
    if kind == "chat" and answer["status"] == "COMPLETED":
        usage = answer["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert answer["choices"]
        for choice in answer["choices"]:
            if choice["finish_reason"] == "tool_calls":
                assert choice["message"]["tool_calls"]
    if kind == "images" and answer["status"] == "COMPLETED":
        assert len(answer["results"]) >= 1 and all("url" in r and "revised_prompt" in r for r in answer["results"])
    if kind == "speech":
        assert len(answer["results"]) == (1 if answer["status"] == "COMPLETED" else 0)
    if answer["status"] != "COMPLETED":
        assert "usage" not in answer


def test_lifecycle_is_monotonic_and_ends():
    rng = random.Random(3)
    finals = set()
    for i in range(3000):
        kind = ("chat", "images", "speech")[i % 3]
        job = draw_job(kind, rng, 1000.0, validate_create(kind, SAMPLE_CREATE_BODIES[kind]))
        offsets = [o for o, _ in job.phases]
        assert offsets == sorted(offsets) and offsets[0] > 0
        last = -1
        for step in range(0, int(job.duration * 4) + 8):
            status = job.status_at(1000.0 + step / 4)
            assert ORDER[status] >= last, (job.phases, status)
            last = ORDER[status]
        assert job.status_at(1000.0 + job.duration + 0.01) == job.outcome
        finals.add(job.outcome)
    assert finals == {"COMPLETED", "ERROR"}


def test_a_job_moves_forward_over_http_until_final(simulator):
    sim = simulator("--speed", "400", "--seed", "11")
    job_id = sim.create("speech", 1)[0]
    statuses = []

    def final() -> bool:
        status = json.loads(result(sim, "speech", job_id)[1])["status"]
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        return status in ("COMPLETED", "ERROR")

    wait_for(final, 60, 0.01, "the job to finish")
    assert [ORDER[s] for s in statuses] == sorted(ORDER[s] for s in statuses)


def test_seed_reproduces_ids_models_durations_and_outcomes(simulator):
    answers = []
    for _ in range(2):
        sim = simulator("--seed", "42", "--timestamps", "epoch-s")
        ids = sim.create("chat", 20) + sim.create("images", 20)
        truth = sim.truth()
        answers.append([(i, truth[i]["model"], round(_duration(truth[i]), 6)) for i in ids])
    assert answers[0] == answers[1]
    other = simulator("--seed", "43")
    assert other.create("chat", 20) != [a[0] for a in answers[0][:20]]


def _duration(job: dict) -> float:
    return job.get("finished", 0) - job["created"] if "finished" in job else -1


def test_auth_404_and_400(simulator):
    sim = simulator("--api-key", "sk-test-123")
    job_id = sim.create("chat")[0]
    assert result(sim, "chat", job_id)[0] == 401
    assert result(sim, "chat", job_id, {"authorization": "wrong"})[0] == 401
    ok = {"authorization": "sk-test-123"}
    assert result(sim, "chat", job_id, ok)[0] == 200
    status, body, _ = result(sim, "images", job_id, ok)  # another kind's id
    assert status == 404 and "message" in json.loads(body)
    assert result(sim, "chat", "3b241101-e2bb-4255-8caf-4136c566a962", ok)[0] == 404
    assert result(sim, "chat", "not-a-uuid", ok)[0] == 400
    assert result(sim, "chat", "3b241101-e2bb-1255-8caf-4136c566a962", ok)[0] == 400  # version 1
    assert http("POST", f"{sim.url}/async/chat/result", {"id": job_id, "x": 1}, ok)[0] == 400
    assert http("POST", f"{sim.url}/async/chat/result", raw=b"{nope", headers=ok)[0] == 400
    status, body, _ = http("POST", f"{sim.url}/async/chat/create", {"messages": []}, ok)
    assert status == 400 and json.loads(body)["message"]
    status, body, _ = http("POST", f"{sim.url}/async/speech/create", {"input": "hello", "voice": "leo"}, ok)
    assert status == 200 and is_uuid4(json.loads(body)["id"])
    assert http("POST", f"{sim.url}/async/images/create", {"prompt": "x", "n": 0}, ok)[0] == 400


def test_api_key_from_environment():
    proc = subprocess.Popen([sys.executable, "-m", "exporter.simulator", "--web.listen-address", "127.0.0.1:0",
                             "--print-port"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={"DISTRIBUTE_SIMULATOR_API_KEY": "env-key-77", "PATH": "/usr/bin:/bin"})
    try:
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}/async/chat/create"
        body = {"messages": [{"role": "user", "content": "hi"}]}
        assert http("POST", url, body)[0] == 401
        assert http("POST", url, body, {"authorization": "env-key-77"})[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_fault_500_and_429_ratios(simulator):
    sim = simulator("--fault.error-500-ratio", "1")
    job_id = sim.create("chat")[0]
    assert result(sim, "chat", job_id)[0] == 500
    sim.faults(error_500_ratio=0, error_429_ratio=1, retry_after_seconds=7)
    status, body, headers = result(sim, "chat", job_id)
    assert status == 429 and headers["Retry-After"] == "7"
    sim.faults(error_429_ratio=0.5)
    codes = [result(sim, "chat", job_id)[0] for _ in range(200)]
    assert 60 < codes.count(429) < 140 and set(codes) == {200, 429}
    assert http("POST", f"{sim.url}/__admin/faults", {"error_500_ratio": 2})[0] == 400
    assert http("POST", f"{sim.url}/__admin/faults", {"no_such_knob": 1})[0] == 400


def test_fault_latency_and_hang(simulator):
    sim = simulator()
    job_id = sim.create("chat")[0]
    started = time.monotonic()
    result(sim, "chat", job_id)
    fast = time.monotonic() - started
    sim.faults(latency_ms=400, latency_jitter_ms=100)
    started = time.monotonic()
    result(sim, "chat", job_id)
    assert time.monotonic() - started >= 0.4 > fast
    sim.faults(latency_ms=0, latency_jitter_ms=0, hang_ratio=1)
    with pytest.raises((TimeoutError, socket.timeout, OSError)):
        http("POST", f"{sim.url}/async/chat/result", {"id": job_id}, timeout=1.0)


@pytest.mark.parametrize("kind", ["not_json", "wrong_shape", "huge"])
def test_fault_malformed_bodies(simulator, kind):
    sim = simulator("--fault.malformed-ratio", "1", "--fault.malformed-kinds", kind)
    job_id = sim.create("images")[0]
    status, body, _ = result(sim, "images", job_id)
    assert status == 200
    if kind == "not_json":
        with pytest.raises(ValueError):
            json.loads(body)
    elif kind == "wrong_shape":
        assert list(validator("images").iter_errors(json.loads(body)))
    else:
        assert len(body) >= 10 * 1024 * 1024 - 100


def test_fault_down_refuse_lifts_itself_and_503(simulator):
    sim = simulator()
    job_id = sim.create("chat")[0]
    sim.faults(down="refuse", down_seconds=1.5)

    def refused() -> bool:
        try:
            http("POST", f"{sim.url}/async/chat/result", {"id": job_id}, timeout=2)
        except OSError as exc:  # urllib wraps it in URLError
            return isinstance(getattr(exc, "reason", exc), ConnectionRefusedError)
        return False

    wait_for(refused, 5, what="connections refused")
    wait_for(lambda: result(sim, "chat", job_id)[0] == 200, 10, what="the listener back")
    sim.faults(down="503")
    assert result(sim, "chat", job_id)[0] == 503
    assert http("GET", f"{sim.url}/__admin/stats")[0] == 200  # admin still answers
    sim.faults(down="")
    assert result(sim, "chat", job_id)[0] == 200


def test_stats_count_exactly(simulator):
    sim = simulator()
    ids = sim.create("chat", 3)
    for n, job_id in enumerate(ids, start=1):
        for _ in range(n):
            result(sim, "chat", job_id)
    missing = "3b241101-e2bb-4255-8caf-4136c566a962"
    result(sim, "chat", missing)
    result(sim, "chat", "bad")
    stats = sim.stats()
    assert [stats["by_id"][i] for i in ids] == [1, 2, 3]
    assert stats["by_id"][missing] == 1
    assert stats["by_endpoint"]["/async/chat/result"] == 8
    assert stats["by_status"] == {"200": 6, "404": 1, "400": 1}
    assert http("POST", f"{sim.url}/__admin/stats/reset")[0] == 200
    assert sim.stats()["requests_total"] == 0


def test_generate_appends_ids_per_kind(simulator, tmp_path):
    sim = simulator("--generate", "40", "--ids-out", str(tmp_path), "--seed", "5")

    def files() -> bool:
        return all((tmp_path / f"{k}.txt").exists() and (tmp_path / f"{k}.txt").read_text().count("\n") >= 2
                   for k in ("chat", "images", "speech"))

    wait_for(files, 20, what="generated ids in all three files")
    for kind in ("chat", "images", "speech"):
        for line in (tmp_path / f"{kind}.txt").read_text().splitlines():
            assert is_uuid4(line)
            assert result(sim, kind, line)[0] == 200


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "exporter.simulator", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for flag in ["--web.listen-address", "--api-key", "--timestamps", "--seed", "--generate", "--ids-out",
                 "--speed"] + ["--fault." + f.replace("_", "-") for f in Faults.HELP]:
        assert flag in out, flag
