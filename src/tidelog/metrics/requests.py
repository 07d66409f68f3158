"""Kafka's request metrics (`kafka.network:type=RequestMetrics`): per request type, the
count by version and the time of each phase, as histograms in milliseconds.

The listener hands over one `RequestTiming` per answered request; `observe` is O(1) (five
bucket lookups). Phases, Kafka's names on Tidelog's event loop:
- request queue: frame read -> handler started (waiting for the event loop);
- local: handler running, WAL group commit included (Kafka's Local + Remote);
- response queue: handler done -> earlier responses on the connection written;
- response send: handing the response to the transport;
- total: frame read -> response handed over.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from kio.schema.index import api_key_map
from prometheus_client.core import CounterMetricFamily, Metric

from tidelog.metrics.families import histogram
from tidelog.net.server import RequestTiming
from tidelog.stream.wal.base import Histogram

MS_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
    5000.0, 10000.0, 30000.0,
)
PHASES: tuple[tuple[str, str], ...] = (
    ("totaltimems", "Time from request read to response sent"),
    ("requestqueuetimems", "Time a request waited before its handler ran"),
    ("localtimems", "Time in the request handler, WAL commit included"),
    ("responsequeuetimems", "Time a response waited for earlier responses on its connection"),
    ("responsesendtimems", "Time handing the response to the transport"),
)


def request_name(api_key: int) -> str:
    """Kafka's `request` label: `Produce`, `FetchConsumer`, `ListOffsets`, ..."""
    if api_key == 1:
        return "FetchConsumer"  # Kafka splits Fetch by caller; here only consumers fetch
    name = api_key_map.get(api_key)
    return "".join(w.capitalize() for w in name.split("_")) if name else str(api_key)


@dataclass(slots=True)
class ApiTimes:
    name: str
    versions: dict[int, int] = field(default_factory=dict)
    phases: tuple[Histogram, ...] = field(
        default_factory=lambda: tuple(Histogram(MS_BUCKETS) for _ in PHASES))


class RequestMetrics:
    def __init__(self) -> None:
        self.apis: dict[int, ApiTimes] = {}

    def observe(self, t: RequestTiming) -> None:
        a = self.apis.get(t.api_key)
        if a is None:
            a = self.apis[t.api_key] = ApiTimes(request_name(t.api_key))
        a.versions[t.api_version] = a.versions.get(t.api_version, 0) + 1
        total, queue, local, response_queue, send = a.phases
        total.observe((t.sent - t.received) * 1000)
        queue.observe((t.started - t.received) * 1000)
        local.observe((t.finished - t.started) * 1000)
        response_queue.observe((t.sending - t.finished) * 1000)
        send.observe((t.sent - t.sending) * 1000)

    def families(self) -> Iterator[Metric]:
        apis = sorted(list(self.apis.values()), key=lambda a: a.name)
        requests = CounterMetricFamily("kafka_network_requestmetrics_requests",
                                       "Requests answered, by request type and version",
                                       labels=["request", "version"])
        for a in apis:
            for version, n in sorted(dict(a.versions).items()):
                requests.add_metric([a.name, str(version)], n)
        yield requests
        for i, (phase, doc) in enumerate(PHASES):
            yield histogram(f"kafka_network_requestmetrics_{phase}", doc + " (ms)", ["request"],
                            (([a.name], a.phases[i]) for a in apis))
