"""The proxy's fast path: the common request forwarded at the byte level, on asyncio protocols.

Most of what applications send is small: a JSON body with a `Content-Length`, over HTTP/1.1
keep-alive. Such a request is read whole, its header lines are passed on as they came (minus the
hop-by-hop ones and the group header; `Host` is the API's, `Via` is added), and the API's answer goes
back with its own framing (`Content-Length`, chunked or until close) byte for byte, as it comes.
Through aiohttp's server and client the same exchange costs several times the CPU (request and
response objects, header multidicts, timers), which an application feels as added latency.

Any other request hands its connection to the aiohttp path (proxy.py) for the rest of its life
(see proxy_wire.py for what is taken here). The promises are the same on both paths: the answer is
the API's, a create's id is stored before its answer goes back, a result's answer is observed after
it went back, nothing is retried, and 502/504 come at once or after `proxy.timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol

from exporter.config import ProxyConfig
from exporter.metrics.proxy import ProxyStats
from exporter.sources.proxy_upstream import Pool, Upstream
from exporter.sources.proxy_wire import (MAX_HEAD, OBSERVED_PATH, SMALL_BODY, Answer,
                                         BoundedCopy, Chunked, ChunkError, Request, failure, parse_answer, parse_request, upstream_head)


class Forwarding(Protocol):
    """What the fast path needs of the proxy (proxy.py's Proxy)."""

    stats: ProxyStats
    observe_max: int

    def settings(self) -> ProxyConfig: ...

    def base_url(self) -> str: ...

    async def see(self, endpoint: str, kind: str, group: str, request_body: bytes | None, answer: bytes,
                  encoding: str, traceparent: str | None = None) -> None: ...


_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})


class Exchange:
    """One request's answer as it comes from the API: parsed just enough to find its end, passed to
    the application as it comes, or held whole while a create's id is stored."""

    def __init__(self, client: Client, upstream: Upstream, method: bytes, hold: bool, keep: int) -> None:
        self.client, self.upstream, self.method = client, upstream, method
        self.hold, self.keep = hold, keep
        self.buffer = bytearray()
        self.answer: Answer | None = None
        loop = asyncio.get_running_loop()
        self.headed: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.left = 0  # "length": body bytes still to come
        self.chunked: Chunked | None = None
        self.held: list[bytes] | None = None
        self.held_size = 0
        self.kept: BoundedCopy | None = None
        self.last_data = time.monotonic()
        self.got_bytes = False
        self.reusable = False
        self.broken = False

    def from_api(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        self.got_bytes = True
        if self.answer is None:
            self.buffer += data
            data = self._head()
            if self.answer is None or not data:
                return
        if self.done.done():
            self._spoiled()  # bytes after the end of the answer
            return
        self._body(data)

    def _head(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._fail_upstream()
                return b""
            answer = parse_answer(bytes(self.buffer[:end]), self.method)
            rest = bytes(self.buffer[end + 4:])
            self.buffer.clear()
            if answer is None:
                self._fail_upstream()
                return b""
            if answer.status >= 200:
                break
            self.buffer += rest  # an interim answer (100, 103): not passed on
        self.answer = answer
        self.headed.set_result(None)
        if answer.status != 200:
            self.hold, self.keep = False, 0
        self.held = [] if self.hold else None
        self.kept = BoundedCopy(self.keep) if self.keep and answer.framing in ("length", "close") else None
        self.left = answer.length
        if answer.framing == "chunked":
            self.chunked = Chunked(self.keep)
        self._out(answer.head)
        if answer.framing == "none" or answer.framing == "length" and not self.left:
            self._end(answer.reusable)  # nothing more to come: the next read may never happen
        return rest

    def _body(self, data: bytes) -> None:
        answer = self.answer
        assert answer is not None
        if answer.framing == "length":
            extra = len(data) > self.left
            if extra:
                data = data[:self.left]
            self.left -= len(data)
            if self.kept is not None:
                self.kept.add(data)
            self._out(data)
            if not self.left:
                self._end(answer.reusable)
            if extra:
                self._spoiled()  # more than announced
        elif answer.framing == "chunked":
            assert self.chunked is not None
            try:
                used = self.chunked.feed(data)
            except ChunkError:
                self._fail_upstream()
                return
            if used < 0:
                used = -1 - used
                self._out(data[:used])
                self._end(answer.reusable and used == len(data))
                return
            self._out(data)
        else:  # until the API closes
            if self.kept is not None:
                self.kept.add(data)
            self._out(data)

    def _out(self, data: bytes) -> None:
        if not data:
            return
        if self.held is not None:
            self.held.append(data)
            self.held_size += len(data)
            if self.held_size <= self.client.forwarding.observe_max + MAX_HEAD:
                return
            data, self.held = b"".join(self.held), None  # too long for a create's answer: stream on
        self.client.write(data)

    def _end(self, reusable: bool) -> None:
        self.reusable = reusable
        if not self.done.done():
            self.done.set_result(None)

    def api_ended(self) -> None:
        if self.answer is not None and self.answer.framing == "close" and not self.done.done():
            self._end(False)
        elif not self.done.done():
            self._fail_upstream()

    def too_slow(self) -> None:
        if not self.headed.done():
            self.headed.set_exception(TimeoutError())

    def _spoiled(self) -> None:
        """The answer is whole but the connection is not one to use again."""
        self.reusable = False
        self.upstream.close()

    def _fail_upstream(self) -> None:
        self.broken = True
        self.upstream.close()
        if not self.headed.done():
            self.headed.set_exception(ConnectionError("the API broke off its answer"))
            self.headed.exception()
        if not self.done.done():
            self.done.set_result(None)

    def body(self) -> bytes | None:
        """The answer's body as the hooks read it (decoded from chunks), when kept whole."""
        if self.chunked is not None:
            return self.chunked.decoded()
        return self.kept.value() if self.kept is not None else None


class Client(asyncio.Protocol):
    """One application connection: requests taken one at a time (pipelined ones wait their turn)."""

    def __init__(self, forwarding: Forwarding, pools: Callable[[str], Pool],
                 fallback: Callable[[], asyncio.Protocol], connections: set[Client]) -> None:
        self.forwarding = forwarding
        self.pools = pools
        self.fallback = fallback
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.closed = False
        self.last_active = time.monotonic()
        self.exchange: Exchange | None = None
        self.write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_active = time.monotonic()  # not idle while a request arrives
        if not self.busy:
            self._next()
        elif len(self.buffer) > MAX_HEAD + SMALL_BODY and self.transport is not None:
            self.transport.pause_reading()  # pipelined requests wait their turn, in bounded memory

    def _next(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._hand_over()
            return
        parsed = parse_request(bytes(self.buffer[:end]))
        if parsed is None:
            self._hand_over()
            return
        request, size = parsed
        if len(self.buffer) < end + 4 + size:
            return
        request.body = bytes(self.buffer[end + 4:end + 4 + size])
        del self.buffer[:end + 4 + size]
        self.busy = True
        asyncio.get_running_loop().create_task(self._serve(request))

    def _hand_over(self) -> None:
        """The rest of this connection goes to the aiohttp path."""
        assert self.transport is not None
        self.connections.discard(self)
        protocol = self.fallback()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if self.buffer:
            protocol.data_received(bytes(self.buffer))
            self.buffer.clear()

    async def _serve(self, request: Request) -> None:
        close = request.close
        try:
            close = await self._forward(request) or close
        finally:
            self.busy = False
            self.last_active = time.monotonic()
            if close or self.closed:
                self.close()
            else:
                if self.transport is not None:
                    self.transport.resume_reading()
                if self.buffer:
                    self._next()

    async def _forward(self, request: Request) -> bool:
        """Forward one request; True when the connection must close after it."""
        fwd = self.forwarding
        started = time.monotonic()
        cfg = fwd.settings()
        match = OBSERVED_PATH.match(request.path.split("?", 1)[0]) if request.method == b"POST" else None
        kind, endpoint = (match[1], match[2]) if match else ("", "other")
        if len(request.body) > cfg.max_body_bytes:
            return self._fail(endpoint, 413, "Payload Too Large", "too_large",
                              f"request body over {cfg.max_body_bytes} bytes")
        pool = self.pools(fwd.base_url())
        exchange: Exchange | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.timeout_seconds  # for the answer's head, connecting included
        head = upstream_head(request, pool.host_header, pool.prefix) + request.body
        try:
            for attempt in (1, 2):
                upstream = await pool.connection(cfg.timeout_seconds, fresh=attempt == 2)
                exchange = Exchange(self, upstream, request.method, endpoint == "create",
                                    fwd.observe_max if endpoint != "other" else 0)
                upstream.exchange = self.exchange = exchange
                if self.write_paused:  # a pipelined request while the application still reads slowly
                    upstream.pause()
                assert upstream.transport is not None
                upstream.transport.write(head)
                # A timer rather than asyncio.timeout(): a tenth of this path's CPU went to the latter.
                timer = loop.call_at(deadline, exchange.too_slow)
                try:
                    await exchange.headed
                    break
                except ConnectionError:
                    # The API closed a pooled connection just as it was reused, before a byte came
                    # back: an idempotent request is sent once more on a new one (as aiohttp does).
                    if not (upstream.reused and not exchange.got_bytes and request.method in _IDEMPOTENT
                            and attempt == 1 and not self.closed):
                        raise
                finally:
                    timer.cancel()
        except TimeoutError:
            self.exchange = None
            if exchange is not None:
                exchange.upstream.close()
            return self._fail(endpoint, 504, "Gateway Timeout", "timeout",
                              f"no answer from the API within {cfg.timeout_seconds:g}s")
        except (OSError, ConnectionError) as exc:
            self.exchange = None
            if exchange is not None:
                exchange.upstream.close()
            if self.closed:
                return True  # the application hung up (counted): the API connection was let go for it
            return self._fail(endpoint, 502, "Bad Gateway", "connect",
                              f"the API could not be reached ({type(exc).__name__})")
        answer = exchange.answer
        assert answer is not None
        seconds = time.monotonic() - started
        counted = exchange.held is None
        if counted:  # the head went back already
            fwd.stats.answered(endpoint, str(answer.status), seconds)
        finished = await self._until_done(exchange, cfg.timeout_seconds)
        self.exchange = upstream.exchange = None
        if not finished:
            if exchange.held is None:
                if not self.closed:  # (an application that hung up was counted as such)
                    self.forwarding.stats.error("upstream_body")
                return True  # headers are out: a cut connection is the only signal left
            return self._fail(endpoint, 502, "Bad Gateway", "upstream_body", "the API broke off its answer")
        if not counted:
            fwd.stats.answered(endpoint, str(answer.status), seconds)
        if exchange.reusable and not exchange.broken:
            pool.give_back(upstream)
        else:
            upstream.close()
        if exchange.held is not None:  # a create's whole answer: its id is stored before it goes back
            await self._see(endpoint, kind, request, exchange, answer)
            self.write(b"".join(exchange.held))
        elif exchange.keep:
            await self._see(endpoint, kind, request, exchange, answer)
        return answer.framing == "close" or exchange.broken

    async def _until_done(self, exchange: Exchange, timeout: float) -> bool:
        """Wait for the answer's end; False when the API stopped sending for `timeout` or broke off
        (the application's connection is cut: the answer's head may be out already)."""
        while not exchange.done.done():
            quiet = time.monotonic() - exchange.last_data
            left = timeout if exchange.upstream.paused else max(timeout - quiet, 0.01)
            await asyncio.wait((exchange.done,), timeout=left)
            # Silence counts only while the proxy reads: a paused read waits for the application.
            if (not exchange.done.done() and not exchange.upstream.paused
                    and time.monotonic() - exchange.last_data >= timeout):
                exchange.upstream.close()
                break
        return exchange.done.done() and not exchange.broken

    async def _see(self, endpoint: str, kind: str, request: Request, exchange: Exchange, answer: Answer) -> None:
        body = exchange.body()
        if body is not None:
            await self.forwarding.see(endpoint, kind, request.group, request.body, body, answer.encoding, request.traceparent)

    def _fail(self, endpoint: str, status: int, reason: str, error: str, message: str) -> bool:
        self.forwarding.stats.error(error)
        self.forwarding.stats.answered(endpoint, str(status), None)
        self.write(failure(status, reason, f"distribute-exporter proxy: {message}"))
        return False

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            if not self.closed:
                self.closed = True
            return
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.upstream.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.last_data = time.monotonic()  # the wait was the application's, not the API's
            self.exchange.upstream.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        if self.busy:
            self.forwarding.stats.error("client")  # the application hung up before its answer was out
            exchange = self.exchange
            if exchange is not None and exchange.hold:
                self.resume_writing()  # a create's answer is read to its end all the same: its id is stored
            elif exchange is not None:
                exchange.upstream.close()  # the API stops working (and billing) for nobody, as on aiohttp's path

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
