"""A metric family as the collectors describe it: name, type, help, label names and the series.

Collectors produce these from the aggregates; `to_metric` turns one into prometheus_client's
`*MetricFamily` (for `collect()`, OpenMetrics and any registry user), and exposition.TextRenderer
renders it straight to the text format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.tracking.aggregates import Histogram


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # without the _total of a counter
    kind: str  # counter | gauge | histogram
    doc: str
    labelnames: tuple[str, ...]
    series: Mapping[tuple[str, ...], float | Histogram]

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name

    def to_metric(self) -> Metric:
        names = list(self.labelnames)
        if self.kind == "histogram":
            family = HistogramMetricFamily(self.name, self.doc, labels=names)
            for labels, h in self.series.items():
                family.add_metric(list(labels), buckets=h.cumulative(), sum_value=h.total)  # type: ignore[union-attr]
            return family
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(self.name, self.doc, labels=names)
        for labels, value in self.series.items():
            family.add_metric(list(labels), value)  # type: ignore[arg-type]
        return family


class FamilyCollector(Collector):
    """A collector whose families() yields Family descriptions; collect() converts them."""

    def families(self) -> Iterator[Family]:  # pragma: no cover - overridden
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        for family in self.families():
            yield family.to_metric()
