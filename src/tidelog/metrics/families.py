"""Building blocks for scrape-time metric families: fixed-bucket histograms turned into
Prometheus histograms, and one-line counters and gauges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)


class BucketHistogram(Protocol):
    """What the WAL, the engine, the object store wrapper and the request metrics keep:
    per-bucket (not cumulative) counts for fixed upper bounds, plus +Inf, and a sum."""

    bounds: tuple[float, ...]
    counts: list[int]
    total: float


def histogram(name: str, doc: str, labels: Sequence[str],
              series: Iterable[tuple[Sequence[str], BucketHistogram]]) -> HistogramMetricFamily:
    """Cumulate each histogram's buckets; `_count` is the +Inf bucket, so a scrape racing
    an observation still sees consistent buckets."""
    fam = HistogramMetricFamily(name, doc, labels=list(labels))
    for values, h in series:
        counts = list(h.counts)  # one copy: the event loop keeps observing
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip(h.bounds, counts, strict=False):
            running += n
            buckets.append((_le(bound), running))
        buckets.append(("+Inf", running + counts[-1]))
        fam.add_metric(list(values), buckets, h.total)
    return fam


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def labelled(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, doc: str,
             labels: Sequence[str], rows: Iterable[tuple[Sequence[str], float]]) -> Metric:
    fam = kind(name, doc, labels=list(labels))
    for values, value in rows:
        fam.add_metric(list(values), value)
    return fam


def _le(bound: float) -> str:
    return repr(float(bound))
