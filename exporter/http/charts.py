"""The status page's charts as geometry: the numbers an SVG template draws (templates/_chart.html).

Drawn by the exporter itself, server-side: nothing is loaded from anywhere else, and the page works
offline and without script. Each chart is a dict: its size, its y scale, its axis labels, its
legend, and lines (SVG polyline points) or bars (rectangles), each with a tooltip title.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Sequence

from exporter.tracking.timeline import Sample

WIDTH, HEIGHT = 540, 180
LEFT, BOTTOM, TOP = 44, 20, 8  # room for the y labels, the x labels, the top line
PALETTE = ("#3274d9", "#e0752d", "#56a64b", "#c4162a", "#8f3bb8", "#b8a41c", "#1f9e9e", "#6e6e6e", "#d44a9a")
HOUR, MINUTE = 3600.0, 60.0
MIN_SPAN = 600.0  # a young exporter's charts span at least ten minutes
Chart = dict[str, Any]


def _nice(top: float) -> float:
    """A round number at or above `top` for the y scale (1, 2, 5 x 10^n)."""
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= top)


def _frame(title: str, y_max: float, x_labels: list[tuple[float, str]], legend: list[tuple[str, str]]) -> Chart:
    plot_h = HEIGHT - BOTTOM - TOP
    y_labels = [(round(TOP + plot_h - plot_h * f, 1), _short(y_max * f)) for f in (0, 0.5, 1)]
    return {"title": title, "width": WIDTH, "height": HEIGHT, "left": LEFT, "top": TOP, "bottom": HEIGHT - BOTTOM,
            "right": WIDTH - 4, "y_labels": y_labels, "x_labels": x_labels, "legend": legend,
            "lines": [], "bars": [], "empty": True}


def _short(value: float) -> str:
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _x(t: float, start: float, end: float) -> float:
    return LEFT + (WIDTH - 4 - LEFT) * (t - start) / (end - start)


def _y(v: float, y_max: float) -> float:
    return HEIGHT - BOTTOM - (HEIGHT - BOTTOM - TOP) * v / y_max


def _time_labels(start: float, end: float) -> list[tuple[float, str, str]]:
    return [(_x(t, start, end), time.strftime("%H:%M", time.gmtime(t)), anchor)
            for t, anchor in ((start, "start"), (start + (end - start) / 2, "middle"), (end, "end"))]


def window(samples: Sequence[Sample], now: float) -> float:
    """Where the time axis starts: an hour ago, or the first sample (at least MIN_SPAN ago)."""
    first = samples[0].at if samples else now
    return now - min(HOUR, max(MIN_SPAN, now - first))


def status_lines(samples: Sequence[Sample], now: float) -> Chart:
    """Unfinished jobs by status over the last hour, one line per status."""
    start = window(samples, now)
    statuses = sorted({s for sample in samples for s in sample.unfinished})
    top = max((n for sample in samples for n in sample.unfinished.values()), default=0)
    y_max = _nice(top)
    chart = _frame("Unfinished jobs by status (last hour)", y_max, _time_labels(start, now),
                   [(PALETTE[i % len(PALETTE)], s) for i, s in enumerate(statuses)])
    for i, status in enumerate(statuses):
        points = " ".join(f"{_x(max(s.at, start), start, now):.1f},{_y(s.unfinished.get(status, 0), y_max):.1f}"
                          for s in samples if s.at >= start - 60)
        latest = samples[-1].unfinished.get(status, 0)
        chart["lines"].append({"color": PALETTE[i % len(PALETTE)], "points": points,
                               "title": f"{status}: {latest} now"})
    chart["empty"] = not statuses
    return chart


def per_minute(samples: Sequence[Sample], now: float, counts: Any) -> list[dict[str, int]]:
    """For each minute of the window (oldest first), what `counts(sample)` (a dict of counters)
    grew by in it."""
    start = window(samples, now)
    slots = max(1, math.ceil((now - start) / MINUTE))
    minutes: list[dict[str, int]] = [{} for _ in range(slots)]
    for before, after in zip(samples, samples[1:]):
        if after.at <= start:
            continue
        slot = min(slots - 1, int((after.at - start) // MINUTE))
        old, new = counts(before), counts(after)
        for key, value in new.items():
            grown = value - old.get(key, 0)
            if grown > 0:
                minutes[slot][key] = minutes[slot].get(key, 0) + grown
    return minutes


def stacked_minutes(title: str, minutes: list[dict[str, int]], keys: Iterable[str], now: float) -> Chart:
    """Bars per minute, each stacked by key."""
    keys = list(keys)
    top = max((sum(m.values()) for m in minutes), default=0)
    y_max = _nice(top)
    start = now - len(minutes) * MINUTE
    chart = _frame(title, y_max, _time_labels(start, now), [(PALETTE[i % len(PALETTE)], k) for i, k in enumerate(keys)])
    slot_w = (WIDTH - 4 - LEFT) / len(minutes)
    for m, counts in enumerate(minutes):
        base = 0
        label = time.strftime("%H:%M", time.gmtime(start + m * MINUTE))
        for i, key in enumerate(keys):
            n = counts.get(key, 0)
            if not n:
                continue
            y_top, y_bottom = _y(base + n, y_max), _y(base, y_max)
            chart["bars"].append({"x": round(LEFT + m * slot_w + 0.5, 1), "y": round(y_top, 1),
                                  "w": round(max(slot_w - 1, 1), 1), "h": round(y_bottom - y_top, 1),
                                  "color": PALETTE[i % len(PALETTE)], "title": f"{label} {key}: {n}"})
            base += n
    chart["empty"] = top == 0
    return chart


def latency_bars(samples: Sequence[Sample], bounds: tuple[float, ...], now: float) -> Chart:
    """Jobs finished in the last hour per duration bucket, grouped by kind."""
    oldest = next((s for s in samples if s.at >= now - HOUR), samples[0])
    newest = samples[-1]
    kinds = sorted(newest.durations)
    grown = {k: [n - (oldest.durations.get(k) or (0,) * len(v))[i] for i, n in enumerate(v)]
             for k, v in newest.durations.items()}
    labels = [f"≤{b:g}s" for b in bounds] + [f">{bounds[-1]:g}s" if bounds else "all"]
    top = max((n for v in grown.values() for n in v), default=0)
    y_max = _nice(top)
    chart = _frame("Duration of jobs finished in the last hour, by kind", y_max, [],
                   [(PALETTE[i % len(PALETTE)], k) for i, k in enumerate(kinds)])
    slot_w = (WIDTH - 4 - LEFT) / max(1, len(labels))
    bar_w = max(1.0, (slot_w - 2) / max(1, len(kinds)))
    for b, label in enumerate(labels):
        if b % max(1, len(labels) // 6) == 0:
            chart["x_labels"].append((LEFT + b * slot_w + slot_w / 2, label, "middle"))
        for i, kind in enumerate(kinds):
            n = grown[kind][b] if b < len(grown[kind]) else 0
            if n <= 0:
                continue
            y_top = _y(n, y_max)
            chart["bars"].append({"x": round(LEFT + b * slot_w + 1 + i * bar_w, 1), "y": round(y_top, 1),
                                  "w": round(bar_w, 1), "h": round(HEIGHT - BOTTOM - y_top, 1),
                                  "color": PALETTE[i % len(PALETTE)], "title": f"{kind} {label}: {n}"})
    chart["empty"] = top == 0
    return chart


def charts(samples: Sequence[Sample], bounds: tuple[float, ...], now: float) -> list[Chart]:
    """The four charts of the status page, from the ring's samples (the last one is now)."""
    finished = per_minute(samples, now, lambda s: s.finished)
    api = per_minute(samples, now, lambda s: {"ok": s.requests - s.errors, "failed": s.errors})
    kinds = sorted({k for s in samples for k in s.finished})
    return [status_lines(samples, now),
            stacked_minutes("Jobs finished per minute, by kind", finished, kinds, now),
            latency_bars(samples, bounds, now),
            stacked_minutes("API result requests per minute (ok and failed)", api, ("ok", "failed"), now)]
