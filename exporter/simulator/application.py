"""An application, as the simulator's `--generate-via URL` plays it: it creates jobs through an API
base URL (the exporter's proxy, say) and polls each one's result there until it is final, as code
written against Distribute.ai's async API would. It knows nothing of the exporter."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter

import aiohttp

from exporter import KINDS, __version__
from exporter.simulator.jobs import SAMPLE_CREATE_BODIES

log = logging.getLogger("distribute.simulator.app")

USER_AGENT = f"distribute-simulator-application/{__version__}"
FINAL = ("COMPLETED", "ERROR")


class Application:
    """Creates and follows jobs through `base_url`; counts what happened in `stats`."""

    def __init__(self, base_url: str, api_key: str | None = None, group: str | None = None,
                 poll_seconds: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        if api_key:
            self.headers["authorization"] = api_key
        if group:
            self.headers["X-Distribute-Group"] = group
        self.poll_seconds = poll_seconds
        self.stats: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Application":
        self._session = aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=120))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(self, path: str, body: object) -> tuple[int, object]:
        assert self._session is not None
        async with self._session.post(self.base_url + path, data=json.dumps(body)) as response:
            text = await response.read()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, None

    async def create(self, kind: str, body: dict | None = None) -> str | None:
        status, answer = await self._post(f"/async/{kind}/create", body or SAMPLE_CREATE_BODIES[kind])
        self.stats[f"create {status}"] += 1
        return answer.get("id") if status == 200 and isinstance(answer, dict) else None

    async def follow(self, kind: str, job_id: str, polls: int | None = None) -> str | None:
        """Poll until the job is final (or `polls` answers were fetched); answer the last status."""
        status_seen = None
        while polls is None or polls > 0:
            await asyncio.sleep(self.poll_seconds)
            code, answer = await self._post(f"/async/{kind}/result", {"id": job_id})
            self.stats[f"result {code}"] += 1
            if polls is not None:
                polls -= 1
            if code == 200 and isinstance(answer, dict):
                status_seen = answer.get("status")
                if status_seen in FINAL:
                    self.stats["followed to the end"] += 1
                    return status_seen
        return status_seen

    async def create_and_follow(self, kind: str) -> None:
        try:
            job_id = await self.create(kind)
            if job_id is not None:
                await self.follow(kind, job_id)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.stats["failed"] += 1
            log.warning("application request failed: %s", exc)

    async def generate(self, rate: float, rng: random.Random) -> None:
        """Create jobs at `rate` per second across the kinds and follow each to its end."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(rng.expovariate(rate))
                kind = rng.choices(KINDS, weights=(5, 2, 3))[0]
                task = asyncio.create_task(self.create_and_follow(kind))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
