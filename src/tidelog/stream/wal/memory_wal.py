"""`MemoryWAL`: the WAL contract in memory, for tests.

Its "disk" is a `MemoryWALStore`: a new `MemoryWAL` over the same store behaves like a
restart of the same WAL (records, trim position and epoch survive; nothing is torn). Space is
accounted like `FileWAL` (a record takes `RECORD_HEADER_SIZE + len(payload)` bytes of
capacity) so back-pressure behaves the same, minus the ring's lap-end padding.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from tidelog.stream.wal.base import (
    WAL,
    SpaceGate,
    WalClosedError,
    WalError,
    WalFencedError,
    WalFullError,
    WalRecord,
    WalStats,
)
from tidelog.stream.wal.ring_format import RECORD_HEADER_SIZE, MiB

_NAMED_STORES: dict[str, MemoryWALStore] = {}


@dataclass(slots=True)
class MemoryWALStore:
    """What would be on disk: survives the `MemoryWAL` instances opened over it."""

    epoch: int = 0
    session: int = 0
    """Bumped by every open: a stale instance notices it and refuses to write."""
    trim: int = 0
    end: int = 0
    records: deque[WalRecord] = field(default_factory=deque)


def named_store(name: str) -> MemoryWALStore:
    """The process-wide store called `name` (`memory://name`), created on first use."""
    return _NAMED_STORES.setdefault(name, MemoryWALStore())


class MemoryWAL(WAL):
    def __init__(
        self,
        capacity: int = 256 * MiB,
        append_timeout: float = 30.0,
        store: MemoryWALStore | None = None,
    ) -> None:
        if capacity <= RECORD_HEADER_SIZE:
            raise ValueError(f"capacity must exceed {RECORD_HEADER_SIZE} bytes")
        self.store = store if store is not None else MemoryWALStore()
        self._capacity = capacity
        self._append_timeout = append_timeout
        self._session = -1
        self._closed = False
        self.stats = WalStats()
        self._gate = SpaceGate(self.stats)

    @property
    def trim_position(self) -> int:
        return self.store.trim

    @property
    def end_position(self) -> int:
        return self.store.end

    @property
    def capacity(self) -> int:
        return self._capacity

    async def open(self, epoch: int) -> None:
        if self._session >= 0 or self._closed:
            raise WalError("a MemoryWAL can be opened once")
        if self.store.epoch > epoch:
            raise WalFencedError(f"owned by epoch {self.store.epoch} > {epoch}")
        self.store.epoch = epoch
        self.store.session += 1
        self._session = self.store.session

    def recover(self) -> Iterator[WalRecord]:
        self._check_usable()
        yield from list(self.store.records)

    async def append(
        self,
        stream_id: int,
        stream_epoch: int,
        base_offset: int,
        last_offset: int,
        payload: bytes | bytearray | memoryview,
        timeout: float | None = None,
    ) -> int:
        self._check_usable()
        size = RECORD_HEADER_SIZE + memoryview(payload).nbytes
        if size > self._capacity:
            raise WalFullError(f"a {size}-byte record exceeds the capacity {self._capacity}")
        if self._gate.waiting or not self._fits(size):
            limit = self._append_timeout if timeout is None else timeout
            await self._gate.wait(lambda: self._fits(size), self._check_usable, limit,
                                  lambda: f"{size} bytes needed, {self._used()} of "
                                          f"{self._capacity} in use")
        store = self.store
        record = WalRecord(
            stream_id,
            stream_epoch,
            base_offset,
            last_offset,
            bytes(payload),
            store.end,
            store.end + size,
        )
        store.records.append(record)
        store.end = record.next_position
        stats = self.stats
        stats.groups += 1
        stats.records += 1
        stats.bytes += size
        stats.group_bytes.observe(size)
        stats.append_latency.observe(0.0)
        return record.next_position

    def _used(self) -> int:
        return self.store.end - self.store.trim

    def _fits(self, size: int) -> bool:
        return self.store.end + size - self.store.trim <= self._capacity

    async def trim(self, position: int) -> None:
        self._check_usable()
        store = self.store
        if position > store.end:
            raise ValueError(f"trim({position}) is past the end position {store.end}")
        if position <= store.trim:
            return
        while store.records and store.records[0].next_position <= position:
            store.records.popleft()
        store.trim = position
        self._gate.wake()

    async def reset(self) -> None:
        await self.trim(self.store.end)

    async def close(self) -> None:
        self._closed = True
        self._gate.wake()

    def _check_usable(self) -> None:
        if self._closed:
            raise WalClosedError("WAL is closed")
        if self._session < 0:
            raise WalError("WAL is not open")
        if self.store.session != self._session:
            raise WalFencedError(f"fenced by epoch {self.store.epoch}")
