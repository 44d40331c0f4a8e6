"""A lean HTTP/1.1 client for the one request the poller makes: a small JSON POST to one origin.

aiohttp spends about 115 µs of CPU on each such request on this kind of machine; the poller sends
thousands a second and needs none of its generality (redirects, cookies, multipart, proxies). This
client writes each request in one `write`, parses the answer in place (Content-Length, chunked, or
until close; gzip/deflate if a server sends it unasked) and keeps connections alive in a pool. A
request that fails on a reused connection before any answer arrived is sent once more on a new one
(the server closed an idle connection; the query changes nothing, so repeating it is safe).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from typing import Mapping
from urllib.parse import urlsplit

from exporter.polling.transport import ApiConnectError, ApiTimeout, BodyTooLarge, RawResponse

_MAX_HEAD = 64 * 1024  # status line and headers of one answer


class _Incomplete(Exception):
    """The buffer does not hold a whole answer yet."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[RawResponse] | None = None
        self.reusable = True
        self.eof = False
        self.used = False  # has answered a request before: a failure may be a stale keep-alive

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > self.max_body + _MAX_HEAD:
            self._fail(BodyTooLarge())
        else:
            self._try_complete()

    def eof_received(self) -> bool:
        self.eof = True
        self._try_complete()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof, self.reusable = True, False
        self._try_complete(exc)

    def send(self, request: bytes) -> asyncio.Future[RawResponse]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        self.transport.write(request)  # type: ignore[union-attr]
        return self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def _try_complete(self, lost: Exception | None = None) -> None:
        if self.waiter is None or self.waiter.done():
            return
        try:
            response = _parse(self.buffer, self.eof, self.max_body)
        except _Incomplete:
            if self.eof:
                self._fail(ConnectionResetError("connection closed before a whole answer")
                           if lost is None else lost)
            return
        except (BodyTooLarge, ValueError, zlib.error) as exc:
            self._fail(exc if isinstance(exc, BodyTooLarge) else ConnectionResetError(f"bad answer: {exc}"))
            return
        response, reusable = response
        self.reusable = self.reusable and reusable and not self.eof
        self.used = True
        self.waiter.set_result(response)


def _parse(buffer: bytearray, eof: bool, max_body: int) -> tuple[RawResponse, bool]:
    """One whole answer from the start of `buffer` and whether the connection may be reused;
    _Incomplete while more is to come. 1xx interim answers are skipped."""
    start = 0
    while True:
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffer) - start > _MAX_HEAD:
                raise ValueError("headers too long")
            raise _Incomplete()
        lines = bytes(buffer[start:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = int(rest[:3])
        if not version.startswith("HTTP/1.") or not 100 <= code <= 599:
            raise ValueError("not an HTTP/1.x status line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if 100 <= code < 200:
            start = end + 4
            continue
        break
    body_at = end + 4
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if code in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = _chunked(buffer, body_at, max_body)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > max_body:
            raise BodyTooLarge()
        if len(buffer) - body_at < length:
            raise _Incomplete()
        body = bytes(buffer[body_at:body_at + length])
    else:  # delimited by the end of the connection
        if not eof:
            raise _Incomplete()
        body, keep = bytes(buffer[body_at:]), False
    encoding = headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        body = _decompress(body, encoding, max_body)
    if len(body) > max_body:
        raise BodyTooLarge()
    return RawResponse(code, headers, body), keep


def _chunked(buffer: bytearray, at: int, max_body: int) -> bytes:
    parts, size = [], 0
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            raise _Incomplete()
        length = int(bytes(buffer[at:line_end]).split(b";", 1)[0].strip(), 16)
        at = line_end + 2
        if length == 0:
            # Trailers (usually none) end with an empty line.
            trailer_end = buffer.find(b"\r\n", at)
            while trailer_end > at:
                at = trailer_end + 2
                trailer_end = buffer.find(b"\r\n", at)
            if trailer_end < 0:
                raise _Incomplete()
            return b"".join(parts)
        size += length
        if size > max_body:
            raise BodyTooLarge()
        if len(buffer) < at + length + 2:
            raise _Incomplete()
        parts.append(bytes(buffer[at:at + length]))
        at += length + 2


def _decompress(body: bytes, encoding: str, max_body: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    data = inflater.decompress(body, max_body + 1)
    if len(data) > max_body:
        raise BodyTooLarge()
    return data


class Http11Transport:
    """The poller's default transport: keep-alive connections to the API's one origin."""

    def __init__(self, timeout: float, max_connections: int, max_body: int) -> None:
        self._timeout = timeout
        self._max_body = max_body
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._targets: dict[str, tuple[tuple[str, str, int], bytes]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> RawResponse:
        origin, head = self._target(url)
        request = b"".join((head, _header_block(headers), b"content-length: %d\r\n\r\n" % len(body), body))
        try:
            async with self._slots:
                async with asyncio.timeout(self._timeout):
                    return await self._exchange(origin, request)
        except TimeoutError:
            raise ApiTimeout("timed out") from None
        except OSError as exc:  # ssl.SSLError included
            raise ApiConnectError(type(exc).__name__) from None

    async def _exchange(self, origin: tuple[str, str, int], request: bytes) -> RawResponse:
        while True:
            conn = await self._connection(origin)
            self._busy.add(conn)
            try:
                response = await conn.send(request)
            except BodyTooLarge:
                raise
            except OSError:
                if conn.used and not conn.buffer:  # a keep-alive the server had closed: once more
                    conn.close()
                    continue
                raise
            except BaseException:  # cancelled or timed out mid-answer: the connection is unusable
                conn.close()
                raise
            finally:
                self._busy.discard(conn)
            if conn.reusable:
                self._idle.setdefault(origin, []).append(conn)
            else:
                conn.close()
            return response

    async def _connection(self, origin: tuple[str, str, int]) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.reusable and not conn.eof and conn.transport is not None and not conn.transport.is_closing():
                return conn
            conn.close()
        scheme, host, port = origin
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: _Connection(self._max_body), host, port, ssl=context)
        return conn  # type: ignore[return-value]

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes]:
        known = self._targets.get(url)
        if known is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ApiConnectError("unsupported URL")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            host_header = parts.netloc.rpartition("@")[2]
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = f"POST {path} HTTP/1.1\r\nhost: {host_header}\r\n".encode("latin-1")
            known = self._targets[url] = ((parts.scheme, parts.hostname, port), head)
        return known

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        for conn in list(self._busy):
            conn.close()
        self._idle.clear()


_header_cache: dict[tuple[tuple[str, str], ...], bytes] = {}


def _header_block(headers: Mapping[str, str]) -> bytes:
    key = tuple(headers.items())
    block = _header_cache.get(key)
    if block is None:
        if any("\r" in k or "\n" in k or "\r" in v or "\n" in v for k, v in key):
            raise ValueError("a header name or value holds a line break")
        block = "".join(f"{k}: {v}\r\n" for k, v in key).encode("latin-1")
        if len(_header_cache) > 16:  # a changed key replaces the old entry soon enough
            _header_cache.clear()
        _header_cache[key] = block
    return block
