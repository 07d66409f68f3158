"""`tidelog status`: a broker's key figures in the terminal, for someone without
Prometheus: the figures of the Grafana dashboard, read from the metrics endpoint like any
scraper would (this module knows the exposition format, not the broker).

With an interval it scrapes twice and shows rates and latency percentiles over that
interval; with `--interval 0` it shows totals and percentiles since the broker started.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_URL = "http://localhost:9464/metrics"
Labels = dict[str, str]


@dataclass(slots=True)
class Scrape:
    """Samples by their exposition name (`_total`, `_bucket`, `_sum`, `_count` included)."""

    samples: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)
    at: float = 0.0

    @classmethod
    def parse(cls, text: str, at: float = 0.0) -> Scrape:
        out = cls(at=at)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
        return out

    def series(self, name: str, **match: str) -> list[tuple[Labels, float]]:
        return [(labels, v) for labels, v in self.samples.get(name, [])
                if all(labels.get(k) == want for k, want in match.items())]

    def value(self, name: str, **match: str) -> float:
        """Sum over matching samples (0 when there is none)."""
        return sum(v for _, v in self.series(name, **match))

    def label_values(self, name: str, label: str) -> list[str]:
        return sorted({labels[label] for labels, _ in self.series(name) if label in labels})

    def buckets(self, name: str, **match: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of a histogram, summed over matching series."""
        acc: dict[float, float] = {}
        for labels, v in self.series(name + "_bucket", **match):
            le = float(labels["le"])
            acc[le] = acc.get(le, 0.0) + v
        return sorted(acc.items())


def scrape(url: str, timeout: float = 10.0) -> Scrape:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return Scrape.parse(resp.read().decode(), time.monotonic())


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' `histogram_quantile`: linear within the bucket holding the rank."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


class View:
    """The figures over an interval (`before` given) or since the start."""

    def __init__(self, now: Scrape, before: Scrape | None = None) -> None:
        self.now = now
        self.before = before
        self.seconds = (now.at - before.at) if before is not None else 0.0

    def total(self, name: str, **match: str) -> float:
        return self.now.value(name, **match)

    def delta(self, name: str, **match: str) -> float:
        base = self.before.value(name, **match) if self.before is not None else 0.0
        return self.now.value(name, **match) - base

    def rate(self, name: str, **match: str) -> float | None:
        return self.delta(name, **match) / self.seconds if self.seconds > 0 else None

    def quantile(self, q: float, name: str, **match: str) -> float:
        now = self.now.buckets(name, **match)
        if self.before is not None:
            old = dict(self.before.buckets(name, **match))
            now = [(le, c - old.get(le, 0.0)) for le, c in now]
        return quantile(q, now)

    def mean(self, name: str, **match: str) -> float:
        n = self.delta(name + "_count", **match)
        return self.delta(name + "_sum", **match) / n if n else math.nan


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


def _rate(v: View, name: str, fmt: str = "count", **match: str) -> str:
    r = v.rate(name, **match)
    if r is None:
        return ""
    return (human_bytes(r) if fmt == "bytes" else _count(r)) + "/s"


def _table(rows: Iterable[Iterable[str]], indent: str = "  ") -> list[str]:
    """A header row then data rows; the first column left-aligned, the others right-aligned,
    and a column with no data (rates without an interval) left out."""
    table = [list(r) for r in rows]
    if not table:
        return []
    keep = [i for i in range(len(table[0])) if len(table) == 1 or any(r[i] for r in table[1:])]
    table = [[r[i] for i in keep] for r in table]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return [indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in table]


def summarise(v: View, top: int = 10) -> list[str]:
    """The status report, line by line."""
    s = v.now
    info = s.series("tidelog_broker_info")
    node, zone = (info[0][0].get("node_id", "?"), info[0][0].get("zone", "?")) if info else (
        "?", "?")
    failed = s.value("tidelog_storage_failed")
    window = f"last {v.seconds:.1f} s" if v.before is not None else "since start"
    out = [
        f"Broker {node} (zone {zone}): {'STORAGE FAILED' if failed else 'storage OK'}, "
        f"{_count(s.value('kafka_server_socket_server_metrics_connection_count'))} connections, "
        f"{_count(s.value('kafka_controller_kafkacontroller_globaltopiccount'))} topics, "
        f"{_count(s.value('kafka_server_replicamanager_partitioncount'))} partitions "
        f"(rates and percentiles: {window})",
        "",
        "Traffic",
    ]
    btm = "kafka_server_brokertopicmetrics_"
    out += _table([
        ["", "total", "rate"],
        ["bytes in", human_bytes(v.total(btm + "bytesin_total")),
         _rate(v, btm + "bytesin_total", "bytes")],
        ["bytes out", human_bytes(v.total(btm + "bytesout_total")),
         _rate(v, btm + "bytesout_total", "bytes")],
        ["messages in", _count(v.total(btm + "messagesin_total")),
         _rate(v, btm + "messagesin_total")],
    ])
    topics = s.label_values(btm + "bytesin_total", "topic")
    topics = sorted(topics, key=lambda t: -v.total(btm + "bytesin_total", topic=t))[:top]
    if topics:
        out += ["", "Topics"]
        out += _table([["topic", "size", "bytes in", "bytes out", "messages in", "in rate"]] + [
            [t, human_bytes(s.value("kafka_log_log_size", topic=t)),
             human_bytes(v.total(btm + "bytesin_total", topic=t)),
             human_bytes(v.total(btm + "bytesout_total", topic=t)),
             _count(v.total(btm + "messagesin_total", topic=t)),
             _rate(v, btm + "bytesin_total", "bytes", topic=t)] for t in topics])
    out += _requests(v, top)
    out += _storage(v)
    out += _object_store(v)
    out += _zones(v)
    out += _groups(v, top)
    return out


def _requests(v: View, top: int) -> list[str]:
    rm = "kafka_network_requestmetrics_"
    names = v.now.label_values(rm + "requests_total", "request")
    names = sorted(names, key=lambda r: -v.delta(rm + "requests_total", request=r))[:top]
    if not names:
        return []
    rows = [["request", "count", "rate", "mean", "p99", "p99 queue", "p99 send"]]
    for r in names:
        rows.append([r, _count(v.total(rm + "requests_total", request=r)),
                     _rate(v, rm + "requests_total", request=r),
                     _ms(v.mean(rm + "totaltimems", request=r) / 1000),
                     _ms(v.quantile(0.99, rm + "totaltimems", request=r) / 1000),
                     _ms(v.quantile(0.99, rm + "requestqueuetimems", request=r) / 1000),
                     _ms(v.quantile(0.99, rm + "responsesendtimems", request=r) / 1000)])
    return ["", "Requests"] + _table(rows)


def _storage(v: View) -> list[str]:
    s = v.now
    used, cap = s.value("tidelog_wal_used_bytes"), s.value("tidelog_wal_capacity_bytes")
    groups = v.delta("tidelog_wal_groups_total")
    hits = v.delta("tidelog_log_cache_hits_total")
    misses = v.delta("tidelog_log_cache_misses_total")
    bhits = v.delta("tidelog_block_cache_hits_total")
    bmisses = v.delta("tidelog_block_cache_misses_total")
    return ["", "Storage"] + _pairs([
        ["WAL used", f"{human_bytes(used)} of {human_bytes(cap)}"
         + (f" ({100 * used / cap:.0f}%)" if cap else "")],
        ["WAL written", f"{human_bytes(v.total('tidelog_wal_bytes_written_total'))}  "
         f"{_rate(v, 'tidelog_wal_bytes_written_total', 'bytes')}"],
        ["WAL append p50 / p99", f"{_ms(v.quantile(0.5, 'tidelog_wal_append_seconds'))} / "
         f"{_ms(v.quantile(0.99, 'tidelog_wal_append_seconds'))}"],
        ["WAL sync p50 / p99", f"{_ms(v.quantile(0.5, 'tidelog_wal_sync_seconds'))} / "
         f"{_ms(v.quantile(0.99, 'tidelog_wal_sync_seconds'))}"],
        ["group commit (mean)", human_bytes(v.delta("tidelog_wal_bytes_written_total") / groups)
         if groups else "-"],
        ["back-pressure waits", _count(v.delta("tidelog_backpressure_waits_total"))],
        ["log cache", f"{human_bytes(s.value('tidelog_log_cache_bytes'))}, "
         f"{_ratio(hits, misses)} hits"],
        ["block cache", f"{human_bytes(s.value('tidelog_block_cache_bytes'))}, "
         f"{_ratio(bhits, bmisses)} hits"],
        ["uploads", f"{_count(v.delta('tidelog_uploads_total'))}, "
         f"{human_bytes(v.delta('tidelog_upload_bytes_total'))}, mean "
         f"{_ms(v.mean('tidelog_upload_seconds'))}"],
        ["objects written", f"{_count(v.delta('tidelog_stream_set_objects_written_total'))} "
         f"stream set, {_count(v.delta('tidelog_stream_objects_written_total'))} stream; "
         f"{_count(v.delta('tidelog_compactions_total'))} compactions"],
        ["objects stored", f"{_count(s.value('tidelog_objectstore_objects'))}, "
         f"{human_bytes(s.value('tidelog_objectstore_stored_bytes'))}"],
    ])


def _pairs(rows: list[list[str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [f"  {k.ljust(width)}  {v}".rstrip() for k, v in rows]


def _ratio(hits: float, misses: float) -> str:
    return f"{100 * hits / (hits + misses):.1f}%" if hits + misses else "-"


def _object_store(v: View) -> list[str]:
    ops = v.now.label_values("tidelog_objectstore_requests_total", "operation")
    rows = [["operation", "requests", "rate", "bytes", "errors", "p99"]]
    for op in ops:
        rows.append([op, _count(v.delta("tidelog_objectstore_requests_total", operation=op)),
                     _rate(v, "tidelog_objectstore_requests_total", operation=op),
                     human_bytes(v.delta("tidelog_objectstore_bytes_total", operation=op)),
                     _count(v.delta("tidelog_objectstore_errors_total", operation=op)),
                     _ms(v.quantile(0.99, "tidelog_objectstore_request_seconds",
                                    operation=op))])
    return ["", "Object store"] + _table(rows) if ops else []


def _zones(v: View) -> list[str]:
    rows = [["from -> to", "kind", "traffic", "bytes", "rate"]]
    for labels, _ in v.now.series("tidelog_zone_bytes_total"):
        match = {k: labels[k] for k in ("source_zone", "destination_zone", "kind", "traffic")}
        rows.append([f"{labels['source_zone']} -> {labels['destination_zone']}",
                     labels["kind"], labels["traffic"],
                     human_bytes(v.delta("tidelog_zone_bytes_total", **match)),
                     _rate(v, "tidelog_zone_bytes_total", "bytes", **match)])
    return ["", "Bytes between zones"] + _table(rows) if len(rows) > 1 else []


def _groups(v: View, top: int) -> list[str]:
    series = sorted(v.now.series("kafka_consumergroup_lag_sum"), key=lambda lv: -lv[1])[:top]
    if not series:
        return []
    return ["", "Consumer group lag"] + _table(
        [["group", "topic", "lag"]]
        + [[labels["consumergroup"], labels["topic"], _count(lag)] for labels, lag in series])


def run(out: TextIO, url: str = DEFAULT_URL, interval: float = 1.0, top: int = 10) -> None:
    """Scrape (twice, `interval` apart, when it is positive) and print the report."""
    before = scrape(url) if interval > 0 else None
    if before is not None:
        time.sleep(interval)
    now = scrape(url)
    for line in summarise(View(now, before), top):
        print(line, file=out)
