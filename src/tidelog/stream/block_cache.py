"""Read-side cache of object data blocks, bounded in bytes, least recently used first out.

Concurrent misses for the same block share one GET, and a sequential reader gets the next
block fetched ahead of it (read-ahead), so a catching-up consumer waits on S3 once per
block at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from tidelog.objectstore.base import ObjectStore

log = logging.getLogger(__name__)
BlockKey = tuple[str, int]


class BlockCache:
    def __init__(self, store: ObjectStore, max_bytes: int) -> None:
        self._store = store
        self._max = max_bytes
        self._blocks: OrderedDict[BlockKey, bytes] = OrderedDict()
        self._loading: dict[BlockKey, asyncio.Task[bytes]] = {}
        self.size = 0
        self.hits = 0
        self.misses = 0

    def put(self, key: str, position: int, data: bytes) -> None:
        k = (key, position)
        old = self._blocks.pop(k, None)
        if old is not None:
            self.size -= len(old)
        if len(data) > self._max:
            return
        self._blocks[k] = data
        self.size += len(data)
        while self.size > self._max:
            _, evicted = self._blocks.popitem(last=False)
            self.size -= len(evicted)

    async def get(self, key: str, position: int, size: int) -> bytes:
        k = (key, position)
        data = self._blocks.get(k)
        if data is not None:
            self._blocks.move_to_end(k)
            self.hits += 1
            return data
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

    async def _load(self, key: str, position: int, size: int) -> bytes:
        try:
            data = await self._store.get_range(key, position, position + size)
            self.put(key, position, data)
            return data
        finally:
            self._loading.pop((key, position), None)


def _log_failure(task: asyncio.Task[bytes]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("read-ahead failed: %s", task.exception())
