"""GroupCommit: items added while writes run share the next write; up to `parallel` writes at once."""

from __future__ import annotations

import asyncio

import pytest

from exporter.tracking.proxied import GroupCommit


class Writes:
    """A write that blocks until released, recording each batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.fail: set[int] = set()
        self.running = self.most_running = 0  # writes under way now, and the most at once

    async def __call__(self, batch: list[int]) -> None:
        gate = asyncio.Event()
        self.batches.append(list(batch))
        self.gates.append(gate)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await gate.wait()
        finally:
            self.running -= 1
        if self.fail & set(batch):
            raise OSError("disk full")


async def _until(condition, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


def test_serial_writes_share_the_next_batch() -> None:
    async def main() -> None:
        writes = Writes()
        commit: GroupCommit[int] = GroupCommit(writes, parallel=1)
        first = asyncio.ensure_future(commit.add(1))
        await _until(lambda: len(writes.batches) == 1, "first write")
        later = [asyncio.ensure_future(commit.add(n)) for n in (2, 3, 4)]
        await asyncio.sleep(0.01)
        assert len(writes.batches) == 1  # one write at a time: the others wait for it
        writes.gates[0].set()
        await first
        await _until(lambda: len(writes.batches) == 2, "second write")
        assert writes.batches[1] == [2, 3, 4]
        assert not any(t.done() for t in later)
        writes.gates[1].set()
        await asyncio.gather(*later)
        assert writes.most_running == 1
    asyncio.run(main())


def test_parallel_writes_do_not_wait_for_a_running_one() -> None:
    async def main() -> None:
        writes = Writes()
        commit: GroupCommit[int] = GroupCommit(writes, parallel=2)
        first = asyncio.ensure_future(commit.add(1))
        await _until(lambda: len(writes.batches) == 1, "first write")
        second = asyncio.ensure_future(commit.add(2))
        await _until(lambda: len(writes.batches) == 2, "a second write while the first runs")
        writes.gates[1].set()
        await second  # written while the first write still runs
        assert not first.done()
        # Both slots busy: items queue and share the next free writer's batch.
        third = asyncio.ensure_future(commit.add(3))
        await _until(lambda: len(writes.batches) == 3, "third write")
        blocked = [asyncio.ensure_future(commit.add(n)) for n in (4, 5)]
        await asyncio.sleep(0.01)
        assert len(writes.batches) == 3 and writes.most_running == 2
        writes.gates[2].set()  # the third ends; its writer takes 4 and 5 together
        await third
        await _until(lambda: len(writes.batches) == 4, "batch of the queued")
        assert writes.batches[3] == [4, 5]
        for gate in writes.gates:
            gate.set()
        await asyncio.gather(first, *blocked)
        assert writes.most_running == 2
    asyncio.run(main())


def test_a_failed_write_fails_only_its_own_waiters() -> None:
    async def main() -> None:
        writes = Writes()
        writes.fail = {1}
        commit: GroupCommit[int] = GroupCommit(writes, parallel=2)
        bad = asyncio.ensure_future(commit.add(1))
        await _until(lambda: len(writes.batches) == 1, "first write")
        good = asyncio.ensure_future(commit.add(2))
        await _until(lambda: len(writes.batches) == 2, "second write")
        for gate in writes.gates:
            gate.set()
        await good
        with pytest.raises(OSError):
            await bad
        # The writer goes on after a failure: a later item is written.
        writes.fail = set()
        later = asyncio.ensure_future(commit.add(3))
        await _until(lambda: len(writes.batches) == 3, "later write")
        writes.gates[-1].set()
        await later
    asyncio.run(main())
