"""The client of the async API's result endpoints.

Defaults live in `ApiConfig` (config.py). Errors form a small hierarchy under ApiError, each naming
the `reason` label it is counted under. The HTTP stack is a Transport: the lean HTTP/1.1 client of
http11.py by default (a third of aiohttp's CPU per request), aiohttp or httpx as alternatives, or
any object with the same `post` for tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Mapping
from email.utils import parsedate_to_datetime

from exporter import KINDS
from exporter.api.results import InvalidBody, JobResult, parse_result
from exporter.polling.http11 import Http11Transport
from exporter.polling.transport import (ApiConnectError, ApiError, ApiTimeout, BadAnswer, BodyTooLarge,  # noqa: F401
                                        RawResponse, Transport)


# ---- errors ------------------------------------------------------------------------------------

class Unauthorized(ApiError):
    reason = "unauthorized"


class RateLimited(ApiError):
    reason = "rate_limited"

    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"rate limited (Retry-After {retry_after})")
        self.retry_after = retry_after


class HttpError(ApiError):
    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code
        self.reason = "http_5xx" if code >= 500 else "http_4xx"


class BadBody(ApiError):
    reason = "invalid_body"


class NotFound(Exception):
    """A well-formed 404: the API does not (yet) know the id. Not an error of the API."""


# ---- transports --------------------------------------------------------------------------------

class AiohttpTransport:
    """aiohttp's ClientSession with keep-alive, a total timeout and a cap on what is read."""

    def __init__(self, timeout: float, max_connections: int, max_body: int) -> None:
        import aiohttp  # imported here so that an httpx-only setup never loads it

        self._aiohttp = aiohttp
        self._max_body = max_body
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300),
            skip_auto_headers=("User-Agent",), auto_decompress=True)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> RawResponse:
        aiohttp = self._aiohttp
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                data = await response.content.read(self._max_body + 1)
                if len(data) > self._max_body:
                    raise BodyTooLarge()
                return RawResponse(response.status, response.headers, data)
        except asyncio.TimeoutError:
            raise ApiTimeout("timed out") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            if isinstance(exc, aiohttp.ServerTimeoutError):
                raise ApiTimeout("timed out") from None
            raise ApiConnectError(type(exc).__name__) from None

    async def close(self) -> None:
        await self._session.close()


class HttpxTransport:
    """httpx's AsyncClient; `transport` lets tests swap the network out (httpx.MockTransport)."""

    def __init__(self, timeout: float, max_connections: int, max_body: int,
                 transport: object | None = None) -> None:
        import httpx

        self._httpx = httpx
        self._max_body = max_body
        self._client = httpx.AsyncClient(
            timeout=timeout, transport=transport,  # type: ignore[arg-type]
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> RawResponse:
        httpx = self._httpx
        try:
            async with self._client.stream("POST", url, content=body, headers=headers) as response:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > self._max_body:
                        raise BodyTooLarge()
                return RawResponse(response.status_code, response.headers, bytes(data))
        except httpx.TimeoutException:
            raise ApiTimeout("timed out") from None
        except httpx.TransportError as exc:
            raise ApiConnectError(type(exc).__name__) from None

    async def close(self) -> None:
        await self._client.aclose()


# ---- the client ----------------------------------------------------------------------------------

@dataclass(slots=True)
class Answer:
    """A result request's outcome as the metrics see it: HTTP code (or 'error') and seconds taken."""

    code: str
    seconds: float


class ApiClient:
    """Asks `/async/<kind>/result` about one id at a time."""

    def __init__(self, base_url: str, api_key: str | None, transport: Transport, user_agent: str = "distribute-exporter") -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"content-type": "application/json", "accept": "application/json",
                         "user-agent": user_agent}
        if api_key:
            self._headers["authorization"] = api_key  # the raw key, as the API documents
        self._transport = transport
        self._urls = {kind: f"{self._base}/async/{kind}/result" for kind in KINDS}

    async def fetch(self, kind: str, job_id: str) -> tuple[JobResult, Answer]:
        """The job's current state. Raises NotFound or an ApiError; each carries `.answer`."""
        started = time.perf_counter()
        code = "error"
        try:
            raw = await self._transport.post(self._urls[kind], _request_body(job_id),
                                             self._headers)
            code = str(raw.status)
            return parse_result(raw.body, kind) if raw.status == 200 else _refuse(raw), \
                Answer(code, time.perf_counter() - started)
        except (ApiError, NotFound) as exc:
            exc.answer = Answer(code, time.perf_counter() - started)  # type: ignore[attr-defined]
            raise
        except (BodyTooLarge, InvalidBody) as exc:
            error = BadBody(str(exc) or "body too large")
            error.answer = Answer(code, time.perf_counter() - started)  # type: ignore[attr-defined]
            raise error from None

    async def close(self) -> None:
        await self._transport.close()


def _refuse(raw: RawResponse) -> JobResult:
    """Raise the error (or NotFound) that a non-200 answer means."""
    if raw.status == 404:
        # Only the API's own 404 means "unknown id": a proxy's or a wrong base_url's 404 page must not
        # quietly turn every tracked job into NOT_FOUND.
        if _is_message(raw.body):
            raise NotFound()
        raise HttpError(404)
    if raw.status in (401, 403):
        raise Unauthorized(f"HTTP {raw.status}")
    if raw.status == 429:
        raise RateLimited(parse_retry_after(raw.headers.get("retry-after")))
    raise HttpError(raw.status)


def _is_message(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("message"), str)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


_PLAIN_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def _request_body(job_id: str) -> bytes:
    """`{"id": ...}` as json.dumps writes it, without json for ids that need no escaping (all real ones)."""
    if _PLAIN_ID.fullmatch(job_id):
        return b'{"id": "%s"}' % job_id.encode()
    return json.dumps({"id": job_id}).encode()


def make_transport(http_client: str, timeout: float, max_connections: int, max_body: int) -> Transport:
    if http_client == "httpx":
        return HttpxTransport(timeout, max_connections, max_body)
    if http_client == "aiohttp":
        return AiohttpTransport(timeout, max_connections, max_body)
    return Http11Transport(timeout, max_connections, max_body)
