"""Spend so far today: the status page's figure, per group and currency, since 00:00 UTC."""

from __future__ import annotations

from typing import Iterable

DAY = 86400.0  # a UTC day: Unix time has no leap seconds


class SpendToday:
    """Estimated spend of the jobs finished since 00:00 UTC, per group and currency, with how many
    were priced and unpriced: the status page's figure, O(1) per job and per look. Rebuilt from
    the state file at start (`restore`)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0  # the current UTC day: [start, end)
        self.rows: dict[tuple[str, str], list[float]] = {}  # (group, currency) -> [cost, priced, unpriced]

    def start_of_day(self, now: float) -> float:
        return now // DAY * DAY

    def _roll(self, now: float) -> None:
        if not self.start <= now < self.end:
            self.start = self.start_of_day(now)
            self.end, self.rows = self.start + DAY, {}

    def add(self, group: str, currency: str, cost: float | None, ended: float, now: float) -> None:
        """One finished job (cost None: unpriced); counted only if it ended today."""
        self._roll(now)
        if self.start <= ended < self.end:
            row = self.rows.get((group, currency))
            if row is None:
                row = self.rows[(group, currency)] = [0.0, 0, 0]
            if cost is None:
                row[2] += 1
            else:
                row[0] += cost
                row[1] += 1

    def restore(self, rows: Iterable[tuple[str, str, float, int, int]], now: float) -> None:
        self._roll(now)
        for group, currency, cost, priced, unpriced in rows:
            self.rows[(group, currency)] = [cost, priced, unpriced]

    def snapshot(self, now: float) -> list[dict[str, object]]:
        """Rows for the page, most spent first."""
        self._roll(now)
        rows = [{"group": g, "currency": c, "cost": v[0], "priced": int(v[1]), "unpriced": int(v[2])}
                for (g, c), v in self.rows.items()]
        return sorted(rows, key=lambda r: (-r["cost"], r["group"]))  # type: ignore[operator]
