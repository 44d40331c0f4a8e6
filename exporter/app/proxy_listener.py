"""The proxy's listener, the same for both backends' wiring (proxying.py with SQLite, shared_proxy.py
with PostgreSQL): where it listens, its collector, the `Proxy` calling the hooks the wiring gives it,
and what the status page shows of it. The wirings differ only in what the hooks do."""

from __future__ import annotations

import logging
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.config.addresses import parse_listen_address
from exporter.metrics.proxy import ProxyCollector, ProxyStats
from exporter.sources.proxy import Proxy, ProxyHooks

log = logging.getLogger("distribute.exporter")

# The longest a create's answer waits for its commit, with either backend. A commit takes
# milliseconds; this bounds what a stalled disk or database (or a lock held by another process) could
# do to the application, which would time out and create the job again at the API. Past it the answer
# goes back and the commit finishes later.
COMMIT_WAIT_SECONDS = 5.0


def listen_url(listen: str, tls: bool, port: int) -> str:
    """The URL a listener on `listen` is reached at (a wildcard host shown as 127.0.0.1)."""
    host, _ = parse_listen_address(listen)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


class ProxyListener:
    def __init__(self, listen: str | None, stats: ProxyStats, current: Callable[[], Config]) -> None:
        self.listen = listen
        self.stats = stats
        self.current = current
        self.proxy: Proxy | None = None
        self._tls = False

    async def start(self, hooks: ProxyHooks, registry: CollectorRegistry, ssl_context: Any) -> None:
        """The listener, when proxy.listen_address (or its flag) is set: TLS as the web config says,
        nothing else of it."""
        if not self.listen:
            return
        host, port = parse_listen_address(self.listen)
        registry.register(ProxyCollector(self.stats))
        config = self.current()
        self.proxy = Proxy(hooks, self.stats, lambda: self.current().proxy, lambda: self.current().api.base_url,
                           config.api.max_response_bytes)
        self._tls = ssl_context is not None
        try:
            await self.proxy.start(host, port, ssl_context)
        except OSError as exc:  # in use, or not an address of this host: say which listener
            raise OSError(exc.errno, f"proxy listen address {self.listen}: {exc.strerror or exc}") from None
        log.info("proxy listening on %s, forwarding to %s", self.url, config.api.base_url)

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()  # in-flight requests finish first

    @property
    def url(self) -> str | None:
        if self.proxy is None or not self.listen:
            return None
        return listen_url(self.listen, self._tls, self.proxy.port)

    def overview(self, own_answers: int) -> dict[str, Any] | None:
        """What the status page's proxy section shows (`own_answers`: the job answers this process's
        own polls got); None when the proxy is off."""
        if self.proxy is None:
            return None
        stats = self.stats
        observed = sum(stats.observed.values())
        failed = sum(n for (_e, code), n in stats.requests.items() if code in ("502", "504"))
        return {"url": self.url, "requests": {e: stats.total(e) for e in ("create", "result", "other")},
                "failed": failed, "observed": observed, "own_answers": own_answers,
                "share_from_proxy": observed / (observed + own_answers) if observed + own_answers else None,
                "errors": {r: n for (r,), n in stats.errors.items() if n}}
