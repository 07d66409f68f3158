"""Metric families under the names Kafka's JMX exporter gives Kafka's own metrics
(`kafka.server<type=BrokerTopicMetrics, name=BytesInPerSec, topic=T>` ->
`kafka_server_brokertopicmetrics_bytesin_total{topic}`), so existing dashboards and alerts
work; consumer-group lag uses kafka_exporter's names, the de facto standard for it.

Everything is read from live objects at scrape time, in the HTTP server's thread: each
container the event loop mutates is copied with one `list()`/`dict()` call first.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tidelog.api.traffic import Traffic
from tidelog.coordinator.offsets import OffsetStore
from tidelog.metrics.families import gauge, labelled
from tidelog.net.server import KafkaListener
from tidelog.partition.partition import Partition
from tidelog.partition.topics import TopicManager
from tidelog.stream.engine import StreamEngine

BTM = "kafka_server_brokertopicmetrics_"


def topic_traffic(traffic: Traffic) -> Iterator[Metric]:
    topics = sorted(dict(traffic.topics).items())
    yield labelled(CounterMetricFamily, BTM + "bytesin", "Record-batch bytes produced",
                   ["topic"], (([name], t.bytes_in) for name, t in topics))
    yield labelled(CounterMetricFamily, BTM + "bytesout", "Record-batch bytes fetched",
                   ["topic"], (([name], t.bytes_out) for name, t in topics))
    yield labelled(CounterMetricFamily, BTM + "messagesin", "Records produced",
                   ["topic"], (([name], t.messages_in) for name, t in topics))


def _partitions(topics: TopicManager) -> list[tuple[str, Partition]]:
    return [(name, p) for name, t in sorted(dict(topics.topics).items())
            for _, p in sorted(t.owned.items())]


def partitions(topics: TopicManager, engine: StreamEngine) -> Iterator[Metric]:
    parts = _partitions(topics)
    n = len(parts)
    yield gauge("kafka_server_replicamanager_partitioncount", "Partitions on this broker", n)
    yield gauge("kafka_server_replicamanager_leadercount",
                "Partitions this broker leads (all of its partitions)", n)
    yield gauge("kafka_server_replicamanager_underreplicatedpartitions",
                "Always 0: durability comes from the WAL and object storage, not replicas", 0)
    yield gauge("kafka_server_replicamanager_underminisrpartitioncount",
                "Always 0: there is no ISR to fall below", 0)
    yield gauge("kafka_controller_kafkacontroller_globaltopiccount", "Topics, internal ones "
                "included", len(dict(topics.topics)))
    yield gauge("kafka_controller_kafkacontroller_globalpartitioncount", "Partitions", n)
    start = GaugeMetricFamily("kafka_log_log_logstartoffset", "First offset of the log",
                              labels=["topic", "partition"])
    end = GaugeMetricFamily("kafka_log_log_logendoffset", "Offset after the last durable "
                            "record (the high watermark)", labels=["topic", "partition"])
    size = GaugeMetricFamily("kafka_log_log_size", "Bytes the partition holds from its start "
                             "offset: objects and log cache (bytes)",
                             labels=["topic", "partition"])
    for name, p in parts:
        labels = [name, str(p.index)]
        start.add_metric(labels, p.log_start_offset)
        end.add_metric(labels, p.high_watermark)
        size.add_metric(labels, stream_size(engine, p))
    yield start
    yield end
    yield size


def stream_size(engine: StreamEngine, p: Partition) -> int:
    """Bytes of the partition's stream at or after its start offset, in objects (block
    bytes, 20 bytes of framing per batch included) and in the log cache."""
    sid, start, confirm = p.stream.stream_id, p.log_start_offset, p.high_watermark
    n = sum(b.size for _, b in list(engine.index.blocks(sid)) if b.end_offset > start)
    return n + sum(len(e.payload) for e in list(engine.cache.entries(sid))
                   if e.last_offset < confirm)


def consumer_groups(offsets: OffsetStore, topics: TopicManager) -> Iterator[Metric]:
    labels = ["consumergroup", "topic", "partition"]
    current = GaugeMetricFamily("kafka_consumergroup_current_offset",
                                "Committed offset of the group", labels=labels)
    lag = GaugeMetricFamily("kafka_consumergroup_lag", "Log end offset minus committed "
                            "offset (messages)", labels=labels)
    lag_sum = GaugeMetricFamily("kafka_consumergroup_lag_sum", "Lag summed over the topic's "
                                "partitions (messages)", labels=["consumergroup", "topic"])
    for group in sorted(offsets.groups()):
        sums: dict[str, int] = {}
        for topic, index in offsets.partitions(group):
            committed = offsets.fetch(group, topic, index)
            p = topics.partition(topic, index)
            if committed is None or p is None:
                continue
            behind = max(p.high_watermark - committed[0], 0)
            current.add_metric([group, topic, str(index)], committed[0])
            lag.add_metric([group, topic, str(index)], behind)
            sums[topic] = sums.get(topic, 0) + behind
        for topic, n in sorted(sums.items()):
            lag_sum.add_metric([group, topic], n)
    yield current
    yield lag
    yield lag_sum


def connections(listeners: list[KafkaListener], own_zone: str) -> Iterator[Metric]:
    yield labelled(GaugeMetricFamily, "kafka_server_socket_server_metrics_connection_count",
                   "Open client connections", ["listener"],
                   [([li.name], len(li.connections)) for li in listeners])
    by_zone: dict[tuple[str, str], int] = {}
    for li in listeners:
        for conn in li.connections:
            key = (conn.info.zone or own_zone, conn.info.how)
            by_zone[key] = by_zone.get(key, 0) + 1
    yield labelled(GaugeMetricFamily, "tidelog_connections",
                   "Open client connections by zone and by how the zone was found "
                   "(listener, cidr, client_id, rack; none: counted in the broker's zone)",
                   ["zone", "how"], [([z, how], n) for (z, how), n in sorted(by_zone.items())])
