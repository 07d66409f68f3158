"""`FileWAL`: a ring file on any POSIX path (local disk, EBS, NFS/FSx mount) or a raw device.

The file's layout (header slots, records, laps, sessions, positions) and the recovery scan
live in `ring_format`; the medium (regular file or block device, buffered or O_DIRECT) in
`file_io`. This module is the writer:
- *group*: the appends gathered while the previous write was in flight. One `pwritev` (two
  when the group wraps the ring end) and one `fdatasync`, in a dedicated thread, make all of
  them durable; then every waiter is released in order.
- *back-pressure*: an append that does not fit waits, first come first served, until `trim`
  frees room (at most `append_timeout`).
- *fencing*: `open` bumps the slot's epoch and session; every group write re-reads the slot
  before writing and again after its `fdatasync`, and refuses to go on (and to acknowledge)
  once a newer opener took over. So an older writer cannot make an append durable and
  acknowledged after a newer one opened the file: either the newer one's scan found it, or
  the older one's second read sees the newer slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from tidelog.stream.wal.base import (
    WAL,
    WalClosedError,
    WalError,
    WalFencedError,
    WalFullError,
    WalRecord,
    WalStats,
)
from tidelog.stream.wal.file_io import ALIGN, WalFile, open_wal_file
from tidelog.stream.wal.ring_format import (
    HEADER_AREA,
    KIND_DATA,
    KIND_PAD,
    RECORD_HEADER_SIZE,
    SLOT_SIZE,
    U32_MAX,
    GiB,
    HeaderSlot,
    KiB,
    MiB,
    byte_view,
    check_u64,
    encode_record_header,
    encode_slot,
    read_latest_slot,
    scan,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MIN_CAPACITY = 4 * KiB


# --- The WAL ---


@dataclass(slots=True, eq=False)
class _Entry:
    """A record or padding marker between reservation and durability."""

    kind: int
    session: int
    stream_id: int
    stream_epoch: int
    base_offset: int
    last_offset: int
    payload: bytes | bytearray | memoryview
    future: asyncio.Future[int] | None
    position: int = -1
    next_position: int = -1

    @property
    def write_size(self) -> int:
        return RECORD_HEADER_SIZE + len(self.payload)

    def header(self) -> bytes:
        return encode_record_header(
            self.kind,
            self.session,
            self.position,
            self.stream_id,
            self.stream_epoch,
            self.base_offset,
            self.last_offset,
            self.payload,
        )


_NEW, _OPEN, _CLOSED = "new", "open", "closed"


class FileWAL(WAL):
    """Group-committing ring-file WAL; see `ring_format` for the layout.

    `capacity` is the data region's size; an existing file keeps the capacity it was created
    with, a block device's is its size. `append_timeout` bounds how long an append waits for
    `trim` to free space. `max_write_bytes` caps one group's write (a larger record still
    goes alone). `direct` asks for O_DIRECT (see `file_io`; `direct_io` says if it is used).
    """

    def __init__(
        self,
        path: str,
        capacity: int = 2 * GiB,
        append_timeout: float = 30.0,
        max_write_bytes: int = 4 * MiB,
        direct: bool = False,
    ) -> None:
        if capacity < MIN_CAPACITY:
            raise ValueError(f"capacity must be at least {MIN_CAPACITY} bytes")
        if max_write_bytes <= 0:
            raise ValueError("max_write_bytes must be positive")
        if direct and capacity % ALIGN:
            raise ValueError(f"with direct I/O the capacity must be a multiple of {ALIGN}")
        self.path = path
        self.stats = WalStats()
        self._capacity = capacity
        self._append_timeout = append_timeout
        self._max_write_bytes = max_write_bytes
        self._direct = direct
        self._gap = 0
        """Bytes kept free in front of the trim position (an O_DIRECT write's zero fill)."""
        self._state = _NEW
        self._failure: WalError | None = None
        self._file: WalFile | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._epoch = 0
        self._session = 0
        self._trim = 0
        self._trim_session = 0
        self._trim_target = 0
        self._end = 0
        self._recovered_end = 0
        self._boundaries: deque[tuple[int, int]] = deque()
        """(first position, session) of each session's entries still in the ring."""
        self._pending: deque[_Entry] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._skipping: asyncio.Task[None] | None = None
        self._waiting = 0
        self._reserve_lock = asyncio.Lock()
        self._slot_lock = asyncio.Lock()
        self._space = asyncio.Event()

    def __repr__(self) -> str:
        return f"FileWAL({self.path})"

    @property
    def trim_position(self) -> int:
        return self._trim

    @property
    def end_position(self) -> int:
        return self._end

    @property
    def capacity(self) -> int:
        return self._capacity

    def record_start(self, next_position: int, length: int) -> int | None:
        # a record is never split; padding, if any, comes before it
        return next_position - RECORD_HEADER_SIZE - length

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def direct_io(self) -> bool:
        """O_DIRECT in use (asked for, and the file system took it)."""
        return self._file is not None and self._file.direct

    @property
    def block_device(self) -> bool:
        return self._file is not None and self._file.block_device

    # --- lifecycle ---

    async def open(self, epoch: int) -> None:
        if self._state != _NEW:
            raise WalError("a FileWAL can be opened once")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidelog-wal")
        try:
            file, slot = await self._run(open_wal_file, self.path, self._capacity, self._direct)
            self._file = file
            self._gap = ALIGN if file.direct else 0
            if slot.epoch > epoch:
                raise WalFencedError(f"{self.path} is owned by epoch {slot.epoch} > {epoch}")
            if slot.capacity != self._capacity:
                (log.info if file.block_device else log.warning)(
                    "%s: keeping its capacity %d (asked for %d)",
                    self.path,
                    slot.capacity,
                    self._capacity,
                )
                self._capacity = slot.capacity
            slot = await self._run(
                self._commit_slot_sync,
                lambda s: replace(s, epoch=epoch, session=s.session + 1),
                epoch,
                None,
            )
            end, boundaries, records = await self._run(self._scan_sync, slot)
        except BaseException:
            self._state = _CLOSED
            await self._release()
            raise
        self._epoch, self._session = slot.epoch, slot.session
        self._trim = self._trim_target = slot.trim
        self._trim_session = slot.trim_session
        self._end = self._recovered_end = end
        self._boundaries = deque(boundaries)
        self._state = _OPEN
        log.info(
            "%s: opened epoch %d session %d, %d records in [%d, %d)%s%s",
            self.path,
            epoch,
            self._session,
            records,
            self._trim,
            end,
            ", block device" if file.block_device else "",
            ", O_DIRECT" if file.direct else "",
        )

    def recover(self) -> Iterator[WalRecord]:
        """Records between the trim position and the end found by `open`.

        `open` already validated them off the event loop; each step here reads at most one
        window (1 MiB or one record) so a caller can interleave other work.
        """
        self._check_usable()
        assert self._file is not None
        for entry in scan(
            self._file.pread,
            self._capacity,
            self._trim,
            self._trim_session,
            self._session,
            stop=self._recovered_end,
        ):
            if entry.kind == KIND_DATA:
                yield WalRecord(
                    entry.stream_id,
                    entry.stream_epoch,
                    entry.base_offset,
                    entry.last_offset,
                    bytes(entry.payload),
                    entry.position,
                    entry.next_position,
                )

    async def close(self) -> None:
        if self._state == _CLOSED:
            return
        was_open = self._state == _OPEN
        self._state = _CLOSED
        self._space.set()
        if was_open:
            if self._flusher is not None:
                await asyncio.shield(self._flusher)
            if self._skipping is not None:
                await asyncio.gather(asyncio.shield(self._skipping), return_exceptions=True)
            async with self._slot_lock:
                pass
        await self._release()

    async def _release(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            await self._run(file.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

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
        if size > self._capacity - self._gap or len(payload) > U32_MAX:
            raise WalFullError(f"a {size}-byte record exceeds the capacity {self._capacity}")
        check_u64(
            stream_id=stream_id,
            stream_epoch=stream_epoch,
            base_offset=base_offset,
            last_offset=last_offset,
        )
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        entry = _Entry(
            KIND_DATA,
            self._session,
            stream_id,
            stream_epoch,
            base_offset,
            last_offset,
            payload,
            future,
        )
        started = time.perf_counter()
        if self._waiting or not self._try_reserve(entry):
            await self._reserve_slow(entry, timeout)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        position = await future
        self.stats.append_latency.observe(time.perf_counter() - started)
        return position

    def _try_reserve(self, entry: _Entry) -> bool:
        """Place `entry` at the end (after a padding marker if it starts a lap) if it fits."""
        if self._skipping is not None:
            return False
        capacity, end = self._capacity, self._end
        size = entry.write_size
        room = capacity - end % capacity
        position = end if size <= room else end + room
        if position + size - self._trim > capacity - self._gap:
            return False
        if position != end and room >= RECORD_HEADER_SIZE:
            pad = _Entry(KIND_PAD, self._session, 0, 0, 0, 0, b"", None)
            self._enqueue(pad, end, position)
        self._enqueue(entry, position, position + size)
        return True

    def _enqueue(self, entry: _Entry, position: int, next_position: int) -> None:
        entry.position, entry.next_position = position, next_position
        if not self._boundaries or self._boundaries[-1][1] != self._session:
            self._boundaries.append((position, self._session))
        self._pending.append(entry)
        self._end = next_position

    async def _reserve_slow(self, entry: _Entry, timeout: float | None) -> None:
        """Wait, first come first served, until `trim` frees room for `entry`."""
        limit = self._append_timeout if timeout is None else timeout
        self._waiting += 1
        self.stats.full_waits += 1
        try:
            async with asyncio.timeout(limit), self._reserve_lock:
                while True:
                    self._check_usable()
                    if self._try_reserve(entry):
                        return
                    if self._skipping is None and self._trim == self._end:
                        self._skipping = asyncio.get_running_loop().create_task(self._skip_lap())
                    self._space.clear()
                    await self._space.wait()
        except TimeoutError:
            self.stats.full_timeouts += 1
            raise WalFullError(
                f"WAL full for {limit}s: {entry.write_size} bytes needed, "
                f"{self._end - self._trim} of {self._capacity} in use"
            ) from None
        finally:
            self._waiting -= 1

    async def _skip_lap(self) -> None:
        """Start the next lap of an empty WAL whose next record only fits there.

        The padding in front of it would stay live (and in the way) until trimmed, so trim
        straight past it: no reader needs it then.
        """
        try:
            await self._commit_trim(self._end + self._capacity - self._end % self._capacity)
        except Exception:  # recorded in self._failure; waiters see it
            log.debug("lap skip failed", exc_info=True)
        finally:
            self._skipping = None
            self._space.set()

    async def _flush(self) -> None:
        """Write pending entries group by group until none are left."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                group = [self._pending.popleft()]
                size = group[0].write_size
                while self._pending and size + self._pending[0].write_size <= (
                    self._max_write_bytes
                ):
                    size += self._pending[0].write_size
                    group.append(self._pending.popleft())
                try:
                    assert self._executor is not None
                    seconds = await loop.run_in_executor(
                        self._executor, self._write_group_sync, group
                    )
                except Exception as exc:
                    self._fail(exc, group)
                    return
                stats = self.stats
                stats.groups += 1
                stats.bytes += size
                stats.sync_seconds += seconds
                stats.sync_latency.observe(seconds)
                stats.group_bytes.observe(size)
                for entry in group:
                    if entry.future is not None:
                        stats.records += 1
                        if not entry.future.done():
                            entry.future.set_result(entry.next_position)
        finally:
            self._flusher = None

    def _write_group_sync(self, group: list[_Entry]) -> float:
        assert self._file is not None
        self._check_owner_sync()
        runs: list[tuple[int, list[bytes | bytearray | memoryview]]] = []
        expected = -1
        for entry in group:
            offset = HEADER_AREA + entry.position % self._capacity
            if offset != expected:
                runs.append((offset, []))
            buffers = runs[-1][1]
            buffers.append(entry.header())
            if entry.payload:
                buffers.append(entry.payload)
            expected = offset + entry.write_size
        for offset, buffers in runs:
            self._file.write(offset, buffers)
        started = time.perf_counter()
        self._file.datasync()
        self.stats.syncs += 1
        seconds = time.perf_counter() - started
        self._check_owner_sync()  # opened meanwhile? then the newer owner decides; no ack
        return seconds

    def _fail(self, exc: Exception, group: list[_Entry]) -> None:
        """A failed write or fdatasync leaves the file's state unknown: stop for good."""
        failure = self._set_failed(exc)
        for entry in [*group, *self._pending]:
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(failure)
        self._pending.clear()
        log.error("%s: WAL failed: %s", self.path, failure)

    def _set_failed(self, exc: Exception) -> WalError:
        if self._failure is None:
            self._failure = exc if isinstance(exc, WalError) else WalError(f"WAL I/O: {exc!r}")
            self._space.set()
        return self._failure

    # --- trimming ---

    async def trim(self, position: int) -> None:
        self._check_usable()
        if position > self._end:
            raise ValueError(f"trim({position}) is past the end position {self._end}")
        if position <= self._trim:
            return
        self._trim_target = max(self._trim_target, position)
        await asyncio.shield(self._commit_trim(position))

    async def reset(self) -> None:
        await self.trim(self._end)

    async def _commit_trim(self, position: int) -> None:
        """Persist a new trim position, then let appends reuse the space (in that order)."""
        async with self._slot_lock:
            target = max(position, self._trim_target)
            if target <= self._trim:
                return
            trim_session = self._session_at(target)
            try:
                await self._run(
                    self._commit_slot_sync,
                    lambda s: replace(s, trim=target, trim_session=trim_session),
                    self._epoch,
                    self._session,
                )
            except Exception as exc:
                raise self._set_failed(exc) from exc
            self._trim, self._trim_session = target, trim_session
            self._end = max(self._end, target)
            while len(self._boundaries) > 1 and self._boundaries[1][0] <= target:
                self._boundaries.popleft()
            self._space.set()

    def _session_at(self, position: int) -> int:
        """Session of the entry starting at `position` (the current one past the end)."""
        if position >= self._end:
            return self._session
        session = self._trim_session
        for start, boundary_session in self._boundaries:
            if start > position:
                break
            session = boundary_session
        return session

    # --- helpers ---

    def _commit_slot_sync(
        self, update: Callable[[HeaderSlot], HeaderSlot], epoch: int, session: int | None
    ) -> HeaderSlot:
        """Write `update(current slot)` into the other slot and make it durable."""
        assert self._file is not None
        current = self._check_owner_sync(epoch, session)
        slot = replace(update(current), generation=current.generation + 1)
        self._file.write_slot((slot.generation % 2) * SLOT_SIZE, encode_slot(slot))
        self._file.datasync()
        self.stats.syncs += 1
        return slot

    def _check_owner_sync(self, epoch: int | None = None, session: int | None = None) -> HeaderSlot:
        """Refuse to write once a newer opener (higher epoch, or a later session) took over.

        Best effort across hosts (NFS caches may hide another host's slot write for a
        while); leases make that window safe.
        """
        if epoch is None:
            epoch, session = self._epoch, self._session
        assert self._file is not None
        current = read_latest_slot(self._file.pread)
        if current is None:
            raise WalError(f"{self.path}: both header slots are unreadable")
        if current.epoch > epoch or (session is not None and current.session != session):
            raise WalFencedError(
                f"{self.path}: fenced by epoch {current.epoch} session {current.session}"
            )
        return current

    def _scan_sync(self, slot: HeaderSlot) -> tuple[int, list[tuple[int, int]], int]:
        end, records = slot.trim, 0
        boundaries: list[tuple[int, int]] = []
        assert self._file is not None
        for entry in scan(
            self._file.pread,
            self._capacity,
            slot.trim,
            slot.trim_session,
            slot.session,
            chunk=4 * MiB,
        ):
            if not boundaries or boundaries[-1][1] != entry.session:
                boundaries.append((entry.position, entry.session))
            end = entry.next_position
            records += entry.kind == KIND_DATA
        return end, boundaries, records

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise type(self._failure)(*self._failure.args)
        if self._state == _CLOSED:
            raise WalClosedError(f"{self.path} is closed")
        if self._state == _NEW:
            raise WalError(f"{self.path} is not open")
