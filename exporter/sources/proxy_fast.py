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
from typing import Awaitable, Callable

from exporter.sources.proxy_answer import Exchange
from exporter.sources.proxy_forwarding import Forwarding
from exporter.sources.proxy_limits import REFUSALS, Deadline, HandedOver
from exporter.sources.proxy_openai import OpenAICall
from exporter.sources.proxy_upstream import Pool
from exporter.sources.proxy_wire import (MAX_HEAD, OBSERVED_PATH, SMALL_BODY, Answer, BadRequest, Request, RequestHead,
                                         failure, take_request, upstream_head)


_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})



class Client(asyncio.Protocol):
    """One application connection: requests taken one at a time (pipelined ones wait their turn)."""

    def __init__(self, forwarding: Forwarding, pools: Callable[[str], Pool],
                 fallback: Callable[[], asyncio.Protocol], connections: set[Client],
                 release: Callable[[], None] = lambda: None) -> None:
        self.forwarding = forwarding
        self.release = release  # gives the connection's slot back (proxy.max_connections)
        self.deadline: Deadline | None = None
        self.pools = pools
        self.fallback = fallback
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.reader: RequestHead | None = None  # llhttp on this connection
        self.head: RequestHead | None = None  # the reader, while a request head is being read
        self.pending: tuple[Request, int, int] | None = None  # a whole head: its request, where its body starts, its length
        self.busy = False
        self.closed = False
        self.last_active = time.monotonic()
        self.exchange: Exchange | None = None
        self.write_paused = False
        self.call: OpenAICall | None = None  # the request in hand, when to an OpenAI-compatible route

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()  # once per connection: asyncio checks the pid on each lookup
        self.connections.add(self)
        self.deadline = Deadline(self.transport, self.forwarding.settings().header_timeout_seconds,  # type: ignore[arg-type]
                                 self._too_slow)
        self.deadline.head_started()  # a new connection that sends nothing holds its slot no longer
        self.deadline.arm()

    def _too_slow(self) -> None:
        """The application did not send a whole head (or the next part of a body) in time."""
        self.forwarding.stats.error("slow_client")
        self.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_active = time.monotonic()  # not idle while a request arrives
        if self.pending is not None and self.deadline is not None:
            self.deadline.body_data()
        if not self.busy:
            self._next()
        elif len(self.buffer) > MAX_HEAD + SMALL_BODY and self.transport is not None:
            self.transport.pause_reading()  # pipelined requests wait their turn, in bounded memory

    def _next(self) -> None:
        self._read()
        deadline = self.deadline
        if deadline is not None and deadline.phase and deadline.timer is None:
            deadline.arm()  # a request left incomplete by this read: its deadline is timed

    def _read(self) -> None:
        """Read the next request: its head through llhttp (each byte fed once), then its body by its
        Content-Length; serve it, refuse it, or hand the connection to the aiohttp path."""
        if self.pending is None:
            if self.head is None:
                start = 0
                if not self.buffer or self.buffer[0] in b"\r\n":  # (rare: no copy of the buffer for the common case)
                    start = len(self.buffer) - len(self.buffer.lstrip(b"\r\n"))
                if start == len(self.buffer):
                    self.buffer.clear()  # only the line ends a client may send between requests
                    return
                if self.reader is None:
                    self.reader = RequestHead(start)
                else:
                    self.reader.reset(start)
                self.head = self.reader
                assert self.deadline is not None
                self.deadline.head_started()
            try:
                end = self.head.take(self.buffer)
                if end < 0 and len(self.buffer) > MAX_HEAD or end > MAX_HEAD:
                    raise BadRequest("request head too long", 431)
                if end < 0:
                    return
                taken = take_request(self.head)
            except BadRequest as exc:
                self._refuse(exc)
                return
            if taken is None:
                self._hand_over()
                return
            self.pending = (taken[0], end, taken[1])
            if len(self.buffer) < end + taken[1]:
                assert self.deadline is not None
                self.deadline.body_started()
        request, end, size = self.pending
        if len(self.buffer) < end + size:
            return  # the body's bytes are counted as they come, the head is not read again
        request.body = bytes(self.buffer[end:end + size])
        del self.buffer[:end + size]
        assert self.head is not None
        self.head.finish(request.body)
        self.head = self.pending = None
        if self.deadline is not None and self.deadline.phase:
            self.deadline.done()
        self.busy = True
        self.loop.create_task(self._serve(request))

    def _refuse(self, exc: BadRequest) -> None:
        """Answer a request llhttp refused (or one too big to read) and close: counted, summarised in
        the log at most once a minute, never echoed (it may hold an application's key)."""
        self.forwarding.stats.answered("other", str(exc.status), None)
        REFUSALS.add(str(exc))
        reason = "Request Header Fields Too Large" if exc.status == 431 else "Bad Request"
        self.write(failure(exc.status, reason, "distribute-exporter proxy: malformed request"))
        self.close()

    def _hand_over(self) -> None:
        """The rest of this connection goes to the aiohttp path."""
        assert self.transport is not None
        self.connections.discard(self)
        if self.deadline is not None:
            self.deadline.done()
        protocol = HandedOver(self.fallback(), self.forwarding.settings().header_timeout_seconds,
                              self._handed_over_too_slow, self.release)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if self.buffer:
            protocol.data_received(bytes(self.buffer))
            self.buffer.clear()

    def _handed_over_too_slow(self, transport: asyncio.Transport) -> None:
        self.forwarding.stats.error("slow_client")
        transport.close()

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
        self.call = None if match else fwd.openai_call(request.method, request.path, request.group, request.body)
        if len(request.body) > cfg.max_body_bytes:
            return self._fail(endpoint, 413, "Payload Too Large", "too_large",
                              f"request body over {cfg.max_body_bytes} bytes")
        pool = self.pools(fwd.base_url())
        exchange: Exchange | None = None
        loop = self.loop
        deadline = loop.time() + cfg.timeout_seconds  # for the answer's head, connecting included
        head = upstream_head(request, pool.host_header, pool.prefix) + request.body
        try:
            for attempt in (1, 2):
                upstream = (pool.idle_connection() if attempt == 1 else None) or await pool.connection(
                    cfg.timeout_seconds, fresh=True)  # (a coroutine only when a connection must be made)
                exchange = Exchange(self, upstream, request.method, endpoint == "create",
                                    fwd.observe_max if endpoint != "other" or self.call else 0, fwd.observe_max + MAX_HEAD,
                                    loop)
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
        # Most answers have ended by the time their head is read (no coroutine for the wait then).
        finished = not exchange.broken if exchange.done.done() else await self._until_done(exchange, cfg.timeout_seconds)
        self.exchange = upstream.exchange = None
        if self.call is not None:  # counted once its answer went back whole (or broke off)
            self.call.answered(answer.status, exchange.body() if finished else None, answer.encoding)
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
            seen = self._see(endpoint, kind, request, exchange, answer)
            if seen is not None:
                await seen
            self.write(b"".join(exchange.held))
        elif exchange.keep and self.call is None:
            seen = self._see(endpoint, kind, request, exchange, answer)
            if seen is not None:
                await seen
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

    def _see(self, endpoint: str, kind: str, request: Request, exchange: Exchange,
             answer: Answer) -> Awaitable[None] | None:
        """The hooks' look at the answer, to await; None when its body was not kept."""
        body = exchange.body()
        if body is None:
            return None
        return self.forwarding.see(endpoint, kind, request.group, request.body, body, answer.encoding,
                                   request.traceparent if endpoint == "create" else None)  # only a create's is kept

    def _fail(self, endpoint: str, status: int, reason: str, error: str, message: str) -> bool:
        self.forwarding.stats.error(error)
        self.forwarding.stats.answered(endpoint, str(status), None)
        if self.call is not None:
            self.call.answered(status)
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
        self.release()
        if self.deadline is not None:
            self.deadline.done()
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
