"""The guard in front of every route: basic auth, response headers and the request rate limit of
the current web config (re-read when the file changes), client-certificate SAN pinning, and the
server's own limits on connections and slow clients.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from exporter.http.webconfig import WebConfigError, WebSecurity, build_ssl_context, load_web_config
from exporter.polling.ratelimit import RateLimiter

log = logging.getLogger("distribute.web")


class Guard:
    """Applies the current web config to every request; re-reads the file when it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.security = WebSecurity()
        self._mtime: float | None = None
        self._cache: dict[bytes, bool] = {}
        self._bcrypt = asyncio.Semaphore(2)  # wrong-password floods must not take every core
        self._limiter: RateLimiter | None = None
        self._dummy: tuple[int, bytes] | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.allowed_sans: list[str] = []
        if path is not None:
            self._apply(load_web_config(path))
            self._mtime = path.stat().st_mtime

    def _apply(self, security: WebSecurity) -> None:
        for warning in security.warnings:
            log.warning("web config: %s", warning)
        if security.tls and self.ssl_context is not None:
            build_ssl_context(security.tls, self.ssl_context)  # new handshakes get the new certificate
        elif security.tls:
            self.ssl_context = build_ssl_context(security.tls)
        elif self.ssl_context is not None:
            log.warning("web config: TLS cannot be switched off while running; restart to do so")
        self.allowed_sans = list((security.tls or {}).get("client_allowed_sans") or [])
        self.security = security
        self._cache.clear()
        self._limiter = (RateLimiter(1.0 / security.rate_interval, burst=max(1, security.rate_burst))
                         if security.rate_interval > 0 else None)

    def recheck(self) -> None:
        """Load the file again if it changed; a broken file keeps the last good one."""
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return
            self._mtime = mtime
            had_tls = self.ssl_context is not None
            security = load_web_config(self.path)
            if security.tls and not had_tls:
                log.warning("web config: TLS cannot be switched on while running; restart to do so")
                security.tls = None
            self._apply(security)
            log.info("web config reloaded from %s", self.path)
        except (OSError, WebConfigError) as exc:
            log.error("web config reload failed, keeping the previous one: %s", exc)

    async def watch(self, every: float = 2.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.recheck()

    async def authorised(self, header: str | None) -> bool:
        users = self.security.users
        if not users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        hashed = users.get(user) or self._dummy_hash()
        async with self._bcrypt:
            ok = await asyncio.get_running_loop().run_in_executor(None, _checkpw, password.encode(), hashed)
        ok = ok and user in users
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[key] = ok
        return ok

    def _dummy_hash(self) -> bytes:
        """A hash of the users' cost that matches nothing: unknown users cost as much as known ones."""
        cost = int(next(iter(self.security.users.values()))[4:6])
        if self._dummy is None or self._dummy[0] != cost:
            import bcrypt

            self._dummy = (cost, bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(cost)))
        return self._dummy[1]

    def rate_limited(self) -> bool:
        return self._limiter is not None and not self._limiter.try_acquire()


def _checkpw(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def middleware(guard: Guard, request_timeout: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def protect(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            response = await _protected(request, handler)
        except web.HTTPException as exc:
            response = exc
        for name, value in guard.security.headers.items():
            response.headers[name] = value
        return response

    async def _protected(request: web.Request, handler) -> web.StreamResponse:
        if guard.allowed_sans and not _san_allowed(request, guard.allowed_sans):
            return web.Response(status=403, text="client certificate not allowed\n")
        if guard.rate_limited():
            return web.Response(status=429, text="too many requests\n")
        if not await guard.authorised(request.headers.get("Authorization")):
            return web.Response(status=401, text="Unauthorized\n",
                                headers={"WWW-Authenticate": 'Basic realm="distribute-exporter"'})
        try:
            async with asyncio.timeout(request_timeout):
                return await handler(request)
        except TimeoutError:
            return web.Response(status=408, text="request took too long\n")

    return protect


def _san_allowed(request: web.Request, allowed: list[str]) -> bool:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    cert = ssl_object.getpeercert() if ssl_object else None
    if not cert:
        return False
    names = {value for _, value in cert.get("subjectAltName", ())}
    return any(hmac.compare_digest(n, a) for n in names for a in allowed)


def limit_connections(server: web.Server, max_connections: int, on_reject: Callable[[], None]) -> None:
    """Refuse connections past `max_connections` by closing them at once."""
    accept = server.connection_made

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        if len(server.connections) >= max_connections:
            on_reject()
            transport.close()
            return
        accept(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]
