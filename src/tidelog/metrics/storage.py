"""Tidelog's own metric families (`tidelog_*`): the WAL, the caches, uploads and
compaction, object storage requests and contents, and bytes between zones: what a
diskless broker adds to Kafka's picture, and what the cost tool reads."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tidelog.api.traffic import Traffic
from tidelog.metrics.families import counter, gauge, histogram, labelled
from tidelog.objectstore.counting import ObjectStoreStats
from tidelog.partition.log_manager import LogManager
from tidelog.stream.engine import StreamEngine
from tidelog.stream.object_format import FOOTER, INDEX_ENTRY
from tidelog.stream.wal.base import WAL
from tidelog.zone.produce_proxy import ProxyStats
from tidelog.zone.remote_fetch import RemoteStats


def wal(w: WAL, engine: StreamEngine) -> Iterator[Metric]:
    s = w.stats
    yield counter("tidelog_wal_bytes_written", "Bytes written to the WAL medium, record "
                  "headers and padding included", s.bytes)
    yield counter("tidelog_wal_records", "Records made durable in the WAL", s.records)
    yield counter("tidelog_wal_groups", "WAL group commits (one write and one sync each)",
                  s.groups)
    yield counter("tidelog_wal_syncs", "WAL syncs (fdatasync, or PUT for an object WAL)",
                  s.syncs)
    yield histogram("tidelog_wal_append_seconds", "Time from WAL append to durable", [],
                    [([], s.append_latency)])
    yield histogram("tidelog_wal_sync_seconds", "Time per group write and sync", [],
                    [([], s.sync_latency)])
    yield histogram("tidelog_wal_group_bytes", "Bytes per group commit", [],
                    [([], s.group_bytes)])
    yield gauge("tidelog_wal_used_bytes", "WAL bytes written and not yet trimmed (uploaded)",
                w.end_position - w.trim_position)
    yield gauge("tidelog_wal_capacity_bytes", "WAL capacity", w.capacity)
    yield labelled(CounterMetricFamily, "tidelog_backpressure_waits",
                   "Appends that waited for room: in the engine (WAL or log cache full) or "
                   "in the WAL itself", ["stage"],
                   [(["engine"], engine.backpressure_waits), (["wal"], s.full_waits)])
    yield counter("tidelog_wal_full_timeouts", "WAL appends that gave up waiting for room",
                  s.full_timeouts)


def engine(e: StreamEngine) -> Iterator[Metric]:
    yield gauge("tidelog_log_cache_bytes", "Data in the log cache (not yet uploaded)",
                e.cache.size)
    yield counter("tidelog_log_cache_hits", "Reads served by the log cache alone",
                  e.log_cache_hits)
    yield counter("tidelog_log_cache_misses", "Reads that needed object data",
                  e.log_cache_misses)
    yield gauge("tidelog_block_cache_bytes", "Object blocks in the read cache", e.blocks.size)
    yield counter("tidelog_block_cache_hits", "Block lookups served from the cache",
                  e.blocks.hits)
    yield counter("tidelog_block_cache_misses", "Block lookups that read object storage",
                  e.blocks.misses)
    yield counter("tidelog_uploads", "Upload rounds committed", e.uploads)
    yield counter("tidelog_upload_bytes", "Data bytes uploaded to objects", e.uploaded_bytes)
    yield histogram("tidelog_upload_seconds", "Time per upload round: build, PUT, commit", [],
                    [([], e.upload_seconds)])
    own = e.stream_objects_written
    yield counter("tidelog_stream_set_objects_written", "Stream set objects written "
                  "(uploads and compaction)", e.objects_written - own)
    yield counter("tidelog_stream_objects_written", "Stream objects written (uploads and "
                  "compaction)", own)
    yield counter("tidelog_compactions", "Object compaction rounds that merged objects",
                  e.compactions)
    yield counter("tidelog_objects_compacted", "Objects merged away by compaction",
                  e.objects_compacted)
    yield counter("tidelog_objects_deleted", "Objects deleted from the object store",
                  e.catalog.deleted)
    yield counter("tidelog_orphan_objects_deleted", "Objects found in the object store "
                  "with no metadata record past the grace period, and deleted",
                  e.catalog.orphans_deleted)
    objects = dict(e.catalog.objects)
    blocks = dict(e.index.objects)
    yield gauge("tidelog_objectstore_objects", "Objects referenced by metadata", len(objects))
    yield gauge("tidelog_objectstore_stored_bytes", "Size of the objects referenced by "
                "metadata", sum(info.size + FOOTER.size + INDEX_ENTRY.size * len(
                    blocks.get(key, ())) for key, info in objects.items()))
    yield gauge("tidelog_storage_failed", "1 once the engine stopped taking writes",
                1 if e.failed else 0)


def object_store(stats: ObjectStoreStats) -> Iterator[Metric]:
    ops = sorted(dict(stats.operations).items())
    yield labelled(CounterMetricFamily, "tidelog_objectstore_requests",
                   "Object store requests", ["operation"],
                   (([op], s.requests) for op, s in ops))
    yield labelled(CounterMetricFamily, "tidelog_objectstore_bytes",
                   "Bytes sent (PUT) or received (GET, RANGE_GET)", ["operation"],
                   (([op], s.bytes) for op, s in ops))
    yield labelled(CounterMetricFamily, "tidelog_objectstore_errors",
                   "Object store requests that failed", ["operation"],
                   (([op], s.errors) for op, s in ops))
    yield histogram("tidelog_objectstore_request_seconds", "Object store request latency",
                    ["operation"], (([op], s.latency) for op, s in ops))


def zones(traffic: Traffic, node_id: int) -> Iterator[Metric]:
    yield labelled(CounterMetricFamily, "tidelog_zone_bytes",
                   "Kafka frame bytes by source and destination zone", [
                       "source_zone", "destination_zone", "kind", "traffic"],
                   sorted(dict(traffic.zones).items()))
    yield labelled(CounterMetricFamily, "tidelog_topic_zone_bytes",
                   "Record-batch bytes produced and fetched by clients, by topic and by "
                   "source and destination zone", ["topic", "source_zone", "destination_zone"],
                   sorted(dict(traffic.topic_zones).items()))
    yield labelled(GaugeMetricFamily, "tidelog_broker_info", "This broker's id and zone",
                   ["node_id", "zone"], [([str(node_id), traffic.zone], 1)])


def zone_produce(stats: ProxyStats, engine: StreamEngine) -> Iterator[Metric]:
    """Batches this broker wrote for zoned producers of partitions owned in other zones."""
    yield counter("tidelog_zone_produce_forwards", "Forward requests sent to owners in other "
                  "zones (control bytes: where the batches are in this WAL)", stats.forwards)
    yield counter("tidelog_zone_produce_bytes", "Record-batch bytes this broker wrote into its "
                  "WAL for partitions owned elsewhere (their owners read them from there)",
                  stats.bytes)
    yield gauge("tidelog_wal_pinned_bytes", "WAL bytes from the oldest proxied batch whose "
                "owner has not answered yet on", engine.pinned_bytes)


def zone_switches(flags: dict[str, bool]) -> Iterator[Metric]:
    """Where the dynamic zone switches stand on this broker (they change at run time)."""
    yield labelled(GaugeMetricFamily, "tidelog_zone_switch", "1 while a zone switch is on "
                   "here: fetch (zone.fetch.enable), routing (zone.routing.enable)",
                   ["switch"], [(["fetch"], float(flags.get("zone.fetch.enable", False))),
                                (["routing"], float(flags.get("zone.routing.enable", False)))])


def zone_fetch(stats: RemoteStats) -> Iterator[Metric]:
    """Fetches this broker served for zoned clients of partitions owned in other zones."""
    yield counter("tidelog_zone_fetch_requests", "TailIndex requests sent to owners in "
                  "other zones (control bytes: where the records are, not the records)",
                  stats.requests)
    yield labelled(CounterMetricFamily, "tidelog_zone_fetch_reads",
                   "Record bytes of other zones' partitions served to this zone's clients, "
                   "by where they were read: the owner's WAL on the shared volume, or objects",
                   ["source"], [(["wal"], stats.wal_bytes),
                                (["objects"], stats.object_bytes)])
    yield counter("tidelog_zone_fetch_wal_misses", "WAL records no longer where the owner "
                  "said (trimmed after their upload), read from objects instead",
                  stats.wal_misses)


def log_cleanup(lm: LogManager) -> Iterator[Metric]:
    yield counter("tidelog_retention_offsets_deleted", "Offsets removed by time and size "
                  "retention", lm.offsets_deleted)
    yield counter("tidelog_log_cleaner_runs", "Log compaction passes that rewrote a partition",
                  lm.cleaner_runs)
    yield counter("tidelog_log_cleaner_records_removed", "Records removed by log compaction "
                  "(superseded values, expired tombstones, aborted transactions)",
                  lm.records_cleaned)
