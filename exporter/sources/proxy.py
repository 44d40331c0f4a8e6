"""The pass-through proxy: a second listener that forwards every request to `api.base_url` and
hands what it sees of creates and results to two small callables (ProxyHooks).

The application is never held back by the exporter: its requests go out on their own connection
pool, never through the poller's rate limiter, back-off or pause, with no retries on its behalf.
Bodies stream through in chunks; only the small JSON bodies of creates and results are kept (up to
a bound) to be read, and the bytes forwarded are always the ones received.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from exporter.api.ids import is_uuid4, normalise
from exporter.config import ProxyConfig
from exporter.metrics.proxy import ProxyStats
from exporter.sources.proxy_fast import Client
from exporter.sources.proxy_openai import OpenAICall, OpenAICounts, json_object, openai_kind
from exporter.sources.proxy_limits import Listener, QuietServer
from exporter.sources.proxy_upstream import Pools
from exporter.sources.proxy_wire import (CLIENT_IDLE_SECONDS, GROUP_HEADER, HOP_BY_HOP, MAX_FIELDS, OBSERVED_PATH,
                                         SMALL_BODY, BoundedCopy)

log = logging.getLogger("distribute.proxy")

_GROUP = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,127}$")  # printable ASCII: a label value
SHUTDOWN_SECONDS = 2.0  # in-flight requests get this long to finish at shutdown
_REQUEST_DROP = frozenset({"host", GROUP_HEADER.lower()})


@dataclass(frozen=True)
class ProxyHooks:
    """What the proxy tells the rest of the exporter. Neither may hold up or change an answer.

    created(job_id, kind, group, model): awaited before a create's answer goes back; when it returns
        the id is durably stored. Never raises.
    observed(job_id, kind, group, model, body): a 200 answer of /async/{kind}/result went back to
        the application; queued, applied off the application's path. Never raises, never blocks.
    traced(job_id, model, traceparent): what a job's trace keeps of its create (the requested model,
        the application's W3C traceparent); only with tracing on. Never raises, never blocks.
    """

    created: Callable[[str, str, str, str | None], Awaitable[None]]
    observed: Callable[[str, str, str, str | None, bytes], None]
    traced: Callable[[str, str | None, str | None], None] | None = None


class BodyTooLarge(Exception):
    """The application's request body went over proxy.max_body_bytes."""


class _Tee:
    """Streams a body through, keeping a copy of it while it stays within `keep` bytes."""

    def __init__(self, content: aiohttp.StreamReader, limit: int, keep: int) -> None:
        self.content, self.limit = content, limit
        self.size = 0
        self.copy = BoundedCopy(keep)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.content.readany()
            if not chunk:
                return
            self.size += len(chunk)
            if self.size > self.limit:
                raise BodyTooLarge()
            self.copy.add(chunk)
            yield chunk

    def kept(self) -> bytes | None:
        return self.copy.value()


def _connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    return {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}


def forwardable(headers: CIMultiDictProxy[str], drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """The fields of `headers` an intermediary passes on: no hop-by-hop field, none in `drop`
    (lower case)."""
    skip = HOP_BY_HOP | drop
    if "Connection" in headers:  # rare in HTTP/1.1 (keep-alive is the default): only then a set more
        skip = skip | _connection_named(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower not in skip and not lower.startswith("proxy-"):
            out.add(name, value)
    return out


def _json_field(body: bytes | None, name: str) -> Any:
    return (json_object(body) or {}).get(name)


def _target(request: web.BaseRequest) -> str:
    """The path and query to ask the API for. An absolute-form target (RFC 9112 3.2.2: a client
    told to use this listener as its HTTP proxy) names a host: only its path and query are used,
    the API is always `api.base_url`, never a host the request names."""
    target = request.raw_path
    return target if target.startswith("/") else request.rel_url.raw_path_qs


def _readable(body: bytes, encoding: str, limit: int) -> bytes | None:
    """The answer as the hooks read it: inflated when the API compressed it (the application asked
    for gzip, as most HTTP libraries do); None when it cannot be read within `limit` bytes. The
    application always gets the bytes as the API sent them."""
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib framing, told by the header
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        return None
    return data if inflater.eof and len(data) <= limit else None


def close_idle(connections: set[Client]) -> None:
    """Close keep-alive connections from applications that sent nothing for CLIENT_IDLE_SECONDS."""
    now = time.monotonic()
    for client in [c for c in connections if not c.busy and now - c.last_active > CLIENT_IDLE_SECONDS]:
        client.close()


def _failure(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"message": message}).encode(),
                        content_type="application/json")


class Proxy:
    """The listener and the forwarding of one request."""

    def __init__(self, hooks: ProxyHooks, stats: ProxyStats, settings: Callable[[], ProxyConfig],
                 base_url: Callable[[], str], observe_max: int) -> None:
        self.hooks = hooks
        self.stats = stats
        self.settings = settings
        self.base_url = base_url
        self.observe_max = observe_max
        self.port = 0
        self._listener: Listener | None = None
        self._fallback: web.Server | None = None
        self._clients: set[Client] = set()
        self._pools = Pools()
        self._sweeper: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.openai = OpenAICounts(stats, lambda body, encoding: _readable(body, encoding, self.observe_max))

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        # No decompression and no headers of its own (User-Agent, Accept...): what the application
        # sends and gets passes as it is. Keep-alive connections are shared by all applications.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, ttl_dns_cache=60),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        # The aiohttp path, for connections the fast path hands over (proxy_fast.py). No request
        # body is decompressed: the bytes forwarded are the bytes received.
        self._fallback = QuietServer(self.handle, stats=self.stats, handler_cancellation=False, access_log=None,
                                     max_line_size=65536, max_field_size=65536, max_headers=MAX_FIELDS,
                                     auto_decompress=False)
        fallback = self._fallback
        # Our own accept loop: past proxy.max_connections, new connections wait in the listen backlog.
        self._listener = Listener.bind(host, port, factory=lambda: Client(self, self._pools, fallback, self._clients,
                                                                           self._release),
                                       ssl_context=ssl_context, limit=lambda: self.settings().max_connections,
                                       stats=self.stats)
        self._listener.start()
        self.port = self._listener.port
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="proxy-idle")

    def _release(self) -> None:
        if self._listener is not None:
            self._listener.release()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(15)
            close_idle(self._clients)

    async def stop(self) -> None:
        """Stop listening; requests in flight get SHUTDOWN_SECONDS to finish (their answers go back
        and are applied), then every connection is closed."""
        if self._listener is not None:
            self._listener.close()
            deadline = time.monotonic() + SHUTDOWN_SECONDS
            while any(c.busy for c in self._clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            for client in list(self._clients):
                client.close()
        if self._fallback is not None:
            await self._fallback.shutdown(SHUTDOWN_SECONDS)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._session is not None:
            await self._session.close()
        self._pools.close()

    # -- one request ---------------------------------------------------------------------------------
    def openai_call(self, method: str | bytes, target: str, group: str,
                    request_body: bytes | None) -> OpenAICall | None:
        """A call of an OpenAI-compatible route, to count once answered (both paths); else None."""
        kind = openai_kind(method, target)
        return None if kind is None else self.openai.call(kind, self._group(group), lambda: request_body)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        call = self.openai_call(request.method, request.path, request.headers.get(GROUP_HEADER, ""), None)
        response = await self._forward(request, call)
        if call is not None:  # a streamed answer (StreamResponse) is counted without its body
            whole = response.body if isinstance(response, web.Response) else None
            call.answered(response.status, whole if isinstance(whole, bytes) else None,
                          response.headers.get("Content-Encoding", "identity").strip().lower())
        return response

    async def _forward(self, request: web.BaseRequest, call: OpenAICall | None) -> web.StreamResponse:
        started = time.monotonic()
        cfg = self.settings()
        match = OBSERVED_PATH.match(request.path) if request.method == "POST" else None
        kind, endpoint = (match[1], match[2]) if match else ("", "other")
        length = request.content_length
        if length is not None and length > cfg.max_body_bytes:
            return self._fail(endpoint, 413, "too_large", f"request body over {cfg.max_body_bytes} bytes")
        tee = _Tee(request.content, cfg.max_body_bytes, self.observe_max if match or call else 0)
        if call is not None:
            call.request_body = tee.kept
        data: bytes | AsyncIterator[bytes] | None = None
        if length is not None and length <= SMALL_BODY:
            data = await request.read()  # small and whole: sent in one piece, no stream to drive
            tee.copy.add(data)
        elif request.body_exists:
            data = tee.chunks()
        headers = forwardable(request.headers, _REQUEST_DROP)
        version = request.version
        headers.add("Via", "1.1 distribute-exporter" if version == HttpVersion11
                    else f"{version.major}.{version.minor} distribute-exporter")
        url = URL(self._base(self.base_url()) + _target(request), encoded=True)
        assert self._session is not None
        try:
            async with asyncio.timeout(cfg.timeout_seconds):
                upstream = await self._session.request(
                    request.method, url, headers=headers, allow_redirects=False, compress=None, data=data,
                    timeout=self._timeout(cfg.timeout_seconds))
        except BodyTooLarge:
            return self._fail(endpoint, 413, "too_large", f"request body over {cfg.max_body_bytes} bytes")
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            return self._fail(endpoint, 504, "timeout", f"no answer from the API within {cfg.timeout_seconds:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            if tee.size > cfg.max_body_bytes:
                return self._fail(endpoint, 413, "too_large", f"request body over {cfg.max_body_bytes} bytes")
            return self._fail(endpoint, 502, "connect", f"the API could not be reached ({type(exc).__name__})")
        seconds = time.monotonic() - started
        async with upstream:
            answer_length = upstream.content_length
            if endpoint == "create" and upstream.status == 200 or (
                    answer_length is not None and answer_length <= SMALL_BODY and request.method != "HEAD"):
                return await self._whole(request, upstream, endpoint, kind, tee, seconds)
            # A result answered chunked or long: streamed back as it comes, applied once it went back whole.
            observe = (kind, tee) if endpoint == "result" and upstream.status == 200 else None
            return await self._relay(request, upstream, endpoint, seconds, observe=observe)

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def _base(base_url: str) -> str:
        return base_url.rstrip("/")

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def _timeout(seconds: float) -> aiohttp.ClientTimeout:
        # One immutable timeout object per setting, not one per request.
        return aiohttp.ClientTimeout(total=None, sock_read=seconds)

    def _group(self, value: str) -> str:
        value = value.strip()
        return value if _GROUP.match(value) else self.settings().default_group

    def _fail(self, endpoint: str, status: int, reason: str, message: str) -> web.Response:
        self.stats.error(reason)
        self.stats.answered(endpoint, str(status), None)
        return _failure(status, f"distribute-exporter proxy: {message}")

    async def _whole(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, endpoint: str, kind: str,
                     tee: _Tee, seconds: float) -> web.StreamResponse:
        """A small answer (and every 200 of a create): read it whole, let the hooks see it (a create's
        id is stored first), send the same bytes back in one piece."""
        parts: list[bytes] = []
        size = 0
        try:
            while size <= self.observe_max:
                chunk = await upstream.content.readany()
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return self._fail(endpoint, 502, "upstream_body", "the API broke off its answer")
        body = b"".join(parts)
        if size > self.observe_max:  # longer than announced or than a create's answer can be: stream on
            return await self._relay(request, upstream, endpoint, seconds, first=body)
        if upstream.status == 200 and endpoint != "other":
            await self._seen(request, endpoint, kind, tee, body, upstream.headers)
        self.stats.answered(endpoint, str(upstream.status), seconds)
        return web.Response(status=upstream.status, reason=upstream.reason, headers=forwardable(upstream.headers),
                            body=body)

    async def _seen(self, request: web.BaseRequest, endpoint: str, kind: str, tee: _Tee, body: bytes,
                    headers: CIMultiDictProxy[str]) -> None:
        await self.see(endpoint, kind, request.headers.get(GROUP_HEADER, ""), tee.kept(), body,
                       headers.get("Content-Encoding", "identity").strip().lower(), request.headers.get("traceparent"))

    async def see(self, endpoint: str, kind: str, group: str, request_body: bytes | None, answer: bytes,
                  encoding: str, traceparent: str | None = None) -> None:
        """Let the hooks see a 200 answer of a create or result (both paths); never raises."""
        readable = _readable(answer, encoding, self.observe_max)
        if readable is None:
            return
        try:
            await self._tell_hooks(endpoint, kind, self._group(group), request_body, readable, traceparent)
        except Exception:  # the hooks promise not to raise; the answer goes back whatever they do
            self.stats.error("commit" if endpoint == "create" else "observe")
            log.exception("proxy hook failed on POST /async/%s/%s", kind, endpoint)

    async def _tell_hooks(self, endpoint: str, kind: str, group: str, request_body: bytes | None,
                          body: bytes, traceparent: str | None = None) -> None:
        if endpoint == "create":
            job_id, model = _json_field(body, "id"), _json_field(request_body, "model")
            if isinstance(job_id, str) and is_uuid4(job_id):
                model = model[:128] if isinstance(model, str) and model else None
                if self.hooks.traced is not None:
                    self.hooks.traced(normalise(job_id), model, traceparent)
                await self.hooks.created(normalise(job_id), kind, group, model)
            return
        job_id = _json_field(request_body, "id")
        if isinstance(job_id, str) and is_uuid4(job_id):
            self.hooks.observed(normalise(job_id), kind, group, None, body)

    async def _relay(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, endpoint: str,
                     seconds: float, first: bytes = b"",
                     observe: tuple[str, _Tee] | None = None) -> web.StreamResponse:
        """Stream the upstream's answer back as it is (the application may hang up on the way).
        With `observe` (kind, request body), a copy within observe_max goes to the hooks after."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=forwardable(upstream.headers))
        self.stats.answered(endpoint, str(upstream.status), seconds)
        kept = BoundedCopy(self.observe_max if observe else 0)
        chunk = first
        if not await self._send(response.prepare(request)):
            return response
        while True:
            kept.add(chunk)
            if chunk and not await self._send(response.write(chunk)):
                return response
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                self.stats.error("upstream_body")  # headers are out: a cut connection is the only signal left
                if request.transport is not None:
                    request.transport.close()
                return response
            if not chunk:
                break
        if not await self._send(response.write_eof()):
            return response
        body = kept.value()
        if observe is not None and body is not None:
            await self._seen(request, endpoint, observe[0], observe[1], body, upstream.headers)
        return response

    async def _send(self, step: Awaitable[Any]) -> bool:
        """Write to the application; False when it has hung up."""
        try:
            await step
        except (ConnectionError, aiohttp.ClientError, OSError):
            self.stats.error("client")
            return False
        return True
