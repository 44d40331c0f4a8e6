"""Unit tests of the pure parts: timestamps, answer parsing, schedule, rate limit, config, ids."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from exporter.tracking.aggregates import Histogram
from exporter.polling.client import parse_retry_after
from exporter.config import ConfigError, load_config, parse_config
from exporter.api.ids import BadLine, parse_id_lines
from exporter.polling.ratelimit import RateLimiter
from exporter.api.results import InvalidBody, parse_result
from exporter.polling.schedule import auth_pause, error_delay, next_interval
from exporter.api.timestamps import TimestampError, format_timestamp, parse_timestamp

ID = "3b241101-e2bb-4255-8caf-4136c566a962"
EPOCH = 1747467397.294  # 2025-05-17T07:36:37.294Z, the API reference's example


# ---- timestamps -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["2025-05-17T07:36:37.294Z", "2025-05-17T07:36:37.294+00:00",
                                   "2025-05-17T09:36:37.294+02:00", EPOCH, EPOCH * 1000, int(EPOCH * 1000)])
def test_timestamps_in_every_form_give_the_same_moment(value):
    assert parse_timestamp(value) == pytest.approx(EPOCH, abs=1e-3)


def test_naive_iso_is_utc_and_absent_is_none():
    assert parse_timestamp("2025-05-17T07:36:37.294") == pytest.approx(EPOCH, abs=1e-3)
    assert parse_timestamp(None) is None


@pytest.mark.parametrize("bad", ["yesterday", "", True, -5, float("nan"), float("inf"), [], {}])
def test_bad_timestamps_raise(bad):
    with pytest.raises(TimestampError):
        parse_timestamp(bad)


@pytest.mark.parametrize("style", ["iso", "epoch-s", "epoch-ms"])
def test_format_then_parse_round_trips(style):
    assert parse_timestamp(format_timestamp(EPOCH, style)) == pytest.approx(EPOCH, abs=1e-3)


# ---- answers ----------------------------------------------------------------------------------------
def body(**fields) -> bytes:
    return json.dumps({"id": ID, "status": "COMPLETED", "created": EPOCH, "model": "m", **fields}).encode()


def test_a_finished_chat_answer_is_read_whole():
    choices = [{"finish_reason": "tool_calls", "index": 0, "message": {"tool_calls": [{}, {}]}},
               {"finish_reason": "stop", "index": 1, "message": {"content": "x"}}]
    r = parse_result(body(finished=EPOCH + 12.5, usage={"prompt_tokens": 10, "completion_tokens": 5,
                                                        "total_tokens": 15}, choices=choices))
    assert (r.status, r.model, r.created, r.finished) == ("COMPLETED", "m", EPOCH, EPOCH + 12.5)
    assert (r.prompt_tokens, r.completion_tokens, r.tool_calls) == (10, 5, 2)
    assert r.choices == {"tool_calls": 1, "stop": 1}


def test_missing_optional_parts_and_unknown_status_are_fine():
    r = parse_result(body(status="WARMING_UP", finished=None))
    assert (r.status, r.finished, r.results, r.prompt_tokens) == ("WARMING_UP", None, 0, 0)
    assert parse_result(body(results=[{"url": "u"}])).results == 1
    assert parse_result(body(id=ID.upper())).status == "COMPLETED"


@pytest.mark.parametrize("raw", [b"<html>", b"[1,2]", b'"COMPLETED"', b"", b"{" * 100000,
                                 body(status=7), body(status="lower"), body(status="X" * 200), body(id=None), body(id=7),
                                 body(created="yesterday"), body(created=None), body(usage=[1]),
                                 body(usage={"prompt_tokens": -1}), body(choices={}), body(results="x"),
                                 body(model=["m"]), body(usage={"prompt_tokens": float("inf")}), body(finished=True), body(choices=[1])])
def test_malformed_answers_raise_invalid_body_only(raw):
    with pytest.raises(InvalidBody):
        parse_result(raw)


# ---- schedule -----------------------------------------------------------------------------------------
def test_interval_doubles_while_unchanged_caps_and_resets():
    waits, current = [], 0.0
    for changed in [True, False, False, False, False, False, False, True]:
        current = next_interval(current, changed, 15, 300)
        waits.append(current)
    assert waits == [15, 30, 60, 120, 240, 300, 300, 15]


def test_error_delay_is_exponential_capped_and_jittered():
    rng = random.Random(1)
    for errors, step in [(1, 10), (2, 20), (3, 40), (10, 100)]:
        values = [error_delay(errors, 10, 100, rng) for _ in range(200)]
        assert all(step * 0.5 <= v <= step for v in values)
        assert max(values) - min(values) > step * 0.3  # really jittered
    assert [auth_pause(n, 15, 300) for n in (1, 2, 3, 6)] == [15, 30, 60, 300]


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7
    assert parse_retry_after("1.5") == 1.5
    now = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    date = format_datetime(datetime.fromtimestamp(now + 30, timezone.utc), usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("-3") == 0


def test_rate_limiter_budget_and_pause():
    clock = [100.0]
    limiter = RateLimiter(10, clock=lambda: clock[0])
    granted = 0
    for _ in range(1000):  # one simulated second in 1 ms steps
        granted += limiter.try_acquire()
        clock[0] += 0.001
    assert 10 <= granted <= 21  # one second's budget plus the initial burst
    limiter.pause_until(clock[0] + 5)
    assert limiter.delay() == pytest.approx(5)
    clock[0] += 5.01
    assert limiter.delay() == 0
    assert RateLimiter(0, clock=lambda: 0.0).delay() == 0  # 0 = unlimited
    bursty = RateLimiter(1, clock=lambda: 0.0, burst=5)
    assert [bursty.try_acquire() for _ in range(6)] == [True] * 5 + [False]


# ---- config -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,culprit", [
    ("jobs: [{kind: chat, ids: [abc]}]", "jobs[0].ids[0]: not a UUID v4"),
    (f"jobs: [{{kind: chat, ids: [{ID}]}}, {{kind: chat, ids: ['{ID[:-1]}x']}}]", "jobs[1].ids[0]: not a UUID v4"),
    (f"jobs: [{{kind: chat, ids: [{ID}]}}, {{kind: images, group: b, ids: [{ID.upper()}]}}]",
     "jobs[1].ids[0]: duplicate id"),
    ("jobs: [{kind: video, ids: []}]", "jobs[0].kind: must be one of chat, images, speech"),
    ("jobs: [{kind: chat}]", "jobs[0]: needs ids or ids_file"),
    ("api: {timeout_seconds: fast}", "api.timeout_seconds: must be a number"),
    ("api: {max_concurrency: 0}", "api.max_concurrency: must be at least 1"),
    ("api: {tiemout_seconds: 3}", "api.tiemout_seconds: unknown key"),
    ("poll: {interval_seconds: 60, max_interval_seconds: 30}", "poll.max_interval_seconds"),
    ("metrics: {duration_buckets: [5, 1]}", "metrics.duration_buckets"),
    ("web: {listen_address: nowhere}", "web.listen_address"),
    ("jobs: {kind: chat}", "jobs: must be a list"),
    ("- 1", "<top>: must be a mapping"),
    ("api: [", "line"),
])
def test_config_errors_name_the_culprit(text, culprit):
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert culprit in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", [
    "api: [", "api: {base_url: [\n", "jobs:\n\t- kind: chat", "a: b: c", "api: {x: 1}\n  y: 2", "'unclosed",
    f"jobs: [{{kind: chat, ids: [{ID}, 7]}}]", f"jobs:\n  - {{kind: chat, ids: [{ID}]}}\n  - {{kind: speech, ids: [{ID}]}}",
    "api: {timeout_seconds: fast}", "{}: 1",
])
def test_the_fast_yaml_loader_changes_no_verdict_and_no_message(text, monkeypatch):
    """libyaml parses the config when PyYAML has it; what it answers and every error's text must be
    those of the pure-Python loader."""
    from exporter.config import load as loading

    def verdict():
        try:
            return repr(parse_config(text, env={}))
        except ConfigError as exc:
            return f"error: {exc}"

    fast = verdict()
    monkeypatch.setattr(loading, "_FAST_LOADER", None)
    assert fast == verdict()


def test_shipped_config_is_valid_and_defaults_hold():
    config = load_config(Path(__file__).parent.parent / "config.yaml", env={})
    assert config.api.base_url.startswith("http")
    defaults = parse_config("")
    assert (defaults.api.timeout_seconds, defaults.api.max_concurrency, defaults.api.max_requests_per_second) == (10, 8, 20)
    assert (defaults.poll.interval_seconds, defaults.poll.max_interval_seconds,
            defaults.poll.not_found_grace_seconds) == (15, 300, 600)
    assert defaults.web.listen_address == "0.0.0.0:9877" and defaults.state.path == "distribute-exporter.db"
    assert defaults.metrics.duration_buckets[0] == 0.5 and defaults.metrics.duration_buckets[-1] == 7200


def test_api_key_from_file_or_env_never_printed(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-file-secret\n")
    key.chmod(0o644)
    config = parse_config(f"api: {{api_key_file: {key}}}", env={"DISTRIBUTE_API_KEY": "sk-env"})
    assert config.api_key.reveal() == "sk-file-secret"
    assert "sk-file-secret" not in repr(config) and "sk-file-secret" not in str(config)
    assert any("readable by group or others" in w for w in config.warnings)
    assert parse_config("", env={"DISTRIBUTE_API_KEY": "sk-env"}).api_key.reveal() == "sk-env"
    with pytest.raises(ConfigError, match="api.api_key_file: cannot read"):
        parse_config(f"api: {{api_key_file: {tmp_path / 'none'}}}", env={})


# ---- ids, histogram ----------------------------------------------------------------------------------------
def test_id_lines_skip_comments_and_blank_and_flag_bad_lines():
    ids, bad = parse_id_lines(["# header", "", f"{ID.upper()}  # a comment", "nope", f"  {ID}  ", f"{ID}x", ID])
    assert ids == [ID, ID, ID] and bad == [BadLine(4, "nope"), BadLine(6, f"{ID}x")]


def test_histogram_buckets_are_cumulative_with_inf():
    h = Histogram((1.0, 5.0))
    for v in (0.5, 1.0, 3, 10):
        h.observe(v)
    assert h.cumulative() == [("1.0", 2), ("5.0", 3), ("+Inf", 4)]
    assert (h.count, h.total) == (4, 14.5)


def test_a_chat_answer_carrying_something_called_results_is_read_without_it():
    """The chat schema has no `results` and allows extra keys: `{}` or `null` there is not an error."""
    for extra in ({}, None, "x", [1, 2]):
        r = parse_result(body(results=extra), "chat")
        assert r.status == "COMPLETED" and r.results == 0
    assert parse_result(body(results=[{"url": "u"}, {"url": "v"}]), "images").results == 2
    with pytest.raises(InvalidBody):
        parse_result(body(results={}), "images")
