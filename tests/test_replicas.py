"""Several replicas, one truth: real processes, each with its own state file, behind a real
round-robin balancer (nginx), against the simulator. Any replica accepts any id; the shard that owns
it tracks it, counts it once, and keeps doing so across kill -9 and a change of shard count."""

from __future__ import annotations

import base64
import json
import signal
import ssl
import urllib.error
import urllib.request
from collections import Counter
from urllib.parse import urlencode
from pathlib import Path

from conftest import tool
from exporter.tracking.shard import owner
from helpers import ExporterProc, Proc, free_port, http, total, wait_for, write_config
from test_exporter import OLD, config_text
from test_security import PASSWORD, https, make_pki, web_config

TOKEN = "replica-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN": TOKEN}
FINAL = ("COMPLETED", "ERROR")


class Balancer(Proc):
    """nginx, round-robin over the given loopback ports."""

    def __init__(self, folder: Path, ports: list[int]) -> None:
        folder.mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "".join(f"    server 127.0.0.1:{p};\n" for p in ports)
        temp = "".join(f"  {name}_temp_path {folder}/{name};\n"
                       for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = folder / "nginx.conf"
        conf.write_text(f"worker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
                        f"events {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n{temp}"
                        f"  upstream replicas {{\n{servers}  }}\n"
                        f"  server {{\n    listen 127.0.0.1:{self.port};\n"
                        f"    location / {{ proxy_pass http://replicas; proxy_next_upstream off; }}\n  }}\n}}\n")
        super().__init__([tool("nginx"), "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf),
                          "-g", "daemon off;"])
        wait_for(lambda: http("GET", f"{self.url}/-/healthy", timeout=2)[0] > 0, 10, what="nginx up")  # any answer


class Replicas:
    """N replicas sharing one config and peer list; each in its own folder with its own state file."""

    def __init__(self, launch, tmp_path: Path, sim_url: str, count: int, ports: list[int],
                 proxy_ports: list[int] | None = None, groups: str = "  []\n", **config: str) -> None:
        self.launch = launch  # the `exporter` fixture: every process is stopped when the test ends
        self.tmp_path, self.sim_url, self.count = tmp_path, sim_url, count
        self.ports = ports[:count]
        self.proxy_ports = proxy_ports
        self.groups = groups
        self.config = config
        self.procs: dict[int, ExporterProc] = {}

    def start(self, index: int, port: int | None = None) -> ExporterProc:
        """Replica `index`; one past the count (on its own `port`) is a replica being removed."""
        folder = self.tmp_path / f"replica-{index}"
        folder.mkdir(exist_ok=True)
        text = config_text(self.sim_url, self.groups, **self.config)
        if self.proxy_ports:
            text = f"proxy: {{listen_address: '127.0.0.1:{self.proxy_ports[index]}'}}\n" + text
        config = write_config(folder, text)
        peers = ",".join(f"http://127.0.0.1:{p}" for p in self.ports)
        proc = self.launch(config, "--shard.index", f"distribute-exporter-{index}", "--shard.count",
                            str(self.count), "--shard.peers", peers, env=ENV, port=port or self.ports[index])
        self.procs[index] = proc
        return proc

    def start_all(self) -> "Replicas":
        for index in range(self.count):
            self.start(index)
        return self

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def holders(self, job_id: str) -> list[int]:
        """The replicas that track `job_id` themselves."""
        return [i for i, p in self.procs.items()
                if http("GET", f"{p.url}/api/v1/jobs/{job_id}?local=true", headers=AUTH)[0] == 200]

    def finished(self) -> float:
        return sum(total(p.samples("distribute_jobs_finished_total")) for p in self.procs.values())

    def handoffs(self, outcome: str) -> float:
        return sum(total(p.samples("distribute_handoff_total"), outcome=outcome) for p in self.procs.values())

    def pending(self) -> float:
        return sum(total(p.samples("distribute_handoff_pending")) for p in self.procs.values())


def register(url: str, kind: str, ids: list[str], batch: int = 10) -> list[dict]:
    answers = []
    for start in range(0, len(ids), batch):
        status, body, _ = http("POST", f"{url}/api/v1/jobs", {"kind": kind, "group": "g", "ids": ids[start:start + batch]},
                               AUTH)
        assert status == 202, body
        answers.append(json.loads(body))
    return answers


def final_count(sim, ids: list[str]) -> int:
    truth = sim.truth()
    return sum(truth[i]["status"] in FINAL for i in ids)


def each_tracked_once(replicas: Replicas, ids: list[str], count: int) -> bool:
    for job_id in ids:
        if replicas.holders(job_id) != [owner(job_id, count)]:
            return False
    return True


def test_ids_registered_through_a_balancer_are_tracked_once_by_their_owner(simulator, exporter, tmp_path):
    sim = simulator("--seed", "18")
    ids = sim.create("chat", 45, age_seconds=OLD) + sim.create("images", 15, age_seconds=OLD)
    ports = [free_port() for _ in range(3)]
    replicas = Replicas(exporter, tmp_path, sim.url, 3, ports).start_all()
    balancer = Balancer(tmp_path / "nginx", ports)
    try:
        answers = register(balancer.url, "chat", ids[:45]) + register(balancer.url, "images", ids[45:])
        # every id is taken by whichever replica got it: stored there or queued for its owner
        assert sum(a["accepted"] for a in answers) == len(ids)
        assert all("not_owned" not in a and 0 <= a["handed_off"] <= a["accepted"] for a in answers)
        assert sum(a["handed_off"] for a in answers) > 0
        wait_for(lambda: replicas.pending() == 0, 30, what="outbox empty")
        assert each_tracked_once(replicas, ids, 3)
        # registered again through the balancer: nothing changes anywhere
        register(balancer.url, "chat", ids[:45], batch=45)
        wait_for(lambda: replicas.pending() == 0, 30, what="outbox empty again")
        wait_for(lambda: replicas.finished() == len(ids), 30, what="every job finished")
        assert each_tracked_once(replicas, ids, 3)
        assert replicas.handoffs("delivered") == replicas.handoffs("received") > 0
        agents = http("GET", f"{sim.url}/__admin/stats?agents=1")
        by_agent = json.loads(agents[1])["by_id_agent"]
        for job_id in ids:  # exactly one replica, the owner, asked the API about each id
            assert list(by_agent[job_id]) and all(f"(shard {owner(job_id, 3)}/3)" in a for a in by_agent[job_id])
        # any replica answers for any id (routed to the owner); ?local=true asks that one replica only
        for job_id in ids[:12]:
            status, body, _ = http("GET", f"{balancer.url}/api/v1/jobs/{job_id}", headers=AUTH)
            assert status == 200 and json.loads(body)["id"] == job_id and json.loads(body)["final"]
        # a hand-off without the token is refused and counted
        status, _, _ = http("POST", f"{replicas.procs[0].url}/api/v1/handoff", {"entries": []},
                            {"X-Registration-Token": "wrong"})
        assert status == 401
        assert total(replicas.procs[0].samples("distribute_handoff_total"), outcome="refused") == 1
    finally:
        balancer.stop()
        replicas.stop_all()


def listed(url: str, **params) -> list[dict]:
    """Every page of GET /api/v1/jobs from `url` (a list value repeats the parameter), in order."""
    pages, cursor = [], None
    while True:
        query = urlencode({**params, **({"cursor": cursor} if cursor else {})}, doseq=True)
        status, body, _ = http("GET", f"{url}/api/v1/jobs?{query}")
        assert status == 200, body
        pages.append(json.loads(body))
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 1000, "the cursor goes round in circles"


def ids_of(pages: list[dict]) -> list[str]:
    return [job["id"] for page in pages for job in page["jobs"]]


def refused(url: str, query: str) -> str:
    """The parameter a 400 names."""
    status, body, _ = http("GET", f"{url}/api/v1/jobs?{query}")
    assert status == 400, (query, status, body)
    return json.loads(body)["parameter"]


def test_the_list_through_a_balancer_merges_every_shard_once_in_order(simulator, exporter, tmp_path):
    sim = simulator("--seed", "25")
    by_kind: dict[str, list[str]] = {"chat": [], "images": []}
    for batch in range(8):  # created a minute apart by batch: ties within a batch go by id
        kind = ("chat", "images")[batch % 2]
        by_kind[kind] += sim.create(kind, 6, age_seconds=OLD + 60 * batch)
    ids = by_kind["chat"] + by_kind["images"]
    ports = [free_port() for _ in range(3)]
    replicas = Replicas(exporter, tmp_path, sim.url, 3, ports).start_all()
    balancer = Balancer(tmp_path / "nginx", ports)
    try:
        for kind, kind_ids in by_kind.items():
            register(balancer.url, kind, kind_ids)
        # every job final: its `created` known, so its place in the order stays put while paging
        wait_for(lambda: replicas.pending() == 0 and replicas.finished() == len(ids), 30, what="every job final")
        own = {i: ids_of(listed(p.url, local="true", limit=1000)) for i, p in replicas.procs.items()}
        assert all(own.values()) and sorted(sum(own.values(), [])) == sorted(ids)  # disjoint, complete

        whole = listed(balancer.url, limit=1000)
        assert len(whole) == 1 and whole[0]["missing_shards"] == [] and sorted(ids_of(whole)) == sorted(ids)
        # seven at a time, oldest first, each page through another replica (round robin)
        pages = listed(balancer.url, sort="created", limit=7)
        seen = [(job["created"], job["id"]) for page in pages for job in page["jobs"]]
        assert [len(p["jobs"]) for p in pages[:-1]] == [7] * (len(pages) - 1) and pages[-1]["jobs"]
        assert sorted(job_id for _, job_id in seen) == sorted(ids) and seen == sorted(seen)
        assert len({created for created, _ in seen}) == 8 and all(not p["missing_shards"] for p in pages)
        # the default order, newest first, five at a time
        newest = [(job["created"], job["id"]) for page in listed(balancer.url, limit=5) for job in page["jobs"]]
        assert newest == sorted(seen, key=lambda s: (-s[0], s[1]))
        # filters reach every shard, a repeated one with all its values
        assert sorted(ids_of(listed(balancer.url, kind=["chat", "images"], limit=4))) == sorted(ids)
        assert sorted(ids_of(listed(balancer.url, kind="images", sort="created", limit=4))) == sorted(by_kind["images"])

        # ?local=true asks the one replica the balancer picked
        answers = [listed(balancer.url, local="true", limit=1000) for _ in range(3)]
        assert all("missing_shards" not in page for pages in answers for page in pages)
        assert sorted(map(sorted, map(ids_of, answers))) == sorted(map(sorted, own.values()))

        # a bad parameter is still a 400 naming it; a cursor serves only the list that gave it out
        assert refused(balancer.url, "limit=0") == "limit"
        assert refused(balancer.url, "local=maybe") == "local"
        assert refused(balancer.url, "colour=red") == "colour"
        merged_cursor = pages[0]["next_cursor"]
        local_cursor = json.loads(http("GET", f"{replicas.procs[0].url}/api/v1/jobs?local=true&limit=1")[1])["next_cursor"]
        assert refused(balancer.url, f"cursor={local_cursor}") == "cursor"
        assert refused(balancer.url, f"cursor={merged_cursor}&local=true&sort=created") == "cursor"
        assert refused(balancer.url, f"cursor={merged_cursor}") == "cursor"  # given out for sort=created
        assert refused(balancer.url, "cursor=bm9wZQ") == "cursor"

        # a shard that does not answer is named on every page, and the others' jobs still come, each once
        replicas.procs[2].stop(signal.SIGKILL)
        for limit in (1000, 7):
            pages = listed(replicas.procs[0].url, sort="created", limit=limit)
            assert all(page["missing_shards"] == [2] for page in pages)
            assert sorted(ids_of(pages)) == sorted(own[0] + own[1])
        # it keeps its place in the cursor: back before the paging ends, its jobs come too, each once
        first = json.loads(http("GET", f"{replicas.procs[1].url}/api/v1/jobs?sort=created&limit=7")[1])
        assert first["missing_shards"] == [2] and len(first["jobs"]) == 7
        replicas.start(2)
        rest = listed(balancer.url, sort="created", limit=7, cursor=first["next_cursor"])
        assert sorted(ids_of([first, *rest])) == sorted(ids) and all(not p["missing_shards"] for p in rest)
    finally:
        balancer.stop()
        replicas.stop_all()


def test_kill_9_of_sender_and_owner_loses_and_doubles_nothing(simulator, exporter, tmp_path):
    sim = simulator("--seed", "19", "--speed", "20")
    old = sim.create("chat", 40, age_seconds=OLD)
    young = sim.create("speech", 40)
    ids = old + young
    ports = [free_port() for _ in range(3)]
    replicas = Replicas(exporter, tmp_path, sim.url, 3, ports).start_all()
    try:
        replicas.procs[2].stop(signal.SIGKILL)  # an owner is down: its hand-offs must wait
        answers = register(replicas.procs[1].url, "chat", old) + register(replicas.procs[1].url, "speech", young)
        assert sum(a["accepted"] for a in answers) == len(ids)
        replicas.procs[1].stop(signal.SIGKILL)  # the replica that took them, right after its 202s
        for index in (1, 2):
            replicas.start(index)
        wait_for(lambda: replicas.pending() == 0, 60, what="outbox delivered after the restarts")
        assert each_tracked_once(replicas, ids, 3)
        wait_for(lambda: replicas.finished() == final_count(sim, ids) == len(ids), 60, what="every job finished")
        assert replicas.finished() == len(ids)
    finally:
        replicas.stop_all()


def test_resharding_3_to_4_moves_jobs_with_their_state_and_counts_nothing_twice(simulator, exporter, tmp_path):
    sim = simulator("--seed", "20", "--speed", "5")
    old = sim.create("chat", 60, age_seconds=OLD)
    young = sim.create("images", 30)
    listed = sim.create("speech", 40, age_seconds=OLD)  # in every replica's config: final at once
    ids = old + young + listed
    groups = f"  - {{kind: speech, group: cfg, ids: {json.dumps(listed)}}}\n"
    ports = [free_port() for _ in range(4)]
    three = Replicas(exporter, tmp_path, sim.url, 3, ports, groups=groups).start_all()
    register(three.procs[0].url, "chat", old)
    wait_for(lambda: three.pending() == 0 and three.finished() == len(old) + len(listed), 30,
             what="old and listed jobs counted")
    register(three.procs[2].url, "images", young)
    wait_for(lambda: three.pending() == 0, 30, what="young ones handed off")
    before = {i: Counter(p.samples("distribute_jobs_finished_total")) for i, p in three.procs.items()}
    three.stop_all()

    four = Replicas(exporter, tmp_path, sim.url, 4, ports, groups=groups)
    try:
        four.start_all()
        wait_for(lambda: four.pending() == 0, 60, what="resharding hand-offs delivered")
        assert each_tracked_once(four, ids, 4)
        moved = [i for i in ids if owner(i, 4) == 3]
        assert moved and four.holders(moved[0]) == [3]
        assert [i for i in listed if owner(i, 4) == 3]  # config ids the new replica owns: counted already
        wait_for(lambda: final_count(sim, ids) == len(ids), 60, what="simulator done")
        wait_for(lambda: four.finished() == len(ids), 60, what="every job finished")
        for index in range(3):  # counters never go down, and what was counted stays counted there only
            after = Counter(four.procs[index].samples("distribute_jobs_finished_total"))
            assert all(after[k] >= v for k, v in before[index].items())
        assert four.finished() == len(ids)  # no job counted twice, anywhere
        # the new replica counted only jobs that finished after the move, never one counted before
        counted_before = sum(sum(c.values()) for c in before.values())
        assert total(four.procs[3].samples("distribute_jobs_finished_total")) <= len(ids) - counted_before
        assert sum(total(p.samples("distribute_jobs")) for p in four.procs.values()) == len(ids)
    finally:
        four.stop_all()


def test_shrinking_3_to_2_the_removed_replica_hands_everything_over(simulator, exporter, tmp_path):
    sim = simulator("--seed", "24", "--speed", "5")
    old = sim.create("chat", 45, age_seconds=OLD)
    young = sim.create("speech", 30)
    ids = old + young
    ports = [free_port() for _ in range(3)]
    three = Replicas(exporter, tmp_path, sim.url, 3, ports).start_all()
    register(three.procs[2].url, "chat", old)
    wait_for(lambda: three.pending() == 0 and three.finished() == len(old), 30, what="old jobs counted")
    register(three.procs[1].url, "speech", young)
    wait_for(lambda: three.pending() == 0, 30, what="young ones handed off")
    assert any(owner(i, 3) == 2 for i in ids)
    three.stop_all()

    two = Replicas(exporter, tmp_path, sim.url, 2, ports)
    leaving = two.start(2, port=ports[2])  # index 2 of 2: owns nothing, hands all it holds away
    two.start_all()
    two.procs[2] = leaving
    wait_for(lambda: two.pending() == 0, 60, what="the leaving replica drained")
    for job_id in ids:
        assert two.holders(job_id) == [owner(job_id, 2)]
    wait_for(lambda: final_count(sim, ids) == len(ids), 60, what="simulator done")
    wait_for(lambda: two.finished() == len(ids), 60, what="every job finished, once, across the three")
    assert total(leaving.samples("distribute_jobs")) == 0


CREATE_BODY = {"model": "Kokoro", "input": "hello", "voice": "nora"}  # a short speech job


def through(url: str, path: str, body: dict) -> dict | None:
    """An application's request through the balanced proxy; None when it got no usable answer."""
    status, answer, _ = http("POST", f"{url}{path}", body)
    return json.loads(answer) if status == 200 else None


def test_jobs_created_and_polled_through_the_balanced_proxy_count_once(simulator, exporter, tmp_path):
    sim = simulator("--seed", "23", "--speed", "20")
    ports, proxy_ports = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    replicas = Replicas(exporter, tmp_path, sim.url, 3, ports, proxy_ports, poll="interval_seconds: 10, "
                        "max_interval_seconds: 20, not_found_grace_seconds: 30").start_all()
    balancer = Balancer(tmp_path / "nginx-proxy", proxy_ports)
    ids: list[str] = []
    try:
        def create(count: int) -> list[str]:
            made = [wait_for(lambda: through(balancer.url, "/async/speech/create", CREATE_BODY), 10,
                             what="a create through the proxy")["id"] for _ in range(count)]
            return made

        def poll_to_the_end(job_ids: list[str]) -> None:
            # As an application does: every unfinished job once per pass, passes well within the
            # poll interval, so the exporter's own polls stay pushed back (a loaded machine included).
            left = set(job_ids)

            def one_pass() -> bool:
                for job_id in sorted(left):
                    if (through(balancer.url, "/async/speech/result", {"id": job_id}) or {}).get("status") in FINAL:
                        left.discard(job_id)
                return not left
            wait_for(one_pass, 60, 0.2, what="every job final through the proxy")

        ids += create(30)
        poll_to_the_end(ids)
        # kill -9 of a replica right after creates through the balancer (some went through it)
        later = create(15)
        replicas.procs[1].stop(signal.SIGKILL)
        replicas.start(1)
        ids += later
        poll_to_the_end(later)
        wait_for(lambda: replicas.pending() == 0, 60, what="outboxes delivered")
        assert each_tracked_once(replicas, ids, 3)
        wait_for(lambda: replicas.finished() == len(ids), 60, what="every job counted finished")
        assert replicas.finished() == final_count(sim, ids) == len(ids)
        by_agent = json.loads(http("GET", f"{sim.url}/__admin/stats?agents=1")[1])["by_id_agent"]
        own = sum(n for job_id in ids for agent, n in by_agent.get(job_id, {}).items()
                  if agent.startswith("distribute-exporter/"))
        assert own / len(ids) <= 0.05, own
    finally:
        balancer.stop()
        replicas.stop_all()


def test_peers_present_basic_auth_and_a_pinned_client_certificate(simulator, tmp_path):
    """Under a web config with TLS, basic auth and required client certificates pinned by SAN, replicas
    reach each other with what shard.peer_* configures; the registration token still goes along."""
    sim = simulator("--seed", "22")
    ids = sim.create("speech", 12, age_seconds=OLD)
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    pki = make_pki(pki_dir)
    ports = [free_port(), free_port()]
    peers = [f"https://127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        folder = tmp_path / f"replica-{index}"
        folder.mkdir()
        for path in pki.values():
            (folder / path.name).write_bytes(path.read_bytes())
            (folder / path.name).chmod(0o600)
        web = web_config(folder, pki, {"peer": PASSWORD}, client_auth="RequireAndVerifyClientCert")
        data = json.loads(web.read_text())
        data["tls_server_config"]["client_allowed_sans"] = ["scraper"]
        web.write_text(json.dumps(data))
        (folder / "peer-password").write_text(PASSWORD)
        (folder / "peer-password").chmod(0o600)
        shard = (f"shard: {{index: {index}, count: 2, peers: {json.dumps(peers)}, "
                 "peer_basic_auth_username: peer, peer_basic_auth_password_file: peer-password, "
                 "peer_cert_file: client.crt, peer_key_file: client.key, peer_ca_file: ca.crt}\n"
                 "web: {config_file: web-config.yml}\n")
        config = write_config(folder, shard + config_text(sim.url, "  []\n"))
        procs.append(ExporterProc(config, env=ENV, port=ports[index], wait_ready=False))
    cert = (pki["client.crt"], pki["client.key"])

    def get(index: int, path: str) -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        context.load_cert_chain(str(cert[0]), str(cert[1]))
        request = urllib.request.Request(f"{peers[index]}{path}", headers={
            "Authorization": "Basic " + base64.b64encode(f"peer:{PASSWORD}".encode()).decode(),
            "X-Registration-Token": TOKEN, "Content-Type": "application/json"},
            data=json.dumps({"kind": "speech", "group": "g", "ids": ids}).encode() if path == "/api/v1/jobs" else None)
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    try:
        for index in range(2):
            wait_for(lambda: get(index, "/-/ready")[0] == 200, 30, what=f"replica {index} ready over mTLS")
        status, body = get(0, "/api/v1/jobs")
        assert status == 202 and json.loads(body)["handed_off"] == sum(owner(i, 2) == 1 for i in ids) > 0
        for job_id in ids:
            wait_for(lambda: get(owner(job_id, 2), f"/api/v1/jobs/{job_id}?local=true")[0] == 200, 30,
                     what="the owner tracks it")
            assert get(1 - owner(job_id, 2), f"/api/v1/jobs/{job_id}?local=true")[0] == 404
            assert get(0, f"/api/v1/jobs/{job_id}")[0] == 200  # routed to the owner over mTLS
        status, body = get(1, "/api/v1/jobs?limit=1000")  # the list merged from both, over mTLS
        assert status == 200 and json.loads(body)["missing_shards"] == []
        assert sorted(job["id"] for job in json.loads(body)["jobs"]) == sorted(ids)
        # the same request without the client certificate's basic auth is turned away by the web config
        assert https(f"{peers[1]}/-/ready", pki["ca.crt"], cert=cert)[0] == 401
    finally:
        for proc in procs:
            proc.stop()


def test_a_job_id_that_is_no_uuid_is_never_routed_to_a_peer(simulator, exporter, tmp_path):
    """Reads need no token, but a replica asks the owner with the token (and peer credentials): an
    id like `..%2F..%2F..%2Fapi%2Fv1%2Fhandoff` must not make it ask a peer for another route."""
    from urllib.parse import quote

    sim = simulator()
    ports = [free_port(), free_port()]
    replicas = Replicas(exporter, tmp_path, sim.url, 2, ports).start_all()
    variants = ("../" * 3 + "api/v1/" + "./" * n + "handoff" for n in range(64))
    sneaky = next(v for v in variants if owner(v, 2) == 1)
    for route in ("/api/v1/jobs/", "/jobs/"):
        status, body, _ = http("GET", f"{replicas.procs[0].url}{route}{quote(sneaky, safe='')}")
        assert status == 404 and b"pending" not in body, body
