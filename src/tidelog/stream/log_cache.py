"""Write-side cache: every record appended since the last upload, in WAL order.

Readers of the tail are served from here, so a tailing consumer never touches object
storage. Entries leave the cache only after the upload that holds them has been committed
to metadata (then they are readable from objects).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class CacheEntry:
    stream_id: int
    base_offset: int
    last_offset: int
    payload: bytes | bytearray
    max_timestamp: int
    record_count: int
    wal_position: int = -1
    """WAL `next_position` once durable; -1 while the append is in flight."""


@dataclass(slots=True)
class _StreamEntries:
    bases: list[int] = field(default_factory=list)
    entries: list[CacheEntry] = field(default_factory=list)


class LogCache:
    def __init__(self) -> None:
        self._order: deque[CacheEntry] = deque()
        self._streams: dict[int, _StreamEntries] = {}
        self.size = 0

    def add(self, entry: CacheEntry) -> None:
        s = self._streams.setdefault(entry.stream_id, _StreamEntries())
        s.bases.append(entry.base_offset)
        s.entries.append(entry)
        self._order.append(entry)
        self.size += len(entry.payload)

    def remove_last(self, entry: CacheEntry) -> None:
        """Undo an `add` whose WAL append failed (it is the stream's newest entry)."""
        s = self._streams[entry.stream_id]
        if s.entries and s.entries[-1] is entry:
            s.entries.pop()
            s.bases.pop()
        self._order.remove(entry)
        self.size -= len(entry.payload)

    def first_offset(self, stream_id: int) -> int | None:
        s = self._streams.get(stream_id)
        return s.bases[0] if s and s.bases else None

    def read(self, stream_id: int, offset: int, end: int, max_bytes: int,
             have: int) -> tuple[list[bytes | bytearray], int, int]:
        """Whole batches covering `offset` onwards, below `end`, until `max_bytes`.

        Returns (buffers, next offset, bytes). At least one batch is returned when `have`
        is 0 (KIP-74), even if it is larger than `max_bytes`.
        """
        entries = self.covering(stream_id, offset, end, max_bytes, have)
        if not entries:
            return [], offset, 0
        return ([e.payload for e in entries], entries[-1].last_offset + 1,
                sum(len(e.payload) for e in entries))

    def covering(self, stream_id: int, offset: int, end: int, max_bytes: int,
                 have: int = 0) -> list[CacheEntry]:
        """The entries `read` returns the payloads of (a same-zone broker reads them
        from the WAL by their positions instead)."""
        s = self._streams.get(stream_id)
        out: list[CacheEntry] = []
        if not s or not s.bases:
            return out
        i = max(bisect.bisect_right(s.bases, offset) - 1, 0)
        total = 0
        while i < len(s.entries):
            e = s.entries[i]
            if e.base_offset >= end:
                break
            if e.last_offset >= offset:
                if (have + total) and have + total + len(e.payload) > max_bytes:
                    break
                out.append(e)
                total += len(e.payload)
            i += 1
        return out

    def head(self) -> CacheEntry | None:
        """The oldest entry in WAL order (what the WAL may not be trimmed past)."""
        return self._order[0] if self._order else None

    def entries(self, stream_id: int) -> list[CacheEntry]:
        s = self._streams.get(stream_id)
        return s.entries if s else []

    def confirmed_prefix(self, max_bytes: int) -> list[CacheEntry]:
        """Durable entries at the head of WAL order, up to about `max_bytes` (an upload's
        input: bounded, so a backlog becomes several objects rather than one huge one)."""
        out: list[CacheEntry] = []
        size = 0
        for e in self._order:
            if e.wal_position < 0 or (out and size + len(e.payload) > max_bytes):
                break
            out.append(e)
            size += len(e.payload)
        return out

    def drop_uploaded(self, uploaded: list[CacheEntry]) -> None:
        """Forget an upload's entries, the head of WAL order (they are now in objects)."""
        per_stream: dict[int, int] = {}
        for e in uploaded:
            if not self._order or self._order[0] is not e:
                continue  # its stream was dropped while the upload ran
            self._order.popleft()
            per_stream[e.stream_id] = per_stream.get(e.stream_id, 0) + 1
            self.size -= len(e.payload)
        for sid, n in per_stream.items():
            s = self._streams.get(sid)
            if s is None:  # dropped meanwhile (topic deleted)
                continue
            # uploaded entries are a prefix of each stream's list too
            del s.entries[:n]
            del s.bases[:n]
            if not s.entries:
                del self._streams[sid]

    def drop_stream(self, stream_id: int) -> None:
        s = self._streams.pop(stream_id, None)
        if s is None:
            return
        gone = {id(e) for e in s.entries}
        self._order = deque(e for e in self._order if id(e) not in gone)
        self.size -= sum(len(e.payload) for e in s.entries)

    def __len__(self) -> int:
        return len(self._order)
