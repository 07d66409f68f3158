"""Time and size retention (`cleanup.policy=delete`): move a partition's log start.

Kafka deletes whole segments; our unit is a stored range (an object block of about
`block_bytes`, or one log-cache entry): a range goes when its newest record is older than
`retention.ms`, or while the partition holds more than `retention.bytes` without it. Moving
the log start is one metadata commit; the objects below it become garbage and leave the
object store after `log.segment.delete.delay.ms` (readers mid-fetch finish first).
"""

from __future__ import annotations

import logging

from tidelog.partition.partition import Partition
from tidelog.partition.topic_config import TopicConfig

log = logging.getLogger(__name__)


def retention_start(ranges: list[tuple[int, int, int]], sizes: list[tuple[int, int, int]],
                    start: int, cfg: TopicConfig, now_ms: int) -> int:
    """The log start offset retention asks for (`start` when nothing expires).

    `ranges`: `(start, end, max_timestamp)` oldest first; `sizes`: `(start, end, bytes)`.
    """
    new_start = start
    if cfg.retention_ms >= 0:
        horizon = now_ms - cfg.retention_ms
        for _first, end, max_ts in ranges:
            if max_ts >= horizon:
                break
            new_start = max(new_start, end)
    if cfg.retention_bytes >= 0:
        total = sum(n for _, _, n in sizes)
        for _first, end, n in sizes:
            if total <= cfg.retention_bytes:
                break
            total -= n
            new_start = max(new_start, end)
    return new_start


async def enforce_retention(p: Partition, cfg: TopicConfig, now_ms: int) -> int:
    """Apply time and size retention to `p`; returns how many offsets were removed."""
    if "delete" not in cfg.cleanup_policy:
        return 0
    stream = p.stream
    old = stream.start_offset
    new = retention_start(stream.time_ranges(), stream.size_ranges(), old, cfg, now_ms)
    new = min(new, p.high_watermark)
    if new <= old:
        return 0
    await stream.trim(new)
    p.producers.drop_below(stream.start_offset)
    log.info("retention: %s-%d log start %d -> %d", p.topic, p.index, old,
             stream.start_offset)
    return stream.start_offset - old
