"""The guard in front of every route: basic auth, response headers and the request rate limit of
the current web config (re-read when the file or a certificate file changes; client-certificate SAN
pinning is done in the TLS handshake, tlscontext.py), and the server's own limits on connections and
slow clients.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from exporter.http.tlscontext import LiveContext
from exporter.http.webconfig import WebConfigError, WebSecurity, load_web_config
from exporter.polling.ratelimit import RateLimiter

log = logging.getLogger("distribute.web")


class Guard:
    """Applies the current web config to every request; re-reads the file when it or a certificate
    file it names changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.security = WebSecurity()
        self._seen: tuple | None = None
        self._cache: dict[bytes, bool] = {}
        self._bcrypt = asyncio.Semaphore(2)  # wrong-password floods must not take every core
        self._limiter: RateLimiter | None = None
        self._dummy: tuple[int, bytes] | None = None
        self.ssl_context: LiveContext | None = None
        if path is not None:
            security = load_web_config(path)
            if security.context is not None:
                self.ssl_context = LiveContext(ssl.PROTOCOL_TLS_SERVER)
            self._apply(security)
            self._seen = self._files_state(security)

    def _apply(self, security: WebSecurity) -> None:
        for warning in security.warnings:
            log.warning("web config: %s", warning)
        if self.ssl_context is not None and security.context is not None:
            self.ssl_context.current = security.context  # new connections get it; open ones keep theirs
        rate = (security.rate_interval, security.rate_burst)
        if rate != (self.security.rate_interval, self.security.rate_burst) or self._limiter is None:
            self._limiter = (RateLimiter(1.0 / security.rate_interval, burst=float(security.rate_burst))
                             if security.rate_interval > 0 else None)
        self.security = security
        self._cache.clear()

    def _files_state(self, security: WebSecurity) -> tuple:
        """What tells a change: the web config file's and its certificate files' stat."""
        state = []
        for name in [str(self.path), *security.files()]:
            try:
                st = os.stat(name)
                state.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                state.append((name, None))
        return tuple(state)

    def recheck(self) -> None:
        """Load the file again if it or a certificate file changed; a broken file keeps the last good one."""
        if self.path is None:
            return
        seen = self._files_state(self.security)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            security = load_web_config(self.path, starting=False)
        except WebConfigError as exc:
            log.error("web config reload failed, keeping the previous one: %s", exc)
            return
        if security.context is not None and self.ssl_context is None:
            log.warning("web config: TLS cannot be switched on while running; restart to do so")
            security.tls = security.context = None
        elif security.context is None and self.ssl_context is not None:
            log.warning("web config: TLS cannot be switched off while running; restart to do so")
            security.tls, security.context = self.security.tls, self.security.context
        self._apply(security)
        self._seen = self._files_state(security)
        log.info("web config reloaded from %s", self.path)

    async def watch(self, every: float = 2.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.recheck()

    async def authorised(self, header: str | None) -> bool:
        users = self.security.users
        if not users:
            return True
        credentials = basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        password = password[:72]  # bcrypt reads no further (Go's and OpenBSD's alike)
        key = hashlib.sha256(b"%d:%s%s" % (len(user), user.encode("utf-8", "surrogateescape"), password)).digest()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        hashed = users.get(user) or self._dummy_hash()
        async with self._bcrypt:
            ok = await asyncio.get_running_loop().run_in_executor(None, _checkpw, password, hashed)
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


# Go's http.Error, which writes the toolkit's 401 and 429 answers, always sends this header.
_GO_ERROR_HEADERS = {"X-Content-Type-Options": "nosniff"}


def basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    """User and password of an Authorization header as Go's Request.BasicAuth reads it: the scheme
    in any case, strict base64, a colon required; the bytes need not be UTF-8."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:], validate=True)
    except ValueError:
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user.decode("utf-8", "surrogateescape"), password


def _checkpw(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def middleware(guard: Guard, request_timeout: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def protect(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if guard.rate_limited():  # before the headers are set, as in the toolkit
            return web.Response(status=429, text="Too Many Requests\n", headers=_GO_ERROR_HEADERS)
        try:
            response = await _protected(request, handler)
        except web.HTTPException as exc:
            response = exc
        for name, value in guard.security.headers.items():
            response.headers[name] = value
        return response

    async def _protected(request: web.Request, handler) -> web.StreamResponse:
        if not await guard.authorised(request.headers.get("Authorization")):
            return web.Response(status=401, text="Unauthorized\n",
                                headers={**_GO_ERROR_HEADERS, "WWW-Authenticate": "Basic"})
        try:
            async with asyncio.timeout(request_timeout):
                return await handler(request)
        except TimeoutError:
            return web.Response(status=408, text="request took too long\n")

    return protect


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
