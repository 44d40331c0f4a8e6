"""When to ask about a job again: pure functions, so that the policy is easy to test and to read."""

from __future__ import annotations

import random


def next_interval(current: float, changed: bool, base: float, cap: float) -> float:
    """The wait before the next poll of an unfinished job.

    `base` after a change of status (or the first answer), else double the last wait, up to `cap`:
    a job that sits in the queue for an hour costs a handful of requests, not 240.
    """
    if changed or current <= 0:
        return base
    return min(current * 2.0, cap)


def error_delay(errors: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait after `errors` failures in a row: exponential from `base`, capped, with jitter.

    The jitter (50 %–100 % of the step) spreads retries out, so that jobs that failed together
    (the API was down) do not all come back in the same second.
    """
    step = min(cap, base * 2.0 ** max(0, errors - 1))
    return step * (rng or random).uniform(0.5, 1.0)


def auth_pause(failures: int, base: float, cap: float) -> float:
    """How long every request waits after `failures` refused keys in a row."""
    return min(cap, base * 2.0 ** max(0, failures - 1))
