"""The proxy's limits on what applications send: malformed requests summarised in the log without
their content, deadlines for a request's head and body, and the cap on open connections."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("distribute.proxy")


class Refusals:
    """Malformed requests, summarised in the log at most once a minute: how many and llhttp's reasons
    (fixed words), never a byte of what was sent."""

    INTERVAL = 60.0

    def __init__(self) -> None:
        self.count = 0
        self.reasons: dict[str, int] = {}
        self.logged = -self.INTERVAL

    def add(self, reason: str) -> None:
        self.count += 1
        if len(self.reasons) < 8 or reason in self.reasons:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        now = time.monotonic()
        if now - self.logged >= self.INTERVAL:
            self.logged = now
            summary = ", ".join(f"{r} ({n})" for r, n in sorted(self.reasons.items()))
            log.warning("proxy: refused %d malformed request(s) since the last such line: %s", self.count, summary)
            self.count, self.reasons = 0, {}


REFUSALS = Refusals()
