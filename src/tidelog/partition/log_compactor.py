"""Log compaction (`cleanup.policy=compact`): keep the latest value per key.

Like Kafka's cleaner, one pass maps each key to its last offset over the *cleanable*
range, then rewrites that range keeping only those records. The cleanable range is the
uploaded blocks from the log start up to the first block that is newer than
`min.compaction.lag.ms` or reaches the last stable offset (open transactions are never
cleaned). What differs, and why:
- The rewritten range is written as one stream object and swapped in by one metadata
  commit (`StreamEngine.replace_blocks`): the old blocks stay readable until then.
- Each new block answers for its old block's offset span: removed records leave gaps,
  and a fetch inside a gap gets the next record, as from Kafka.
- Tombstones go once their batch's newest timestamp is older than `delete.retention.ms`
  (Kafka measures from the segment's last cleaning; ours needs no extra state).
- Records of aborted transactions are dropped; control batches are kept.
- Rewritten batches are stored uncompressed (batches that lose nothing stay as they were).
The per-record work runs in a thread so produce and fetch keep the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from dataclasses import dataclass

from tidelog.partition.partition import Partition
from tidelog.partition.topic_config import TopicConfig
from tidelog.protocol import records
from tidelog.protocol.batch_rewrite import rebuild_batch, record_spans
from tidelog.stream.engine import StreamEngine
from tidelog.stream.object_format import BlockIndex, ObjectBuilder, Record

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CleanerState:
    """What the last pass of one partition left: the next pass runs only when needed."""

    cleaned_end: int = 0
    """Offsets below this were compacted (dirty data starts here)."""
    tombstone_due: int | None = None
    """Epoch ms at which a tombstone the last pass kept expires."""


@dataclass(slots=True)
class CleanResult:
    records_before: int
    records_after: int
    bytes_before: int
    bytes_after: int


_Aborted = list[tuple[int, int, int]]  # (producer id, first offset, marker offset), by marker
_Stored = tuple[int, int, bytes | bytearray | memoryview, list[records.BatchInfo]]


def cleanable(engine: StreamEngine, p: Partition, cfg: TopicConfig, now_ms: int,
              max_bytes: int) -> list[tuple[str, BlockIndex]]:
    """The uploaded blocks a pass may rewrite, oldest first."""
    stream = p.stream
    lso = p.last_stable_offset
    horizon = now_ms - cfg.min_compaction_lag_ms
    out: list[tuple[str, BlockIndex]] = []
    total = 0
    for key, b in engine.index.blocks(stream.stream_id):
        if b.end_offset <= stream.start_offset:
            continue
        if b.end_offset > lso or b.max_timestamp > horizon or (
                out and total + b.size > max_bytes):
            break
        out.append((key, b))
        total += b.size
    return out


def needs_cleaning(blocks: list[tuple[str, BlockIndex]], state: CleanerState,
                   cfg: TopicConfig, now_ms: int) -> bool:
    if not blocks:
        return False
    if state.tombstone_due is not None and state.tombstone_due <= now_ms:
        return True
    dirty_blocks = [b for _, b in blocks if b.start_offset >= state.cleaned_end]
    if not dirty_blocks:
        return False
    if min(b.max_timestamp for b in dirty_blocks) <= now_ms - cfg.max_compaction_lag_ms:
        return True  # dirty data older than max.compaction.lag.ms: clean whatever the ratio
    total = sum(b.size for _, b in blocks)
    dirty = sum(b.size for b in dirty_blocks)
    return dirty >= cfg.min_cleanable_dirty_ratio * total


async def compact_partition(engine: StreamEngine, p: Partition, cfg: TopicConfig,
                            state: CleanerState, now_ms: int,
                            max_bytes: int = 256 << 20) -> CleanResult | None:
    """One cleaning pass over `p`; None when there was nothing to do."""
    blocks = cleanable(engine, p, cfg, now_ms, max_bytes)
    if not needs_cleaning(blocks, state, cfg, now_ms):
        return None
    loaded = [(key, b, await engine.blocks.get(key, b.position, b.size)) for key, b in blocks]
    aborted = list(p.producers.aborted)
    tombstone_horizon = now_ms - cfg.delete_retention_ms
    plan = await asyncio.to_thread(_plan, loaded, aborted, tombstone_horizon)
    new_blocks, result, tombstone_due = plan

    async def build() -> list[tuple[str, ObjectBuilder]]:
        if not new_blocks:
            return []
        builder = ObjectBuilder()
        for old, recs, count, max_ts in new_blocks:
            builder.add_block(p.stream.stream_id, recs, count, max_ts,
                              span=(old.start_offset, old.end_offset))
        return [(await engine.catalog.new_object("s"), builder)]

    removed: dict[str, set[BlockIndex]] = {}
    for key, b in blocks:
        removed.setdefault(key, set()).add(b)
    if not await engine.replace_blocks(removed, build):
        return None  # raced with retention or GC: the next pass tries again
    state.cleaned_end = blocks[-1][1].end_offset
    state.tombstone_due = (None if tombstone_due is None
                           else tombstone_due + cfg.delete_retention_ms)
    log.info("compacted %s-%d offsets %d-%d: %d -> %d records, %d -> %d bytes", p.topic,
             p.index, blocks[0][1].start_offset, state.cleaned_end, result.records_before,
             result.records_after, result.bytes_before, result.bytes_after)
    return result


def _is_aborted(aborted: _Aborted, pid: int, offset: int) -> bool:
    i = bisect.bisect_right(aborted, offset, key=lambda a: a[2])
    return any(a_pid == pid and first <= offset for a_pid, first, _m in aborted[i:])


def _plan(
    loaded: list[tuple[str, BlockIndex, list[Record]]], aborted: _Aborted,
    tombstone_horizon: int,
) -> tuple[list[tuple[BlockIndex, list[Record], int, int]], CleanResult, int | None]:
    """(new blocks, counts, oldest kept tombstone's timestamp) for the loaded blocks."""
    parsed: list[tuple[BlockIndex, list[_Stored]]] = []
    latest: dict[bytes, int] = {}
    for _key, b, recs in loaded:
        batches: list[_Stored] = []
        for base, last, payload in recs:
            infos = records.iter_headers(payload)
            for info in infos:
                if info.is_control or (info.is_transactional and _is_aborted(
                        aborted, info.producer_id, info.base_offset)):
                    continue
                _body, spans = record_spans(payload, info)
                for _s, _e, offset, key, _tomb in spans:
                    if key is not None:
                        latest[key] = offset
            batches.append((base, last, payload, infos))
        parsed.append((b, batches))
    before = after = bytes_before = bytes_after = 0
    oldest_tombstone: int | None = None
    out: list[tuple[BlockIndex, list[Record], int, int]] = []
    for b, batches in parsed:
        new_recs: list[Record] = []
        count = 0
        for _base, _last, payload, infos in batches:
            bytes_before += len(payload)
            kept: list[bytes | memoryview] = []
            first = last = -1
            for info in infos:
                before += info.record_count
                whole = memoryview(payload)[info.position : info.position + info.size]
                if info.is_control:
                    kept_batch: bytes | memoryview | None = whole
                    n = info.record_count
                elif info.is_transactional and _is_aborted(aborted, info.producer_id,
                                                           info.base_offset):
                    kept_batch, n = None, 0
                else:
                    body, spans = record_spans(payload, info)
                    keep = []
                    for s, e, offset, key, tomb in spans:
                        if key is not None and latest.get(key) != offset:
                            continue  # superseded
                        if tomb and key is not None:
                            if info.max_timestamp < tombstone_horizon:
                                continue  # expired tombstone
                            oldest_tombstone = (info.max_timestamp if oldest_tombstone is None
                                                else min(oldest_tombstone, info.max_timestamp))
                        keep.append((s, e))
                    n = len(keep)
                    if n == len(spans):
                        kept_batch = whole
                    elif n:
                        kept_batch = rebuild_batch(payload, info, body, keep)
                    else:
                        kept_batch = None
                if kept_batch is not None:
                    kept.append(kept_batch)
                    after += n
                    count += n
                    if first < 0:
                        first = info.base_offset
                    last = info.last_offset
            if kept:
                data = b"".join(kept)
                bytes_after += len(data)
                new_recs.append((first, last, data))
        if new_recs:
            max_ts = b.max_timestamp
            out.append((b, new_recs, count, max_ts))
    return out, CleanResult(before, after, bytes_before, bytes_after), oldest_tombstone
