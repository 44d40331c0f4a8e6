"""The request budget towards the API: a token bucket, plus pauses the API itself asks for."""

from __future__ import annotations

import asyncio
import time
from typing import Callable


class RateLimiter:
    """At most `rate` acquisitions per second (0: unlimited), bursting to one second's worth.

    `pause_until` stops every acquisition until a moment (429's Retry-After, the back-off after a
    refused key): the API is asked nothing before then.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, burst: float | None = None) -> None:
        self._clock = clock
        self.rate = rate
        self._burst = burst
        self._tokens = self.burst
        self._last = clock()
        self._paused_until = 0.0
        self._resumed: asyncio.Event | None = None  # set by resume(): wakes wait_pause() sleepers

    @property
    def burst(self) -> float:
        return self._burst if self._burst is not None else max(1.0, self.rate)

    def reconfigure(self, rate: float) -> None:
        self.rate = rate
        self._tokens = min(self._tokens, self.burst)

    def pause_until(self, moment: float) -> None:
        """No acquisition before `moment` (on this limiter's clock); later pauses win."""
        self._paused_until = max(self._paused_until, moment)

    def resume(self) -> None:
        """Lift any pause at once (the reason for it is gone, e.g. the key was fixed)."""
        self._paused_until = 0.0
        if self._resumed is not None:
            self._resumed.set()

    async def wait_pause(self) -> None:
        """Sleep while a pause lasts; `resume` wakes every sleeper at once."""
        while (pause := self.paused_for) > 0:
            if self._resumed is None or self._resumed.is_set():
                self._resumed = asyncio.Event()
            try:
                await asyncio.wait_for(self._resumed.wait(), timeout=pause)
            except asyncio.TimeoutError:
                pass

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def delay(self) -> float:
        """Seconds until the next acquisition may go ahead (0: now)."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        if self.rate <= 0:
            return 0.0
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def try_acquire(self) -> bool:
        """Spend one request of the budget if there is one now; never waits."""
        if self.delay() > 0:
            return False
        if self.rate > 0:
            self._tokens -= 1.0
        return True

    async def acquire(self) -> None:
        """Wait for the budget, then spend one request of it."""
        while (wait := self.delay()) > 0:
            if self.paused_for > 0:
                await self.wait_pause()
            else:
                await asyncio.sleep(wait)
        if self.rate > 0:
            self._tokens -= 1.0
