"""A batch of finished jobs as one OTLP/HTTP request body (ExportTraceServiceRequest, protobuf),
written straight from the jobs' rows. Needs the `otel` extra (imported only with tracing on).

The spans are exactly those of trace_spans.py (names, ids, times, attributes, status, links; a test
decodes both and compares them), but built without the SDK's span objects and its encoder, which
spend about ten times the CPU per trace on validating, copying and grouping what is known here to be
one resource, one scope and plain values (bench/NOTES.md, tracing).
"""

from __future__ import annotations

from typing import Any, Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource

from exporter.tracking.trace_spans import SCOPE, _ns, attributes, phases, root_name, span_id, trace_id

# The flags the SDK's encoder writes: whether the parent (a link's span) is remote is known.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_ERROR = 2  # Status.STATUS_CODE_ERROR


def set_value(target: AnyValue, value: Any) -> None:
    """One attribute value (the kinds trace_spans.attributes writes: text, numbers, lists of text)."""
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        for item in value:
            set_value(target.array_value.values.add(), item)


def set_attributes(target: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        pair = target.add()
        pair.key = key
        set_value(pair.value, value)


class TraceRequests:
    """Request bodies for one resource (the service) and the exporter's instrumentation scope."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def body(self, owed: Iterable[tuple[str, dict[str, Any] | None]]) -> tuple[bytes, list[str], int]:
        """(the request body, ids that cannot have a trace, traces in the body)."""
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        set_attributes(resource_spans.resource.attributes, dict(self.resource.attributes))
        resource_spans.schema_url = self.resource.schema_url
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = SCOPE.name
        scope_spans.scope.version = SCOPE.version or ""
        gone: list[str] = []
        traces = 0
        for job_id, row in owed:
            try:
                ids = trace_id(row["id"]).to_bytes(16, "big") if row is not None else None
            except (ValueError, OverflowError):  # not a UUID: no 128 bits to be a trace id
                ids = None
            if ids is None:  # retired or untracked before export, or not an id a trace can have
                gone.append(job_id)
                continue
            add_job(scope_spans.spans, row, ids)  # type: ignore[arg-type]
            traces += 1
        return request.SerializeToString(), gone, traces


def add_job(spans: Any, job: dict[str, Any], tid: bytes) -> None:
    """The root span and one child per status phase, as trace_spans.job_spans describes them."""
    job_id = job["id"]
    start = job["created"] if job["created"] is not None else job["first_tracked"]
    end = job["finished"] if job["finished"] is not None else (job["ended"] or start)
    end = max(end, start)
    root_id = span_id(job_id, "root").to_bytes(8, "big")
    root = spans.add()
    root.trace_id, root.span_id, root.name = tid, root_id, root_name(job)
    root.kind = Span.SPAN_KIND_CLIENT
    root.start_time_unix_nano, root.end_time_unix_nano = _ns(start), _ns(end)
    set_attributes(root.attributes, attributes(job, job.get("request_model")))
    if job["status"] == "ERROR":
        root.status.code, root.status.message = _ERROR, "the job ended in ERROR"
    else:
        root.status.SetInParent()
    root.flags = _HAS_IS_REMOTE
    if job.get("traceparent"):
        _, trace, span, _flags = job["traceparent"].split("-")
        link = root.links.add()
        link.trace_id, link.span_id = bytes.fromhex(trace), bytes.fromhex(span)
        set_attributes(link.attributes, {"distribute.link": "create"})
        link.flags = _HAS_IS_REMOTE | _IS_REMOTE
    for index, (phase, phase_start, phase_end) in enumerate(phases(job["history"], start, end)):
        child = spans.add()
        child.trace_id, child.span_id, child.parent_span_id = tid, span_id(job_id, f"phase/{index}").to_bytes(8, "big"), root_id
        child.name, child.kind = phase, Span.SPAN_KIND_INTERNAL
        child.start_time_unix_nano, child.end_time_unix_nano = _ns(phase_start), _ns(phase_end)
        set_attributes(child.attributes, {"distribute.job.status": phase})
        child.status.SetInParent()
        child.flags = _HAS_IS_REMOTE
