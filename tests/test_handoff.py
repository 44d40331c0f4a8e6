"""Several replicas, the parts in between: the proxy's hooks driven directly against a real owner,
the peer config and flags, the Kubernetes wiring, and the outbox on a real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys

import pytest
import yaml

from exporter.app import Exporter
from exporter.cli import apply_peer_flags
from exporter.config import ConfigError, load_config, parse_config
from exporter.sources.handoff_sender import Sender
from exporter.sources.peers import PeerUnavailable, merge_pages
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.jobs import Job, TrackedJobs
from exporter.tracking.migrations import SCHEMA_VERSION
from exporter.tracking.outbox import HandoffStats, Outbox
from exporter.tracking.shard import owner
from exporter.tracking.store import StateStore
from helpers import REPO, ExporterProc, free_port, http, total, wait_for, write_config
from test_exporter import OLD, config_text
from test_replicas import AUTH, ENV


def result_body(sim_url: str, kind: str, job_id: str) -> bytes:
    status, body, _ = http("POST", f"{sim_url}/async/{kind}/result", {"id": job_id})
    assert status == 200, body
    return body


def test_proxy_callables_hand_creates_and_answers_to_the_owner(simulator, tmp_path):
    """The seam the proxy plugs into: Router.created / Router.observed, driven directly in-process
    (shard 0 of 2) against a real owner process (shard 1), with the local stand-in on both sides."""

    sim = simulator("--seed", "21")
    ids = sim.create("chat", 16, age_seconds=OLD)
    theirs = [i for i in ids if owner(i, 2) == 1][:3]
    mine = [i for i in ids if owner(i, 2) == 0][:1]
    ports = [free_port(), free_port()]
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    text = config_text(sim.url, "  []\n", poll="interval_seconds: 30, max_interval_seconds: 60, not_found_grace_seconds: 30")
    folder = tmp_path / "owner"
    folder.mkdir()
    other = ExporterProc(write_config(folder, text), "--shard.index", "1", "--shard.count", "2",
                         "--shard.peers", peers, env=ENV, port=ports[1])
    here = tmp_path / "here"
    here.mkdir()
    config = load_config(write_config(here, text.replace("path: state.db", f"path: {here / 'state.db'}")),
                         env=ENV)
    config = dataclasses.replace(config, shard=dataclasses.replace(config.shard, peers=tuple(peers.split(","))))

    def record(job_id: str) -> dict | None:
        status, body, _ = http("GET", f"{other.url}/api/v1/jobs/{job_id}?local=true", headers=AUTH)
        return json.loads(body) if status == 200 else None

    async def drive() -> None:
        exp = Exporter(config, listen=f"127.0.0.1:{ports[0]}", shard=(0, 2))
        await exp.start()
        try:
            router = exp.replication.router
            for job_id in theirs:
                await router.created(job_id, "chat", "g", "Llama-X")
            await asyncio.to_thread(wait_for, lambda: all(record(i) for i in theirs), 20, 0.05, "owner tracks")
            first = record(theirs[0])
            assert first["source"] == "proxy" and first["model"] == "Llama-X" and not first["final"]
            assert first["next_due"] >= first["first_tracked"] + 29  # the owner's first poll deferred
            for job_id in theirs:  # answers the application got: applied by the owner, counted once
                body = result_body(sim.url, "chat", job_id)
                router.observed(job_id, "chat", "g", "Llama-X", body)
                router.observed(job_id, "chat", "g", "Llama-X", body)  # seen twice (a retry)
            await asyncio.to_thread(wait_for, lambda: all(record(i)["final"] for i in theirs), 20, 0.05, "final")
            await asyncio.to_thread(wait_for, lambda: exp.replication.stats.pending == 0, 20, 0.05, "drained")
            assert total(other.samples("distribute_jobs_finished_total")) == len(theirs)
            assert sim.stats()["by_id"].get(theirs[0], 0) == 1  # only the request made here for the body
            # an id this shard owns stays here
            await router.created(mine[0], "chat", "g", "Llama-X")
            router.observed(mine[0], "chat", "g", "Llama-X", result_body(sim.url, "chat", mine[0]))
            await asyncio.to_thread(wait_for, lambda: exp.jobs.open.get(mine[0]) is None, 10, 0.05, "local final")
            local = await exp.jobs.lookup(mine[0])
            assert local is not None and local.final and local.source == "proxy"
            assert sum(exp.job_agg.finished.values()) == 1
            assert record(mine[0]) is None
        finally:
            await exp.stop()

    try:
        asyncio.run(drive())
    finally:
        other.stop()


def test_peer_config_errors_name_the_key(tmp_path):

    cases = {"shard: {count: 2, peers: ['http://a:1']}": "shard.peers: lists 1 URLs for 2 shards",
             "shard: {count: 2, peer_url_template: 'http://a:1'}": "shard.peer_url_template: must contain {index}",
             "shard: {count: 2, peers: ['a:1', 'b:1']}": "shard.peers[0]: must start with http",
             "shard: {count: 2, peers: ['http://a', 'http://b'], peer_url_template: 'http://{index}'}": "not both",
             "shard: {count: 2, peers: ['http://a', 'http://b'], peer_cert_file: c.pem}": "shard.peer_cert_file",
             "shard: {count: 2, peers: ['http://a', 'http://u:pw@b']}": "shard.peers[1]: must not hold"}
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_config(text, env=ENV)
    with pytest.raises(ConfigError, match="registration token"):
        parse_config("shard: {count: 2, peers: ['http://a', 'http://b']}", env={})
    ok = parse_config("shard: {count: 3, peer_url_template: 'http://e-{index}.e:9877/'}", env=ENV)
    assert ok.shard.peer_urls(3) == ("http://e-0.e:9877", "http://e-1.e:9877", "http://e-2.e:9877")


def test_peer_flags_are_checked(tmp_path):
    config = write_config(tmp_path, "jobs: []\n")
    for args, env, message in (
            (["--shard.count", "2", "--shard.peers", "http://a"], ENV, "--shard.peers: shard.peers: lists 1 URLs"),
            (["--shard.count", "2", "--shard.peer-url-template", "http://x"], ENV, "must contain {index}"),
            (["--shard.count", "2", "--shard.peer-url-template", "http://x-{index}"], {}, "registration token")):
        run = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(config), *args],
                             capture_output=True, text=True, cwd=REPO, timeout=30,
                             env={**os.environ, **env})
        assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_kubernetes_peers_and_the_balanced_proxy_service():
    base = REPO / "deploy" / "kubernetes"
    docs = [d for name in ("statefulset.yaml", "service.yaml") for d in yaml.safe_load_all((base / name).read_text()) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.split("=", 1) for a in container["args"])
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    template = args["--shard.peer-url-template"]
    assert template == f"http://{sts['metadata']['name']}-{{index}}.{headless['metadata']['name']}:{ports['metrics']}"
    count = int(args["--shard.count"])
    config = apply_peer_flags(parse_config("jobs: []", env=ENV), None, template, count)
    assert len(config.shard.peer_urls(count)) == count == sts["spec"]["replicas"]
    balanced = [s for s in services.values() if s["spec"].get("clusterIP") != "None"]
    assert len(balanced) == 1
    spec = balanced[0]["spec"]
    assert spec["selector"] == sts["spec"]["template"]["metadata"]["labels"]
    proxy = next(p for p in spec["ports"] if p["name"] == "proxy")
    assert proxy["port"] == 9878 and ports[proxy["targetPort"]] == 9878


def test_outbox_storage_migration_and_taking_over_state(tmp_path):
    """In-process, on a real SQLite file: a schema 3 file gains the outbox; entries are written with
    the batch, delivered or retried, re-targeted after a change of count; and a job taken over with
    its state is never counted again."""
    path = tmp_path / "state.db"
    store = StateStore(str(path))
    store.open()
    store.db.execute("DROP TABLE handoff")
    store.db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    store.close()
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(6)]

    async def run() -> None:
        store = StateStore(str(path))
        await store.call(store.open)
        assert store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        jobs = TrackedJobs(store, JobAggregates((1.0, 10.0)))
        await jobs.load()
        outbox = Outbox(store)
        for job_id in ids[:3]:
            jobs.queue_handoff(job_id, 1, json.dumps({"id": job_id}), 0.0)
        assert await store.call(outbox.count) == 0  # nothing before the batch is written
        await jobs.flush()
        due = await store.call(outbox.due, 1.0, 10)
        assert [e.job_id for e in due] == ids[:3] and {e.target for e in due} == {1}
        await store.call(outbox.later, [due[0].row], 100.0)
        assert [e.job_id for e in await store.call(outbox.due, 1.0, 10)] == ids[1:3]
        await store.call(outbox.done, [e.row for e in due[1:]])
        await store.call(outbox.resume, 1)
        assert [e.job_id for e in await store.call(outbox.due, 1.0, 10)] == ids[:1]
        mine = await store.call(outbox.retarget, lambda job_id: 0, 0)  # now shard 0 owns everything
        assert [e.job_id for e in mine] == ids[:1]

        # a final job taken over: in the gauge, closed, never in the finished counter
        final = Job(ids[3], "chat", "g", "api", status="COMPLETED", model="m", final=1, ended=5.0, first_tracked=1.0)
        assert await jobs.take_over(final) is True
        assert await jobs.take_over(final) is False  # a retry changes nothing
        # an unfinished one here, final in the hand-off: the final state wins, still uncounted
        await jobs.track([ids[4]], "chat", "g", "api", 1.0)
        assert await jobs.take_over(Job(ids[4], "chat", "g", "api", status="ERROR", model="m", final=1,
                                        ended=6.0, first_tracked=1.0)) is True
        assert ids[4] not in jobs.open
        # final here already: a hand-off of it unfinished is ignored
        assert await jobs.take_over(Job(ids[3], "chat", "g", "api", status="QUEUED", first_tracked=1.0)) is False
        await jobs.flush()
        assert sum(jobs.agg.finished.values()) == 0
        assert jobs.agg.jobs[("chat", "g", "m", "COMPLETED")] == 1 and jobs.agg.jobs[("chat", "g", "m", "ERROR")] == 1
        assert jobs.closed_total == 2
        # handed away again: gone from here, gauge and closed count down, counters untouched
        released = await jobs.release(ids[3])
        assert released is not None and released.final
        await jobs.flush()
        assert await store.call(store.get, ids[3]) is None and jobs.closed_total == 1
        assert jobs.agg.jobs[("chat", "g", "m", "COMPLETED")] == 0
        await asyncio.get_running_loop().run_in_executor(None, store.shutdown)

    asyncio.run(run())
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM handoff").fetchone()[0] == 1
    db.close()


def test_merge_pages_keeps_order_and_a_cursor_per_shard():
    def page(shard: int, created: list[int], next_cursor: str | None) -> dict:
        return {"jobs": [{"id": f"{shard}-{c}", "created": c} for c in created], "next_cursor": next_cursor}

    pages = {0: page(0, [1, 4, 7], "c0"), 1: page(1, [2, 3], None), 2: page(2, [5, 6, 8], "c2")}
    items, cursors = merge_pages(pages, 5, key=lambda j: j["created"], cursor_of=lambda j: f"after-{j['id']}",
                                 started={2: "s2"})
    assert [j["created"] for j in items] == [1, 2, 3, 4, 5]
    # shard 0 cut after 4, shard 1 done (its page taken whole, no next), shard 2 cut after 5
    assert cursors == {0: "after-0-4", 2: "after-2-5"}
    items, cursors = merge_pages(pages, 8, key=lambda j: j["created"], cursor_of=lambda j: "x")
    assert len(items) == 8 and cursors == {0: "c0", 2: "c2"}
    # a shard that gave nothing to this page goes on from where it started
    _, cursors = merge_pages({0: page(0, [1, 2], None), 1: page(1, [9], None)}, 2,
                             key=lambda j: j["created"], cursor_of=lambda j: "x", started={1: "s1"})
    assert cursors == {1: "s1"}


def test_sender_backs_off_per_owner_and_deletes_only_what_was_acknowledged(tmp_path):
    """The sender against a stand-in peer client (shard 1 down, shard 2 up), on a real state file
    and a fake clock: nothing is lost, an owner that is down costs one attempt per back-off, and
    its backlog goes at once when it answers again."""
    class Peers:
        def __init__(self) -> None:
            self.up = {2}
            self.calls: list[tuple[int, int]] = []
            self.received: dict[int, list[str]] = {1: [], 2: []}

        async def hand_off(self, shard: int, payloads: list[str]) -> int:
            self.calls.append((shard, len(payloads)))
            if shard not in self.up:
                raise PeerUnavailable(f"shard {shard}: ClientConnectorError")
            self.received[shard] += payloads
            return 200

    now = [1000.0]

    async def run() -> None:
        store = StateStore(str(tmp_path / "state.db"))
        await store.call(store.open)
        jobs = TrackedJobs(store, JobAggregates((1.0,)))
        await jobs.load()
        peers, stats = Peers(), HandoffStats()
        sender = Sender(store, Outbox(store), peers, stats, lambda: 30.0, jobs.flush, clock=lambda: now[0])
        for i in range(6):
            jobs.queue_handoff(f"id-{i}", 1 + i % 2, json.dumps({"n": i}), now[0])
        await jobs.flush()
        assert await sender.send_due() == 3  # shard 2's three; shard 1 is down
        assert len(peers.received[2]) == 3 and stats.pending == 3 and stats.outcomes["retried"] == 3
        jobs.queue_handoff("id-6", 1, json.dumps({"n": 6}), now[0])  # queued while shard 1 is down
        await jobs.flush()
        tried = len(peers.calls)
        assert await sender.send_due() == 0 and len(peers.calls) == tried  # postponed, not tried
        now[0] += 31  # past the longest back-off
        assert await sender.send_due() == 0 and len(peers.calls) == tried + 1  # one attempt, still down
        peers.up.add(1)
        now[0] += 31
        assert await sender.send_due() == 4 and stats.pending == 0
        assert sorted(json.loads(p)["n"] for p in peers.received[1]) == [0, 2, 4, 6]
        assert stats.outcomes["delivered"] == 7
        await asyncio.get_running_loop().run_in_executor(None, store.shutdown)

    asyncio.run(run())


def test_a_created_entry_delivered_again_after_the_job_finished_counts_nothing_twice(simulator, tmp_path):
    """Hand-off delivery is at least once: a `created` entry sent again (its acknowledgement lost)
    after the owner saw the job finish and wrote it must not track it afresh (a second count)."""
    from exporter.sources.handoff import entry

    sim = simulator("--seed", "22")
    job_id = next(i for i in sim.create("chat", 16, age_seconds=OLD) if owner(i, 2) == 1)
    ports = [free_port(), free_port()]
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    text = config_text(sim.url, "  []\n", poll="interval_seconds: 30, max_interval_seconds: 60, not_found_grace_seconds: 30")
    other = ExporterProc(write_config(tmp_path, text), "--shard.index", "1", "--shard.count", "2",
                         "--shard.peers", peers, env=ENV, port=ports[1])
    try:
        def send(item: str) -> None:
            status, body, _ = http("POST", f"{other.url}/api/v1/handoff", {"entries": [json.loads(item)]},
                                   headers=AUTH)
            assert status == 200 and json.loads(body) == {"applied": 1, "invalid": 0}, body

        created = entry("created", job_id, "chat", "g", "Llama-X", "proxy")
        send(created)
        send(entry("observed", job_id, "chat", "g", "Llama-X", "proxy", answer=result_body(sim.url, "chat", job_id)))
        send(created)  # the same entry again: acknowledged, changes nothing
        status, body, _ = http("GET", f"{other.url}/api/v1/jobs/{job_id}?local=true", headers=AUTH)
        assert status == 200 and json.loads(body)["final"], body
        assert total(other.samples("distribute_jobs_finished_total")) == 1
        assert total(other.samples("distribute_jobs")) == 1
    finally:
        other.stop()


def test_peer_requests_follow_no_redirect_so_the_token_reaches_only_peers():
    """A peer URL that answers with a redirect (an ingress sending elsewhere) must not carry the
    registration token or the peer password to wherever the redirect points."""
    from aiohttp import web

    from exporter.config import Secret
    from exporter.sources.peers import PeerAuth, PeerClient
    from exporter.tracking.ownership import Ring

    seen: list[dict[str, str]] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"applied": 0, "invalid": 0})

    async def run() -> int:
        other = web.AppRunner(web.Application())
        other.app.router.add_route("*", "/{tail:.*}", elsewhere)
        await other.setup()
        other_site = web.TCPSite(other, "127.0.0.1", 0)
        await other_site.start()
        target = f"http://localhost:{other_site._server.sockets[0].getsockname()[1]}"  # another origin

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(target + request.path_qs)

        peer = web.AppRunner(web.Application())
        peer.app.router.add_route("*", "/{tail:.*}", redirect)
        await peer.setup()
        peer_site = web.TCPSite(peer, "127.0.0.1", 0)
        await peer_site.start()
        ring = Ring(0, 2, ("http://127.0.0.1:1", f"http://127.0.0.1:{peer_site._server.sockets[0].getsockname()[1]}"))
        client = PeerClient(ring, lambda: PeerAuth(Secret("token-0123456789"), ("peer", Secret("peer-password"))), 5)
        try:
            return await client.hand_off(1, ['{"op": "registered"}'])
        finally:
            await client.close()
            await peer.cleanup()
            await other.cleanup()

    status = asyncio.run(run())
    assert seen == [] and status == 307  # not delivered: the sender keeps the entry and tries again
