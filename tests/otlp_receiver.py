"""A real OTLP/HTTP trace receiver for tests: POST /v1/traces, protobuf decoded with
opentelemetry-proto. It can be up (200), down (503) or hanging (never answers)."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse


class Receiver:
    def __init__(self) -> None:
        self.mode = "up"  # up | down | hang
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._released = threading.Event()  # set at stop: hanging requests end
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.handle(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            self.requests += 1
            mode = self.mode
        if mode == "hang":
            self._released.wait(600)
            return
        if handler.path != "/v1/traces" or mode == "down":
            handler.send_response(503 if mode == "down" else 404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if handler.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        spans = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans.append({"trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                  "parent": span.parent_span_id.hex(), "name": span.name,
                                  "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                                  "status": span.status.code, "kind": span.kind,
                                  "attributes": {a.key: _value(a.value) for a in span.attributes},
                                  "links": [(l.trace_id.hex(), l.span_id.hex()) for l in span.links],
                                  "resource": resource})
        with self._lock:
            self.spans.extend(spans)
            self.headers.append(dict(handler.headers))
        answer = ExportTraceServiceResponse().SerializeToString()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-protobuf")
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def roots(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if not s["parent"]]

    def stop(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None
