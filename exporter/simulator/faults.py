"""Fault injection settings: what share of answers goes wrong, and how."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

MALFORMED_KINDS = ("not_json", "wrong_shape", "huge")
DOWN_MODES = ("refuse", "503")


class FaultError(ValueError):
    """A fault setting that is out of range or unknown."""


@dataclass(slots=True)
class Faults:
    """The simulator's fault knobs; every ratio is a probability per `/async/` request."""

    error_500_ratio: float = 0.0
    error_429_ratio: float = 0.0
    retry_after_seconds: float = 5.0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    hang_ratio: float = 0.0
    malformed_ratio: float = 0.0
    malformed_kinds: list[str] = field(default_factory=lambda: list(MALFORMED_KINDS))
    huge_body_bytes: int = 10 * 1024 * 1024
    down: str | None = None
    down_seconds: float = 0.0

    HELP = {
        "error_500_ratio": "share of requests answered 500",
        "error_429_ratio": "share of requests answered 429 with Retry-After",
        "retry_after_seconds": "the Retry-After value sent with 429 (seconds)",
        "latency_ms": "fixed latency added to every request (ms)",
        "latency_jitter_ms": "random latency, uniform in [0, this], added on top (ms)",
        "hang_ratio": "share of requests that hang until the client gives up",
        "malformed_ratio": "share of result and OpenAI-compatible (/v1/) requests answered 200 with a "
                           "malformed body",
        "malformed_kinds": "comma-separated kinds of malformed body: not_json, wrong_shape, huge",
        "huge_body_bytes": "size of the 'huge' malformed body",
        "down": "refuse (close the listener) or 503 (answer 503 to everything); empty: up",
        "down_seconds": "with down: lift the outage by itself after this many seconds (0: stay down; "
                        "needed with refuse, which also closes the admin endpoints)",
    }

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update, checking every value before changing anything."""
        candidate = dataclasses.replace(self, malformed_kinds=list(self.malformed_kinds))
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise FaultError(f"unknown fault {key!r}")
            setattr(candidate, key, _coerce(key, value))
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(candidate, f.name))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def pick(self, rng: random.Random) -> str | None:
        """The fault for one request: '503', 'hang', '500', '429', 'malformed' or None."""
        if self.down == "503":
            return "503"
        for name, ratio in (("hang", self.hang_ratio), ("500", self.error_500_ratio),
                            ("429", self.error_429_ratio), ("malformed", self.malformed_ratio)):
            if ratio and rng.random() < ratio:
                return name
        return None

    def delay(self, rng: random.Random) -> float:
        """Seconds to wait before answering."""
        jitter = rng.uniform(0, self.latency_jitter_ms) if self.latency_jitter_ms else 0.0
        return (self.latency_ms + jitter) / 1000.0


def _coerce(key: str, value: Any) -> Any:
    if key == "down":
        if value in (None, "", "up", False):
            return None
        if value not in DOWN_MODES:
            raise FaultError(f"down must be one of {', '.join(DOWN_MODES)} or empty")
        return value
    if key == "malformed_kinds":
        kinds = value.split(",") if isinstance(value, str) else value
        if not isinstance(kinds, list) or not kinds or any(k not in MALFORMED_KINDS for k in kinds):
            raise FaultError(f"malformed_kinds must be a list of {', '.join(MALFORMED_KINDS)}")
        return list(kinds)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FaultError(f"{key} must be a number") from None
    if isinstance(value, bool) or number < 0 or (key.endswith("_ratio") and number > 1):
        raise FaultError(f"{key} must be {'from 0 to 1' if key.endswith('_ratio') else '>= 0'}")
    return int(number) if key == "huge_body_bytes" else number
