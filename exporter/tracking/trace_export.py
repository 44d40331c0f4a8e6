"""Sends the traces owed (trace_owed.py, trace_queue.py) to the OTLP/HTTP collector: in batches,
on a thread of its own, with back-off while the collector is down. Polling and the proxy never wait
on it: all it shares with them is the state thread, for a few short queries per batch.

Needs the `otel` extra (the app imports this module only with tracing.endpoint set).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from exporter import __version__
from exporter.config.model import Config
from exporter.tracking.trace_owed import CreateNotes, OwedTraces, TraceStats
from exporter.tracking.trace_proto import TraceRequests
from exporter.tracking.trace_spans import job_spans

log = logging.getLogger("distribute.traces")

# Traces per export request (a few spans each; under 2 MB of protobuf): while traces are owed faster
# than a request a second, each request carries more, so what one costs is shared by more traces.
BATCH = 1024
IDLE_SECONDS = 1.0  # how often to look for newly owed traces when none are waiting
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0
# With PostgreSQL, how long a batch taken by one replica is left to it (longer than an export's
# timeout and the SDK's retries): if that replica dies, another sends it after this.
LEASE = 120.0
# How long the shipper waits on one export (the SDK's own timeout, OTEL_EXPORTER_OTLP_TIMEOUT, is 10 s
# by default; its retries end within it): past this the batch counts as failed, and no other export
# starts while that thread is still stuck.
EXPORT_DEADLINE = 60.0


def signal_url(endpoint: str) -> str:
    """The traces URL of an OTLP/HTTP base URL (used as it is when it already names /v1/traces)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def make_exporter(config: Config) -> OTLPSpanExporter:
    """The SDK's exporter; whatever the config leaves unset comes from the OTEL_EXPORTER_OTLP_*
    variables (timeout, compression, certificates; headers without tracing.headers_file)."""
    assert config.tracing.endpoint is not None
    headers = {k: v.reveal() for k, v in config.tracing_headers} or None
    # The SDK logs each failed batch itself (with the collector's answer); the shipper says once
    # when the collector goes away and once when it is back.
    logging.getLogger("opentelemetry.exporter.otlp.proto.http").setLevel(logging.CRITICAL)
    return OTLPSpanExporter(endpoint=signal_url(config.tracing.endpoint), headers=headers)


def body_sender(exporter: Any) -> Callable[[bytes], bool] | None:
    """The SDK exporter's own HTTP client, to send a request body built by trace_proto.py: endpoint,
    headers, timeout, compression, certificates and retries stay as the SDK resolves them from the
    config and OTEL_EXPORTER_OTLP_*. It is not a public interface of the SDK: where a version lacks
    it, None, and the shipper hands the SDK span objects instead (the same traces, more CPU)."""
    export = getattr(getattr(exporter, "_client", None), "export", None)
    if not callable(export):
        return None
    return lambda body: bool(getattr(export(body), "success", False))


class TraceShipper:
    def __init__(self, owed: OwedTraces, config: Config, stats: TraceStats,
                 exporter: Any | None = None) -> None:
        self.owed = owed
        self.max_pending = config.tracing.max_pending
        self.stats = stats
        self.exporter = exporter or make_exporter(config)
        # Resource.create adds OTEL_RESOURCE_ATTRIBUTES and the SDK's own attributes.
        self.resource = Resource.create({"service.name": config.tracing.service_name,
                                         "service.version": __version__})
        self.requests = TraceRequests(self.resource)
        self._send = body_sender(self.exporter)
        self._backoff = 0.0
        self._inflight: threading.Thread | None = None  # the thread of the last export
        self.notes = CreateNotes()  # the proxy's creates (trace_owed.py), written at each round

    async def run(self) -> None:
        while True:
            try:
                sent = await self.ship_once()
            except Exception as exc:  # the state unreadable for a moment: say so, try again later
                log.error("traces: cannot read the owed traces: %s", exc)
                sent, self._backoff = 0, min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
            if self._backoff:
                await asyncio.sleep(self._backoff)
            elif sent < BATCH:
                await asyncio.sleep(IDLE_SECONDS)

    async def ship_once(self) -> int:
        """Trim the backlog, export the oldest batch; answer how many traces were exported."""
        notes = self.notes.take()
        if notes:
            await self.owed.note_creates(notes)
        dropped, self.stats.pending = await self.owed.trim(self.max_pending)
        if dropped:
            self.stats.outcomes["dropped"] += dropped
            log.warning("traces: %d owed traces dropped, the oldest first (tracing.max_pending is %d)",
                        dropped, self.max_pending)
        if self._inflight is not None and self._inflight.is_alive():
            # The last export outlived EXPORT_DEADLINE (a collector that takes the connection and
            # never answers, past the SDK's timeout): still one thread at most, and nothing new.
            self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
            return 0
        owed = await self.owed.take(BATCH, LEASE)
        if not owed:
            self._backoff = 0.0  # nothing waits: the next owed trace goes out at the next round
            return 0
        # Building the spans and encoding them is most of a trace's CPU: it runs on the export's
        # thread too, so that the event loop is never held for a whole batch.
        self._inflight, done = in_daemon_thread(self._build_and_export, owed)
        try:
            gone, exported, ok = await asyncio.wait_for(asyncio.shield(done), EXPORT_DEADLINE)
        except asyncio.TimeoutError:
            gone, exported, ok = [], 0, False
        if not ok:
            failed = len(owed) - len(gone)
            self.stats.outcomes["failed"] += failed
            if not self._backoff:
                log.warning("traces: the collector did not take %d traces; retrying with back-off", failed)
            self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
            ids = gone
        else:
            if self._backoff:
                log.info("traces: the collector takes traces again")
            self._backoff = 0.0
            ids = [job_id for job_id, _ in owed]
        if ids:
            await self.owed.settle(ids)
        self.stats.outcomes["dropped"] += len(gone)
        self.stats.outcomes["exported"] += exported if ok else 0
        self.stats.pending = max(0, self.stats.pending - len(ids))
        return exported if ok else 0

    def _build_and_export(self, owed: list[tuple[str, dict[str, Any] | None]]) -> tuple[list[str], int, bool]:
        """On the export's thread: the batch's request built and sent. Answers (ids whose trace cannot be
        built, traces sent, whether the collector took them)."""
        if self._send is not None:
            body, gone, traces = self.requests.body(owed)
            return gone, traces, not traces or self._send(body)
        gone = []
        traces, spans = 0, []
        for job_id, row in owed:
            one = self._spans(row) if row is not None else None
            if one is None:  # retired or untracked before export, or not a job id a trace can have
                gone.append(job_id)
            else:
                traces += 1
                spans.extend(one)
        ok = not spans or self.exporter.export(spans) == SpanExportResult.SUCCESS
        return gone, traces, ok

    def _spans(self, row: dict[str, Any]) -> list[Any] | None:
        try:
            return job_spans(row, self.resource)
        except ValueError:  # an id that is not a UUID has no 128 bits to be a trace id
            return None

    def close(self) -> None:
        """Stop without waiting on a collector that does not answer (what is owed stays owed)."""
        try:
            self.exporter.shutdown()
        except Exception:  # noqa: BLE001 - shutting down; nothing to report to
            pass


def in_daemon_thread(fn: Any, *args: Any) -> "tuple[threading.Thread, asyncio.Future[Any]]":
    """Run `fn` on a daemon thread of its own: an export stuck on a collector that never answers
    (for as long as the OTLP timeout and the SDK's retries last) neither holds the event loop nor
    keeps the process from exiting at shutdown. One thread per batch: a few per second at most."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(*args), None)
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop closed meanwhile (shutdown): nobody waits
            pass

    thread = threading.Thread(target=work, name="traces-export", daemon=True)
    thread.start()
    return thread, future


__all__ = ["TraceShipper", "signal_url"]
