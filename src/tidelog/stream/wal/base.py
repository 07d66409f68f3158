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

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass


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


class WAL(ABC):
    """A durable, ordered, bounded log of stream records."""

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
