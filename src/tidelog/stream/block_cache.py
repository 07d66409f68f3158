"""Read-side cache of object data blocks, bounded in bytes, least recently used first out.

A block is cached parsed, as its `(base_offset, last_offset, payload view)` records: a
block is parsed once per GET, not once per fetch, and a block just uploaded goes in as the
very buffers the log cache held (no copy). Concurrent misses for the same block share one
GET, and a sequential reader gets the next block fetched ahead of it (read-ahead), so a
catching-up consumer waits on S3 once per block at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from tidelog.objectstore.base import ObjectStore
from tidelog.stream.object_format import Record, iter_records

log = logging.getLogger(__name__)
BlockKey = tuple[str, int]
Block = list[Record]


class BlockCache:
    def __init__(self, store: ObjectStore, max_bytes: int) -> None:
        self._store = store
        self._max = max_bytes
        self._blocks: OrderedDict[BlockKey, tuple[Block, int]] = OrderedDict()
        self._loading: dict[BlockKey, asyncio.Task[Block]] = {}
        self.size = 0
        self.hits = 0
        self.misses = 0

    def put(self, key: str, position: int, block: Block, size: int) -> None:
        k = (key, position)
        old = self._blocks.pop(k, None)
        if old is not None:
            self.size -= old[1]
        if size > self._max:
            return
        self._blocks[k] = (block, size)
        self.size += size
        while self.size > self._max:
            _, (_, evicted) = self._blocks.popitem(last=False)
            self.size -= evicted

    async def get(self, key: str, position: int, size: int) -> Block:
        k = (key, position)
        hit = self._blocks.get(k)
        if hit is not None:
            self._blocks.move_to_end(k)
            self.hits += 1
            return hit[0]
        self.misses += 1
        task = self._loading.get(k)
        if task is None:
            task = asyncio.ensure_future(self._load(key, position, size))
            self._loading[k] = task
        return await asyncio.shield(task)

    def prefetch(self, key: str, position: int, size: int) -> None:
        k = (key, position)
        if k in self._blocks or k in self._loading:
            return
        task = asyncio.ensure_future(self._load(key, position, size))
        self._loading[k] = task
        task.add_done_callback(_log_failure)

    async def _load(self, key: str, position: int, size: int) -> Block:
        try:
            data = await self._store.get_range(key, position, position + size)
            block = iter_records(memoryview(data))
            self.put(key, position, block, size)
            return block
        finally:
            self._loading.pop((key, position), None)


def _log_failure(task: asyncio.Task[Block]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("read-ahead failed: %s", task.exception())
