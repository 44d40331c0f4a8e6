"""Traces with several replicas on one real PostgreSQL: whichever replica makes a job final owes its
trace in the same transaction, the replicas share the sending, and a real OTLP/HTTP receiver gets
exactly one trace per job (tests/otlp_receiver.py decodes what is sent)."""

from __future__ import annotations

from collections import Counter

import pytest

from helpers import free_port, holds_for, total, wait_for
from otlp_receiver import Receiver
from test_exporter import OLD
from test_pg_replicas import ENV, finished_of, job_facts, register, replica_config, truth_finished

pytest.importorskip("opentelemetry.sdk")


@pytest.fixture
def receiver():
    started = Receiver()
    yield started
    started.stop()


def test_two_replicas_send_one_trace_per_final_job(simulator, exporter, receiver, tmp_path, pg_db):
    url, password_file = pg_db
    sim = simulator("--seed", "23")
    procs = []
    for i in range(2):
        config = replica_config(tmp_path / f"r{i}", sim.url, url, password_file)
        config.write_text(config.read_text() + f"tracing: {{endpoint: '{receiver.url}', service_name: pg-traced}}\n")
        procs.append(exporter(config, env=ENV, port=free_port()))
    ids = sim.create("chat", 24, age_seconds=OLD) + sim.create("speech", 8, age_seconds=OLD)
    assert register(procs[0].url, "chat", ids[:24]) == (24, 0)
    assert register(procs[1].url, "speech", ids[24:]) == (8, 0)
    truth = truth_finished(sim, ids)
    wait_for(lambda: finished_of(job_facts(procs[0].url)) == truth, 60, 0.3, what="every job final")

    def exported() -> float:
        return sum(total(p.samples("distribute_exporter_traces_total"), outcome="exported") for p in procs)
    wait_for(lambda: exported() == len(ids), 60, 0.3, what="every trace exported")
    roots = Counter(s["trace_id"] for s in receiver.roots())
    assert roots == Counter({i.replace("-", ""): 1 for i in ids})  # one root span per job, none twice
    # nothing more goes out later (a batch sent twice by two replicas would show here)
    holds_for(lambda: len(receiver.roots()) == len(ids) and exported() == len(ids), 3, what="no trace sent twice")
    wait_for(lambda: all(total(p.samples("distribute_exporter_traces_pending")) == 0 for p in procs), 30,
             what="nothing owed")
