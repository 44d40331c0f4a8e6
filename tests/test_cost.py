"""Cost: the price file's format and matching order, and a real exporter pricing the simulator's jobs
exactly, once, with the price in effect at each job's finished time, across reloads and kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from exporter.config import ConfigError, load_config
from exporter.config.pricing import PriceFileError, parse_prices
from conftest import tool
from helpers import REPO, holds_for, http, parse_samples, wait_for, write_config
from test_exporter import OLD, config_text

TOKEN = "cost-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN": TOKEN}
DAY = 86400.0

# What each test's price file says, written out independently of the exporter's code:
# (prompt per million, completion per million, per result item, per request).
PRICES = {
    ("chat", "Llama-3.1 8B"): (3.0, 7.0, 0.0, 0.0),        # exact entry
    ("chat", "Llama-3.3 70B"): (11.0, 13.0, 0.0, 0.5),     # via model_regex Llama-.*
    ("images", "SDXL"): (0.0, 0.0, 0.5, 0.0),              # exact entry beats the regex .*
    ("images", "FLUX.1 schnell"): (0.0, 0.0, 0.25, 0.01),  # via model_regex .*
    ("speech", "Chatterbox"): (0.0, 0.0, 0.125, 0.0625),
    # chat "Qwen2.5 7B" and speech "Kokoro": no entry -> unpriced
}
PRICE_FILE = """\
prices:
  - {kind: chat, model: "Llama-3.1 8B", effective_from: 2020-01-01, per_million_prompt_tokens: 3, per_million_completion_tokens: 7}
  - {kind: chat, model_regex: "Llama-.*", effective_from: 2020-01-01, per_million_prompt_tokens: 11,
     per_million_completion_tokens: 13, per_request: 0.5}
  - {kind: images, model_regex: ".*", effective_from: 2020-01-01, per_image: 0.25, per_request: 0.01}
  - {kind: images, model: SDXL, effective_from: "2020-01-01T00:00:00Z", per_image: 0.5}
  - {kind: speech, model: Chatterbox, effective_from: 2020-01-01, per_speech: 0.125, per_request: 0.0625}
"""


def job_cost(job: dict, price: tuple[float, float, float, float]) -> float:
    usage = job.get("usage", {})
    return (usage.get("prompt_tokens", 0) * price[0] / 1e6 + usage.get("completion_tokens", 0) * price[1] / 1e6
            + len(job.get("results", [])) * price[2] + price[3])


def expected_totals(truth: dict, groups: dict[str, str], prices=PRICES) -> tuple[dict, dict]:
    """(cost per (kind, group, model), unpriced count per (kind, group, model)) from the truth."""
    cost: dict = {}
    unpriced: dict = {}
    for job_id, group in groups.items():
        job = truth[job_id]
        if job["status"] not in ("COMPLETED", "ERROR"):
            continue
        key = (job["kind"], group, job["model"])
        price = prices(job) if callable(prices) else prices.get((job["kind"], job["model"]))
        if price is None:
            unpriced[key] = unpriced.get(key, 0) + 1
        else:
            cost[key] = cost.get(key, 0.0) + job_cost(job, price)
    return cost, unpriced


def exported(text: str) -> tuple[dict, dict]:
    """The exporter's cost and unpriced series (model "" zero series left out), keyed like expected_totals."""
    cost = {(d["kind"], d["group"], d["model"]): v for d, v in
            ((dict(l), v) for l, v in parse_samples(text, "distribute_estimated_cost_total").items())
            if d["model"] and d["currency"] == "USD"}
    unpriced = {(d["kind"], d["group"], d["model"]): v for d, v in
                ((dict(l), v) for l, v in parse_samples(text, "distribute_unpriced_jobs_total").items()) if d["model"]}
    return cost, unpriced


def same(got: tuple[dict, dict], want: tuple[dict, dict]) -> bool:
    return got[1] == want[1] and set(got[0]) == set(want[0]) and all(
        got[0][k] == pytest.approx(want[0][k], rel=1e-9, abs=1e-12) for k in want[0])


def record(url: str, job_id: str) -> dict:
    status, body, _ = http("GET", f"{url}/api/v1/jobs/{job_id}", headers=AUTH)
    assert status == 200, body
    return json.loads(body)


def priced_config(sim_url: str, groups: dict[str, tuple[str, list[str]]], price_file: str = "prices.yaml") -> str:
    lines = "".join(f"  - {{kind: {kind}, group: {group}, ids: {json.dumps(ids)}}}\n"
                    for group, (kind, ids) in groups.items())
    return config_text(sim_url, lines) + f"pricing: {{file: {price_file}}}\n"


# ---- the price file: format and matching order ----------------------------------------------------

def table(text: str):
    return parse_prices(text, "p.yaml", "USD")


def at(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp()


def test_matching_order_exact_before_regex_then_latest_in_effect():
    prices = table("""
prices:
  - {kind: chat, model_regex: "Llama-.*", effective_from: 2026-01-01, per_request: 1}
  - {kind: chat, model: "Llama-3.1 8B", effective_from: 2026-01-01, per_request: 2}
  - {kind: chat, model: "Llama-3.1 8B", effective_from: 2026-03-01, per_request: 3}
  - {kind: chat, model_regex: "Llama-.*", effective_from: 2026-02-01, per_request: 4}
  - {kind: chat, model_regex: "Llama-3.*", effective_from: 2026-02-01, per_request: 5}
  - {kind: images, model: "Llama-3.1 8B", effective_from: 2025-01-01, per_image: 6}
  - {kind: chat, model: "Qwen", effective_from: "2026-05-01T12:00:00+02:00", per_request: 7}
""")
    def fee(model: str, when: str, kind: str = "chat") -> float | None:
        entry = prices.lookup(kind, model, at(when))
        return None if entry is None else entry.per_request or entry.per_image

    assert fee("Llama-3.1 8B", "2025-12-31T23:59:59") is None  # nothing in effect yet: unpriced
    assert fee("Llama-3.1 8B", "2026-01-01T00:00:00") == 2    # exact beats a regex of the same date
    assert fee("Llama-3.1 8B", "2026-02-15") == 2             # exact beats a newer regex
    assert fee("Llama-3.1 8B", "2026-03-01") == 3             # the latest exact entry in effect
    assert fee("Llama-3.3 70B", "2026-01-15") == 1            # regex
    assert fee("Llama-3.3 70B", "2026-02-15") == 4            # latest regex; same date: first in the file
    assert fee("llama-3.3 70B", "2026-02-15") is None         # case-sensitive
    assert fee("Llama-3.1 8B", "2026-03-01", kind="images") == 6  # kinds never mix
    assert fee("Llama-3.1 8B-instruct", "2026-03-01") == 4    # a regex must match the whole name
    assert fee("Qwen", "2026-05-01T09:59:59") is None         # 12:00+02:00 is 10:00 UTC
    assert fee("Qwen", "2026-05-01T10:00:00") == 7
    assert fee("Xx", "2030-01-01") is None


def test_cost_formula_and_what_the_record_shows():
    prices = table("prices:\n  - {kind: chat, model: m, effective_from: 2026-01-01, per_million_prompt_tokens: 2,"
                   " per_million_completion_tokens: 10, per_request: 0.5}\n"
                   "  - {kind: images, model: m, effective_from: 2026-01-01, per_image: 0.25}\n")
    chat = prices.lookup("chat", "m", at("2026-02-01"))
    assert chat.cost(1_000_000, 500_000, 0) == pytest.approx(2 + 5 + 0.5)
    assert prices.lookup("images", "m", at("2026-02-01")).cost(0, 0, 3) == 0.75
    assert chat.describe() == {"entry": 0, "kind": "chat", "model": "m", "effective_from": "2026-01-01T00:00:00+00:00",
                               "per_million_prompt_tokens": 2.0, "per_million_completion_tokens": 10.0,
                               "per_request": 0.5}
    assert table('{"prices": [{"kind": "speech", "model_regex": ".*", "effective_from": "2026-01-01", '
                 '"per_speech": 1}]}').lookup("speech", "", at("2026-01-02")).per_speech == 1  # JSON too


@pytest.mark.parametrize("text, culprit", [
    ("prices: {}", "must be a mapping with one key, prices"),
    ("currency: USD\nprices: []", "must be a mapping with one key, prices"),
    ("prices: [3]", "prices[0]: must be a mapping"),
    ("prices:\n  - {kind: chat, model: m, effective_from: 2026-01-01, per_request: 1}\n  - {kind: video, model: m}",
     "prices[1].kind: must be one of chat, images, speech"),
    ("prices: [{kind: chat, effective_from: 2026-01-01, per_request: 1}]", "prices[0]: needs exactly one of model"),
    ("prices: [{kind: chat, model: m, model_regex: m, effective_from: 2026-01-01, per_request: 1}]",
     "prices[0]: needs exactly one of model"),
    ("prices: [{kind: chat, model: '', effective_from: 2026-01-01, per_request: 1}]", "prices[0].model: must be"),
    ("prices: [{kind: chat, model_regex: 'Llama-[', effective_from: 2026-01-01, per_request: 1}]",
     "prices[0].model_regex: not a regular expression"),
    ("prices: [{kind: chat, model: m, effective_from: 2026-01-01, per_request: -1}]",
     "prices[0].per_request: must be a number of 0 or more"),
    ("prices: [{kind: chat, model: m, effective_from: 2026-01-01, per_request: '0.5'}]",
     "prices[0].per_request: must be a number"),
    ("prices: [{kind: chat, model: m, effective_from: 2026-01-01, per_request: .nan}]", "prices[0].per_request"),
    ("prices: [{kind: images, model: m, effective_from: 2026-01-01, per_million_prompt_tokens: 1}]",
     "prices[0].per_million_prompt_tokens: does not apply to kind images"),
    ("prices: [{kind: speech, model: m, effective_from: 2026-01-01, per_image: 1}]",
     "prices[0].per_image: does not apply to kind speech"),
    ("prices: [{kind: chat, model: m, effective_from: 2026-01-01}]", "prices[0]: needs at least one price"),
    ("prices: [{kind: chat, model: m, per_request: 1}]", "prices[0].effective_from: required"),
    ("prices: [{kind: chat, model: m, effective_from: soon, per_request: 1}]", "prices[0].effective_from: not a date"),
    ("prices: [{kind: chat, model: m, effective_from: 2026, per_request: 1}]", "prices[0].effective_from: must be a date"),
    ("prices: [{kind: chat, model: m, effective_from: 2026-01-01, per_reqest: 1}]", "prices[0].per_reqest: unknown key"),
    ("prices:\n  - {kind: chat, model: m, effective_from: 2026-01-01, per_request: 1}\n"
     "  - {kind: chat, model: m, effective_from: 2026-01-01, per_request: 2}", "prices[1]: same kind, model and "
                                                                              "effective_from as prices[0]"),
    ("prices: [", "line 1 column"),
    ('{"prices": [}', "line 1 column 13"),
])
def test_a_broken_price_file_names_the_entry_and_key(text, culprit):
    with pytest.raises(PriceFileError) as err:
        table(text)
    assert str(err.value).startswith(culprit), str(err.value)
    assert "\n" not in str(err.value)


def test_price_file_errors_become_config_errors_naming_the_file(tmp_path):
    cfg = write_config(tmp_path, "pricing: {file: prices/p.yaml}\n")
    with pytest.raises(ConfigError, match=r"^pricing.file: .*prices/p.yaml: no such file$"):
        load_config(cfg)
    (tmp_path / "prices").mkdir()
    (tmp_path / "prices" / "p.yaml").write_text("prices: [{kind: chat, model: m, effective_from: 2026-01-01}]\n")
    with pytest.raises(ConfigError, match=r"^pricing.file: .*p.yaml: prices\[0\]: needs at least one price"):
        load_config(cfg)
    (tmp_path / "prices" / "p.yaml").write_text(PRICE_FILE)
    config = load_config(cfg)
    assert config.prices is not None and config.prices.currency == "USD" and len(config.prices.entries) == 5
    cfg.write_text("pricing: {file: prices/p.yaml, currency: 'US$'}\n")
    with pytest.raises(ConfigError, match=r"^pricing.currency: must match"):
        load_config(cfg)
    cfg.write_text("pricing: {currency: EUR}\n")
    assert load_config(cfg).prices is None  # no file, no pricing


def test_config_check_says_what_is_wrong_in_one_line_and_the_example_is_valid(tmp_path):
    (tmp_path / "prices.yaml").write_text(PRICE_FILE.replace("per_image: 0.5", "per_image: lots"))
    cfg = write_config(tmp_path, "pricing: {file: prices.yaml}\n")
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(cfg)],
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stdout.strip().splitlines() == [
        f"invalid: pricing.file: {tmp_path / 'prices.yaml'}: prices[3].per_image: must be a number of 0 or more, "
        "not 'lots'"], run.stdout
    start = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(cfg), "--web.listen-address",
                            "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    lines = [l for l in start.stderr.splitlines() if l.strip()]
    assert start.returncode == 1 and len(lines) == 1 and "prices[3].per_image" in lines[0], start.stderr
    example = write_config(tmp_path, f"pricing: {{file: {REPO / 'pricing.example.yaml'}}}\n")
    assert load_config(example).prices is not None
    assert "FAKE" in (REPO / "pricing.example.yaml").read_text()


def test_spend_today_counts_jobs_finished_since_midnight_utc_and_starts_again_each_day():
    from exporter.tracking.spend import SpendToday

    noon = at("2026-03-10T12:00:00")
    today = SpendToday()
    today.add("g", "USD", 1.5, noon - 13 * 3600, noon)  # finished yesterday at 23:00
    today.add("g", "USD", 2.0, noon - 3600, noon)
    today.add("g", "USD", None, noon - 60, noon)
    today.add("h", "EUR", 0.25, noon, noon)
    assert today.start_of_day(noon) == at("2026-03-10")
    assert today.snapshot(noon) == [{"group": "g", "currency": "USD", "cost": 2.0, "priced": 1, "unpriced": 1},
                                     {"group": "h", "currency": "EUR", "cost": 0.25, "priced": 1, "unpriced": 0}]
    assert today.snapshot(at("2026-03-11T00:00:00")) == []  # a new day
    today.restore([("g", "USD", 4.0, 2, 0)], at("2026-03-11T01:00:00"))
    today.add("g", "USD", 1.0, at("2026-03-11T00:30:00"), at("2026-03-11T01:00:00"))
    assert today.snapshot(at("2026-03-11T02:00:00"))[0]["cost"] == 5.0


def test_each_price_entry_is_stored_once_and_a_rolled_back_write_forgets_its_ids(tmp_path):
    import sqlite3

    from exporter.tracking.job import Job
    from exporter.tracking.store import Batch, StateStore

    def row(n: int, entry: str | None, kind: str | None = "chat") -> tuple:
        return Job(f"3b241101-e2bb-4255-8caf-{n:012x}", kind, "g", "config", "COMPLETED", "m", final=1, ended=5.0,
                   estimated_cost=None if entry is None or "null" in entry else 0.5, price_entry=entry).row()

    a, b, c = ('{"file": "p.yaml", "entry": 0, "currency": "USD"}',
               '{"file": "p.yaml", "entry": null, "currency": "USD"}', '{"file": "p.yaml", "entry": 1, "currency": "USD"}')
    path = str(tmp_path / "s.db")
    store = StateStore(path)
    store.open()
    store.write(Batch(upserts=[row(i, a if i % 2 else b) for i in range(10)]))
    with pytest.raises(sqlite3.IntegrityError):  # the second row breaks NOT NULL: nothing is written
        store.write(Batch(upserts=[row(20, c), row(21, c, kind=None)]))
    store.write(Batch(upserts=[row(20, c)]))
    store.close()
    store = StateStore(path)
    store.open()
    assert store.db.execute("SELECT count(*) FROM price_entries").fetchone()[0] == 3
    assert [store.get(f"3b241101-e2bb-4255-8caf-{n:012x}")["price_entry"] for n in (0, 1, 20)] == [b, a, c]
    assert store.spend_since(0) == [("g", "USD", 3.0, 6, 5)]  # 5 with a and one with c priced, 5 unpriced
    assert store.spend_since(5.5) == []
    store.close()


# ---- a real exporter against the simulator ---------------------------------------------------------

def test_cost_equals_the_truth_per_group_and_model_and_survives_kill_9(simulator, exporter, tmp_path):
    sim = simulator("--seed", "15", "--speed", "10")
    groups = {"alpha": ("chat", sim.create("chat", 25, age_seconds=OLD) + sim.create("chat", 3, age_seconds=OLD,
                                                                                     model="Qwen2.5 7B")),
              "beta": ("chat", sim.create("chat", 15, age_seconds=OLD)),
              "renders": ("images", sim.create("images", 15, age_seconds=OLD)),
              "voice": ("speech", sim.create("speech", 12, age_seconds=OLD)
                        + sim.create("speech", 2, age_seconds=OLD, model="Kokoro")),
              # these finish today (the simulator runs ten times faster): the status page's figure
              "today": ("speech", sim.create("speech", 4, model="Chatterbox"))}
    (tmp_path / "prices.yaml").write_text(PRICE_FILE)
    cfg = write_config(tmp_path, priced_config(sim.url, groups))
    proc = exporter(cfg, env=ENV)
    by_id = {i: g for g, (_, ids) in groups.items() for i in ids}
    truth = wait_for(lambda: (t := sim.truth()) and all(t[i]["status"] in ("COMPLETED", "ERROR") for i in by_id)
                     and t, 30, what="every simulated job final")
    want = expected_totals(truth, by_id)
    assert want[1][("chat", "alpha", "Qwen2.5 7B")] >= 3 and want[1][("speech", "voice", "Kokoro")] >= 2
    assert {m for _, _, m in want[1]} == {"Qwen2.5 7B", "Kokoro"}
    assert {m for _, _, m in want[0]} == {"Llama-3.1 8B", "Llama-3.3 70B", "SDXL", "FLUX.1 schnell", "Chatterbox"}
    wait_for(lambda: same(exported(proc.metrics()), want), 30, what="cost and unpriced equal to the truth")
    text = proc.metrics()
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    zero = parse_samples(text, "distribute_estimated_cost_total")
    assert zero[(("currency", "USD"), ("group", "beta"), ("kind", "chat"), ("model", ""))] == 0  # rate() from the start

    exact = next(i for i in groups["beta"][1] if truth[i]["model"] == "Llama-3.1 8B" and "usage" in truth[i])
    shown = record(proc.url, exact)
    assert shown["estimated_cost"] == pytest.approx(job_cost(truth[exact], PRICES[("chat", "Llama-3.1 8B")]))
    assert shown["price_entry"] == {"file": "prices.yaml", "entry": 0, "kind": "chat", "model": "Llama-3.1 8B",
                                    "effective_from": "2020-01-01T00:00:00+00:00", "per_million_prompt_tokens": 3.0,
                                    "per_million_completion_tokens": 7.0, "per_request": 0.0, "currency": "USD"}
    regex = next(i for i in by_id if truth[i]["model"] == "Llama-3.3 70B")
    assert record(proc.url, regex)["price_entry"]["model_regex"] == "Llama-.*"
    qwen = groups["alpha"][1][-1]
    assert record(proc.url, qwen)["estimated_cost"] is None
    assert record(proc.url, qwen)["price_entry"] == {"file": "prices.yaml", "entry": None, "currency": "USD"}

    today = sum(job_cost(truth[i], PRICES[("speech", "Chatterbox")]) for i in groups["today"][1])
    row = f"<tr><th>today</th><td>USD</td><td>{today:.4f}</td><td>4</td><td>0</td></tr>"
    page = http("GET", f"{proc.url}/")[1].decode()
    assert "Estimated spend today" in page and row in page, page
    assert "<th>alpha</th>" not in page  # finished days ago

    before = {n: parse_samples(text, n) for n in ("distribute_estimated_cost_total", "distribute_unpriced_jobs_total")}
    proc.stop(signal.SIGKILL)
    again = exporter(cfg, env=ENV)
    text = again.metrics()
    assert {n: parse_samples(text, n) for n in before} == before  # the very same values, nothing added twice
    assert record(again.url, exact) == shown
    assert row in http("GET", f"{again.url}/")[1].decode()


def test_a_price_applies_only_to_jobs_finished_from_its_effective_from(simulator, exporter, tmp_path):
    sim = simulator("--seed", "16")
    now = time.time()
    change = datetime.fromtimestamp(now - 10 * DAY, timezone.utc).date()  # a price change ten days ago
    qwen_from = datetime.fromtimestamp(now - 5 * DAY, timezone.utc).date()  # Qwen priced from five days ago
    old = sim.create("chat", 10, age_seconds=20 * DAY, model="Llama-3.1 8B") + sim.create(
        "chat", 3, age_seconds=20 * DAY, model="Qwen2.5 7B")
    recent = sim.create("chat", 10, age_seconds=2 * DAY, model="Llama-3.1 8B") + sim.create(
        "chat", 3, age_seconds=2 * DAY, model="Qwen2.5 7B")
    (tmp_path / "prices.yaml").write_text(f"""prices:
  - {{kind: chat, model: "Llama-3.1 8B", effective_from: 2000-01-01, per_million_prompt_tokens: 1, per_request: 1}}
  - {{kind: chat, model: "Llama-3.1 8B", effective_from: {change}, per_million_prompt_tokens: 2, per_request: 2}}
  - {{kind: chat, model: "Llama-3.1 8B", effective_from: 2999-01-01, per_request: 1000}}
  - {{kind: chat, model_regex: "Qwen.*", effective_from: {qwen_from}, per_request: 4}}
""")
    proc = exporter(write_config(tmp_path, priced_config(sim.url, {"old": ("chat", old), "recent": ("chat", recent)})))
    cut = datetime(change.year, change.month, change.day, tzinfo=timezone.utc).timestamp()

    def price(job: dict) -> tuple | None:
        if job["model"] == "Qwen2.5 7B":
            return (0, 0, 0, 4.0) if job["finished"] >= cut + 5 * DAY else None
        return (2.0, 0, 0, 2.0) if job["finished"] >= cut else (1.0, 0, 0, 1.0)

    truth = sim.truth()
    want = expected_totals(truth, {**{i: "old" for i in old}, **{i: "recent" for i in recent}}, price)
    assert want[1] == {("chat", "old", "Qwen2.5 7B"): 3}  # not yet priced when those finished
    assert set(want[0]) == {("chat", "old", "Llama-3.1 8B"), ("chat", "recent", "Llama-3.1 8B"),
                            ("chat", "recent", "Qwen2.5 7B")}
    wait_for(lambda: same(exported(proc.metrics()), want), 30, what="each job at the price of its finished time")


def test_reload_prices_only_later_jobs_and_a_broken_file_keeps_the_old_table(simulator, exporter, tmp_path):
    sim = simulator("--seed", "17")
    first = sim.create("images", 8, age_seconds=OLD, model="SDXL")
    second = sim.create("images", 8, age_seconds=OLD, model="SDXL")
    third = sim.create("images", 8, age_seconds=OLD, model="SDXL")
    v1 = "prices: [{kind: images, model: SDXL, effective_from: 2020-01-01, per_image: 1, per_request: 0.5}]\n"
    v2 = "prices: [{kind: images, model: SDXL, effective_from: 2020-01-01, per_image: 3}]\n"
    (tmp_path / "prices.yaml").write_text(v1)
    cfg = write_config(tmp_path, priced_config(sim.url, {"a": ("images", first)}))
    proc = exporter(cfg, env=ENV)
    truth = sim.truth()
    cost_v1 = expected_totals(truth, {i: "a" for i in first}, {("images", "SDXL"): (0, 0, 1.0, 0.5)})
    wait_for(lambda: same(exported(proc.metrics()), cost_v1), 30, what="the first jobs at v1")

    (tmp_path / "prices.yaml").write_text(v2)
    cfg.write_text(priced_config(sim.url, {"a": ("images", first), "b": ("images", second)}))
    assert http("POST", f"{proc.url}/-/reload")[0] == 200
    cost_v2 = expected_totals(truth, {i: "b" for i in second}, {("images", "SDXL"): (0, 0, 3.0, 0.0)})
    both = ({**cost_v1[0], **cost_v2[0]}, {})
    wait_for(lambda: same(exported(proc.metrics()), both), 30, what="the later jobs at v2, the first ones unchanged")
    assert record(proc.url, first[0])["price_entry"]["per_image"] == 1.0  # what was counted stays
    assert record(proc.url, second[0])["price_entry"]["per_image"] == 3.0
    counted = proc.metrics()

    (tmp_path / "prices.yaml").write_text(v2.replace("per_image: 3", "per_image: -3"))
    cfg.write_text(priced_config(sim.url, {"a": ("images", first), "b": ("images", second), "c": ("images", third)}))
    status, body, _ = http("POST", f"{proc.url}/-/reload")
    assert status == 500 and body.decode().strip() == (
        f"reload failed: pricing.file: {tmp_path / 'prices.yaml'}: prices[0].per_image: must be a number of 0 or "
        "more, not -3")
    assert parse_samples(proc.metrics(), "distribute_config_last_reload_successful")[()] == 0
    # Over several poll intervals, checked all along: group c of the failed reload is not tracked.
    holds_for(lambda: exported(proc.metrics()) == exported(counted)
              and all(http("GET", f"{proc.url}/api/v1/jobs/{i}", headers=AUTH)[0] == 404 for i in third),
              1.0, what="the failed reload changes nothing")
    # Jobs arriving now are priced by the table still running: v2.
    assert http("POST", f"{proc.url}/api/v1/jobs", {"kind": "images", "group": "c", "ids": third}, AUTH)[0] == 202
    cost_c = expected_totals(truth, {i: "c" for i in third}, {("images", "SDXL"): (0, 0, 3.0, 0.0)})
    wait_for(lambda: same(exported(proc.metrics()), ({**both[0], **cost_c[0]}, {})), 30, what="v2 kept")


def test_without_a_price_file_there_is_no_cost_series(simulator, exporter, tmp_path):
    sim = simulator("--seed", "18")
    ids = sim.create("chat", 5, age_seconds=OLD)
    cfg = write_config(tmp_path, config_text(sim.url, f"  - {{kind: chat, ids: {json.dumps(ids)}}}\n"))
    proc = exporter(cfg, env=ENV)
    wait_for(lambda: sum(parse_samples(proc.metrics(), "distribute_jobs_finished_total").values()) == 5, 30,
             what="5 finished")
    text = proc.metrics()
    assert "distribute_estimated_cost" not in text and "distribute_unpriced_jobs" not in text
    assert record(proc.url, ids[0])["estimated_cost"] is None and record(proc.url, ids[0])["price_entry"] is None
    assert "Estimated spend today" not in http("GET", f"{proc.url}/")[1].decode()
