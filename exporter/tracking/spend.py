"""Spend so far today: the status page's figure, per group and currency, since 00:00 UTC."""

from __future__ import annotations

from typing import Iterable


class SpendToday:
    """Estimated spend of the jobs finished since 00:00 UTC, per group and currency, with how many
    were priced and unpriced: the status page's figure, O(1) per job and per look. Rebuilt from
    the state file at start (`restore`)."""

    def __init__(self) -> None:
        self.day = -1
        self.rows: dict[tuple[str, str], list[float]] = {}  # (group, currency) -> [cost, priced, unpriced]

    def start_of_day(self, now: float) -> float:
        return _day(now) * 86400.0

    def _roll(self, now: float) -> None:
        if _day(now) != self.day:
            self.day, self.rows = _day(now), {}

    def add(self, group: str, currency: str, cost: float | None, ended: float, now: float) -> None:
        self._roll(now)
        if _day(ended) == self.day:
            row = self.rows.setdefault((group, currency), [0.0, 0, 0])
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


def _day(moment: float) -> int:
    return int(moment // 86400)  # UTC days since the epoch
