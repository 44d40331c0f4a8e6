"""The proxy's limits on what applications send: malformed requests summarised in the log without
their content, deadlines for a request's head and body, and the cap on open connections."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable

import httptools
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from exporter.logs import Refusals
from exporter.metrics.proxy import ProxyStats

log = logging.getLogger("distribute.proxy")
REFUSALS = Refusals(log, "proxy")


class Deadline:
    """A request's deadlines on one application connection: its head must be whole within `seconds`
    of its first byte, and its body must not stall for `seconds` between two pieces; when one passes,
    `expire` closes the connection. The timer is set only when a read ends with the request still
    incomplete (`arm`): a request that comes whole in one read costs no timer. A connection whose
    reading the proxy paused (its own flow control) is not the application's delay."""

    __slots__ = ("transport", "seconds", "expire", "timer", "phase", "since", "loop")

    def __init__(self, transport: asyncio.Transport, seconds: float, expire: Callable[[], None]) -> None:
        self.transport, self.seconds, self.expire = transport, seconds, expire
        self.loop = asyncio.get_running_loop()  # once: asyncio checks the process id on every lookup
        self.timer: asyncio.TimerHandle | None = None
        self.phase = ""  # "head", "body" or "" (no request being received)
        self.since = 0.0  # the head's first byte, or the body's latest piece

    def head_started(self) -> None:
        if self.phase != "head":
            self.phase, self.since = "head", self.loop.time()

    def body_started(self) -> None:
        self.phase, self.since = "body", self.loop.time()

    def body_data(self) -> None:
        self.since = self.loop.time()

    def arm(self) -> None:
        """Set the timer if a request is under way and none is set."""
        if self.phase and self.timer is None:
            self.timer = self.loop.call_at(self.since + self.seconds, self._check)

    def done(self) -> None:
        """No request under way (any timer set is cancelled)."""
        self.phase = ""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check(self) -> None:
        self.timer = None
        if not self.phase:
            return
        loop = self.loop
        if hasattr(self.transport, "is_reading") and not self.transport.is_reading():
            self.since = loop.time()  # paused by the proxy: the wait starts again when reading does
        if loop.time() < self.since + self.seconds:
            self.arm()
            return
        self.phase = ""
        self.expire()


class HandedOver(asyncio.Protocol):
    """A connection the fast path handed to aiohttp's server: every call goes on to aiohttp's handler,
    while llhttp follows the same bytes only to time each request's head and body (aiohttp has no
    such deadline), and the connection's slot is given back when it ends."""

    def __init__(self, handler: asyncio.Protocol, seconds: float, expire: Callable[[asyncio.Transport], None],
                 release: Callable[[], None]) -> None:
        self.handler, self.seconds, self.expire_cb, self.release = handler, seconds, expire, release
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.deadline: Deadline | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.deadline = Deadline(self.transport, self.seconds, self._expire)  # type: ignore[arg-type]
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            if self.deadline is not None and self.deadline.phase == "body":
                self.deadline.body_data()  # any byte of a body counts, chunk sizes included
            try:
                self.parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self.parser = None  # aiohttp answers it (400) or takes it over (upgrade): nothing to time
                if self.deadline is not None:
                    self.deadline.done()
            if self.deadline is not None:
                self.deadline.arm()
        self.handler.data_received(data)

    # llhttp's callbacks: where each request is
    def on_message_begin(self) -> None:
        assert self.deadline is not None
        self.deadline.head_started()

    def on_headers_complete(self) -> None:
        assert self.deadline is not None
        self.deadline.body_started()

    def on_body(self, body: bytes) -> None:
        assert self.deadline is not None
        self.deadline.body_data()

    def on_message_complete(self) -> None:
        assert self.deadline is not None
        self.deadline.done()

    def _expire(self) -> None:
        if self.transport is not None:
            self.expire_cb(self.transport)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.done()
        self.release()
        self.handler.connection_lost(exc)


class Listener:
    """The proxy's listening socket with its own accept loop: past `limit()` open connections it
    stops accepting until one closes, so that new ones wait in the kernel's listen backlog instead
    of being refused (counted in `stats.capped`)."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol], ssl_context: Any,
                 limit: Callable[[], int], stats: ProxyStats) -> None:
        self.sock, self.factory, self.ssl_context, self.limit, self.stats = sock, factory, ssl_context, limit, stats
        self.freed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.handshakes: set[asyncio.Task[Any]] = set()

    @classmethod
    def bind(cls, host: str, port: int, **rest: Any) -> Listener:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=4096)
        sock.setblocking(False)
        return cls(sock, **rest)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._accept(), name="proxy-accept")

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.stats.connections >= self.limit():
                self.stats.capped += 1
                self.stats.version += 1
                while self.stats.connections >= self.limit():
                    self.freed.clear()
                    await self.freed.wait()
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:  # EMFILE and the like: wait a little rather than spin
                log.warning("proxy: accept failed (%s)", type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            # asyncio sets TCP_NODELAY only on sockets whose proto says TCP; an accepted one says 0.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.stats.connections += 1
            self.stats.version += 1
            task = loop.create_task(self._connect(conn))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self.factory, conn, ssl=self.ssl_context)
        except (OSError, asyncio.TimeoutError):  # a failed TLS handshake, a client gone already
            conn.close()
            self.release()

    def release(self) -> None:
        """An application connection ended (called once per accepted connection)."""
        self.stats.connections -= 1
        self.stats.version += 1
        self.freed.set()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for task in list(self.handshakes):
            task.cancel()
        self.sock.close()


_MALFORMED = b'{"message": "distribute-exporter proxy: malformed request"}'


class QuietHandler(RequestHandler):
    """aiohttp's connection handler on the proxy's other path, minus what could leak a request: its
    own error answer echoes the offending line (an `Authorization` value among them) and its logger
    writes it with a traceback. Here a request aiohttp's parser refuses gets a fixed answer, is
    counted as `distribute_proxy_requests_total{endpoint="other"}` with its status, and is
    summarised with the fast path's refusals; other failures are logged by exception type only."""

    stats: ProxyStats  # set by QuietServer

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer is under way: only a cut connection can tell
            raise ConnectionError("an answer was under way")
        if 400 <= status < 500:
            REFUSALS.add(type(exc).__name__ if exc is not None else "malformed request")
            body = _MALFORMED
        else:
            self.log_exception("failed", exc_info=exc)
            body = b'{"message": "distribute-exporter proxy: internal error"}'
        self.stats.answered("other", str(status), None)
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        kind = type(exc).__name__ if isinstance(exc, BaseException) else "error"
        log.error("proxy: aiohttp's server failed on a request (%s)", kind)


class QuietServer(web.Server):
    """aiohttp's low-level server whose connections get QuietHandler."""

    def __init__(self, *args: Any, stats: ProxyStats, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats = stats

    def __call__(self) -> RequestHandler:
        # web.Server.__call__ builds a RequestHandler from these same (private) attributes.
        handler = QuietHandler(self, loop=self._loop, **self._kwargs)
        handler.stats = self.stats
        return handler
