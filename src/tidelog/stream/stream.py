"""One stream: an ordered, offset-addressed sequence of opaque batches.

The stream assigns offsets (the caller's `assign` callback writes them into the bytes
before they are queued), appends through the engine's WAL, and reads back from the log
cache or objects. It knows nothing about Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidelog.stream.log_cache import CacheEntry

if TYPE_CHECKING:
    from tidelog.stream.engine import StreamEngine


class StreamError(Exception):
    """The stream cannot take writes (fenced, deleted, or the engine failed)."""


@dataclass(slots=True)
class StreamMeta:
    stream_id: int
    epoch: int
    start_offset: int
    end_offset: int
    """End of what is committed to objects (exclusive)."""
    owner: int = -1
    """The broker the stream is placed on (-1: not placed, a single broker's stream)."""
    version: int = 0
    """Metadata version of the stream's record, compared on every upload commit (fencing)."""
    topic: str | None = None
    """Cluster mode: the topic the stream was created for, so the controller can tell a
    stream left behind by a cut-short create or delete (no topic names it) from one whose
    topic record is still being written (docs/design/0001-cluster.md, orphans)."""


@dataclass(frozen=True, slots=True)
class TailEntry:
    """One durable record of a stream in its owner's WAL."""

    base_offset: int
    last_offset: int
    position: int
    length: int


@dataclass(frozen=True, slots=True)
class TailEntries:
    cached_from: int
    """Offsets below this are in objects."""
    entries: list[TailEntry]


class Stream:
    def __init__(self, engine: StreamEngine, meta: StreamMeta, next_offset: int) -> None:
        self._engine = engine
        self.meta = meta
        self.next_offset = next_offset
        self.confirm_offset = next_offset
        self.closed = False
        self.appended_bytes = 0
        """Bytes appended here since the stream opened (the balancer's produce rate)."""
        self.sealed = False
        """Being handed to another broker: new appends are refused (NOT_LEADER), those in
        flight finish."""
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def stream_id(self) -> int:
        return self.meta.stream_id

    @property
    def epoch(self) -> int:
        return self.meta.epoch

    @property
    def start_offset(self) -> int:
        return self.meta.start_offset

    async def append(
        self,
        payload: bytearray,
        count: int,
        max_timestamp: int,
        record_count: int,
        assign: Callable[[int], None],
        timeout: float | None = None,
    ) -> int:
        """Append `count` offsets' worth of batches; returns the base offset once durable."""
        if self.closed or self.sealed:
            raise StreamError(f"stream {self.stream_id} is "
                              f"{'closed' if self.closed else 'moving to another broker'}")
        engine = self._engine
        await engine.reserve(len(payload), timeout)
        if self.sealed:
            engine.release(len(payload))
            raise StreamError(f"stream {self.stream_id} is moving to another broker")
        base = self.next_offset
        try:
            # The caller's last word before the offsets are taken: it runs with no await
            # before the enqueue, so checks it makes (e.g. producer sequences) cannot race
            # another append; raising cancels this append.
            assign(base)
        except BaseException:
            engine.release(len(payload))
            raise
        last = base + count - 1
        self.next_offset = last + 1
        self.appended_bytes += len(payload)
        entry = CacheEntry(self.stream_id, base, last, payload, max_timestamp, record_count)
        engine.cache.add(entry)
        # Shielded: a cancelled request must not leave an appended record unconfirmed.
        await asyncio.shield(asyncio.ensure_future(self._complete(entry)))
        if not engine.may_acknowledge():
            # durable, but the broker's lease may have expired: another broker may own
            # the stream by now, so the append is not acknowledged (self-fencing)
            engine.fenced_appends += 1
            raise StreamError(f"stream {self.stream_id}: this broker's lease may have expired")
        if self.closed:
            engine.fenced_appends += 1
            raise StreamError(f"stream {self.stream_id} was closed (fenced) during the append")
        return base

    async def _complete(self, entry: CacheEntry) -> None:
        entry.wal_position = await self._engine.wal_append(entry, self.epoch)
        if entry.last_offset + 1 > self.confirm_offset:
            self.confirm_offset = entry.last_offset + 1
            self._wake()
        self._engine.appended()

    async def fetch(
        self, start: int, max_bytes: int, end: int | None = None
    ) -> tuple[list[bytes | bytearray | memoryview], int]:
        """Whole batches from `start` below `end` (default: the confirmed end)."""
        return await self._engine.read(self.stream_id, start,
                                       self.confirm_offset if end is None else end, max_bytes)

    def tail(self, start: int, end: int, max_bytes: int) -> TailEntries | None:
        """What a broker of another zone needs to read `start`.. below `end` itself
        (docs/design/0003-zones.md): the first offset still in the log cache (below it,
        everything is in objects), and the durable records from `start` with where they
        are in this broker's WAL, as `fetch` would return them. None when the WAL cannot
        be read by position elsewhere."""
        engine = self._engine
        wal = engine.wal
        if wal.record_start(0, 0) is None:
            return None
        first = engine.cache.first_offset(self.stream_id)
        cached_from = min(first, end) if first is not None else end
        if start < cached_from:
            return TailEntries(cached_from, [])
        out: list[TailEntry] = []
        for e in engine.cache.covering(self.stream_id, start, min(end, self.confirm_offset),
                                       max_bytes):
            if e.wal_position < 0:
                break
            at = wal.record_start(e.wal_position, len(e.payload))
            assert at is not None
            out.append(TailEntry(e.base_offset, e.last_offset, at, len(e.payload)))
        return TailEntries(cached_from, out)

    def in_memory(self, offset: int) -> bool:
        """`offset` is in the log cache (not only in objects)."""
        first = self._engine.cache.first_offset(self.stream_id)
        return first is not None and offset >= first

    async def trim(self, new_start: int) -> None:
        """Drop offsets below `new_start` (they stop being readable at once)."""
        await self._engine.trim_stream(self.stream_id, new_start)

    def time_ranges(self) -> list[tuple[int, int, int]]:
        """`(start, end, max_timestamp)` of every stored range, oldest first (time index)."""
        out = [(b.start_offset, b.end_offset, b.max_timestamp)
               for _, b in self._engine.index.blocks(self.stream_id)
               if b.end_offset > self.start_offset]
        out.extend((e.base_offset, e.last_offset + 1, e.max_timestamp)
                   for e in self._engine.cache.entries(self.stream_id)
                   if e.last_offset < self.confirm_offset)
        return out

    def size_ranges(self) -> list[tuple[int, int, int]]:
        """`(start, end, bytes)` of every stored range, oldest first (size retention, log
        dir sizes): uploaded blocks, then what waits in the log cache."""
        out = [(b.start_offset, b.end_offset, b.size)
               for _, b in self._engine.index.blocks(self.stream_id)
               if b.end_offset > self.start_offset]
        out.extend((e.base_offset, e.last_offset + 1, len(e.payload))
                   for e in self._engine.cache.entries(self.stream_id)
                   if e.last_offset < self.confirm_offset)
        return out

    @property
    def size_bytes(self) -> int:
        """Bytes this stream holds from its start offset on (objects and log cache)."""
        return sum(n for _, _, n in self.size_ranges())

    async def settle(self, timeout: float) -> None:
        """Wait until every append taken so far is durable (or the stream closed)."""
        async with asyncio.timeout(timeout):
            while self.confirm_offset < self.next_offset and not self.closed:
                await self.wait_for_data()

    def wait_for_data(self) -> asyncio.Future[None]:
        """A future done at the next confirmed append (long polling)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.add_waiter(fut)
        return fut

    def add_waiter(self, fut: asyncio.Future[None]) -> None:
        """Complete `fut` at the next confirmed append: one future can wait on many
        streams (a fetch of hundreds of partitions). Waiters given up on (cancelled,
        or completed by another stream) are pruned, so an idle stream's list stays short."""
        waiters = self._waiters
        if len(waiters) >= 64:
            waiters[:] = [w for w in waiters if not w.done()]
        waiters.append(fut)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def close(self) -> None:
        self.closed = True
        self._wake()
