"""Price a measured run: counters over the interval, extrapolated to a month at the same
rates, in the same cost lines as the model, beside the model's figures for that traffic."""

from __future__ import annotations

from dataclasses import replace

from tidelog.tools.cost.metrics_source import RunUsage
from tidelog.tools.cost.model import (
    Estimate,
    compute_cost,
    fsx_cost,
    month_seconds,
)
from tidelog.tools.cost.prices import Assumptions, CostInputError, Prices
from tidelog.tools.cost.sizing import (
    Workload,
    aku_needed,
    ceil,
    fsx_choice,
    wal_capacity_gib,
)

MIB = 2**20


def price_run(u: RunUsage, w: Workload, wal: str, p: Prices, a: Assumptions) -> Estimate:
    """The run's month: its brokers as instances, its WAL write rate on FSx (`wal` "fsx")
    or no WAL service (`wal` "s3": the WAL's requests are already in the counts), its write
    rate kept `w.retention_hours` in S3, and its counted requests and cross-zone bytes."""
    if wal not in ("fsx", "s3"):
        raise CostInputError(f"unknown WAL kind {wal!r}: fsx or s3")
    scale = month_seconds(p) / u.seconds
    write = u.rate(u.bytes_in) / MIB
    wal_mibps = u.rate(u.wal_bytes) / MIB
    cross = u.cross_zone_bytes()
    s3_gib = write * w.retention_hours * 3600 / 1024
    sizing: dict[str, object] = {
        "brokers": u.brokers, "instance_type": a.instance_type,
        "write_mibps": write, "read_mibps": u.rate(u.bytes_out) / MIB,
        "messages_per_s": u.rate(u.messages_in), "wal_mibps": wal_mibps,
        "puts_per_s": u.rate(u.puts), "gets_per_s": u.rate(u.gets),
        "cross_az_mibps": {k: u.rate(v) / MIB for k, v in sorted(cross.items())},
        "stored_gib_now": u.stored_bytes / 2**30,
        "s3_gib": s3_gib,
    }
    block = 0.0
    if wal == "fsx":
        systems = fsx_choice(wal_mibps, a)
        wal_gib = wal_capacity_gib(wal_mibps, a)
        ssd = max(a.fsx_min_ssd_gib, float(ceil(wal_gib / len(systems))))
        block = fsx_cost(systems, ssd, p, a)
        sizing.update(fsx=[int(mbps) for mbps, _ in systems], fsx_ssd_gib=ssd)
    if write > 0:
        aku, bound = aku_needed(replace(w, write_mibps=write, request_rate=None), a)
        sizing.update(aku=aku, aku_bound_by=bound)
    lines = {
        "compute": compute_cost(u.brokers, p),
        "block_file_storage": block,
        "object_storage": s3_gib * p.s3_gb_month,
        "requests": (u.puts * p.s3_put_per_1000 + u.gets * p.s3_get_per_1000) / 1000 * scale,
        "cross_az": sum(cross.values()) / 2**30 * scale * 2 * p.cross_az_gb_each_way,
    }
    title = f"this run ({'FSx' if wal == 'fsx' else 'S3'} WAL)"
    return Estimate("measured", title, lines, sizing)


def workload_of(u: RunUsage, base: Workload) -> Workload | None:
    """The run's traffic as a workload for the model (None if nothing was produced)."""
    if u.bytes_in <= 0:
        return None
    return replace(base, write_mibps=u.rate(u.bytes_in) / MIB,
                   read_fanout=u.bytes_out / u.bytes_in,
                   message_bytes=max(1, round(u.bytes_in / u.messages_in))
                   if u.messages_in > 0 else base.message_bytes)
