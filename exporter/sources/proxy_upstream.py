"""Connections to the API for the proxy's fast path (proxy_fast.py): kept alive and reused, one
exchange at a time, never retried."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Protocol
from urllib.parse import urlsplit

from exporter.sources.proxy_wire import POOL_IDLE_MAX, UPSTREAM_IDLE_SECONDS


class AnswerReader(Protocol):
    """Who reads what the API sends on a connection (proxy_fast.Exchange)."""

    def from_api(self, data: bytes) -> None: ...

    def api_ended(self) -> None: ...


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the API; the exchange in progress reads what comes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.exchange: AnswerReader | None = None
        self.closed = False
        self.paused = False  # reading held back by the application's flow control (pause/resume)
        self.reused = False  # taken from the pool: the API may have closed it just now
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # nothing was asked: a broken or closing connection
            self.close()
            return
        self.exchange.from_api(data)

    def eof_received(self) -> bool:
        self.closed = True
        if self.exchange is not None:
            self.exchange.api_ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exchange is not None:
            self.exchange.api_ended()

    def pause_writing(self) -> None:  # only small bodies go this way: nothing to hold back
        pass

    def pause(self) -> None:
        """Stop reading the API's answer while the application reads slowly (flow control)."""
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one API address, reused newest first."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = parts.netloc.rsplit("@", 1)[-1].encode("idna")
        self.prefix = parts.path.rstrip("/").encode("latin-1")
        self.idle: list[Upstream] = []
        self.closed = False  # a pool replaced after api.base_url changed: what comes back is closed
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None

    def idle_connection(self) -> Upstream | None:
        """An idle connection still fit for use, if there is one (without a coroutine: the common case)."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < UPSTREAM_IDLE_SECONDS:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def connection(self, timeout: float, fresh: bool = False) -> Upstream:
        """An idle connection (unless `fresh`), or a new one within `timeout` seconds (TimeoutError,
        OSError)."""
        conn = None if fresh else self.idle_connection()
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(Upstream, self.host, self.port, ssl=self._ssl,
                                                   server_hostname=self.host if self.tls else None)
        return conn

    def give_back(self, conn: Upstream) -> None:
        conn.resume()  # an answer may have ended while the application was slow: never pool it paused
        if conn.closed or self.closed or len(self.idle) >= POOL_IDLE_MAX:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class Pools:
    """One pool per API address; when `api.base_url` changes on reload, the old one is closed."""

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}

    def __call__(self, base_url: str) -> Pool:
        pool = self._pools.get(base_url)
        if pool is None:
            self.close()
            pool = self._pools[base_url] = Pool(base_url)
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
