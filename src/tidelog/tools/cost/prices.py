"""The price table and the sizing assumptions behind `tidelog cost`, with where each figure
comes from, and how a file (JSON or TOML) overrides them.

Units follow AWS billing: a "GB" on a bill is 2^30 bytes, so every size here is in GiB and
MiB and a rate in MiB/s. A month is `month_hours` (730, AWS's convention).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


class CostInputError(ValueError):
    """A bad input, price file or option: the command says what and exits 2."""


@dataclass(frozen=True, slots=True)
class Prices:
    """On-demand list prices, one region. `version` names the table; JSON output carries it."""

    version: str = "2025.12-aws-us-east-1"
    region: str = "us-east-1"
    as_of: str = "2025-12-19"
    currency: str = "USD"
    month_hours: float = 730.0
    instance_hour: float = 0.6528
    """One broker instance (`Assumptions.instance_type`), per hour."""
    ebs_gp3_gb_month: float = 0.08
    ebs_gp3_mibps_month: float = 0.04
    """gp3 throughput provisioned above the free baseline, per MiB/s-month."""
    s3_gb_month: float = 0.023
    s3_put_per_1000: float = 0.005
    """PUT, COPY, POST, LIST."""
    s3_get_per_1000: float = 0.0004
    """GET, HEAD and the rest."""
    cross_az_gb_each_way: float = 0.01
    """Charged once where a byte leaves a zone and once where it enters the other."""
    fsx_ssd_gb_month: float = 0.25
    fsx_iops_month: float = 0.034
    """SSD IOPS provisioned above the 3 per GiB that come with the storage."""
    fsx_throughput_mbps_month: float = 2.40


@dataclass(frozen=True, slots=True)
class Source:
    url: str
    status: str
    """"list": AWS's published price as we recorded it; "derived": computed from another
    published figure (the note says which) because the list page was not at hand."""
    note: str


SOURCES: dict[str, Source] = {
    "instance_hour": Source(
        "https://aws.amazon.com/ec2/pricing/on-demand/", "list",
        "m7g.4xlarge, Linux, us-east-1; AutoMQ's benchmark page quotes it as $476.544/month "
        "(730 h x $0.6528)"),
    "ebs_gp3_gb_month": Source("https://aws.amazon.com/ebs/pricing/", "list",
                               "gp3 storage, us-east-1"),
    "ebs_gp3_mibps_month": Source("https://aws.amazon.com/ebs/pricing/", "list",
                                  "gp3 throughput above 125 MB/s per volume"),
    "s3_gb_month": Source("https://aws.amazon.com/s3/pricing/", "list",
                          "S3 Standard, first 50 TB/month (flat here: larger volumes pay "
                          "$0.022-0.021, override to model them)"),
    "s3_put_per_1000": Source("https://aws.amazon.com/s3/pricing/", "list",
                              "S3 Standard PUT, COPY, POST, LIST requests"),
    "s3_get_per_1000": Source("https://aws.amazon.com/s3/pricing/", "list",
                              "S3 Standard GET, SELECT and all other requests"),
    "cross_az_gb_each_way": Source(
        "https://aws.amazon.com/ec2/pricing/on-demand/#Data_Transfer_within_the_same_AWS_Region",
        "list", "$0.01/GB out of one zone and $0.01/GB into the other"),
    "fsx_ssd_gb_month": Source("https://aws.amazon.com/fsx/netapp-ontap/pricing/", "list",
                               "FSx for NetApp ONTAP, Multi-AZ SSD storage, us-east-1"),
    "fsx_iops_month": Source("https://aws.amazon.com/fsx/netapp-ontap/pricing/", "list",
                             "FSx for NetApp ONTAP, Multi-AZ provisioned SSD IOPS"),
    "fsx_throughput_mbps_month": Source(
        "https://aws.amazon.com/fsx/netapp-ontap/pricing/", "derived",
        "from the seed article's ~$8,000/month of FSx for 2 x Multi-AZ (1,536 MBps, "
        "1,024 GiB, 4,000 IOPS): ($8,000 - SSD - IOPS) / 3,072 MBps; check the list price "
        "of your region and override it"),
}


@dataclass(frozen=True, slots=True)
class Assumptions:
    """How the model turns a workload into machines, objects and requests. Each default is
    either the seed article's, Tidelog's own configuration default, or stated in
    docs/cost.md with its reason."""

    instance_type: str = "m7g.4xlarge"
    instance_network_mibps: float = 960.0
    """Network baseline of one instance (AutoMQ's benchmark page for m7g.4xlarge)."""
    aku_per_instance: int = 9
    """AKUs one instance serves: the seed runs 1 GiB/s in and out (52 AKU) on 6 of them."""
    kafka_replication_factor: int = 3
    kafka_network_utilization: float = 0.5
    """Share of a broker's network Kafka may use: room to lose a zone and to catch up."""
    kafka_max_disk_gib_per_broker: float = 16384.0
    """One gp3 volume per broker, at its largest size."""
    kafka_disk_headroom: float = 0.125
    """Disk provisioned above the retained bytes (disks kept under ~89% full)."""
    kafka_follower_fetching: bool = True
    """Consumers read from a replica in their own zone (KIP-392), as in the seed."""
    gp3_baseline_mibps: float = 125.0
    upload_mib: float = 64.0
    """Tidelog `upload.bytes`: one upload round per this much data per broker..."""
    upload_interval_s: float = 30.0
    """...or per `upload.interval.ms`, whichever comes first."""
    stream_object_split_mib: float = 8.0
    """Tidelog `stream.object.split.bytes`."""
    compaction_small_mib: float = 16.0
    """Objects smaller than this are merged once by compaction."""
    compaction_round_mib: float = 256.0
    """Bytes one compaction round merges."""
    s3_wal_batch_ms: float = 250.0
    """S3 WAL: one PUT per broker every this many ms while writes arrive..."""
    s3_wal_batch_mib: float = 8.0
    """...or per this much data."""
    request_kib: float = 64.0
    """Payload of one produce or fetch request when the request rate is not given."""
    zone_control_bytes: float = 128.0
    """Diskless: bytes each way between a same-zone proxy and the partition's owner per
    produce request that lands in another zone (the data itself stays in the zone)."""
    wal_headroom: float = 2.0
    """WAL capacity = write rate x upload interval x this."""
    fsx_sizes: tuple[tuple[float, float], ...] = ((384.0, 150.0), (768.0, 300.0),
                                                  (1536.0, 600.0))
    """FSx Multi-AZ throughput (MBps) -> MiB/s of Kafka writes it sustains (the seed)."""
    fsx_min_ssd_gib: float = 1024.0
    fsx_iops: float = 4000.0
    """Provisioned SSD IOPS per file system (the seed's configuration)."""
    p99_kafka_ms: float = 10.0
    """Produce P99 the seed credits 3-AZ Kafka with (its P99 < 10 ms comparison)."""
    p99_fsx_wal_ms: float = 17.5
    """Produce P99 the seed measured with the FSx WAL (average 6.34 ms)."""
    p99_s3_wal_ms: float = 900.0
    """Produce P99 the seed gives for the S3 WAL ("nearly 900 ms")."""


def _coerce(name: str, default: object, value: Any) -> object:
    """`value` read from a file, as the type of the field's default, or CostInputError."""
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise TypeError
            return value
        if isinstance(default, tuple):  # fsx_sizes: [[MBps, MiB/s], ...]
            pairs = tuple((float(a), float(b)) for a, b in value)
            if not pairs:
                raise TypeError
            return tuple(sorted(pairs))
    except (TypeError, ValueError):
        pass
    raise CostInputError(f"{name}: {value!r} is not a valid {type(default).__name__}")


def _apply(base: Any, values: Any, what: str) -> Any:
    if not isinstance(values, dict):
        raise CostInputError(f"[{what}] must be a table of key = value")
    known = {f.name for f in fields(base)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CostInputError(f"unknown {what} key(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
    changes = {k: _coerce(k, getattr(base, k), v) for k, v in values.items()}
    for k, v in changes.items():
        if isinstance(v, float) and v < 0:
            raise CostInputError(f"{k}: must not be negative")
    return replace(base, **changes)


def parse_overrides(text: str, fmt: str, prices: Prices | None = None,
                    assumptions: Assumptions | None = None) -> tuple[Prices, Assumptions]:
    """Apply a `{prices: {...}, assumptions: {...}}` document (fmt "json" or "toml")."""
    try:
        doc = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CostInputError(f"not valid {fmt.upper()}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CostInputError("the price file must hold a table/object")
    extra = sorted(set(doc) - {"prices", "assumptions"})
    if extra:
        raise CostInputError(f"unknown section(s) {', '.join(extra)}: "
                             "use [prices] and [assumptions]")
    p = _apply(prices or Prices(), doc.get("prices", {}), "prices")
    a = _apply(assumptions or Assumptions(), doc.get("assumptions", {}), "assumptions")
    return p, a


def load_overrides(path: str | Path) -> tuple[Prices, Assumptions]:
    """The defaults with a file's overrides: `.json`, or TOML for any other name."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CostInputError(f"cannot read {path}: {exc}") from exc
    return parse_overrides(text, "json" if path.suffix.lower() == ".json" else "toml")
