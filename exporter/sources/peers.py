"""Talking to the other replicas: hand-offs to an id's owner, and reads routed to it.

Every request carries the registration token (X-Registration-Token, so that basic auth keeps the
Authorization header), plus what `shard.peer_*` configures when the peers' web config asks for basic
auth or client certificates.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote, urlencode

import aiohttp

from exporter.config import Config, Secret
from exporter.tracking.ownership import Ring

MAX_ANSWER = 8 * 1024 * 1024


class PeerUnavailable(Exception):
    """The peer gave no answer (down, refused the connection, timed out)."""


@dataclass(frozen=True)
class PeerAuth:
    token: Secret
    basic: tuple[str, Secret] | None = None
    cert: tuple[str, str] | None = None
    ca_file: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> "PeerAuth":
        shard = config.shard
        assert config.registration_token is not None  # checked when the config was loaded
        basic = ((shard.peer_basic_auth_username, config.peer_password)
                 if shard.peer_basic_auth_username and config.peer_password else None)
        cert = ((str(config.resolve(shard.peer_cert_file)), str(config.resolve(shard.peer_key_file)))
                if shard.peer_cert_file and shard.peer_key_file else None)
        ca = str(config.resolve(shard.peer_ca_file)) if shard.peer_ca_file else None
        return cls(config.registration_token, basic, cert, ca)

    def headers(self) -> dict[str, str]:
        headers = {"X-Registration-Token": self.token.reveal()}
        if self.basic:
            user, password = self.basic
            pair = f"{user}:{password.reveal()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return headers

    def ssl_context(self) -> ssl.SSLContext:
        """For https peers: verify them against `ca_file` (else the system's CAs); present `cert`."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert:
            context.load_cert_chain(*self.cert)
        return context


class PeerClient:
    """One keep-alive session to every shard of the ring."""

    def __init__(self, ring: Ring, auth: Callable[[], PeerAuth], timeout: float) -> None:
        """`auth` is asked for every request: a reload with a new token or password applies at once
        (the client certificate is loaded once, at start)."""
        self.ring = ring
        self._auth = auth
        tls = auth().ssl_context() if any(u.startswith("https://") for u in ring.urls) else None
        self._session: aiohttp.ClientSession | None = None
        self._tls = tls
        self._timeout = timeout

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running loop
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(limit=64, ssl=self._tls if self._tls else True))
        return self._session

    async def request(self, method: str, shard: int, path: str, body: bytes | None = None,
                      query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None) -> tuple[int, bytes, str]:
        """(status, body, content type) of the peer's answer; PeerUnavailable when none came."""
        url = self.ring.url(shard) + path + (("?" + urlencode(query)) if query else "")
        headers = self._auth().headers()
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            # No redirects: the token (and the peer password) go to the configured peers only.
            async with self.session.request(method, url, data=body, headers=headers, allow_redirects=False) as answer:
                data = await answer.content.read(MAX_ANSWER)
                return answer.status, data, answer.content_type
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ssl.SSLError) as exc:
            raise PeerUnavailable(f"shard {shard}: {type(exc).__name__}") from None

    async def hand_off(self, shard: int, payloads: list[str]) -> int:
        """POST entries to the owner's hand-off route; its HTTP status (200 = stored there)."""
        body = ('{"entries": [' + ",".join(payloads) + "]}").encode()
        status, _, _ = await self.request("POST", shard, "/api/v1/handoff", body)
        return status

    async def job(self, shard: int, job_id: str, method: str = "GET") -> tuple[int, bytes, str]:
        """The owner's own answer to GET (or DELETE) /api/v1/jobs/<id>."""
        return await self.request(method, shard, f"/api/v1/jobs/{quote(job_id, safe='')}", query={"local": "true"})

    async def status(self, shard: int) -> dict[str, Any] | None:
        """The peer's hand-off status (GET /api/v1/handoff); None when it gives none."""
        try:
            code, body, _ = await self.request("GET", shard, "/api/v1/handoff")
            return json.loads(body) if code == 200 else None
        except (PeerUnavailable, ValueError):
            return None

    async def pages(self, path: str, query: Mapping[str, str] | Sequence[tuple[str, str]],
                    cursors: Mapping[int, str] | None = None) -> dict[int, Any]:
        """Every shard's local page of a list route (JSON), fetched at once; a shard that did not
        answer is left out (the caller says which). `query` as pairs may repeat a name."""
        pairs = list(query.items() if isinstance(query, Mapping) else query)

        async def one(shard: int) -> tuple[int, Any]:
            q = [*pairs, ("local", "true")]
            if cursors and cursors.get(shard):
                q.append(("cursor", cursors[shard]))
            try:
                status, body, _ = await self.request("GET", shard, path, query=q)
                return shard, json.loads(body) if status == 200 else None
            except (PeerUnavailable, ValueError):  # no answer, or not one of ours
                return shard, None
        shards = [s for s in range(self.ring.count) if cursors is None or s in cursors]
        answers = await asyncio.gather(*(one(s) for s in shards))
        return {shard: page for shard, page in answers if page is not None}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def merge_pages(pages: Mapping[int, Mapping[str, Any]], limit: int, key: Callable[[Any], Any],
                cursor_of: Callable[[Any], str],
                started: Mapping[int, str] | None = None) -> tuple[list[Any], dict[int, str]]:
    """One page of a list merged from every shard's own page (each fetched with the same filters,
    order and `limit`): the first `limit` items in `key` order, and each shard's cursor to go on
    from (a shard left out is done). A shard whose page was cut short continues after its last
    item taken (`cursor_of`), or from where it started (`started`, "" = the beginning) when none was
    taken; one whose page was taken whole continues from its own next cursor."""
    tagged = sorted(((key(item), shard, i, item) for shard, page in pages.items()
                     for i, item in enumerate(page.get("jobs") or [])), key=lambda t: (t[0], t[1], t[2]))
    taken = tagged[:limit]
    last: dict[int, Any] = {}
    for _, shard, _, item in taken:
        last[shard] = item
    cursors: dict[int, str] = {}
    for shard, page in pages.items():
        count = len(page.get("jobs") or [])
        used = sum(1 for t in taken if t[1] == shard)
        if used < count:  # cut short: go on after what was shown (or from where it started)
            cursors[shard] = cursor_of(last[shard]) if shard in last else (started or {}).get(shard, "")
        elif page.get("next_cursor"):
            cursors[shard] = page["next_cursor"]
    return [t[3] for t in taken], cursors
