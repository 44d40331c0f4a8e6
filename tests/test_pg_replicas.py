"""Several replicas on one real PostgreSQL behind a round-robin nginx, against the simulator: each
id tracked once, every replica's /metrics/jobs the same and equal to the simulator's truth, a
replica killed with -9 costs nothing, and PostgreSQL stopped (-m immediate) and started again is
recovered from without help."""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest

from helpers import ExporterProc, free_port, http, parse_samples, wait_for, write_config
from test_exporter import OLD
from balancer import Balancer

TOKEN = "pg-replica-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN": TOKEN}


def replica_config(folder, sim_url: str, url: str, password_file: str, proxy_port: int | None = None) -> object:
    folder.mkdir(exist_ok=True)
    proxy = f"proxy: {{listen_address: '127.0.0.1:{proxy_port}'}}\n" if proxy_port else ""
    return write_config(folder, proxy + (
        f"api: {{base_url: '{sim_url}', max_requests_per_second: 0, timeout_seconds: 2}}\n"
        "poll: {interval_seconds: 0.3, max_interval_seconds: 1, not_found_grace_seconds: 30}\n"
        f"state: {{url: '{url}', password_file: '{password_file}', retention_seconds: 100000000}}\n"
        "jobs: []\n"))


def job_facts(url: str) -> dict[str, dict]:
    status, body, _ = http("GET", f"{url}/metrics/jobs")
    assert status == 200, body
    text = body.decode()
    return {name: {k: v for k, v in parse_samples(text, name).items() if v}
            for name in ("distribute_jobs_finished_total", "distribute_tokens_total", "distribute_results_total",
                         "distribute_jobs")}


def truth_finished(sim, ids: list[str]) -> Counter:
    truth = sim.truth()
    return Counter((truth[i]["kind"], truth[i]["model"], truth[i]["status"]) for i in ids
                   if truth[i]["status"] in ("COMPLETED", "ERROR"))


def finished_of(facts: dict) -> Counter:
    return Counter({(dict(k)["kind"], dict(k)["model"], dict(k)["status"]): v
                    for k, v in facts["distribute_jobs_finished_total"].items()})


def register(url: str, kind: str, ids: list[str]) -> tuple[int, int]:
    accepted = duplicates = 0
    for start in range(0, len(ids), 10):
        status, body, _ = http("POST", f"{url}/api/v1/jobs", {"kind": kind, "group": "g", "ids": ids[start:start + 10]},
                               AUTH)
        assert status == 202, body
        answer = json.loads(body)
        accepted, duplicates = accepted + answer["accepted"], duplicates + answer["duplicates"]
    return accepted, duplicates


@pytest.mark.slow
def test_three_replicas_share_the_work_count_once_and_survive_kill_and_a_database_restart(
        simulator, exporter, tmp_path, pg_db, pg_server):
    url, password_file = pg_db
    sim = simulator("--seed", "41")
    ports = [free_port() for _ in range(3)]
    procs: dict[int, ExporterProc] = {}

    def start(i: int) -> ExporterProc:
        procs[i] = exporter(replica_config(tmp_path / f"r{i}", sim.url, url, password_file), env=ENV, port=ports[i])
        return procs[i]
    for i in range(3):
        start(i)
    balancer = Balancer(tmp_path / "nginx", ports)
    try:
        ids = sim.create("chat", 30, age_seconds=OLD) + sim.create("images", 10, age_seconds=OLD)
        assert register(balancer.url, "chat", ids[:30]) == (30, 0)
        assert register(balancer.url, "images", ids[30:]) == (10, 0)
        assert register(balancer.url, "chat", ids[:30]) == (0, 30)  # any replica knows every id
        truth = truth_finished(sim, ids)
        assert sum(truth.values()) == len(ids)
        for proc in procs.values():
            wait_for(lambda: finished_of(job_facts(proc.url)) == truth, 60, 0.3, what=f"{proc.url} totals = truth")
        answers = [job_facts(p.url) for p in procs.values()]
        assert answers[0] == answers[1] == answers[2]
        # /metrics keeps this replica's own process facts; the job facts are on /metrics/jobs only.
        own = procs[0].metrics()
        assert "distribute_exporter_polls_total" in own and "distribute_exporter_state_database_up 1.0" in own
        assert "distribute_jobs_finished_total" not in own
        # The list reads the database: the same page from any replica.
        pages = [json.loads(http("GET", f"{p.url}/api/v1/jobs?limit=100")[1]) for p in procs.values()]
        assert len(pages[0]["jobs"]) == len(ids) and pages[0] == pages[1] == pages[2]
        status, page, _ = http("GET", f"{procs[2].url}/")
        assert status == 200 and b"COMPLETED" in page  # the status page reads the shared facts

        # kill -9 in the middle of polling: the others finish its jobs (the leases run out).
        more = sim.create("speech", 20, age_seconds=OLD)
        assert register(balancer.url, "speech", more) == (20, 0)
        procs[1].stop(signal.SIGKILL)
        every = ids + more
        truth = truth_finished(sim, every)
        wait_for(lambda: finished_of(job_facts(procs[0].url)) == truth, 90, 0.3, what="jobs of the killed replica")

        # PostgreSQL stopped at once, then started again: replicas keep answering, say they are not
        # ready, and recover by themselves; nothing acknowledged is lost or counted twice.
        pg_server.stop("immediate")
        for i in (0, 2):
            wait_for(lambda: http("GET", f"{procs[i].url}/-/ready", timeout=3)[0] == 503, 30,
                     what="not ready while the database is away")
            assert http("GET", f"{procs[i].url}/-/healthy", timeout=3)[0] == 200
            assert http("GET", f"{procs[i].url}/metrics", timeout=3)[0] == 200
            assert http("GET", f"{procs[i].url}/metrics/jobs", timeout=10)[0] == 200  # the last answer
            assert http("GET", f"{procs[i].url}/", timeout=10)[0] == 200
            refused = http("POST", f"{procs[i].url}/api/v1/jobs", {"kind": "chat", "group": "g", "ids": ids[:1]},
                           AUTH, timeout=30)
            assert refused[0] == 503 and b"not available" in refused[1]  # nothing acknowledged
            assert http("GET", f"{procs[i].url}/api/v1/jobs", timeout=30)[0] == 503
        pg_server.start()
        pg_server.wait_up()
        start(1)  # a replica started again joins the others (ExporterProc waits until it is ready)
        for i in (0, 2):
            wait_for(lambda: http("GET", f"{procs[i].url}/-/ready", timeout=3)[0] == 200, 60,
                     what="ready again once the database is back")
        late = sim.create("images", 10, age_seconds=OLD)
        assert register(balancer.url, "images", late) == (10, 0)
        truth = truth_finished(sim, every + late)
        for proc in procs.values():
            wait_for(lambda: finished_of(job_facts(proc.url)) == truth, 90, 0.3, what="totals after the restart")
        # distribute_jobs' unfinished part comes from the gauges leader's row (every 2 s), the
        # counters at once: the three agree once that row and each replica's 1 s cache have turned.
        wait_for(lambda: job_facts(procs[0].url) == job_facts(procs[1].url) == job_facts(procs[2].url), 30, 0.3,
                 what="the same job facts from every replica")
    finally:
        balancer.stop()


CREATE_BODY = {"model": "Kokoro", "input": "hello", "voice": "nora"}  # a short speech job


def through(url: str, path: str, body: dict) -> dict | None:
    status, answer, _ = http("POST", f"{url}{path}", body)
    return json.loads(answer) if status == 200 else None


def proxy_errors(proc: ExporterProc, reason: str) -> float:
    return sum(v for k, v in proc.samples("distribute_proxy_errors_total").items() if dict(k)["reason"] == reason)


@pytest.mark.slow
def test_creates_through_any_replicas_proxy_are_stored_once_and_survive_the_database_going_away(
        simulator, exporter, tmp_path, pg_db, pg_server):
    url, password_file = pg_db
    name = url.rsplit("/", 1)[1]
    sim = simulator("--seed", "43", "--speed", "20")
    ports, proxy_ports = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    procs = []
    for i in range(3):
        config = replica_config(tmp_path / f"r{i}", sim.url, url, password_file, proxy_ports[i])
        text = config.read_text().replace("interval_seconds: 0.3, max_interval_seconds: 1",
                                          "interval_seconds: 10, max_interval_seconds: 20")
        config.write_text(text)
        procs.append(exporter(config, env=ENV, port=ports[i]))
    balancer = Balancer(tmp_path / "nginx-proxy", proxy_ports)
    try:
        ids = [wait_for(lambda: through(balancer.url, "/async/speech/create", CREATE_BODY), 10,
                        what="a create through the proxy")["id"] for _ in range(24)]
        # Committed before each answer: every id is in the database already, once.
        stored = pg_server.psql("SELECT count(*), count(DISTINCT id) FROM jobs WHERE source = 'proxy'", db=name)
        assert stored.strip() == f"{len(ids)}|{len(ids)}"
        left = set(ids)

        def one_pass() -> bool:
            for job_id in sorted(left):
                if (through(balancer.url, "/async/speech/result", {"id": job_id}) or {}).get("status") in (
                        "COMPLETED", "ERROR"):
                    left.discard(job_id)
            return not left
        wait_for(one_pass, 60, 0.2, what="every job final through the proxy")
        truth = truth_finished(sim, ids)
        for proc in procs:
            wait_for(lambda: finished_of(job_facts(proc.url)) == truth, 60, 0.3, what="proxied finals counted once")
        by_agent = json.loads(http("GET", f"{sim.url}/__admin/stats?agents=1")[1])["by_id_agent"]
        own = sum(n for job_id in ids for agent, n in by_agent.get(job_id, {}).items()
                  if agent.startswith("distribute-exporter/"))
        assert own / len(ids) <= 0.05, own
        # The status page's proxy section names the replica's own proxy (the listener both backends share).
        page = http("GET", f"{procs[1].url}/")[1].decode()
        assert f"<code>http://127.0.0.1:{proxy_ports[1]}</code>" in page, page.split("<h2>Proxy</h2>")[-1][:400]

        # The database goes away: creates are still answered (journaled, counted in commit_late)
        # and reach the database once it is back.
        pg_server.stop("immediate")
        status, body, _ = http("POST", f"http://127.0.0.1:{proxy_ports[0]}/async/speech/create", CREATE_BODY,
                               timeout=30)
        assert status == 200, body
        late_id = json.loads(body)["id"]
        assert proxy_errors(procs[0], "commit_late") == 1
        pg_server.start()
        pg_server.wait_up()
        wait_for(lambda: pg_server.psql(f"SELECT count(*) FROM jobs WHERE id = '{late_id}'", db=name).strip() == "1",
                 60, 0.3, what="the journaled create stored once the database is back")
    finally:
        balancer.stop()


def test_a_replica_whose_database_is_down_at_start_is_alive_not_ready_and_says_so_once(simulator, tmp_path,
                                                                                       pg_server):
    from pg import PASSWORD

    sim = simulator("--seed", "44")
    port = free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/nothing"
    proc = ExporterProc(replica_config(tmp_path / "r", sim.url, url, str(pg_server.password_file)), env=ENV,
                        wait_ready=False)
    try:
        wait_for(lambda: http("GET", f"{proc.url}/-/healthy", timeout=2)[0] == 200, 30, what="alive")
        assert http("GET", f"{proc.url}/-/ready", timeout=2)[0] == 503
        assert http("GET", f"{proc.url}/metrics", timeout=2)[0] == 200
        wait_for(lambda: "not reachable" in proc.log(), 30, what="the log line")
        assert proc.popen.poll() is None
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    lines = [line for line in log.splitlines() if "state database" in line]
    assert len(lines) == 1 and f"127.0.0.1:{port}/nothing" in lines[0], lines
    assert PASSWORD not in log and "Traceback" not in log


def leases(proc: ExporterProc) -> float:
    return sum(proc.samples("distribute_exporter_leases_held").values())


@pytest.mark.slow
def test_a_replica_paused_past_its_lease_changes_nothing_and_scaling_needs_no_procedure(
        simulator, exporter, tmp_path, pg_db):
    url, password_file = pg_db
    sim = simulator("--seed", "45")
    sim.faults(latency_ms=1500)  # answers take a while: claims are in flight when a replica is paused
    procs: list[ExporterProc] = []

    def start(i: int) -> ExporterProc:
        config = replica_config(tmp_path / f"r{i}", sim.url, url, password_file)
        config.write_text(config.read_text().replace("timeout_seconds: 2}", "timeout_seconds: 3, max_concurrency: 4}"))
        procs.append(exporter(config, env=ENV))
        return procs[-1]
    # a alone first: with b and c running, they could claim all 40 before a claims one.
    a = start(0)
    ids = sim.create("chat", 40, age_seconds=OLD)
    assert register(a.url, "chat", ids) == (40, 0)
    wait_for(lambda: leases(a) > 0, 30, 0.05, what="replica a holding claims")
    a.popen.send_signal(signal.SIGSTOP)
    try:
        b, c = start(1), start(2)
        truth = truth_finished(sim, ids)
        # The others poll a's jobs once its leases (11-14 s here) run out.
        wait_for(lambda: finished_of(job_facts(b.url)) == truth, 120, 0.3, what="a's jobs finished by the others")
    finally:
        a.popen.send_signal(signal.SIGCONT)
    wait_for(lambda: leases(a) == 0, 60, 0.2, what="a's late answers handled")
    assert finished_of(job_facts(a.url)) == finished_of(job_facts(c.url)) == truth  # nothing counted twice

    # 3 -> 4 -> 2 replicas: start one, stop two, with no procedure; nothing lost, nothing twice.
    d = start(3)
    more = sim.create("images", 20, age_seconds=OLD)
    assert register(d.url, "images", more) == (20, 0)
    b.stop()
    c.stop()
    truth = truth_finished(sim, ids + more)
    for proc in (a, d):
        wait_for(lambda: finished_of(job_facts(proc.url)) == truth, 120, 0.3, what="totals after scaling down")
    assert sum(truth.values()) == len(ids) + len(more)
