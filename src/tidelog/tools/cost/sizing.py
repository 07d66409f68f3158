"""How big: the workload, AKUs (the seed's capacity unit), FSx file systems for the WAL,
WAL capacity, and broker counts for Kafka and for a diskless cluster."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tidelog.tools.cost.prices import Assumptions, CostInputError

# One AKU, as the seed states it: 3 AKU = 60 MB/s write, 60 MB/s read, 2,400 requests/s and
# at least 3,375 partitions.
AKU_WRITE_MIBPS = 20.0
AKU_READ_MIBPS = 20.0
AKU_REQUESTS = 800.0
AKU_PARTITIONS = 1125.0


def ceil(x: float) -> int:
    """Round up, ignoring float noise (60 / 20 must be 3, not 4)."""
    return math.ceil(round(x, 9))


def round_up_to(n: int, step: int) -> int:
    return -(-n // step) * step


@dataclass(frozen=True, slots=True)
class Workload:
    """What the cluster must carry. Rates in MiB/s (a bill's MB)."""

    write_mibps: float
    read_fanout: float = 1.0
    """Bytes read per byte written (all consumer groups together)."""
    retention_hours: float = 72.0
    azs: int = 3
    partitions: int = 1000
    message_bytes: int = 1024
    latency_ms: float | None = None
    """Produce P99 target; None: no target."""
    request_rate: float | None = None
    """Produce + fetch requests/s; None: estimated from the byte rates."""

    def __post_init__(self) -> None:
        if self.write_mibps <= 0:
            raise CostInputError("write rate must be positive")
        if self.read_fanout < 0 or self.retention_hours < 0:
            raise CostInputError("read fan-out and retention must not be negative")
        if self.azs < 1 or self.partitions < 1 or self.message_bytes < 1:
            raise CostInputError("AZs, partitions and message size must be at least 1")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise CostInputError("the latency target must be positive")
        if self.request_rate is not None and self.request_rate < 0:
            raise CostInputError("the request rate must not be negative")

    @property
    def read_mibps(self) -> float:
        return self.write_mibps * self.read_fanout

    @property
    def retained_gib(self) -> float:
        """One copy of the retained data."""
        return self.write_mibps * self.retention_hours * 3600 / 1024

    def requests_per_s(self, a: Assumptions) -> tuple[float, float]:
        """(produce, fetch) requests per second: given, split by bytes, or estimated as one
        request per `request_kib` of payload (a message larger than that is one request)."""
        if self.request_rate is not None:
            share = self.write_mibps / (self.write_mibps + self.read_mibps)
            return self.request_rate * share, self.request_rate * (1 - share)
        per_request = max(self.message_bytes, a.request_kib * 1024)
        return (self.write_mibps * 2**20 / per_request,
                self.read_mibps * 2**20 / per_request)


def aku_needed(w: Workload, a: Assumptions) -> tuple[int, str]:
    """AKUs and the dimension that decides them (write, read, requests or partitions)."""
    produce, fetch = w.requests_per_s(a)
    needs = {
        "write": ceil(w.write_mibps / AKU_WRITE_MIBPS),
        "read": ceil(w.read_mibps / AKU_READ_MIBPS),
        "requests": ceil((produce + fetch) / AKU_REQUESTS),
        "partitions": ceil(w.partitions / AKU_PARTITIONS),
    }
    bound = max(needs, key=lambda k: needs[k])
    return max(1, needs[bound]), bound


def diskless_nodes(aku: int, w: Workload, a: Assumptions) -> int:
    """Instances for `aku`, at least one per zone and the same number in every zone."""
    return round_up_to(max(w.azs, ceil(aku / a.aku_per_instance)), w.azs)


def fsx_choice(write_mibps: float, a: Assumptions) -> list[tuple[float, float]]:
    """FSx file systems (throughput MBps, Kafka write MiB/s each) for the WAL: as many of
    the largest size as fill up, then the smallest size that carries the rest. Cost grows
    with throughput at the same rate for every size, so fewer file systems cost less."""
    sizes = sorted(a.fsx_sizes, key=lambda s: s[1])
    largest = sizes[-1]
    chosen = [largest] * int(write_mibps // largest[1])
    rest = write_mibps - largest[1] * len(chosen)
    if rest > 1e-9 or not chosen:
        chosen.append(next(s for s in sizes if s[1] >= rest))
    return chosen


def wal_capacity_gib(write_mibps: float, a: Assumptions) -> float:
    """WAL space: what arrives during one upload interval, times headroom for slow uploads.
    The seed: under 100 GB for 10 Gbps over 50 nodes."""
    return write_mibps * a.upload_interval_s * a.wal_headroom / 1024


@dataclass(frozen=True, slots=True)
class KafkaSize:
    brokers: int
    bound: str
    """What decided the broker count: zones, network or disk."""
    provisioned_gib: float


def kafka_size(w: Workload, a: Assumptions) -> KafkaSize:
    """Brokers for Apache Kafka: every byte lands on `replication_factor` brokers; each
    broker's network carries its share of produce + replication in and replication +
    consumer reads out, at `kafka_network_utilization`; each holds at most
    `kafka_max_disk_gib_per_broker`. Brokers are spread evenly over the zones."""
    rf = a.kafka_replication_factor
    provisioned = w.retained_gib * rf * (1 + a.kafka_disk_headroom)
    ingress = w.write_mibps * rf
    egress = w.write_mibps * (rf - 1) + w.read_mibps
    needs = {
        "zones": max(rf, w.azs),
        "network": ceil(max(ingress, egress) / (a.instance_network_mibps
                                                * a.kafka_network_utilization)),
        "disk": ceil(provisioned / a.kafka_max_disk_gib_per_broker),
    }
    bound = max(needs, key=lambda k: needs[k])
    return KafkaSize(round_up_to(needs[bound], w.azs), bound, provisioned)


def cross_zone_followers(w: Workload, a: Assumptions) -> int:
    """Followers of a partition outside the leader's zone, replicas spread rack-aware."""
    rf = a.kafka_replication_factor
    return rf - ceil(rf / w.azs)
