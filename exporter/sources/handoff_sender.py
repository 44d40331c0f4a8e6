"""Delivering the outbox: each entry goes to its owner's hand-off route, and leaves the state file
only once the owner has answered 200 (it stores what it applied before answering). While an owner
is down its entries wait with exponential back-off and jitter; the others' flow on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from typing import Any, Awaitable, Callable

from exporter.sources.peers import PeerClient, PeerUnavailable
from exporter.tracking.outbox import Entry, HandoffStats, Outbox
from exporter.tracking.store import StateStore

log = logging.getLogger("distribute.handoff")

BATCH_ENTRIES = 500
BATCH_BYTES = 512 * 1024  # under the owner's web.max_request_body_bytes default (1 MiB)
MIN_BATCH_BYTES = 1024  # web.max_request_body_bytes' own minimum
LINGER_SECONDS = 0.05
IDLE_CHECK_SECONDS = 1.0  # entries written by the flush loop (observed answers) need no wake-up


def backoff(attempts: int, cap: float, rng: random.Random | None = None) -> float:
    """The wait after `attempts` failed deliveries: from 0.5 s, doubling, capped, 50-100 % jitter."""
    return min(cap, 0.5 * 2.0 ** attempts) * (rng or random).uniform(0.5, 1.0)


def chunks(entries: list[Entry], limit: int = BATCH_BYTES) -> list[list[Entry]]:
    """Entries split so that no request body passes `limit` bytes (a single larger one goes alone)."""
    out: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if out[-1] and size + len(e.payload) > limit:
            out.append([])
            size = 0
        out[-1].append(e)
        size += len(e.payload) + 1
    return [c for c in out if c]


class Sender:
    def __init__(self, store: StateStore, outbox: Outbox, client: PeerClient, stats: HandoffStats,
                 max_backoff: Callable[[], float], settle: Callable[[], Awaitable[Any]],
                 clock: Callable[[], float] = time.time) -> None:
        """`settle` (the tracked jobs' flush) runs after a wake-up: the entries that woke the sender
        may still be on their way to the state file, queued for the batch being written."""
        self.store = store
        self.settle = settle
        self.outbox = outbox
        self.client = client
        self.stats = stats
        self.max_backoff = max_backoff
        self.clock = clock
        self._wake = asyncio.Event()
        self._down: set[int] = set()
        self._retry_at: dict[int, float] = {}  # owners in a back-off: no attempt before then
        self.batch_bytes = BATCH_BYTES  # halved while owners answer 413 (a smaller web.max_request_body_bytes)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                if await self.send_due():
                    continue  # more may be due at once
                self._wake.clear()
                next_try = await self.store.call(self.outbox.next_try)
                wait = IDLE_CHECK_SECONDS if next_try is None else min(IDLE_CHECK_SECONDS, next_try - self.clock())
                if await self._woken(max(0.0, wait)):
                    await asyncio.sleep(LINGER_SECONDS)  # let a burst of hand-offs share one delivery
                    await self.settle()
            except asyncio.CancelledError:
                raise
            except Exception:  # the disk or a bug: log it, keep the entries, try again later
                log.exception("hand-off delivery failed")
                await asyncio.sleep(IDLE_CHECK_SECONDS)

    async def _woken(self, wait: float) -> bool:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=wait)
            return True
        except asyncio.TimeoutError:
            return False

    async def send_due(self) -> int:
        """Deliver what is due now; answer how many entries were acknowledged."""
        due = await self.store.call(self.outbox.due, self.clock(), BATCH_ENTRIES * 4)
        by_target: dict[int, list[Entry]] = defaultdict(list)
        for e in due:
            by_target[e.target].append(e)
        if not due:
            return 0  # nothing left or changed here (the router counts what it queues): no recount
        results = await asyncio.gather(*(self._deliver(t, es) for t, es in by_target.items()))
        self.stats.pending = await self.store.call(self.outbox.count)  # exact again after deliveries
        return sum(results)

    async def _deliver(self, target: int, entries: list[Entry]) -> int:
        retry_at = self._retry_at.get(target, 0.0)
        if retry_at > self.clock():
            # Entries queued since the owner went down wait with the others, rather than each
            # costing an attempt (and, with an owner that does not answer, a timeout).
            await self.store.call(self.outbox.postpone, [e.row for e in entries], retry_at)
            return 0
        delivered = 0
        for part in chunks(entries, self.batch_bytes):
            status: Any
            try:
                status = await self.client.hand_off(target, [e.payload for e in part])
            except PeerUnavailable as exc:
                status = exc
            if status == 200:
                self._retry_at.pop(target, None)
                await self.store.call(self.outbox.done, [e.row for e in part])
                self.stats.outcomes["delivered"] += len(part)
                delivered += len(part)
                if target in self._down or any(e.attempts for e in part):
                    # The owner is back: its whole backlog is due now, not when each back-off ends.
                    await self.store.call(self.outbox.resume, target)
                    if target in self._down:
                        self._down.discard(target)
                        log.info("hand-offs to shard %d delivered again", target)
                continue
            if status == 413 and self.batch_bytes > MIN_BATCH_BYTES:
                self.batch_bytes //= 2
                log.warning("shard %d takes no request bodies this large; sending %d bytes at most",
                            target, self.batch_bytes)
                return delivered  # the rest is still due: the next round sends it in smaller parts
            # Not delivered: every entry left for this target waits (the owner is down or refuses).
            rest = entries[entries.index(part[0]):]
            attempts = max(e.attempts for e in rest)
            self._retry_at[target] = self.clock() + backoff(attempts + 1, self.max_backoff())
            await self.store.call(self.outbox.later, [e.row for e in rest], self._retry_at[target])
            self.stats.outcomes["retried"] += len(rest)
            if target not in self._down:
                self._down.add(target)
                log.warning("cannot hand %d entries to shard %d (%s); retrying with back-off", len(rest),
                            target, status if isinstance(status, PeerUnavailable) else f"HTTP {status}")
            break
        return delivered
