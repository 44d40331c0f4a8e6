"""Whether the API answers, said in the log once per change: a warning when polling starts
failing, a line when it recovers, and a reminder at most every `reminder_seconds` in between.

A single failed request among good ones is not an outage (the metrics count it): polling is failing
once at least two requests in a row failed over at least half a poll interval, with no usable answer
in between. A refused key and a 429 have their own lines (poller.py) and count neither way here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("distribute.poller")

REMINDER_SECONDS = 300.0


@dataclass(slots=True)
class LastError:
    reason: str  # the error label of distribute_api_request_errors_total
    detail: str  # what went wrong, in words (never a header or a key)
    at: float


class ApiHealth:
    def __init__(self, base_url: Callable[[], str], interval: Callable[[], float],
                 reminder_seconds: Callable[[], float] = lambda: REMINDER_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.base_url = base_url
        self.interval = interval
        self.reminder_seconds = reminder_seconds
        self.clock = clock
        self.failing = False
        self.last_error: LastError | None = None
        self._streak = 0  # failed requests since the last usable answer
        self._streak_start = 0.0
        self._said = 0.0  # when the warning or the last reminder was logged

    def ok(self) -> None:
        """A usable answer (a job, or the API's own 404)."""
        if self.failing:
            now = self.clock()
            log.info("the API answers again base_url=%s after %s of failures (%d failed requests)",
                     self.base_url(), _span(now - self._streak_start), self._streak)
        self.failing = False
        self._streak = 0

    def failed(self, reason: str, detail: str) -> None:
        now = self.clock()
        self.last_error = LastError(reason, detail, now)
        if self._streak == 0:
            self._streak_start = now
        self._streak += 1
        if not self.failing:
            if self._streak >= 2 and now - self._streak_start >= self.interval() / 2:
                self.failing = True
                self._said = now
                log.warning("polling the API is failing base_url=%s reason=%s (%s); the metrics keep their "
                            "last values and distribute_up is 0", self.base_url(), reason, detail)
        elif now - self._said >= self.reminder_seconds():
            self._said = now
            log.warning("polling the API still fails base_url=%s reason=%s (%s), for %s now (%d failed requests)",
                        self.base_url(), reason, detail, _span(now - self._streak_start), self._streak)

    def down_since(self) -> float | None:
        """When the current failures began, while polling is failing; else None."""
        return self._streak_start if self.failing else None


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
