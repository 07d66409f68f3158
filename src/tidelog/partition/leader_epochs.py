"""OffsetForLeaderEpoch: where a leader epoch's data ends in a partition.

Kafka keeps a leader-epoch cache (epoch -> start offset). Here every stored batch carries
the epoch it was appended in (`partitionLeaderEpoch`, written at offset assignment) and
epochs never decrease along the log, so the end of epoch E is the base offset of the first
batch with an epoch above E: a binary search over offsets reading one batch header per
step (from the log cache or the block cache), for a rarely called API.
"""

from __future__ import annotations

from tidelog.partition.partition import Partition
from tidelog.protocol import records

UNDEFINED = -1


async def _batch_at(p: Partition, offset: int, end: int) -> tuple[int, int, int] | None:
    """(base offset, last offset, leader epoch) of the first batch holding an offset
    >= `offset` below `end`, or None."""
    bufs = await p.read(offset, 1, end)
    for buf in bufs:
        for b in records.iter_headers(buf):
            if b.last_offset >= offset:
                (epoch,) = records.LEADER_EPOCH.unpack_from(buf, b.position + 12)
                return b.base_offset, b.last_offset, epoch
    return None


async def end_offset_for_epoch(p: Partition, epoch: int) -> tuple[int, int]:
    """(epoch, end offset) as Kafka's leader-epoch cache answers: the current epoch ends at
    the high watermark; an older one where the next epoch's data starts, reported with the
    largest epoch at or below it that has data; an unknown or future epoch gets (-1, -1)."""
    current, hw = p.leader_epoch, p.high_watermark
    if epoch == current:
        return current, hw
    if epoch < 0 or epoch > current:
        return UNDEFINED, UNDEFINED
    lo, hi = p.log_start_offset, hw
    while lo < hi:  # first offset whose batch has an epoch above `epoch`
        mid = (lo + hi) // 2
        found = await _batch_at(p, mid, hw)
        if found is None:  # nothing stored from mid on: the epoch ends at or before it
            hi = mid
            continue
        base, last, e = found
        if e > epoch:
            hi = max(base, lo) if base <= mid else mid
        else:
            lo = last + 1
    end = min(lo, hw)
    floor = UNDEFINED
    if end > p.log_start_offset:
        before = await _batch_at(p, max(end - 1, p.log_start_offset), hw)
        if before is not None and before[2] <= epoch:
            floor = before[2]
    return (floor if floor != UNDEFINED else epoch), end
