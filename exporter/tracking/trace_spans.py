"""A finished job as OpenTelemetry spans: one root span (the GenAI semantic conventions' names),
one child per status phase the exporter saw. Needs the `otel` extra (imported only with tracing on).

Every id comes from the job id: the trace id is its 128 bits (the UUID without dashes), so anyone
holding a job id finds its trace; span ids are hashes of the job id, so a trace sent again after a
crash repeats the same spans, recognisably.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from exporter import __version__
from exporter.tracking.job import transitions

# gen_ai.operation.name per kind: chat completions are "chat"; images and speech come from a prompt
# through a generative model, which the conventions call "generate_content".
OPERATIONS = {"chat": "chat", "images": "generate_content", "speech": "generate_content"}
SCOPE = InstrumentationScope("distribute-exporter", __version__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def trace_id(job_id: str) -> int:
    """The job id's 128 bits (a UUID: 32 hex digits without its dashes)."""
    return int(job_id.replace("-", ""), 16)


def span_id(job_id: str, part: str) -> int:
    """A non-zero 64-bit id derived from the job id and the span's place in the trace."""
    value = int.from_bytes(hashlib.sha256(f"{job_id}/{part}".encode()).digest()[:8], "big")
    return value or 1


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def root_name(job: dict[str, Any]) -> str:
    """`{gen_ai.operation.name} {model}`, as the GenAI conventions name a span (the operation alone
    when the model is unknown)."""
    operation = OPERATIONS.get(job["kind"], job["kind"])
    return f"{operation} {job['model']}" if job["model"] else operation


def attributes(job: dict[str, Any], request_model: str | None = None) -> dict[str, Any]:
    """The root span's attributes (README, Traces, says what each means)."""
    attrs: dict[str, Any] = {"gen_ai.operation.name": OPERATIONS.get(job["kind"], job["kind"])}
    if request_model:
        attrs["gen_ai.request.model"] = request_model
    if job["model"]:
        attrs["gen_ai.response.model"] = job["model"]
    if job["kind"] == "chat":
        attrs["gen_ai.usage.input_tokens"] = int(job["prompt_tokens"] or 0)
        attrs["gen_ai.usage.output_tokens"] = int(job["completion_tokens"] or 0)
        choices = job["choices"]
        reasons = json.loads(choices) if isinstance(choices, str) else (choices or {})
        if reasons:
            attrs["gen_ai.response.finish_reasons"] = sorted(reasons)
    attrs.update({"distribute.job.id": job["id"], "distribute.job.kind": job["kind"],
                  "distribute.job.group": job["grp"], "distribute.job.source": job["source"],
                  "distribute.job.status": job["status"], "distribute.job.polls": int(job["polls"] or 0),
                  "distribute.job.results": int(job["results"] or 0)})
    if job["estimated_cost"] is not None:
        attrs["distribute.job.estimated_cost"] = float(job["estimated_cost"])
    return attrs


def job_spans(job: dict[str, Any], resource: Resource) -> list[ReadableSpan]:
    """The spans of one final job (a row of the jobs table, JOB_COLUMNS names, with the create's
    `request_model` and `traceparent` when the proxy saw it), root first."""
    request_model = job.get("request_model")
    job_id = job["id"]
    tid = trace_id(job_id)
    start = job["created"] if job["created"] is not None else job["first_tracked"]
    end = job["finished"] if job["finished"] is not None else (job["ended"] or start)
    end = max(end, start)
    root = SpanContext(tid, span_id(job_id, "root"), is_remote=False, trace_flags=_SAMPLED)
    status = (Status(StatusCode.ERROR, "the job ended in ERROR") if job["status"] == "ERROR"
              else Status(StatusCode.UNSET))
    spans = [ReadableSpan(root_name(job), context=root, resource=resource, attributes=attributes(job, request_model),
                          kind=SpanKind.CLIENT, status=status, start_time=_ns(start), end_time=_ns(end),
                          links=creator_link(job.get("traceparent")), instrumentation_scope=SCOPE)]
    for index, (phase, phase_start, phase_end) in enumerate(phases(job["history"], start, end)):
        context = SpanContext(tid, span_id(job_id, f"phase/{index}"), is_remote=False, trace_flags=_SAMPLED)
        spans.append(ReadableSpan(phase, context=context, parent=root, resource=resource,
                                  attributes={"distribute.job.status": phase}, kind=SpanKind.INTERNAL,
                                  start_time=_ns(phase_start), end_time=_ns(phase_end),
                                  instrumentation_scope=SCOPE))
    return spans


def creator_link(traceparent: str | None) -> list[Link]:
    """The application's span that created the job (its create request's traceparent, checked when
    kept: trace_owed.TRACEPARENT), as a link: the two traces point at each other."""
    if not traceparent:
        return []
    _, trace, span, flags = traceparent.split("-")
    context = SpanContext(int(trace, 16), int(span, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16) & 1))
    return [Link(context, {"distribute.link": "create"})]


def phases(history: str, start: float, end: float) -> list[tuple[str, float, float]]:
    """(status, from, to) of each non-final status the exporter saw, within [start, end]: a phase
    runs until the next status was seen; the first from the job's start (it was in it before the
    exporter's first look), the last until the job's end (the API's `finished`)."""
    changes = transitions(history)
    out: list[tuple[str, float, float]] = []
    for i, change in enumerate(changes):
        if change["status"] in _ENDS:
            continue
        begin = start if not out else min(max(change["at"], start), end)
        following = changes[i + 1] if i + 1 < len(changes) else None
        finish = end if following is None or following["status"] in _ENDS else following["at"]
        out.append((change["status"], begin, min(max(finish, begin), end)))
    return out


_ENDS = frozenset(("COMPLETED", "ERROR", "NOT_FOUND"))
