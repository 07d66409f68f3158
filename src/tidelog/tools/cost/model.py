"""What it costs per month: one `Estimate` per architecture, each with the same cost lines.

- compute: broker instances.
- block_file_storage: EBS gp3 for Kafka's replicas, FSx for a shared-file-system WAL.
- object_storage: S3 bytes retained (one copy: S3 keeps its own redundancy).
- requests: S3 PUT and GET requests.
- cross_az: bytes that cross a zone, paid where they leave and where they enter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tidelog.tools.cost.prices import Assumptions, Prices
from tidelog.tools.cost.sizing import (
    Workload,
    aku_needed,
    ceil,
    cross_zone_followers,
    diskless_nodes,
    fsx_choice,
    kafka_size,
    wal_capacity_gib,
)

LINES = ("compute", "block_file_storage", "object_storage", "requests", "cross_az")
LINE_TITLES = {
    "compute": "compute",
    "block_file_storage": "block/file storage",
    "object_storage": "object storage",
    "requests": "requests",
    "cross_az": "cross-AZ transfer",
}


@dataclass(slots=True)
class Estimate:
    key: str
    title: str
    lines: dict[str, float]
    sizing: dict[str, Any] = field(default_factory=dict)
    p99_ms: float | None = None

    @property
    def total(self) -> float:
        return sum(self.lines.values())

    def meets(self, latency_ms: float | None) -> bool | None:
        if latency_ms is None or self.p99_ms is None:
            return None
        return self.p99_ms <= latency_ms


def month_seconds(p: Prices) -> float:
    return p.month_hours * 3600


def compute_cost(instances: int, p: Prices) -> float:
    return instances * p.instance_hour * p.month_hours


def cross_az_cost(mibps: float, p: Prices) -> float:
    """A steady `mibps` crossing zones for a month, paid on both sides."""
    return mibps * month_seconds(p) / 1024 * 2 * p.cross_az_gb_each_way


def requests_cost(puts_per_s: float, gets_per_s: float, p: Prices) -> float:
    s = month_seconds(p)
    return (puts_per_s * p.s3_put_per_1000 + gets_per_s * p.s3_get_per_1000) * s / 1000


def fsx_cost(systems: list[tuple[float, float]], ssd_gib: float, p: Prices,
             a: Assumptions) -> float:
    """File systems of the given throughputs, each with `ssd_gib` of SSD and `a.fsx_iops`
    (IOPS beyond the 3 per GiB included are paid)."""
    extra_iops = max(0.0, a.fsx_iops - 3 * ssd_gib)
    each = ssd_gib * p.fsx_ssd_gb_month + extra_iops * p.fsx_iops_month
    return sum(mbps * p.fsx_throughput_mbps_month + each for mbps, _ in systems)


def kafka(w: Workload, p: Prices, a: Assumptions) -> Estimate:
    size = kafka_size(w, a)
    rf = a.kafka_replication_factor
    per_broker_mibps = w.write_mibps * rf / size.brokers
    gp3_extra = max(0.0, per_broker_mibps - a.gp3_baseline_mibps) * size.brokers
    producers = w.write_mibps * (w.azs - 1) / w.azs
    replication = w.write_mibps * cross_zone_followers(w, a)
    consumers = 0.0 if a.kafka_follower_fetching else w.read_mibps * (w.azs - 1) / w.azs
    cross = producers + replication + consumers
    return Estimate(
        "kafka", f"Kafka {w.azs}-AZ",
        {
            "compute": compute_cost(size.brokers, p),
            "block_file_storage": (size.provisioned_gib * p.ebs_gp3_gb_month
                                   + gp3_extra * p.ebs_gp3_mibps_month),
            "object_storage": 0.0,
            "requests": 0.0,
            "cross_az": cross_az_cost(cross, p),
        },
        {"brokers": size.brokers, "brokers_bound_by": size.bound,
         "instance_type": a.instance_type, "replication_factor": rf,
         "ebs_gib": round(size.provisioned_gib, 1),
         "gp3_extra_mibps": round(gp3_extra, 1),
         "cross_az_mibps": {"producers": round(producers, 3),
                            "replication": round(replication, 3),
                            "consumers": round(consumers, 3)}},
        a.p99_kafka_ms,
    )


@dataclass(frozen=True, slots=True)
class Uploads:
    """Object requests of the upload path and compaction, per second, cluster-wide."""

    puts: float
    gets: float
    object_mib: float
    """Size of one uploaded object."""


def uploads(w: Workload, nodes: int, a: Assumptions) -> Uploads:
    """Each broker uploads when `upload_mib` has gathered or `upload_interval_s` passed:
    one stream set object per round, or one stream object per partition when each
    partition has `stream_object_split_mib` in the round. Objects under
    `compaction_small_mib` are read back once (a GET each) and rewritten in rounds of
    `compaction_round_mib`."""
    per_node = w.write_mibps / nodes
    round_s = min(a.upload_interval_s, a.upload_mib / per_node)
    round_mib = per_node * round_s
    parts = w.partitions / nodes
    split = round_mib / parts >= a.stream_object_split_mib
    objects = ceil(parts) if split else 1
    puts = nodes / round_s * objects
    gets = 0.0
    object_mib = round_mib / objects
    if object_mib < a.compaction_small_mib:
        gets = puts
        outputs = ceil(parts) if a.compaction_round_mib / parts >= a.stream_object_split_mib \
            else 1
        puts += w.write_mibps / a.compaction_round_mib * outputs
    return Uploads(puts, gets, object_mib)


def _diskless(w: Workload, p: Prices, a: Assumptions) -> tuple[dict[str, float],
                                                              dict[str, Any], int]:
    """Lines and sizing both diskless variants share: compute from AKUs, one S3 copy,
    upload requests, and only control bytes across zones (producers write in their zone)."""
    aku, bound = aku_needed(w, a)
    nodes = diskless_nodes(aku, w, a)
    up = uploads(w, nodes, a)
    produce, fetch = w.requests_per_s(a)
    control = produce * (w.azs - 1) / w.azs * 2 * a.zone_control_bytes / 2**20
    lines = {
        "compute": compute_cost(nodes, p),
        "block_file_storage": 0.0,
        "object_storage": w.retained_gib * p.s3_gb_month,
        "requests": requests_cost(up.puts, up.gets, p),
        "cross_az": cross_az_cost(control, p),
    }
    sizing: dict[str, Any] = {
        "aku": aku, "aku_bound_by": bound, "nodes": nodes, "instance_type": a.instance_type,
        "requests_per_s": round(produce + fetch, 1),
        "s3_gib": round(w.retained_gib, 1), "upload_object_mib": round(up.object_mib, 2),
        "upload_puts_per_s": round(up.puts, 3), "upload_gets_per_s": round(up.gets, 3),
        "cross_az_control_mibps": round(control, 4),
    }
    return lines, sizing, nodes


def diskless_s3_wal(w: Workload, p: Prices, a: Assumptions) -> Estimate:
    """The WAL is S3 itself: each broker PUTs its pending records every `s3_wal_batch_ms`
    or `s3_wal_batch_mib`; a broker in each other zone reads every WAL object once (a
    proxy serving the owner's not-yet-uploaded tail)."""
    lines, sizing, nodes = _diskless(w, p, a)
    per_node = w.write_mibps / nodes
    wal_puts = nodes * max(1000 / a.s3_wal_batch_ms, per_node / a.s3_wal_batch_mib)
    wal_gets = wal_puts * (w.azs - 1)
    lines["requests"] += requests_cost(wal_puts, wal_gets, p)
    sizing.update(wal="S3", wal_puts_per_s=round(wal_puts, 3),
                  wal_gets_per_s=round(wal_gets, 3))
    return Estimate("s3_wal", "diskless S3 WAL", lines, sizing, a.p99_s3_wal_ms)


def diskless_fsx_wal(w: Workload, p: Prices, a: Assumptions) -> Estimate:
    """The WAL is a file per broker on FSx for NetApp ONTAP Multi-AZ, sized by write rate
    (the seed's table); its capacity is the WAL capacity split over the file systems, at
    least the FSx minimum. FSx Multi-AZ bills no cross-zone transfer (the seed)."""
    lines, sizing, _ = _diskless(w, p, a)
    systems = fsx_choice(w.write_mibps, a)
    wal_gib = wal_capacity_gib(w.write_mibps, a)
    ssd = max(a.fsx_min_ssd_gib, float(ceil(wal_gib / len(systems))))
    lines["block_file_storage"] = fsx_cost(systems, ssd, p, a)
    sizing.update(wal="FSx", fsx=[int(mbps) for mbps, _ in systems],
                  fsx_write_mibps=sum(m for _, m in systems), fsx_ssd_gib=ssd,
                  fsx_iops=a.fsx_iops, wal_capacity_gib=round(wal_gib, 1))
    return Estimate("fsx_wal", "diskless FSx WAL", lines, sizing, a.p99_fsx_wal_ms)


def estimate_all(w: Workload, p: Prices, a: Assumptions) -> list[Estimate]:
    return [kafka(w, p, a), diskless_s3_wal(w, p, a), diskless_fsx_wal(w, p, a)]


def recommend(estimates: list[Estimate], latency_ms: float | None) -> Estimate | None:
    """The cheapest estimate that meets the latency target (any, without a target)."""
    fit = [e for e in estimates if e.meets(latency_ms) is not False]
    return min(fit, key=lambda e: e.total) if fit else None
