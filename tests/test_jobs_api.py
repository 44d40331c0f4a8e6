"""GET /api/v1/jobs and /api/v1/jobs/<id> against a real exporter polling the simulator: every
filter and sort checked against the simulator's truth, cursor paging, bad parameters, history."""

from __future__ import annotations

import json
import math
import urllib.parse

from helpers import get_json, http, total, wait_for, write_config

OLD = 10 ** 6  # back-dated this far, a job is final at its first answer
TOKEN = "drilldown-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINAL = ("COMPLETED", "ERROR")


def config(tmp_path, sim_url: str, groups: str, poll: str = "interval_seconds: 0.2, max_interval_seconds: 1") -> object:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return write_config(tmp_path, f"api: {{base_url: '{sim_url}', max_requests_per_second: 0}}\npoll: {{{poll}}}\n"
                        f"web: {{registration_token_file: {token}}}\n"
                        f"state: {{path: state.db, flush_interval_seconds: 0.2, retention_seconds: 100000000}}\n"
                        f"jobs:\n{groups}")


def jobs(url: str, **params: object) -> dict:
    query = urllib.parse.urlencode(params, doseq=True)
    return get_json(f"{url}/api/v1/jobs?{query}")


def ids(url: str, **params: object) -> list[str]:
    return [j["id"] for j in jobs(url, **params)["jobs"]]


def every_page(url: str, **params: object) -> list[str]:
    seen, cursor = [], None
    while True:
        answer = jobs(url, **params, **({"cursor": cursor} if cursor else {}))
        seen += [j["id"] for j in answer["jobs"]]
        cursor = answer["next_cursor"]
        if cursor is None:
            return seen


def in_order(records: list[dict], key: str, descending: bool = False) -> bool:
    """Valued records first, in order of `key` then id; records without a value last, by id."""
    valued = [(r[key], r["id"]) for r in records if r[key] is not None]
    nulls = [r["id"] for r in records if r[key] is None]
    want = sorted(valued, key=lambda p: (-p[0] if descending else p[0], p[1]))
    return valued == want and nulls == sorted(nulls) and all(
        r[key] is not None for r in records[:len(valued)])


def test_filters_sorts_and_pages_match_the_simulators_truth(simulator, exporter, tmp_path):
    # Slowed down 100 times, a fresh job stays unfinished for the test; back-dated ones are final.
    sim = simulator("--seed", "7", "--timestamps", "epoch-ms", "--speed", "0.01")
    chat_done = sim.create("chat", 12, age_seconds=OLD)
    images_done = sim.create("images", 8, age_seconds=OLD, model="SDXL")
    speech_done = sim.create("speech", 6, age_seconds=OLD)
    waiting = [sim.create("chat", 1, age_seconds=age)[0] for age in (50, 40, 30, 20, 10, 5)]
    waiting_images = sim.create("images", 3, age_seconds=15)  # three created at the same moment
    (tmp_path / "ids.txt").write_text("\n".join(images_done + waiting_images) + "\n")
    groups = (f"  - {{kind: chat, group: nightly, ids: {json.dumps(chat_done + waiting)}}}\n"
              f"  - {{kind: images, group: renders, ids_file: ids.txt}}\n")
    proc = exporter(config(tmp_path, sim.url, groups))
    status, _, _ = http("POST", f"{proc.url}/api/v1/jobs", {"kind": "speech", "group": "voice", "ids": speech_done}, AUTH)
    assert status == 202
    everything = chat_done + images_done + speech_done + waiting + waiting_images
    wait_for(lambda: len(ids(proc.url, unfinished="false", limit=1000)) == 26
             and all(j["created"] for j in jobs(proc.url, limit=1000)["jobs"])
             and len(jobs(proc.url, limit=1000)["jobs"]) == len(everything), 30,
             what="every job answered once and the finished ones final")
    truth = sim.truth()
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 26, 10, what="finished counted")

    # the oldest unfinished jobs, as the simulator knows them
    unfinished_truth = sorted((t["created"], i) for i, t in truth.items() if t["status"] not in FINAL)
    assert ids(proc.url, unfinished="true", sort="created", limit=3) == [i for _, i in unfinished_truth[:3]]
    assert ids(proc.url, unfinished="true", sort="created", limit=3)[0] == waiting[0]

    everyone = {j["id"]: j for j in jobs(proc.url, limit=1000)["jobs"]}
    assert set(everyone) == set(everything)
    for job_id, record in everyone.items():
        t = truth[job_id]
        assert record["status"] == t["status"] and record["model"] == t["model"]
        assert math.isclose(record["created"], t["created"], abs_tol=0.002)
        if t["status"] in FINAL:
            assert math.isclose(record["duration"], t["finished"] - t["created"], abs_tol=0.002)
        assert record["last_answer_code"] == 200 and record["history"][-1]["status"] == t["status"]

    def expect(predicate) -> set[str]:
        return {i for i, r in everyone.items() if predicate(r)}

    # Jobs created in one batch may share a timestamp: split at a distinct value, so that both sides
    # of it hold jobs.
    created = sorted({r["created"] for r in everyone.values()})
    assert len(created) >= 3
    middle = created[len(created) // 2]
    finished_at = sorted(r["ended"] for r in everyone.values() if r["ended"])
    durations = sorted(r["duration"] for r in everyone.values() if r["duration"] is not None)
    cases = [
        ({"kind": "images"}, lambda r: r["kind"] == "images"),
        ({"kind": ["images", "speech"]}, lambda r: r["kind"] != "chat"),
        ({"group": "renders"}, lambda r: r["group"] == "renders"),
        ({"group": ["voice", "nightly"]}, lambda r: r["group"] in ("voice", "nightly")),
        ({"model": "SDXL"}, lambda r: r["model"] == "SDXL"),
        ({"status": "ERROR"}, lambda r: r["status"] == "ERROR"),
        ({"status": ["COMPLETED", "QUEUED", "CREATED"]}, lambda r: r["status"] in ("COMPLETED", "QUEUED", "CREATED")),
        ({"unfinished": "true"}, lambda r: not r["final"]),
        ({"unfinished": "false"}, lambda r: r["final"]),
        ({"source": "api"}, lambda r: r["source"] == "api"),
        ({"source": "config"}, lambda r: r["source"] == "config"),
        ({"created_before": middle}, lambda r: r["created"] < middle),
        ({"created_after": middle}, lambda r: r["created"] > middle),
        ({"finished_after": finished_at[len(finished_at) // 2]}, lambda r: r["ended"] and r["ended"] > finished_at[len(finished_at) // 2]),
        ({"min_duration_seconds": durations[len(durations) // 2]},
         lambda r: r["duration"] is not None and r["duration"] >= durations[len(durations) // 2]),
        ({"kind": "chat", "unfinished": "true", "created_after": middle - 1000}, lambda r: r["kind"] == "chat" and not r["final"]),
        ({"group": "nightly", "status": "COMPLETED"}, lambda r: r["group"] == "nightly" and r["status"] == "COMPLETED"),
    ]
    for params, predicate in cases:
        got = ids(proc.url, limit=1000, **params)
        assert len(got) == len(set(got)) and set(got) == expect(predicate), params
        assert expect(predicate), f"{params} selects nothing: the case tests nothing"
    # relative times: the back-dated jobs were created 11 days ago
    assert set(ids(proc.url, created_after="-1d", limit=1000)) == set(waiting + waiting_images)
    assert set(ids(proc.url, created_before="-1d", limit=1000)) == set(chat_done + images_done + speech_done)

    for sort, key, descending in (("created", "created", False), ("-created", "created", True),
                                  ("duration", "duration", False), ("-duration", "duration", True),
                                  ("last_polled", "last_polled", False), ("-last_polled", "last_polled", True)):
        records = jobs(proc.url, sort=sort, limit=1000)["jobs"]
        listed = waiting + waiting_images if key == "last_polled" else everything  # polled ones only
        assert len(records) == len(listed) and in_order(records, key, descending), sort
        first = jobs(proc.url, sort=sort, limit=5)["jobs"]
        if key == "last_polled":  # still polled between the two reads: a job can move, the order cannot break
            assert len(first) == min(5, len(listed)) and in_order(first, key, descending), sort
        else:
            assert [r["id"] for r in records[:5]] == [r["id"] for r in first], sort
    # paging: every job exactly once, in the same order as one big page
    for sort in ("created", "-created", "duration", "-duration"):
        paged = every_page(proc.url, sort=sort, limit=4)
        assert paged == ids(proc.url, sort=sort, limit=1000), sort
    assert every_page(proc.url, unfinished="true", sort="created", limit=3) == [i for _, i in unfinished_truth]
    # newest first, ties (the three images) by id, one job a page: every tie split across pages
    newest_first = [i for _, i in sorted((-created, i) for created, i in unfinished_truth)]
    assert every_page(proc.url, unfinished="true", sort="-created", limit=1) == newest_first
    assert every_page(proc.url, sort="-created", limit=2) == ids(proc.url, sort="-created", limit=1000)
    assert jobs(proc.url, limit=1000)["next_cursor"] is None

    # one record, without the registration token (reads need none), and writes still need it
    one = get_json(f"{proc.url}/api/v1/jobs/{waiting[0]}")
    assert one == everyone[waiting[0]] | {k: one[k] for k in ("last_polled", "next_due", "polls", "interval")}
    assert http("GET", f"{proc.url}/api/v1/jobs/{waiting[0].upper()}")[0] == 200
    assert http("GET", f"{proc.url}/api/v1/jobs/3b241101-e2bb-4255-8caf-4136c566a962")[0] == 404
    assert http("POST", f"{proc.url}/api/v1/jobs", {"kind": "chat", "ids": waiting})[0] == 401
    assert http("DELETE", f"{proc.url}/api/v1/jobs/{waiting[0]}")[0] == 401
    assert TOKEN not in json.dumps(jobs(proc.url, limit=1000))


def test_a_bad_parameter_is_a_400_naming_it(simulator, exporter, tmp_path):
    sim = simulator()
    proc = exporter(config(tmp_path, sim.url, "  - {kind: chat, ids_file: none.txt}\n"))
    cursor_for_created = None
    for query, name in (("kind=video", "kind"), ("status=DONE", "status"), ("sort=age", "sort"),
                        ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"),
                        ("unfinished=yes", "unfinished"), ("created_before=yesterday", "created_before"),
                        ("created_after=nan", "created_after"), ("finished_after=-3x", "finished_after"),
                        ("min_duration_seconds=-1", "min_duration_seconds"), ("cursor=!!!", "cursor"),
                        ("colour=blue", "colour"), ("sort=created&sort=-created", "sort"), ("group=", "group"),
                        ("sort=last_polled&unfinished=false", "sort")):
        status, body, headers = http("GET", f"{proc.url}/api/v1/jobs?{query}")
        answer = json.loads(body)
        assert status == 400 and answer["parameter"] == name and name in answer["error"], (query, answer)
        assert headers["Content-Type"].startswith("application/json")
    sim_ids = sim.create("chat", 3, age_seconds=OLD)
    assert http("POST", f"{proc.url}/api/v1/jobs", {"kind": "chat", "ids": sim_ids}, AUTH)[0] == 202
    # A cursor for sort=created (wait for the first answers: a job's `created` comes from the API)
    cursor_for_created = wait_for(lambda: jobs(proc.url, sort="created", limit=1)["next_cursor"], 20,
                                  what="a next page by created")
    status, body, _ = http("GET", f"{proc.url}/api/v1/jobs?sort=-duration&cursor={cursor_for_created}")
    assert status == 400 and json.loads(body)["parameter"] == "cursor"
    for query in ("created_after=-2h", "created_before=2030-01-01T00:00:00Z", "finished_after=1700000000"):
        assert http("GET", f"{proc.url}/api/v1/jobs?{query}")[0] == 200, query


def test_history_in_order_and_paging_while_jobs_finish(simulator, exporter, tmp_path):
    # Twice as fast: a job goes through its statuses in seconds, each seen by 0.1 s polls. The jobs
    # are created once the exporter is up, and registered at once, so that their first statuses count.
    sim = simulator("--seed", "11", "--timestamps", "epoch-ms", "--speed", "2")
    proc = exporter(config(tmp_path, sim.url, "  - {kind: chat, ids_file: none.txt}\n",
                           "interval_seconds: 0.1, max_interval_seconds: 0.1"))
    fresh = []
    for kind in ("speech", "chat"):
        fresh += sim.create(kind, 8)
        assert http("POST", f"{proc.url}/api/v1/jobs", {"kind": kind, "ids": fresh[-8:]}, AUTH)[0] == 202
    wait_for(lambda: len(listed := jobs(proc.url, limit=100)["jobs"]) == len(fresh) and all(j["created"] for j in listed),
             20, what="first answers")  # every job listed: all() of an empty list would hold at once
    # Page through while jobs finish, one page per finished job: each must come exactly once.
    seen, cursor, finished_before = [], None, -1
    while True:
        now_finished = total(proc.samples("distribute_jobs_finished_total"))
        if now_finished < 16:
            wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) > now_finished, 60,
                     what="another job finished")
        answer = jobs(proc.url, sort="created", limit=1, **({"cursor": cursor} if cursor else {}))
        seen += [j["id"] for j in answer["jobs"]]
        finished_before = now_finished
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert finished_before >= 0 and sorted(seen) == sorted(fresh) and len(seen) == len(set(seen))
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 16, 60, what="all finished")
    truth = sim.truth()
    for job_id in fresh:
        record = get_json(f"{proc.url}/api/v1/jobs/{job_id}")
        history = record["history"]
        phases = [status for _, status in truth[job_id]["phases"]]
        entered = {status: at for at, status in truth[job_id]["phases"]}
        statuses = [h["status"] for h in history]
        assert statuses[-1] == truth[job_id]["status"] == phases[-1]
        # what the exporter saw is the simulator's sequence with some statuses missed, never reordered
        assert statuses == [s for s in ["CREATED", *phases] if s in statuses], (statuses, phases)
        times = [h["at"] for h in history]
        assert times == sorted(times)
        for h in history:  # never seen before the simulator entered it
            assert h["at"] >= entered.get(h["status"], truth[job_id]["created"]) - 0.01, (h, entered)
        page = http("GET", f"{proc.url}/jobs/{job_id}")
        assert page[0] == 200 and all(s in page[1].decode() for s in statuses)
    assert sum(len(get_json(f"{proc.url}/api/v1/jobs/{i}")["history"]) > 1 for i in fresh) >= 8


def test_history_is_bounded_keeps_the_first_and_reads_back_in_order():
    from exporter.tracking.job import HISTORY_MAX, Job
    from exporter.tracking.store import JOB_COLUMNS

    job = Job("3b241101-e2bb-4255-8caf-4136c566a962", "chat", "g", "config")
    for i in range(40):
        job.note_status(("QUEUED", "POSTPONED")[i % 2], 1000.0 + i)
    history = job.as_dict()["history"]
    assert len(history) == HISTORY_MAX and len(job.history) < 40 * 24
    assert history[0] == {"status": "QUEUED", "at": 1000.0}  # when it was first seen stays
    assert [h["at"] for h in history[1:]] == [1000.0 + i for i in range(40 - HISTORY_MAX + 1, 40)]
    again = Job.from_row(dict(zip(JOB_COLUMNS, job.row())))
    assert again.as_dict()["history"] == history
