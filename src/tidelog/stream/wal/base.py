"""The WAL contract every write-ahead log implements.

Vocabulary:
- *position*: a logical, monotonically increasing byte position in the log. It never wraps,
  even when the physical storage is a ring; `trim(position)` frees everything before it.
- *record*: one appended batch with the stream coordinates the engine needs to rebuild its
  log cache on recovery (`stream_id`, `stream_epoch`, `base_offset`, `last_offset`).
- *epoch*: the WAL's writer epoch. Opening with an epoch lower than the one stored fences the
  opener (`WalFencedError`); opening with a higher one fences every older writer.

Appends complete in the order they were made: when `append` returns, the record and every
record appended before it are durable.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


class WalError(Exception):
    """Base class for WAL failures."""


class WalFullError(WalError):
    """The WAL stayed full for longer than the append timeout (back-pressure)."""


class WalFencedError(WalError):
    """A newer writer (higher epoch) owns this WAL."""


class WalClosedError(WalError):
    """The WAL was closed while an append was waiting."""


@dataclass(frozen=True, slots=True)
class WalRecord:
    stream_id: int
    stream_epoch: int
    base_offset: int
    last_offset: int
    payload: bytes
    position: int
    """Logical position of the record's first byte."""
    next_position: int
    """Logical position right after the record: `trim(next_position)` frees it."""


LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
)
"""Upper bounds (seconds) of the latency histograms; the last bucket is +Inf."""
SIZE_BUCKETS: tuple[float, ...] = tuple(float(1 << n) for n in range(10, 27, 2))
"""Upper bounds (bytes) of the group-size histogram: 1 KiB .. 64 MiB."""


@dataclass(slots=True)
class Histogram:
    """Cumulative-at-read histogram with fixed buckets: O(log n) per observation, no locks
    (the event loop or one writer thread updates it; a scrape reads a slightly stale copy)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


@dataclass(slots=True)
class WalStats:
    """Counters every WAL keeps for metrics and tests; updated as groups complete."""

    groups: int = 0
    """Group commits (one write + one sync, or one PUT for an object WAL)."""
    records: int = 0
    """Records made durable."""
    bytes: int = 0
    """Bytes written to the medium, headers and padding included."""
    syncs: int = 0
    """fdatasync calls (or PUTs): one per group plus header writes."""
    sync_seconds: float = 0.0
    """Total time spent in group syncs (or PUTs)."""
    full_waits: int = 0
    """Appends that had to wait for space (back-pressure)."""
    full_timeouts: int = 0
    """Appends that gave up with `WalFullError`."""
    append_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    """Seconds from `append` to durable, per record."""
    sync_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    """Seconds per group sync (or PUT)."""
    group_bytes: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    """Bytes per group commit."""


class SpaceGate:
    """Back-pressure for a bounded WAL: appends wait for room first come first served (a
    later append never overtakes a waiting one), and give up with `WalFullError`."""

    def __init__(self, stats: WalStats) -> None:
        self._stats = stats
        self._lock = asyncio.Lock()
        self._space = asyncio.Event()
        self.waiting = 0

    def wake(self) -> None:
        """Room may have appeared (a trim), or the WAL closed or failed."""
        self._space.set()

    async def wait(self, fits: Callable[[], bool], check: Callable[[], None], limit: float,
                   describe: Callable[[], str]) -> None:
        """Wait until `fits()`; `check()` raises when the WAL became unusable."""
        self.waiting += 1
        self._stats.full_waits += 1
        try:
            async with asyncio.timeout(limit), self._lock:
                while True:
                    check()
                    if fits():
                        return
                    self._space.clear()
                    await self._space.wait()
        except TimeoutError:
            self._stats.full_timeouts += 1
            raise WalFullError(f"WAL full for {limit}s: {describe()}") from None
        finally:
            self.waiting -= 1


class WAL(ABC):
    """A durable, ordered, bounded log of stream records.

    Every implementation has a `stats: WalStats` attribute.
    """

    stats: WalStats

    @abstractmethod
    async def open(self, epoch: int) -> None:
        """Open for writing with `epoch`; raise `WalFencedError` if a higher epoch is stored."""

    @abstractmethod
    def recover(self) -> Iterator[WalRecord]:
        """Records from the trim position onwards, in append order; a torn tail is cut.

        Called after `open` and before the first `append`.
        """

    @abstractmethod
    async def append(
        self,
        stream_id: int,
        stream_epoch: int,
        base_offset: int,
        last_offset: int,
        payload: bytes | bytearray | memoryview,
        timeout: float | None = None,
    ) -> int:
        """Append one record and return its `next_position` once it is durable.

        Waits while the WAL is full; raises `WalFullError` after `timeout` seconds
        (None: the WAL's configured default).
        """

    @abstractmethod
    async def trim(self, position: int) -> None:
        """Everything before `position` has been uploaded and may be overwritten."""

    @abstractmethod
    async def reset(self) -> None:
        """Discard all records (after a takeover has uploaded them)."""

    @abstractmethod
    async def close(self) -> None:
        """Finish in-flight appends and release the file."""

    @property
    @abstractmethod
    def trim_position(self) -> int: ...

    @property
    @abstractmethod
    def end_position(self) -> int:
        """Position the next append will get."""

    @property
    @abstractmethod
    def capacity(self) -> int: ...

    def record_start(self, next_position: int, length: int) -> int | None:
        """Where the record whose append returned `next_position` (with a `length`-byte
        payload) starts, when another broker can read it there by position (a ring file
        on the shared volume: `ring_read`); None when it cannot."""
        return None
