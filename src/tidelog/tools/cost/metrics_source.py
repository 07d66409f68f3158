"""What a running cluster did: scrape each broker's Prometheus endpoint twice and take the
counter deltas the cost model prices (names from the broker's metrics contract).

A counter lower in the second scrape was reset (the broker restarted): its delta is the
second value, as Prometheus' `increase()` counts it.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from tidelog.tools.cost.prices import CostInputError

BYTES_IN = "kafka_server_brokertopicmetrics_bytesin_total"
BYTES_OUT = "kafka_server_brokertopicmetrics_bytesout_total"
MESSAGES_IN = "kafka_server_brokertopicmetrics_messagesin_total"
OBJECT_REQUESTS = "tidelog_objectstore_requests_total"
OBJECT_BYTES = "tidelog_objectstore_bytes_total"
WAL_BYTES = "tidelog_wal_bytes_written_total"
ZONE_BYTES = "tidelog_zone_bytes_total"
TOPIC_ZONE_BYTES = "tidelog_topic_zone_bytes_total"
STORED_BYTES = "tidelog_objectstore_stored_bytes"
COUNTERS = (BYTES_IN, BYTES_OUT, MESSAGES_IN, OBJECT_REQUESTS, OBJECT_BYTES, WAL_BYTES,
            ZONE_BYTES, TOPIC_ZONE_BYTES)

# S3 bills LIST at the PUT rate and HEAD at the GET rate; DELETE is free.
PUT_CLASS = ("PUT", "LIST")
GET_CLASS = ("GET", "RANGE_GET", "HEAD")

class ScrapeError(CostInputError):
    """An endpoint did not answer (the command exits 1, not 2)."""


Labels = tuple[tuple[str, str], ...]
Scrape = dict[str, dict[Labels, float]]
"""Sample name -> label set -> value, for one broker."""


def parse_exposition(text: str) -> Scrape:
    out: Scrape = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = float(s.value)
    except ValueError as exc:
        raise CostInputError(f"not a Prometheus exposition: {exc}") from exc
    return out


def metrics_url(url: str) -> str:
    """`host:port` or a URL without a path means its `/metrics`."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    return url if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}/metrics"


def fetch_text(url: str, timeout: float = 10.0) -> str:
    try:
        with urllib.request.urlopen(metrics_url(url), timeout=timeout) as resp:
            body: bytes = resp.read()
    except OSError as exc:
        raise ScrapeError(f"cannot scrape {url}: {exc}") from exc
    return body.decode("utf-8", "replace")


def _delta(before: Scrape, after: Scrape, name: str) -> dict[Labels, float]:
    old = before.get(name, {})
    out = {}
    for labels, value in after.get(name, {}).items():
        prev = old.get(labels, 0.0)
        out[labels] = value - prev if value >= prev else value
    return out


def _by(deltas: Iterable[dict[Labels, float]], label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in deltas:
        for labels, v in d.items():
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


@dataclass(frozen=True, slots=True)
class RunUsage:
    """What the cluster did between two scrapes, summed over its brokers."""

    seconds: float
    brokers: int
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    messages_in: float = 0.0
    requests: dict[str, float] = field(default_factory=dict)
    """Object store requests by operation."""
    object_bytes: dict[str, float] = field(default_factory=dict)
    wal_bytes: float = 0.0
    zone_bytes: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    """(source zone, destination zone, kind, traffic) -> bytes."""
    topic_zone_bytes: dict[tuple[str, str, str], float] = field(default_factory=dict)
    """(topic, source zone, destination zone) -> client record bytes."""
    stored_bytes: float = 0.0
    """Object bytes referenced at the second scrape (a gauge)."""
    missing: tuple[str, ...] = ()
    """Contract metrics no broker exported."""

    @property
    def puts(self) -> float:
        return sum(self.requests.get(op, 0.0) for op in PUT_CLASS)

    @property
    def gets(self) -> float:
        return sum(self.requests.get(op, 0.0) for op in GET_CLASS)

    def cross_zone_bytes(self) -> dict[str, float]:
        """Bytes whose source and destination zones differ, by kind (data, control)."""
        out: dict[str, float] = {}
        for (src, dst, kind, _), v in self.zone_bytes.items():
            if src != dst and v > 0:
                out[kind] = out.get(kind, 0.0) + v
        return out

    def cross_zone_by_topic(self) -> dict[str, tuple[float, float]]:
        """topic -> (record bytes that crossed zones, all its client record bytes)."""
        return cross_zone_by_topic((t, src, dst, v)
                                   for (t, src, dst), v in self.topic_zone_bytes.items())

    def rate(self, total: float) -> float:
        return total / self.seconds

    def to_dict(self) -> dict[str, object]:
        return {
            "seconds": self.seconds, "brokers": self.brokers,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "messages_in": self.messages_in, "object_requests": dict(self.requests),
            "object_bytes": dict(self.object_bytes), "wal_bytes": self.wal_bytes,
            "cross_zone_bytes": self.cross_zone_bytes(),
            "zone_bytes": [{"source_zone": s, "destination_zone": d, "kind": k,
                            "traffic": t, "bytes": v}
                           for (s, d, k, t), v in sorted(self.zone_bytes.items())],
            "cross_zone_by_topic": [{"topic": t, "crossed_bytes": c, "bytes": n}
                                    for t, (c, n) in sorted(self.cross_zone_by_topic().items())],
            "stored_bytes": self.stored_bytes, "missing_metrics": list(self.missing),
        }


def cross_zone_by_topic(rows: Iterable[tuple[str, str, str, float]]
                        ) -> dict[str, tuple[float, float]]:
    """(topic, source zone, destination zone, bytes) rows of `tidelog_topic_zone_bytes` ->
    topic -> (bytes that crossed zones, all its bytes)."""
    out: dict[str, tuple[float, float]] = {}
    for topic, src, dst, v in rows:
        crossed, total = out.get(topic, (0.0, 0.0))
        out[topic] = (crossed + (v if src != dst else 0.0), total + v)
    return out


def usage_between(before: list[Scrape], after: list[Scrape], seconds: float) -> RunUsage:
    """Deltas of broker i's scrapes `before[i]` -> `after[i]`, summed over brokers."""
    if len(before) != len(after) or not after:
        raise CostInputError("need one scrape before and one after for each broker")
    if seconds <= 0:
        raise CostInputError("the interval must be positive")
    deltas = {n: [_delta(b, a, n) for b, a in zip(before, after, strict=True)]
              for n in COUNTERS}

    def total(name: str) -> float:
        return sum(sum(d.values()) for d in deltas[name])

    zone: dict[tuple[str, str, str, str], float] = {}
    for d in deltas[ZONE_BYTES]:
        for labels, v in d.items():
            lab = dict(labels)
            key = (lab.get("source_zone", ""), lab.get("destination_zone", ""),
                   lab.get("kind", ""), lab.get("traffic", ""))
            zone[key] = zone.get(key, 0.0) + v
    topic_zone: dict[tuple[str, str, str], float] = {}
    for d in deltas[TOPIC_ZONE_BYTES]:
        for labels, v in d.items():
            lab = dict(labels)
            tkey = (lab.get("topic", ""), lab.get("source_zone", ""),
                    lab.get("destination_zone", ""))
            topic_zone[tkey] = topic_zone.get(tkey, 0.0) + v
    present = {n for s in after for n in s}
    return RunUsage(
        seconds=seconds, brokers=len(after),
        bytes_in=total(BYTES_IN), bytes_out=total(BYTES_OUT), messages_in=total(MESSAGES_IN),
        requests=_by(deltas[OBJECT_REQUESTS], "operation"),
        object_bytes=_by(deltas[OBJECT_BYTES], "operation"),
        wal_bytes=total(WAL_BYTES), zone_bytes=zone, topic_zone_bytes=topic_zone,
        stored_bytes=sum(sum(s.get(STORED_BYTES, {}).values()) for s in after),
        missing=tuple(n for n in (*COUNTERS, STORED_BYTES) if n not in present),
    )


def measure(urls: list[str], interval: float,
            fetch: Callable[[str], str] = fetch_text,
            sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic,
            on_first: Callable[[], None] | None = None) -> RunUsage:
    """Scrape every URL, wait `interval` seconds, scrape again; the usage in between.
    `on_first` runs once the first scrapes are in (to tell a user the clock runs)."""
    if not urls:
        raise CostInputError("name at least one metrics URL")
    if interval <= 0:
        raise CostInputError("the interval must be positive")
    before = [parse_exposition(fetch(u)) for u in urls]
    started = clock()
    if on_first is not None:
        on_first()
    sleep(interval)
    after = [parse_exposition(fetch(u)) for u in urls]
    return usage_between(before, after, clock() - started)
