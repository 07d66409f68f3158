"""`ObjectWAL`: the WAL in object storage (the S3 WAL): no extra service to run, latency
bounded below by one PUT.

Vocabulary (object layout in `object_wal_format`):
- *group*: the records appended within `batch_interval` of the oldest waiting one, up to
  `batch_bytes`; one create-only PUT of one object makes them all durable, then their
  appends return, in order. One PUT is in flight at a time: a group forms while the
  previous one is being written.
- *sequence*: objects are numbered consecutively and each number is written create-only
  (S3 `If-None-Match: *`). A writer owns the prefix while its next number is free.
- *claim* (fencing): `open(epoch)` lists the prefix, refuses if the newest object carries a
  higher epoch, and PUTs an empty object at the next number. An older writer's next PUT
  targets a number at or below the claim, finds it taken and stops with `WalFencedError`
  before acknowledging anything. The newest object is never deleted, so the next number can
  always be found by a LIST.
- *trim*: the writer's trim position goes into every object's header; objects wholly below
  it are deleted (their records are in uploaded objects; S3 DELETEs cost nothing). `close`
  writes a marker when the trim moved since the last object. After a crash the newest
  header's trim may lag the real one: recovery then returns records the engine already has
  in objects, which it skips.
- *recovery*: `open` downloads every object after the trim (at most `capacity` bytes);
  positions must run on without a gap (a gap means an object vanished: refuse to start).

Request cost: one PUT per group plus one per open and per clean close; a LIST and one GET
per remaining object per open; one DELETE per object once trimmed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from tidelog.objectstore.base import (
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
)
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
from tidelog.stream.wal.object_wal_format import (
    HEADER_SIZE,
    ObjectHeader,
    PendingRecord,
    decode_header,
    decode_records,
    encode_object,
    object_key,
    parse_key,
)
from tidelog.stream.wal.ring_format import (
    RECORD_HEADER_SIZE,
    U32_MAX,
    GiB,
    MiB,
    byte_view,
    check_u64,
)

log = logging.getLogger(__name__)

_NEW, _OPEN, _CLOSED = "new", "open", "closed"
_CLAIM_ATTEMPTS = 20
_ENCODE_IN_THREAD = 256 << 10
"""Groups larger than this are encoded (CRCs, one join) off the event loop."""


@dataclass(slots=True, eq=False)
class _Entry:
    record: PendingRecord
    size: int
    arrived: float
    future: asyncio.Future[int]


@dataclass(frozen=True, slots=True)
class _Stored:
    """An object known to be in the store."""

    sequence: int
    start: int
    end: int


class ObjectWAL(WAL):
    """Group-committing WAL over an `ObjectStore` prefix (the store's keys are the WAL's).

    `capacity` bounds the bytes not yet trimmed (as a `FileWAL`'s ring does);
    `append_timeout` how long an append waits for `trim` to free space; `batch_interval`
    (seconds) and `batch_bytes` when a group is PUT. A failed PUT is retried
    `put_attempts` times (same key, same bytes) before the WAL fails for good.
    `owns_store`: `close` closes the store too.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        capacity: int = 2 * GiB,
        append_timeout: float = 30.0,
        batch_interval: float = 0.25,
        batch_bytes: int = 8 * MiB,
        put_attempts: int = 5,
        name: str = "object WAL",
        owns_store: bool = False,
    ) -> None:
        if capacity <= RECORD_HEADER_SIZE:
            raise ValueError(f"capacity must exceed {RECORD_HEADER_SIZE} bytes")
        if batch_interval < 0 or batch_bytes <= 0 or put_attempts < 1:
            raise ValueError("need batch_interval >= 0, batch_bytes > 0, put_attempts >= 1")
        self.store = store
        self.name = name
        self.stats = WalStats()
        self._gate = SpaceGate(self.stats)
        self._capacity = capacity
        self._append_timeout = append_timeout
        self._batch_interval = batch_interval
        self._batch_bytes = batch_bytes
        self._put_attempts = put_attempts
        self._owns_store = owns_store
        self._state = _NEW
        self._failure: WalError | None = None
        self._epoch = 0
        self._next_sequence = 0
        self._trim = 0
        self._durable_trim = 0
        """The trim recorded in the newest object."""
        self._end = 0
        self._stored: deque[_Stored] = deque()
        self._recovered: list[tuple[ObjectHeader, bytes]] = []
        self._pending: deque[_Entry] = deque()
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._deleter: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"ObjectWAL({self.name})"

    @property
    def trim_position(self) -> int:
        return self._trim

    @property
    def end_position(self) -> int:
        return self._end

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def epoch(self) -> int:
        return self._epoch

    # --- lifecycle ---

    async def open(self, epoch: int) -> None:
        if self._state != _NEW:
            raise WalError("an ObjectWAL can be opened once")
        try:
            listed, claim = await self._claim(epoch)
            await self._load(listed, claim)
        except BaseException:
            self._state = _CLOSED
            raise
        self._epoch = epoch
        self._state = _OPEN
        records = sum(h.count for h, _ in self._recovered)
        log.info(
            "%s: opened epoch %d at object %d, %d records in [%d, %d)",
            self.name,
            epoch,
            claim.sequence,
            records,
            self._trim,
            self._end,
        )
        self._schedule_deletes()

    async def _claim(self, epoch: int) -> tuple[list[int], ObjectHeader]:
        """PUT the claim marker at the next free number; returns the numbers listed before."""
        for _ in range(_CLAIM_ATTEMPTS):
            listed = sorted(s for k in await self.store.list("") if (s := parse_key(k)) is not None)
            trim = end = 0
            if listed:
                try:
                    raw = await self.store.get_range(object_key(listed[-1]), 0, HEADER_SIZE)
                except ObjectNotFoundError:
                    continue  # deleted under us: only a newer owner does that; look again
                newest = decode_header(raw, listed[-1])
                if newest.epoch > epoch:
                    raise WalFencedError(f"{self.name} is owned by epoch {newest.epoch} > {epoch}")
                trim, end = newest.trim, max(newest.end, newest.trim)
            claim = ObjectHeader(epoch, listed[-1] + 1 if listed else 0, end, end, trim, 0)
            body = encode_object(epoch, claim.sequence, trim, end, [])
            started = time.perf_counter()
            try:
                await self._put(claim.sequence, body, claiming=True)
            except ObjectExistsError:
                continue  # another writer took that number: list again
            self._count_put(len(body), time.perf_counter() - started, records=0)
            return listed, claim
        raise WalError(f"{self.name}: could not claim the next object in {_CLAIM_ATTEMPTS} tries")

    async def _load(self, listed: list[int], claim: ObjectHeader) -> None:
        """Download the objects before the claim; keep those holding records past the trim."""
        semaphore = asyncio.Semaphore(8)

        async def fetch(sequence: int) -> tuple[int, bytes | None]:
            async with semaphore:
                try:
                    return sequence, await self.store.get(object_key(sequence))
                except ObjectNotFoundError:  # trimmed by the previous owner meanwhile
                    return sequence, None

        trim = claim.trim
        stored: list[_Stored] = []
        live: list[tuple[ObjectHeader, bytes]] = []
        for sequence, body in await asyncio.gather(*(fetch(s) for s in listed)):
            if body is None:
                continue
            header = decode_header(body, sequence)
            stored.append(_Stored(sequence, header.start, header.end))
            if header.end > trim and header.count:
                live.append((header, body))
        if live:  # objects before the first live one were deleted: trimmed
            trim = max(trim, live[0][0].start)
            position = live[0][0].start
            for header, _ in live:
                if header.start != position:
                    raise WalError(
                        f"{self.name}: records [{position}, {header.start}) are missing "
                        f"(object {header.sequence} starts at {header.start})"
                    )
                position = header.end
            if position != claim.end:
                raise WalError(f"{self.name}: objects end at {position}, newest at {claim.end}")
        else:  # every record was trimmed (the newest header may not know it yet)
            trim = claim.end
        stored.append(_Stored(claim.sequence, claim.start, claim.end))
        self._stored = deque(stored)
        self._recovered = live
        self._trim = trim
        self._durable_trim = claim.trim
        self._end = claim.end
        self._next_sequence = claim.sequence + 1

    def recover(self) -> Iterator[WalRecord]:
        """Records from the trim position on, from the objects `open` downloaded (held in
        memory until one pass over them completes)."""
        self._check_usable()
        for header, body in self._recovered:
            for record in decode_records(body, header):
                if record.position >= self._trim:
                    yield record
        self._recovered = []

    async def close(self) -> None:
        if self._state == _CLOSED:
            return
        was_open = self._state == _OPEN
        self._state = _CLOSED
        self._gate.wake()
        self._wake.set()
        if was_open:
            if self._flusher is not None:
                await asyncio.shield(self._flusher)
            if self._failure is None and self._trim > self._durable_trim:
                try:  # record the trim so a restart replays nothing already uploaded
                    await self._put_group([])
                    self._schedule_deletes()
                except Exception as exc:
                    log.warning("%s: trim marker not written: %s", self.name, exc)
            if self._deleter is not None:
                await asyncio.gather(asyncio.shield(self._deleter), return_exceptions=True)
        self._recovered = []
        if self._owns_store:
            await self.store.close()

    # --- appends ---

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
        if isinstance(payload, memoryview):
            payload = byte_view(payload)
        size = RECORD_HEADER_SIZE + len(payload)
        if size > self._capacity or len(payload) > U32_MAX:
            raise WalFullError(f"a {size}-byte record exceeds the capacity {self._capacity}")
        check_u64(
            stream_id=stream_id,
            stream_epoch=stream_epoch,
            base_offset=base_offset,
            last_offset=last_offset,
        )
        started = time.perf_counter()
        if self._gate.waiting or not self._fits(size):
            limit = self._append_timeout if timeout is None else timeout
            await self._gate.wait(lambda: self._fits(size), self._check_usable, limit,
                                  lambda: f"{size} bytes needed, {self._used()} of "
                                          f"{self._capacity} in use")
        record = PendingRecord(
            stream_id, stream_epoch, base_offset, last_offset, payload, self._end
        )
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Entry(record, size, time.monotonic(), future))
        self._pending_bytes += size
        self._end += size
        if self._pending_bytes >= self._batch_bytes:
            self._wake.set()  # the flusher otherwise wakes at the oldest record's deadline
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        position = await future
        self.stats.append_latency.observe(time.perf_counter() - started)
        return position

    def _used(self) -> int:
        return self._end - self._trim

    def _fits(self, size: int) -> bool:
        return self._end + size - self._trim <= self._capacity

    async def _flush(self) -> None:
        """PUT groups until nothing is pending; each waits for its interval or its bytes."""
        try:
            while self._pending:
                while self._pending_bytes < self._batch_bytes and self._state == _OPEN:
                    remaining = self._pending[0].arrived + self._batch_interval - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except TimeoutError:
                        break
                group = [self._pending.popleft()]
                size = group[0].size
                while self._pending and size + self._pending[0].size <= self._batch_bytes:
                    group.append(self._pending.popleft())
                    size += group[-1].size
                self._pending_bytes -= size
                try:
                    await self._put_group(group)
                except Exception as exc:
                    self._fail(exc, group)
                    return
                for entry in group:
                    if not entry.future.done():
                        entry.future.set_result(entry.record.position + entry.size)
                self._schedule_deletes()
        finally:
            self._flusher = None

    async def _put_group(self, group: list[_Entry]) -> None:
        """One object for `group` (a trim marker when empty) at the next number."""
        sequence, trim = self._next_sequence, self._trim
        start = group[0].record.position if group else self._end
        records = [e.record for e in group]
        if sum(e.size for e in group) > _ENCODE_IN_THREAD:
            body = await asyncio.to_thread(encode_object, self._epoch, sequence, trim, start,
                                           records)
        else:
            body = encode_object(self._epoch, sequence, trim, start, records)
        started = time.perf_counter()
        await self._put(sequence, body)
        self._count_put(len(body), time.perf_counter() - started, records=len(group))
        end = start + sum(e.size for e in group)
        self._next_sequence = sequence + 1
        self._durable_trim = trim
        self._stored.append(_Stored(sequence, start, end))

    async def _put(self, sequence: int, body: bytes, claiming: bool = False) -> None:
        """Create-only PUT, retried with the same bytes; a taken number fences us (or, when
        `claiming`, raises `ObjectExistsError` so the caller looks again)."""
        key = object_key(sequence)
        failures, backoff = 0, 0.1
        while True:
            try:
                await self.store.put_if_absent(key, body)
                return
            except ObjectExistsError:
                if failures and await self._holds(key, body):
                    return  # an earlier attempt landed before its answer was lost
                if claiming:
                    raise
                raise WalFencedError(
                    f"{self.name}: object {sequence} was written by a newer owner"
                ) from None
            except ObjectStoreError as exc:
                failures += 1
                if failures >= self._put_attempts:
                    raise WalError(f"{self.name}: PUT of object {sequence} failed: {exc}") from exc
                log.warning("%s: PUT of object %d failed, retrying: %s", self.name, sequence, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _holds(self, key: str, body: bytes) -> bool:
        try:
            return await self.store.get(key) == body
        except ObjectStoreError:
            return False

    def _count_put(self, nbytes: int, seconds: float, records: int) -> None:
        stats = self.stats
        stats.syncs += 1
        stats.bytes += nbytes
        stats.sync_seconds += seconds
        stats.sync_latency.observe(seconds)
        if records:
            stats.groups += 1
            stats.records += records
            stats.group_bytes.observe(nbytes)

    def _fail(self, exc: Exception, group: list[_Entry]) -> None:
        """A PUT that failed (or found a newer owner) leaves nothing to go on with."""
        if self._failure is None:
            self._failure = exc if isinstance(exc, WalError) else WalError(f"WAL PUT: {exc!r}")
        for entry in [*group, *self._pending]:
            if not entry.future.done():
                entry.future.set_exception(self._failure)
        self._pending.clear()
        self._pending_bytes = 0
        self._gate.wake()
        log.error("%s: WAL failed: %s", self.name, self._failure)

    # --- trimming ---

    async def trim(self, position: int) -> None:
        self._check_usable()
        if position > self._end:
            raise ValueError(f"trim({position}) is past the end position {self._end}")
        if position <= self._trim:
            return
        self._trim = position
        self._gate.wake()
        self._schedule_deletes()

    async def reset(self) -> None:
        await self.trim(self._end)

    def _schedule_deletes(self) -> None:
        if self._deleter is None and self._deletable():
            self._deleter = asyncio.get_running_loop().create_task(self._delete_trimmed())

    def _deletable(self) -> bool:
        """The oldest object is wholly trimmed and not the newest one."""
        return len(self._stored) > 1 and self._stored[0].end <= self._trim

    async def _delete_trimmed(self) -> None:
        try:
            while self._deletable():
                oldest = self._stored[0]
                try:
                    await self.store.delete(object_key(oldest.sequence))
                except ObjectStoreError as exc:  # left for the next trim, or the next open
                    log.warning("%s: could not delete object %d: %s", self.name,
                                oldest.sequence, exc)
                    return
                self._stored.popleft()
        finally:
            self._deleter = None

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise type(self._failure)(*self._failure.args)
        if self._state == _CLOSED:
            raise WalClosedError(f"{self.name} is closed")
        if self._state == _NEW:
            raise WalError(f"{self.name} is not open")
