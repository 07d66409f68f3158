"""`LatencyWAL`: emulated latency and errors around any WAL, a test and demo tool.

The profile and its `emulate.*` URI keys are `tidelog.objectstore.latency`'s. Here the
delay is added to the acknowledgement path: each group commit of the inner WAL (seen as a
new value of `stats.groups`) draws one delay (plus the group's bytes over the bandwidth),
and its appends return that much later, still in append order. It models a storage round
trip (a shared file system across the network), not a slower device: the inner WAL keeps
writing at its own pace. A drawn error fails the append before it reaches the inner WAL,
which the engine treats like any WAL failure (the broker stops taking writes).

An object WAL gets its emulation on its object store instead (`LatencyObjectStore`), so the
delay lands on each PUT, as on S3.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Iterator

from tidelog.objectstore.latency import LatencyProfile, LatencySampler
from tidelog.stream.wal.base import WAL, WalError, WalRecord

log = logging.getLogger(__name__)


class LatencyWAL(WAL):
    """Wraps `inner`; shares its `stats` (whose latencies therefore exclude the emulation)."""

    def __init__(self, inner: WAL, profile: LatencyProfile, rng: random.Random | None = None
                 ) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.sampler = LatencySampler(profile, rng)
        self.description = f"{profile.describe()} WAL over {inner!r}"
        self._group = -1
        self._group_bytes = 0
        self._release_at = 0.0
        self._releases: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._releaser: asyncio.Task[None] | None = None
        log.warning("%s (test tool: not real storage performance)", self.description)

    def __repr__(self) -> str:
        return f"LatencyWAL({self.description})"

    async def open(self, epoch: int) -> None:
        await self.inner.open(epoch)

    def recover(self) -> Iterator[WalRecord]:
        return self.inner.recover()

    async def append(
        self,
        stream_id: int,
        stream_epoch: int,
        base_offset: int,
        last_offset: int,
        payload: bytes | bytearray | memoryview,
        timeout: float | None = None,
    ) -> int:
        if self.sampler.fails():
            raise WalError("emulated WAL error")
        position = await self.inner.append(
            stream_id, stream_epoch, base_offset, last_offset, payload, timeout
        )
        stats = self.inner.stats
        if stats.groups != self._group:  # the first append back from a new group
            self._group = stats.groups
            delay = self.sampler.delay(stats.bytes - self._group_bytes)
            self._group_bytes = stats.bytes
            self._release_at = max(self._release_at, time.monotonic() + delay)
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._releases.append((self._release_at, released))
        if self._releaser is None:
            self._releaser = asyncio.get_running_loop().create_task(self._release())
        await released
        return position

    async def _release(self) -> None:
        """Release appends strictly in order, each at its time."""
        try:
            while self._releases:
                at, released = self._releases[0]
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._releases.popleft()
                if not released.done():
                    released.set_result(None)
        finally:
            self._releaser = None

    async def trim(self, position: int) -> None:
        await self.inner.trim(position)

    async def reset(self) -> None:
        await self.inner.reset()

    async def close(self) -> None:
        await self.inner.close()
        if self._releaser is not None:
            await asyncio.shield(self._releaser)

    @property
    def trim_position(self) -> int:
        return self.inner.trim_position

    @property
    def end_position(self) -> int:
        return self.inner.end_position

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    def record_start(self, next_position: int, length: int) -> int | None:
        return self.inner.record_start(next_position, length)
