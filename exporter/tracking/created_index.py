"""Unfinished jobs in order of `created`, for the jobs list's most asked question: which unfinished
jobs are the oldest (and the newest). A sorted list of (created, id) kept in step by TrackedJobs:
O(log n) per change, and a page of the oldest costs a walk over its own entries, not over the
100,000 unfinished jobs a scan would read."""

from __future__ import annotations

from typing import Iterable, Iterator

from sortedcontainers import SortedList

Key = tuple[float, str]  # (created, id)


class CreatedIndex:
    def __init__(self) -> None:
        self.keys: SortedList = SortedList()

    def build(self, pairs: Iterable[tuple[float | None, str]]) -> None:
        self.keys = SortedList((created, job_id) for created, job_id in pairs if created is not None)

    def moved(self, job_id: str, old: float | None, new: float | None) -> None:
        """A job's `created` changed from `old` to `new` (None: unknown, or the job left)."""
        if old == new:
            return
        if old is not None:
            self.keys.discard((old, job_id))
        if new is not None:
            self.keys.add((new, job_id))

    def __len__(self) -> int:
        return len(self.keys)

    def ascending(self, after: Key | None = None) -> Iterator[Key]:
        """Keys after `after` (exclusive), oldest first."""
        if after is None:
            return iter(self.keys)
        return self.keys.irange(minimum=after, inclusive=(False, False))

    def descending(self, after: Key | None = None) -> Iterator[Key]:
        """Newest first, ties in id order (as the jobs list sorts them); after `after`, which is
        (created, id): created below it, or equal with a greater id."""
        top = None if after is None else (after[0], "\uffff")
        group: list[Key] = []
        for key in self.keys.irange(maximum=top, reverse=True):
            if group and key[0] != group[0][0]:
                yield from sorted(group)
                group = []
            if after is not None and key[0] == after[0] and key[1] <= after[1]:
                continue
            group.append(key)
        yield from sorted(group)
