"""A lean HTTP/1.1 client for the one request the poller makes: a small JSON POST to one origin.

aiohttp spends about 115 µs of CPU on each such request on this kind of machine; the poller sends
thousands a second and needs none of its generality (redirects, cookies, multipart, proxies). This
client writes each request in one `write` and keeps connections alive in a pool. The answer is parsed
by llhttp (`httptools`), incrementally as its bytes come: it is strict about framing (a signed or
overlong chunk size, two Content-Lengths, Transfer-Encoding with Content-Length, a bad status line
are errors, never guesses), so a hostile answer fails that one request (`BadAnswer`, counted as
`reason="protocol"`) and its connection is closed, never pooled again. gzip/deflate are inflated if
a server sends them unasked. A request that fails on a reused connection before any answer arrived
is sent once more on a new one (the server closed an idle connection; the query changes nothing,
so repeating it is safe). A request's deadline is one timer and its slot (`max_connections`) a
counter: asyncio.timeout() and asyncio.Semaphore cost this path more CPU than parsing the answer.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from typing import Mapping
from urllib.parse import urlsplit

import httptools

from exporter.polling.transport import ApiConnectError, ApiTimeout, BadAnswer, BodyTooLarge, RawResponse

_MAX_HEAD = 64 * 1024  # status line and headers of one answer (interim answers included)
_MAX_FIELDS = 128  # header fields of one answer


class _Answer:
    """llhttp's callbacks for one answer: what it holds so far and whether it is whole."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.parser = httptools.HttpResponseParser(self)  # one per connection: ready again after each answer
        self.reset()

    def reset(self) -> None:
        """Ready for the next answer on the connection."""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.fields = 0
        self.parts: list[bytes] = []
        self.size = 0
        self.headed = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None  # raised in a callback: llhttp reports it as its own error

    # -- llhttp's callbacks (an exception raised here stops the parse) --
    def on_message_begin(self) -> None:
        if self.complete:
            self._stop(BadAnswer("bytes after the answer"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        if self.fields > _MAX_FIELDS:
            self._stop(BadAnswer("too many header fields"))
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and int(length) > self.max_body:  # llhttp checked it is digits only
            self._stop(BodyTooLarge())
        self.headed = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            self._stop(BodyTooLarge())
        self.parts.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (100, 103): the real one follows
            self.headers, self.fields, self.headed = {}, 0, False
            return
        self.status, self.complete = status, True
        self.keep_alive = self.parser.should_keep_alive()

    def _stop(self, exc: BaseException) -> None:
        self.error = exc
        raise exc

    # -- the connection's side --
    def feed(self, data: bytes) -> None:
        """Parse `data`; raise BadAnswer or BodyTooLarge when the answer is not one to take."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise BadAnswer("an upgrade (101) instead of an answer") from None
        except httptools.HttpParserError as exc:
            if self.error is not None:
                raise self.error from None
            raise BadAnswer(str(exc) or type(exc).__name__) from None

    def until_close(self) -> bool:
        """Headers are in and neither Content-Length nor chunked framing: the body ends with the connection."""
        te = self.headers.get("transfer-encoding")
        chunked = te is not None and te.rsplit(",", 1)[-1].strip().lower() == "chunked"
        return self.headed and "content-length" not in self.headers and not chunked

    def response(self) -> RawResponse:
        body = b"".join(self.parts)
        encoding = self.headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            body = _decompress(body, encoding, self.max_body)
        return RawResponse(self.status or self.parser.get_status_code(), self.headers, body)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.answer: _Answer | None = None
        self.received = 0  # bytes of the current answer so far
        self.waiter: asyncio.Future[RawResponse] | None = None
        self.reusable = True
        self.eof = False
        self.used = False  # has answered a request before: a failure may be a stale keep-alive

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None or self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: not a connection to use again
            return
        self.received += len(data)
        try:
            answer.feed(data)
            if not answer.headed and self.received > _MAX_HEAD:
                raise BadAnswer("answer head too long")
        except (BadAnswer, BodyTooLarge) as exc:
            self._fail(exc)
            return
        if answer.complete:
            self._finish(answer, answer.keep_alive)

    def eof_received(self) -> bool:
        self.eof = True
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof, self.reusable = True, False
        self._ended(exc)

    def send(self, request: bytes) -> asyncio.Future[RawResponse]:
        self.waiter = asyncio.get_running_loop().create_future()
        if self.answer is None:
            self.answer = _Answer(self.max_body)
        else:
            self.answer.reset()
        self.received = 0
        self.transport.write(request)  # type: ignore[union-attr]
        return self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def timed_out(self) -> None:
        """The request's deadline passed before its whole answer."""
        if self.waiter is not None and not self.waiter.done():
            self._fail(ApiTimeout("timed out"))

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def _finish(self, answer: _Answer, keep_alive: bool) -> None:
        try:
            response = answer.response()
        except (BodyTooLarge, zlib.error) as exc:
            self._fail(exc if isinstance(exc, BodyTooLarge) else BadAnswer("bad compressed body"))
            return
        self.reusable = self.reusable and keep_alive and not self.eof
        self.used = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(response)

    def _ended(self, lost: Exception | None) -> None:
        answer = self.answer
        if self.waiter is None or self.waiter.done() or answer is None:
            return
        if answer.until_close() and not answer.complete:
            self.reusable = False
            self._finish(answer, False)
        else:
            self._fail(lost or ConnectionResetError("connection closed before a whole answer"))


def _decompress(body: bytes, encoding: str, max_body: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    data = inflater.decompress(body, max_body + 1)
    if len(data) > max_body:
        raise BodyTooLarge()
    return data


class _Slots:
    """At most `free` requests at once, the others waiting their turn in order: asyncio.Semaphore's
    job, with a free slot taken without a coroutine (the poller takes one per request)."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Wait for a slot (handed over by `release`)."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot while being cancelled: pass it on
            elif waiter in self.waiters:
                self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class Http11Transport:
    """The poller's default transport: keep-alive connections to the API's one origin."""

    def __init__(self, timeout: float, max_connections: int, max_body: int) -> None:
        self._timeout = timeout
        self._max_body = max_body
        self._slots = _Slots(max_connections)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._targets: dict[str, tuple[tuple[str, str, int], bytes]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> RawResponse:
        origin, head = self._target(url)
        request = b"".join((head, _header_block(headers), b"content-length: %d\r\n\r\n" % len(body), body))
        try:
            slots = self._slots
            if slots.free and not slots.waiters:  # the usual case, without a coroutine's cost
                slots.free -= 1
            else:
                await slots.wait()
            try:
                loop = asyncio.get_running_loop()
                return await self._exchange(origin, request, loop, loop.time() + self._timeout)
            finally:
                slots.release()
        except TimeoutError:
            raise ApiTimeout("timed out") from None
        except OSError as exc:  # ssl.SSLError included
            raise ApiConnectError(type(exc).__name__) from None

    async def _exchange(self, origin: tuple[str, str, int], request: bytes, loop: asyncio.AbstractEventLoop,
                        deadline: float) -> RawResponse:
        """Send `request` and wait for its answer until `deadline` (the loop's clock). A timer, not
        asyncio.timeout(): on the poller's path the latter cost more CPU than parsing the answer."""
        while True:
            conn = self._idle_connection(origin) or await self._connect(origin, deadline)
            self._busy.add(conn)
            timer = loop.call_at(deadline, conn.timed_out)
            try:
                response = await conn.send(request)
            except (BodyTooLarge, BadAnswer, ApiTimeout):
                conn.close()  # never pooled again: what it sends next cannot be trusted
                raise
            except OSError:
                if conn.used and not conn.received:  # a keep-alive the server had closed: once more
                    conn.close()
                    continue
                raise
            except BaseException:  # cancelled mid-answer: the connection is unusable
                conn.close()
                raise
            finally:
                timer.cancel()
                self._busy.discard(conn)
            if conn.reusable:
                self._idle.setdefault(origin, []).append(conn)
            else:
                conn.close()
            return response

    def _idle_connection(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.reusable and not conn.eof and conn.transport is not None and not conn.transport.is_closing():
                return conn
            conn.close()
        return None

    async def _connect(self, origin: tuple[str, str, int], deadline: float) -> _Connection:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        async with asyncio.timeout_at(deadline):
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
