"""Object compaction: small objects merged into few large ones.

Every upload writes at least one object, so a quiet cluster with a short upload interval
collects thousands of small stream set objects: each costs a GET per consumer that reads
it and a LIST entry forever. The compactor takes the oldest small objects (up to
`max_input_bytes` in memory), drops blocks no stream needs any more (deleted streams,
offsets below a stream's start), merges each stream's adjacent blocks, and writes a
stream object for every stream with `split_bytes` or more, the rest in one stream set
object. The swap is one metadata commit (`StreamEngine.replace_blocks`): readers see old
or new blocks, never neither; the old objects are deleted after the GC grace period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidelog.stream.object_format import BlockIndex, ObjectBuilder, Record, iter_records
from tidelog.stream.objects import object_id

if TYPE_CHECKING:
    from tidelog.stream.engine import StreamEngine

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CompactionConfig:
    small_bytes: int = 16 << 20
    """Objects smaller than this are merged."""
    min_objects: int = 8
    """Merge only when at least this many small objects exist."""
    max_input_bytes: int = 256 << 20
    """Bytes of objects one round holds in memory."""


@dataclass(slots=True)
class _Piece:
    block: BlockIndex
    records: list[Record]


async def compact_objects(
    engine: StreamEngine, cfg: CompactionConfig,
    live_starts: Callable[[], Awaitable[dict[int, int]]],
) -> tuple[int, int]:
    """One round; returns (objects merged, objects written), (0, 0) when nothing to do.

    `live_starts` gives every live stream's start offset (cluster-wide: on a cluster the
    objects hold other brokers' streams, which must be copied, not dropped). It is asked
    after the objects are chosen, so every chosen object's stream is in it unless the
    stream was deleted."""
    chosen = _choose(engine, cfg)
    if len(chosen) < cfg.min_objects:
        return 0, 0
    starts = await live_starts()
    removed = {key: set(engine.index.objects[key]) for key in chosen}
    datas = await asyncio.gather(*(engine.store.get(key) for key in chosen))
    by_stream: dict[int, list[_Piece]] = {}
    for key, data in zip(chosen, datas, strict=True):
        view = memoryview(data)
        for b in removed[key]:
            start = starts.get(b.stream_id)
            if start is None or b.end_offset <= start:
                continue  # nobody can read it any more: dropped, not copied
            recs = iter_records(view[b.position : b.position + b.size])
            by_stream.setdefault(b.stream_id, []).append(_Piece(b, recs))
    split = engine.config.split_bytes
    block_bytes = engine.config.block_bytes
    written: list[tuple[str, ObjectBuilder]] = []

    async def build() -> list[tuple[str, ObjectBuilder]]:
        shared = ObjectBuilder()
        for sid, pieces in sorted(by_stream.items()):
            pieces.sort(key=lambda p: p.block.start_offset)
            if sum(p.block.size for p in pieces) >= split:
                own = ObjectBuilder()
                _add_merged(own, sid, pieces, block_bytes)
                written.append((await engine.catalog.new_object("s"), own))
            else:
                _add_merged(shared, sid, pieces, block_bytes)
        if shared.index:
            written.append((await engine.catalog.new_object("ss"), shared))
        return written

    if not await engine.replace_blocks(removed, build):
        log.info("object compaction of %d objects raced with a change; retrying later",
                 len(chosen))
        return 0, 0
    log.info("compacted %d small objects (%d bytes) into %d", len(chosen),
             sum(engine.catalog.objects[k].size for k, _ in written), len(written))
    return len(chosen), len(written)


def _choose(engine: StreamEngine, cfg: CompactionConfig) -> list[str]:
    small = sorted((object_id(k), k, info.size) for k, info in engine.catalog.objects.items()
                   if info.size < cfg.small_bytes)
    out: list[str] = []
    total = 0
    for _, key, size in small:
        if out and total + size > cfg.max_input_bytes:
            break
        out.append(key)
        total += size
    return out


def _add_merged(builder: ObjectBuilder, sid: int, pieces: list[_Piece],
                block_bytes: int) -> None:
    """Adjacent blocks of one stream become blocks of up to `block_bytes`; a block never
    spans offsets that belong to a block outside this round."""
    run: list[_Piece] = []
    size = 0

    def flush() -> None:
        builder.add_block(sid, [r for p in run for r in p.records],
                          sum(p.block.record_count for p in run),
                          max(p.block.max_timestamp for p in run),
                          span=(run[0].block.start_offset, run[-1].block.end_offset))

    for p in pieces:
        if run and (run[-1].block.end_offset != p.block.start_offset
                    or size + p.block.size > block_bytes):
            flush()
            run, size = [], 0
        run.append(p)
        size += p.block.size
    if run:
        flush()
