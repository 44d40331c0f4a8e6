"""The shipper's request bodies (tracking/trace_proto.py) against the SDK's own encoding of the same
jobs' spans (trace_spans.py): the same message, decoded. And the shipper against a collector that
never answers: one export thread at most, and the shipper never waits past its deadline."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from exporter.config.model import Config, TracingConfig
from exporter.tracking import trace_export
from exporter.tracking.store import JOB_COLUMNS
from exporter.tracking.trace_export import TraceShipper, body_sender
from exporter.tracking.trace_owed import TraceStats
from exporter.tracking.trace_proto import TraceRequests
from exporter.tracking.trace_spans import job_spans
from otlp_receiver import Receiver
from helpers import wait_for


def row(**fields: Any) -> dict[str, Any]:
    job = dict.fromkeys(JOB_COLUMNS)
    job.update(id="3b241101-e2bb-4255-8caf-4136c566a962", kind="chat", grp="g", source="file:ids.txt",
               status="COMPLETED", model="Llama-3.1 8B", created=1700000000.25, finished=1700000042.5,
               ended=1700000043.0, prompt_tokens=12, completion_tokens=34, results=1,
               choices=json.dumps({"stop": 1, "length": 2}), first_tracked=1700000001.0, polls=3,
               history="QUEUED@1700000001.0;PROCESSING@1700000010.0;COMPLETED@1700000043.0",
               estimated_cost=0.0012, request_model="llama-3.1-8b",
               traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    job.update(fields)
    return job


JOBS = [
    row(),
    row(id="00000000-0000-4000-8000-000000000001", kind="images", status="ERROR", model=None, created=None,
        finished=None, estimated_cost=None, request_model=None, traceparent=None, choices=None,
        history="PROCESSING@1700000005;ERROR@1700000020"),
    row(id="00000000-0000-4000-8000-000000000002", kind="speech", choices=None, prompt_tokens=0,
        completion_tokens=0, history="COMPLETED@1700000050.5", traceparent=None),
]


def test_a_body_is_the_sdks_encoding_of_the_same_spans():
    resource = Resource.create({"service.name": "svc", "service.version": "1"})
    owed = [(job["id"], job) for job in JOBS] + [("00000000-0000-4000-8000-000000000009", None),
                                                  ("not-a-uuid", row(id="not-a-uuid"))]
    body, gone, traces = TraceRequests(resource).body(owed)
    assert traces == 3 and gone == ["00000000-0000-4000-8000-000000000009", "not-a-uuid"]
    sdk = encode_spans([span for job in JOBS for span in job_spans(job, resource)])
    ours = ExportTraceServiceRequest.FromString(body)
    assert ours == sdk
    spans = ours.resource_spans[0].scope_spans[0].spans
    assert len(spans) == 3 + 2 + 1  # roots, and the phases each job was seen in
    assert spans[0].links[0].trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"


def test_a_changed_job_changes_the_body():
    resource = Resource.create({"service.name": "svc"})
    one = TraceRequests(resource).body([(JOBS[0]["id"], JOBS[0])])[0]
    other = TraceRequests(resource).body([(JOBS[0]["id"], row(completion_tokens=35))])[0]
    assert one != other


def test_the_installed_sdk_lends_its_http_client_so_bodies_go_out_built_here():
    # Otherwise every trace would take the slower way (span objects and the SDK's encoder).
    assert body_sender(OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")) is not None
    assert body_sender(object()) is None


class Owed:
    """OwedTraces with a fixed batch that is never settled (the collector never takes it)."""

    def __init__(self) -> None:
        self.batch = [(job["id"], job) for job in JOBS]
        self.settled: list[str] = []

    async def take(self, limit: int, lease: float):
        return self.batch

    async def settle(self, job_ids):
        self.settled += job_ids

    async def trim(self, limit: int):
        return 0, len(self.batch)

    async def note_creates(self, notes):
        pass


@pytest.mark.timeout(120)
def test_a_collector_that_never_answers_holds_one_thread_and_never_the_shipper(monkeypatch):
    receiver = Receiver()
    receiver.mode = "hang"
    monkeypatch.setattr(trace_export, "EXPORT_DEADLINE", 0.5)
    # the SDK's own timeout far longer than the shipper's deadline: only the deadline ends the wait
    exporter = OTLPSpanExporter(endpoint=receiver.url + "/v1/traces", timeout=60)
    config = Config(tracing=TracingConfig(endpoint=receiver.url))
    stats = TraceStats()
    shipper = TraceShipper(Owed(), config, stats, exporter)

    async def rounds() -> list[int]:
        sent = [await shipper.ship_once()]
        assert shipper._inflight is not None and shipper._inflight.is_alive()  # back while it still hangs
        wait_for(lambda: receiver.requests == 1, 30, what="the export stuck on the collector")
        for _ in range(3):
            sent.append(await shipper.ship_once())
        return sent

    try:
        sent = asyncio.run(rounds())
        assert sent == [0, 0, 0, 0] and stats.outcomes["failed"] == 3 and stats.outcomes["exported"] == 0
        exports = [t for t in threading.enumerate() if t.name == "traces-export"]
        assert len(exports) == 1 and receiver.requests == 1  # no second export while the first hangs
    finally:
        receiver.stop()
        shipper.close()


def test_without_the_sdks_client_the_shipper_hands_the_sdk_the_same_spans():
    class SpanExporter:  # an exporter that lends no HTTP client: only the SDK's interface
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def export(self, spans):
            self.spans += spans
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    sdk = SpanExporter()
    shipper = TraceShipper(Owed(), Config(tracing=TracingConfig(endpoint="http://127.0.0.1:9")), TraceStats(), sdk)
    owed = [(job["id"], job) for job in JOBS] + [("00000000-0000-4000-8000-000000000009", None)]
    assert shipper._send is None
    assert shipper._build_and_export(owed) == (["00000000-0000-4000-8000-000000000009"], 3, True)
    assert encode_spans(sdk.spans) == ExportTraceServiceRequest.FromString(shipper.requests.body(owed)[0])
