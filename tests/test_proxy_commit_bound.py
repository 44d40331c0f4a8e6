"""A proxied create's answer waits for its commit only so long: a stalled disk must not make an
application time out (and create the job a second time at the API)."""

from __future__ import annotations

import asyncio

from exporter.app import proxying
from exporter.app.proxying import ProxyWiring


class StalledTracking:
    """Stands in for the proxy's tracking while the disk stalls (proxy.fsync_creates): the create is
    journaled at once, its fsync ends only when released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.journaled: list[str] = []
        self.committed: list[str] = []

    def created_now(self, job_id: str, kind: str, group: str, model: str | None) -> bool:
        self.journaled.append(job_id)
        return False  # an fsync is due

    async def synced(self, job_id: str, kind: str) -> None:
        await self.release.wait()
        self.committed.append(job_id)


def test_a_stalled_commit_stops_holding_the_answer_and_still_finishes(monkeypatch):
    monkeypatch.setattr(proxying, "COMMIT_WAIT_SECONDS", 0.2)

    async def scenario() -> None:
        wiring = ProxyWiring.__new__(ProxyWiring)  # only what `created` uses
        wiring.stats = proxying.ProxyStats()
        wiring.tracking = StalledTracking()
        # The answer is released by the bound (0.2 s), not by the commit (which has not happened yet).
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(wiring.created("id-1", "chat", "g", None), 5)
        assert asyncio.get_running_loop().time() - started < 2  # the bound, not wait_for's 5 s
        assert wiring.tracking.journaled == ["id-1"] and wiring.tracking.committed == []
        assert wiring.stats.errors[("commit_late",)] == 1
        # The commit goes on after the answer went back.
        wiring.tracking.release.set()
        for _ in range(100):
            if wiring.tracking.committed:
                break
            await asyncio.sleep(0.01)
        assert wiring.tracking.committed == ["id-1"]

    asyncio.run(scenario())


def test_a_prompt_commit_is_awaited_and_counts_nothing(monkeypatch):
    monkeypatch.setattr(proxying, "COMMIT_WAIT_SECONDS", 5.0)

    async def scenario() -> None:
        wiring = ProxyWiring.__new__(ProxyWiring)
        wiring.stats = proxying.ProxyStats()
        wiring.tracking = StalledTracking()
        wiring.tracking.release.set()
        await wiring.created("id-2", "chat", "g", None)
        assert wiring.tracking.committed == ["id-2"]  # committed before `created` returned
        assert wiring.stats.errors[("commit_late",)] == 0

    asyncio.run(scenario())
