"""What the proxy's fast path (proxy_fast.py) needs of the proxy (proxy.py's Proxy): one interface,
so that the fast path knows nothing else of it."""

from __future__ import annotations

from typing import Protocol

from exporter.config import ProxyConfig
from exporter.metrics.proxy import ProxyStats
from exporter.sources.proxy_openai import OpenAICall


class Forwarding(Protocol):
    """What the fast path needs of the proxy (proxy.py's Proxy)."""

    stats: ProxyStats
    observe_max: int

    def settings(self) -> ProxyConfig: ...

    def base_url(self) -> str: ...

    async def see(self, endpoint: str, kind: str, group: str, request_body: bytes | None, answer: bytes,
                  encoding: str, traceparent: str | None = None) -> None: ...

    def openai_call(self, method: bytes, target: str, group: str, request_body: bytes | None) -> OpenAICall | None:
        """A request to an OpenAI-compatible route, to be told its answer; None for any other."""
        ...
