"""A metric family as the collectors describe it: name, type, help, label names and the series.

Collectors produce these from the aggregates; `to_metric` turns one into prometheus_client's
`*MetricFamily` (for `collect()`, OpenMetrics and any registry user), and exposition.TextRenderer
renders it straight to the text format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from exporter.tracking.aggregates import Histogram
from exporter.tracking.exemplars import Sighting


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # without the _total of a counter
    kind: str  # counter | gauge | histogram
    doc: str
    labelnames: tuple[str, ...]
    series: Mapping[tuple[str, ...], float | Histogram]
    # Only the OpenMetrics exposition shows exemplars (to_metric); the text renderer ignores them.
    # A histogram's: one per bucket (None: none yet); a counter's: one per series.
    exemplars: Mapping[tuple[str, ...], Sequence[Sighting | None] | Sighting] | None = None

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name

    def to_metric(self) -> Metric:
        names = list(self.labelnames)
        if self.kind == "histogram":
            family = HistogramMetricFamily(self.name, self.doc, labels=names)
            for labels, h in self.series.items():
                family.add_metric(list(labels), buckets=self._buckets(labels, h), sum_value=h.total)  # type: ignore[arg-type]
            return family
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.doc, labels=names)
            for labels, value in self.series.items():
                seen = self.exemplars.get(labels) if self.exemplars else None
                counter.add_metric(list(labels), value, exemplar=_exemplar(seen))  # type: ignore[arg-type]
            return counter
        gauge = GaugeMetricFamily(self.name, self.doc, labels=names)
        for labels, value in self.series.items():
            gauge.add_metric(list(labels), value)  # type: ignore[arg-type]
        return gauge

    def _buckets(self, labels: tuple[str, ...], h: Histogram) -> list[tuple]:
        buckets = h.cumulative()
        seen = self.exemplars.get(labels) if self.exemplars else None
        if not seen:
            return buckets  # type: ignore[return-value]
        return [(le, n, _exemplar(s)) if s is not None else (le, n)  # type: ignore[arg-type]
                for (le, n), s in zip(buckets, seen)]  # type: ignore[arg-type]


def _exemplar(seen: Sighting | None) -> Exemplar | None:
    if seen is None:
        return None
    # With tracing on, the job's trace id too (32 hex digits): Grafana's exemplar link opens the
    # trace. Both labels with their names are 82 characters, within OpenMetrics' limit of 128.
    labels = {"job_id": seen.job_id, "trace_id": seen.trace_id} if seen.trace_id else {"job_id": seen.job_id}
    return Exemplar(labels, seen.value, seen.at)


class FamilyCollector(Collector):
    """A collector whose families() yields Family descriptions; collect() converts them."""

    def families(self) -> Iterator[Family]:  # pragma: no cover - overridden
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        for family in self.families():
            yield family.to_metric()
