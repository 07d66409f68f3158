"""Reads of other brokers' WAL files on the shared volume, by position: a proxy's foreign
records for their owner (produce through a proxy), and fetch through a same-zone broker:
this broker answers a zoned client's Fetch for a partition owned in another zone, and no
record byte crosses zones between brokers (docs/design/0003-zones.md).

The owner is asked where the records are (TailIndex, long-polled like the fetch itself:
control bytes only); what it has uploaded is read from objects through this broker's own
object index, what it has not from the owner's WAL file on the shared volume, by position.
A WAL record that is no longer where the owner said (trimmed after its upload, and the
ring moved on) is read from objects instead, where the trim guarantees it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from tidelog.stream.engine import FOREIGN_BIT, StreamEngine
from tidelog.stream.wal.ring_read import Expect, RingRecordReader
from tidelog.zone.tail_wire import (
    TAIL_INDEX,
    VERSION,
    TailAnswer,
    TailPart,
    TailRequest,
    decode_answers,
    encode_request,
)
from tidelog.zone.wire import WireError

log = logging.getLogger(__name__)

class Call(Protocol):
    """(node, api key, version, body, timeout, long poll?) -> the body of a peer's
    answer; a long poll goes on a connection nothing else waits behind."""

    def __call__(self, node: int, api_key: int, version: int, body: bytes,
                 timeout: float | None = None, long_poll: bool = False
                 ) -> Awaitable[memoryview]: ...
WalPath = Callable[[int], str | None]
"""node -> the path of its ring WAL file, or None (unknown, or not a file)."""

ANSWER_SLACK = 5.0
"""Seconds an answer may take past the long poll's wait (the round trip, a slow owner)."""


@dataclass(slots=True)
class RemoteRead:
    error: int
    high_watermark: int
    last_stable_offset: int
    log_start_offset: int
    bufs: list[bytes | bytearray | memoryview] = field(default_factory=list)
    aborted: list[tuple[int, int]] | None = None


@dataclass(slots=True)
class RemoteStats:
    requests: int = 0
    """TailIndex requests sent."""
    wal_records: int = 0
    wal_bytes: int = 0
    object_bytes: int = 0
    """Read from objects: a consumer behind the owner's log cache, or a WAL record
    trimmed since the owner's answer."""
    wal_misses: int = 0
    """WAL records no longer where the owner said (then read from objects)."""


class RemoteFetch:
    def __init__(self, engine: StreamEngine, call: Call, wal_path: WalPath,
                 own_wal_path: str | None, *, direct: bool = False,
                 index_wait: float = 2.0) -> None:
        self._engine = engine
        self._call = call
        self._wal_path = wal_path
        self._own = os.path.realpath(own_wal_path) if own_wal_path else None
        self._direct = direct
        self._index_wait = index_wait
        self._readers: dict[str, RingRecordReader] = {}
        self._readers_lock = threading.Lock()
        self._unreadable: set[str] = set()
        self.stats = RemoteStats()

    def serves(self, owner: int) -> bool:
        """The owner's WAL is a file this broker can read, and not its own (every broker
        at the same local path means no shared volume: nothing to read)."""
        path = self._wal_path(owner)
        return path is not None and os.path.realpath(path) != self._own

    async def fetch(self, owner: int, parts: list[tuple[int, TailPart]], max_wait: float,
                    committed: bool) -> list[RemoteRead]:
        """Read `parts` ((stream id, what to fetch) each) of partitions `owner` owns,
        waiting up to `max_wait` for data on any of them. Raises when the owner cannot
        be asked (the caller answers NOT_LEADER_OR_FOLLOWER)."""
        path = self._wal_path(owner)
        if path is None:
            raise WireError(f"broker {owner}'s WAL is not a file")
        body = encode_request(TailRequest(int(max_wait * 1000), committed,
                                          [p for _, p in parts]))
        self.stats.requests += 1
        raw = await self._call(owner, TAIL_INDEX, VERSION, body, max_wait + ANSWER_SLACK,
                               long_poll=max_wait > 0)
        answers = decode_answers(raw)
        if len(answers) != len(parts):
            raise WireError(f"{len(answers)} answers to {len(parts)} partitions")
        wanted = [(e[2], (sid, e[0], e[1], e[3]))
                  for (sid, _p), a in zip(parts, answers, strict=True) if not a.error
                  for e in a.entries]
        payloads = await asyncio.to_thread(self._read_wal, path, wanted) if wanted else []
        out: list[RemoteRead] = []
        at = 0
        for (sid, part), a in zip(parts, answers, strict=True):
            n = 0 if a.error else len(a.entries)
            out.append(await self._read(sid, part, a, payloads[at:at + n], committed))
            at += n
        return out

    async def _read(self, sid: int, part: TailPart, a: TailAnswer,
                    payloads: list[bytes | None], committed: bool) -> RemoteRead:
        r = RemoteRead(a.error, a.high_watermark, a.last_stable_offset, a.log_start_offset,
                       aborted=a.aborted if committed and not a.error else None)
        if a.error:
            return r
        if part.fetch_offset < a.cached_from:  # uploaded: from objects
            r.bufs = await self._from_objects(sid, part.fetch_offset, a.cached_from,
                                              part.max_bytes)
            return r
        for payload in payloads:
            if payload is None:
                break
            r.bufs.append(payload)
            self.stats.wal_records += 1
            self.stats.wal_bytes += len(payload)
        if not r.bufs and a.entries:  # trimmed since the answer: uploaded
            self.stats.wal_misses += 1
            r.bufs = await self._from_objects(sid, part.fetch_offset, a.entries[-1][1] + 1,
                                              part.max_bytes)
        return r

    async def _from_objects(self, sid: int, start: int, end: int, max_bytes: int
                            ) -> list[bytes | bytearray | memoryview]:
        """What objects hold of [start, end) as far as this broker's index reaches after a
        short wait (another broker's upload arrives through the watch of `/objects/`):
        never past it, where a missing object would pass for a compacted-away gap."""
        reach = await self._engine.await_indexed(sid, end, self._index_wait)
        stop = min(end, reach)
        if stop <= start:
            return []
        bufs, _ = await self._engine.read(sid, start, stop, max_bytes)
        self.stats.object_bytes += sum(len(b) for b in bufs)
        return bufs

    async def read_foreign(self, node: int, position: int, stream_id: int, length: int
                           ) -> bytes | None:
        """The batch a proxy (`node`) wrote for `stream_id` into its WAL at `position`, or
        None when its WAL holds no such record there (any more)."""
        path = self._wal_path(node)
        if path is None:
            return None
        expect = (FOREIGN_BIT | stream_id, 0, 0, length)
        [payload] = await asyncio.to_thread(self._read_wal, path, [(position, expect)])
        return payload

    def _read_wal(self, path: str, wanted: list[tuple[int, Expect]]) -> list[bytes | None]:
        """In a thread: each (position, expected record) of the WAL file at `path`."""
        try:
            reader = self._reader(path)
        except (OSError, ValueError) as exc:
            if path not in self._unreadable:  # once: a cluster needs a shared WAL volume
                self._unreadable.add(path)
                log.error("cannot read another broker's WAL %s (%s): zoned reads and "
                          "proxied produce need the WAL directory on a volume every broker "
                          "mounts, as failover does; reading objects only", path, exc)
            return [None] * len(wanted)
        out: list[bytes | None] = []
        for position, expect in wanted:
            rec = reader.read(position, expect)
            out.append(None if rec is None else rec.payload)
        return out

    def _reader(self, path: str) -> RingRecordReader:
        with self._readers_lock:
            reader = self._readers.get(path)
            if reader is None:
                reader = self._readers[path] = RingRecordReader(path, self._direct)
            return reader

    def close(self) -> None:
        with self._readers_lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
