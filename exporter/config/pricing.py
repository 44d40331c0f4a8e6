"""The price file (`pricing.file`): the user's own prices, parsed and checked once, and the look-up
of the entry in effect for a finished job.

Matching order, for a job of kind K, model M, finished at time T:
1. only entries of kind K whose `effective_from` is at or before T;
2. entries naming M exactly (`model:`) before entries whose `model_regex:` matches all of M;
3. among those, the latest `effective_from`; entries with the same `effective_from` go by their
   order in the file (first wins; two exact entries for the same kind, model and date are refused).
No entry: the job is unpriced (counted as such, never as zero cost).

This module knows only the file; errors are PriceFileError naming `prices[<index>].<key>`, which
config loading turns into a ConfigError naming `pricing.file` too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from exporter import KINDS

# Price keys, and the kinds whose answers report the unit each one is per.
PRICE_KEYS: dict[str, tuple[str, ...]] = {
    "per_million_prompt_tokens": ("chat",),
    "per_million_completion_tokens": ("chat",),
    "per_image": ("images",),
    "per_speech": ("speech",),
    "per_request": KINDS,
}
_ENTRY_KEYS = ("kind", "model", "model_regex", "effective_from", *PRICE_KEYS)
MAX_PRICE_FILE_BYTES = 4 * 1024 * 1024
MAX_CACHED_MODELS = 10_000


class PriceFileError(ValueError):
    """A price file that cannot be used; the message starts with the culprit's key path."""


@dataclass(frozen=True, slots=True)
class Price:
    """One entry of the price file; prices absent from the file are 0."""

    index: int  # position in the file's `prices` list: what the job record and errors name
    kind: str
    model: str | None
    model_regex: re.Pattern[str] | None
    effective_from: float  # Unix time
    per_million_prompt_tokens: float = 0.0
    per_million_completion_tokens: float = 0.0
    per_image: float = 0.0
    per_speech: float = 0.0
    per_request: float = 0.0

    def matches(self, model: str) -> bool:
        if self.model is not None:
            return self.model == model
        assert self.model_regex is not None
        return self.model_regex.fullmatch(model) is not None

    def cost(self, prompt_tokens: int, completion_tokens: int, results: int) -> float:
        """The estimated cost of one finished job from what its answer reported."""
        per_result = self.per_image if self.kind == "images" else self.per_speech if self.kind == "speech" else 0.0
        return (prompt_tokens * self.per_million_prompt_tokens / 1e6
                + completion_tokens * self.per_million_completion_tokens / 1e6
                + results * per_result + self.per_request)

    def describe(self) -> dict[str, Any]:
        """The entry as the job record shows it (the prices themselves, not only a reference, so
        that the record still says what was used after the file changes)."""
        shown: dict[str, Any] = {"entry": self.index, "kind": self.kind}
        if self.model is not None:
            shown["model"] = self.model
        else:
            assert self.model_regex is not None
            shown["model_regex"] = self.model_regex.pattern
        shown["effective_from"] = datetime.fromtimestamp(self.effective_from, timezone.utc).isoformat()
        for key, kinds in PRICE_KEYS.items():
            if self.kind in kinds:
                shown[key] = getattr(self, key)
        return shown


@dataclass(frozen=True)
class PriceTable:
    """The parsed price file; `lookup` answers the entry in effect for a job (or None)."""

    name: str  # the file's name as the config wrote it
    currency: str
    entries: tuple[Price, ...]
    # (kind, model) -> its matching entries in the order they win: exact first, then the latest
    # effective_from, then file order. Filled as models are seen, so that a job finishing costs no
    # regular expression; models are label values, few, but the cache is bounded all the same.
    _candidates: dict[tuple[str, str], tuple[Price, ...]] = field(default_factory=dict, compare=False, repr=False)
    _records: dict[int | None, str] = field(default_factory=dict, compare=False, repr=False)

    def record(self, entry: Price | None) -> str:
        """What a job's record keeps of the entry that priced it (None: none matched), as JSON text:
        made once per entry, as every job priced by it shows the same."""
        key = None if entry is None else entry.index
        text = self._records.get(key)
        if text is None:
            shown = {"entry": None} if entry is None else entry.describe()
            text = self._records[key] = json.dumps({"file": self.name, **shown, "currency": self.currency})
        return text

    def lookup(self, kind: str, model: str, finished: float) -> Price | None:
        candidates = self._candidates.get((kind, model))
        if candidates is None:
            if len(self._candidates) >= MAX_CACHED_MODELS:
                self._candidates.clear()
            matching = (e for e in self.entries if e.kind == kind and e.matches(model))
            candidates = tuple(sorted(matching, key=lambda e: (e.model is None, -e.effective_from, e.index)))
            self._candidates[(kind, model)] = candidates
        for entry in candidates:
            if entry.effective_from <= finished:
                return entry
        return None


def load_prices(file: Path, name: str, currency: str) -> PriceTable:
    """Read and check a price file (YAML, or JSON, which is YAML too); raise PriceFileError."""
    try:
        size = file.stat().st_size
        if size > MAX_PRICE_FILE_BYTES:
            raise PriceFileError(f"larger than {MAX_PRICE_FILE_BYTES} bytes")
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PriceFileError("no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_prices(text, name, currency)


def parse_prices(text: str, name: str, currency: str) -> PriceTable:
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise PriceFileError(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise PriceFileError(f"{where}{problem}") from None
    if not isinstance(data, dict) or set(data) != {"prices"} or not isinstance(data["prices"], list):
        raise PriceFileError("must be a mapping with one key, prices: a list of entries")
    entries = tuple(_entry(raw, i) for i, raw in enumerate(data["prices"]))
    _refuse_twins(entries)
    return PriceTable(name, currency, entries)


def _entry(raw: Any, index: int) -> Price:
    where = f"prices[{index}]"
    if not isinstance(raw, dict):
        raise PriceFileError(f"{where}: must be a mapping")
    for key in raw:
        if key not in _ENTRY_KEYS:
            raise PriceFileError(f"{where}.{key}: unknown key (known: {', '.join(_ENTRY_KEYS)})")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise PriceFileError(f"{where}.kind: must be one of {', '.join(KINDS)}, not {kind!r}")
    model, pattern = _model(raw, where)
    prices = {}
    for key, kinds in PRICE_KEYS.items():
        if key not in raw:
            continue
        if kind not in kinds:
            raise PriceFileError(f"{where}.{key}: does not apply to kind {kind} (only {', '.join(kinds)})")
        prices[key] = _amount(raw[key], f"{where}.{key}")
    if not prices:
        applicable = [k for k, kinds in PRICE_KEYS.items() if kind in kinds]
        raise PriceFileError(f"{where}: needs at least one price ({', '.join(applicable)})")
    if "effective_from" not in raw:
        raise PriceFileError(f"{where}.effective_from: required (a date such as 2026-01-01)")
    start = _moment(raw["effective_from"], f"{where}.effective_from")
    return Price(index, kind, model, pattern, start, **prices)


def _model(raw: dict[str, Any], where: str) -> tuple[str | None, re.Pattern[str] | None]:
    if ("model" in raw) == ("model_regex" in raw):
        raise PriceFileError(f"{where}: needs exactly one of model (an exact name) or model_regex")
    key = "model" if "model" in raw else "model_regex"
    value = raw[key]
    if not isinstance(value, str) or (key == "model" and not value):
        raise PriceFileError(f"{where}.{key}: must be a non-empty string, not {value!r}")
    if key == "model":
        return value, None
    try:
        return None, re.compile(value)
    except re.error as exc:
        raise PriceFileError(f"{where}.model_regex: not a regular expression ({exc})") from None


def _amount(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PriceFileError(f"{where}: must be a number of 0 or more, not {value!r}")
    return float(value)


def _moment(value: Any, where: str) -> float:
    """A date (00:00 UTC that day) or a date-time (UTC unless it has an offset), as Unix time."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(
                text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise PriceFileError(f"{where}: not a date (2026-01-01) or date-time (2026-01-01T12:00:00Z): "
                                 f"{text[:40]!r}") from None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    raise PriceFileError(f"{where}: must be a date such as 2026-01-01, not {value!r}")


def _refuse_twins(entries: tuple[Price, ...]) -> None:
    """Two exact entries for the same kind, model and moment: which one holds would be a guess."""
    seen: dict[tuple[str, str, float], int] = {}
    for entry in entries:
        if entry.model is None:
            continue
        key = (entry.kind, entry.model, entry.effective_from)
        if key in seen:
            raise PriceFileError(f"prices[{entry.index}]: same kind, model and effective_from as "
                                 f"prices[{seen[key]}]")
        seen[key] = entry.index
