"""Prometheus metrics: read from the live objects at scrape time (no bookkeeping on the
hot path), served on `metrics.port` (0: off)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from tidelog.server import Broker


class BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        b = self.broker
        engine, topics, listener = b.engine, b.topics, b.listener
        if engine is None or topics is None or listener is None or b.dispatcher is None:
            return
        wal = engine.wal
        yield GaugeMetricFamily("tidelog_wal_used_bytes", "WAL bytes not yet trimmed",
                                value=wal.end_position - wal.trim_position)
        yield GaugeMetricFamily("tidelog_wal_capacity_bytes", "WAL capacity",
                                value=wal.capacity)
        stats = getattr(wal, "stats", None)
        if stats is not None:
            yield CounterMetricFamily("tidelog_wal_groups", "WAL group commits",
                                      value=stats.groups)
            yield CounterMetricFamily("tidelog_wal_records", "WAL records written",
                                      value=stats.records)
            yield CounterMetricFamily("tidelog_wal_sync_seconds", "Time in fdatasync",
                                      value=stats.sync_seconds)
        yield GaugeMetricFamily("tidelog_log_cache_bytes", "Data waiting for upload",
                                value=engine.cache.size)
        yield GaugeMetricFamily("tidelog_block_cache_bytes", "Read cache of object blocks",
                                value=engine.blocks.size)
        hits = CounterMetricFamily("tidelog_block_cache_lookups", "Block cache lookups",
                                   labels=["result"])
        hits.add_metric(["hit"], engine.blocks.hits)
        hits.add_metric(["miss"], engine.blocks.misses)
        yield hits
        yield CounterMetricFamily("tidelog_uploads", "Upload rounds committed",
                                  value=engine.uploads)
        yield CounterMetricFamily("tidelog_uploaded_bytes", "Bytes uploaded to objects",
                                  value=engine.uploaded_bytes)
        yield GaugeMetricFamily("tidelog_objects", "Objects referenced by metadata",
                                value=len(engine.index.objects))
        yield GaugeMetricFamily("tidelog_topics", "Topics", value=len(topics.topics))
        yield GaugeMetricFamily("tidelog_partitions", "Partitions",
                                value=sum(len(t.partitions) for t in topics.topics.values()))
        yield GaugeMetricFamily("tidelog_connections", "Open client connections",
                                value=len(listener.connections))
        reqs = CounterMetricFamily("tidelog_requests", "Requests handled", labels=["api"])
        for key, n in sorted(b.dispatcher.by_api.items()):
            reqs.add_metric([str(key)], n)
        yield reqs
        yield GaugeMetricFamily("tidelog_storage_failed", "1 once the engine stopped writes",
                                value=1 if engine.failed else 0)


def start_metrics_server(broker: Broker, port: int, host: str = "0.0.0.0") -> int:
    """Serve /metrics in a background thread; returns the bound port."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    registry.register(BrokerCollector(broker))
    server, _thread = start_http_server(port, host, registry=registry)
    return int(server.server_port)
