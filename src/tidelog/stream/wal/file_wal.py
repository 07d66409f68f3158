"""`FileWAL`: a preallocated ring file on any POSIX path (local disk, EBS, NFS/FSx mount).

Vocabulary:
- *header slots*: the file starts with two `SLOT_SIZE` slots holding the WAL's state
  (epoch, capacity, trim position, ...). Every update writes the slot the previous update did
  not, so a torn slot write always leaves the other one valid; the valid slot with the higher
  generation wins.
- *data region*: the `capacity` bytes after the slots. Logical position `p` lives at physical
  offset `HEADER_AREA + p % capacity`.
- *entry*: a record or a padding marker, each with a `RECORD_HEADER`. Entries never straddle
  the ring end: one that does not fit before it starts the next lap, preceded by a padding
  marker (or by nothing when less than a header's bytes are left).
- *session*: a counter bumped by every `open`. Each entry carries its session and a scan only
  accepts non-decreasing sessions from the slot's `trim_session` on. After a torn tail is cut
  its positions are reused by the next session; the session check stops stale but intact
  entries that lie beyond the cut from being served when the new writer's entries happen to
  line up with them. The entry's own `position` field rejects data from an earlier lap.
- *group*: the appends gathered while the previous write was in flight. One `pwritev` (two
  when the group wraps the ring end) and one `fdatasync`, in a dedicated thread, make all of
  them durable; then every waiter is released in order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeVar

import crc32c

from tidelog.stream.wal.base import (
    WAL,
    WalClosedError,
    WalError,
    WalFencedError,
    WalFullError,
    WalRecord,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# --- Formats (pinned by golden-bytes tests; change FORMAT_VERSION / RECORD_MAGIC with them) ---

SLOT_SIZE = 4096
HEADER_AREA = 2 * SLOT_SIZE
SLOT_MAGIC = b"TLWL"
FORMAT_VERSION = 1
# magic, version, reserved, generation, epoch, capacity, trim, session, trim_session; + crc32c
_SLOT_BODY = struct.Struct(">4sHHQQQQII")
_U32 = struct.Struct(">I")
SLOT_ENCODED_SIZE = _SLOT_BODY.size + _U32.size

RECORD_MAGIC = 0xA1
KIND_DATA = 1
KIND_PAD = 2
# magic u8, crc32c u32, kind u8, length u32, session u32, position u64, stream_id u64,
# stream_epoch u64, base_offset u64, last_offset u64; the CRC covers the header from `kind`
# on, then the payload.
RECORD_HEADER = struct.Struct(">BIBIIQQQQQ")
RECORD_HEADER_SIZE = RECORD_HEADER.size
_CRC_FROM = 5
_TAIL = struct.Struct(">BIIQQQQQ")

MIN_CAPACITY = 4 * KiB
_U32_MAX = 0xFFFF_FFFF
_U64_LIMIT = 1 << 64
_EMPTY = memoryview(b"")
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


@dataclass(frozen=True, slots=True)
class HeaderSlot:
    generation: int
    """Bumped by every slot write; the valid slot with the highest one is current."""
    epoch: int
    capacity: int
    """Bytes in the data region."""
    trim: int
    session: int
    trim_session: int
    """Lowest session an entry at `trim` may carry (see the module docstring)."""


def encode_slot(slot: HeaderSlot) -> bytes:
    body = _SLOT_BODY.pack(
        SLOT_MAGIC,
        FORMAT_VERSION,
        0,
        slot.generation,
        slot.epoch,
        slot.capacity,
        slot.trim,
        slot.session,
        slot.trim_session,
    )
    return body + _U32.pack(crc32c.crc32c(body))


def decode_slot(buf: bytes | memoryview) -> HeaderSlot | None:
    """The slot in `buf`, or None if it is torn, blank or of another format."""
    if len(buf) < SLOT_ENCODED_SIZE:
        return None
    body = buf[: _SLOT_BODY.size]
    (crc,) = _U32.unpack_from(buf, _SLOT_BODY.size)
    if crc32c.crc32c(body) != crc:
        return None
    magic, version, _, generation, epoch, capacity, trim, session, trim_session = _SLOT_BODY.unpack(
        body
    )
    if magic != SLOT_MAGIC or version != FORMAT_VERSION:
        return None
    return HeaderSlot(generation, epoch, capacity, trim, session, trim_session)


def encode_record_header(
    kind: int,
    session: int,
    position: int,
    stream_id: int,
    stream_epoch: int,
    base_offset: int,
    last_offset: int,
    payload: bytes | bytearray | memoryview,
) -> bytes:
    tail = _TAIL.pack(
        kind, len(payload), session, position, stream_id, stream_epoch, base_offset, last_offset
    )
    crc = crc32c.crc32c(payload, value=crc32c.crc32c(tail))
    return RECORD_HEADER.pack(
        RECORD_MAGIC,
        crc,
        kind,
        len(payload),
        session,
        position,
        stream_id,
        stream_epoch,
        base_offset,
        last_offset,
    )


# --- Reading ---


class _Scanned(NamedTuple):
    kind: int
    position: int
    next_position: int
    session: int
    stream_id: int
    stream_epoch: int
    base_offset: int
    last_offset: int
    payload: memoryview


class _RingReader:
    """Reads the data region through a window of `chunk` bytes: few syscalls per record."""

    def __init__(self, fd: int, capacity: int, chunk: int) -> None:
        self._fd = fd
        self._capacity = capacity
        self._chunk = chunk
        self._base = 0
        self._view = _EMPTY

    def read(self, offset: int, size: int) -> memoryview | None:
        """`size` bytes at data offset `offset` (never past the ring end), None if short."""
        start = offset - self._base
        if start >= 0 and start + size <= len(self._view):
            return self._view[start : start + size]
        want = min(max(size, self._chunk), self._capacity - offset)
        data = os.pread(self._fd, want, HEADER_AREA + offset)
        if len(data) < size:
            return None
        self._base = offset
        self._view = memoryview(data)
        return self._view[:size]


def _scan(
    fd: int,
    capacity: int,
    start: int,
    min_session: int,
    max_session: int,
    stop: int | None = None,
    chunk: int = MiB,
) -> Iterator[_Scanned]:
    """Valid entries from `start` on; stops at the first one that is not (the torn tail).

    A yielded payload view is only valid until the next step.
    """
    reader = _RingReader(fd, capacity, chunk)
    pos = start
    while stop is None or pos < stop:
        offset = pos % capacity
        room = capacity - offset
        if room < RECORD_HEADER_SIZE:
            pos += room
            continue
        head = reader.read(offset, RECORD_HEADER_SIZE)
        if head is None:
            return
        magic, crc, kind, length, session, position, sid, sepoch, base, last = RECORD_HEADER.unpack(
            head
        )
        if magic != RECORD_MAGIC or position != pos:
            return
        if not min_session <= session <= max_session:
            return
        if kind == KIND_DATA and length <= room - RECORD_HEADER_SIZE:
            next_position = pos + RECORD_HEADER_SIZE + length
        elif kind == KIND_PAD and length == 0:
            next_position = pos + room
        else:
            return
        if next_position - start > capacity:
            return
        payload = reader.read(offset + RECORD_HEADER_SIZE, length) if length else _EMPTY
        if payload is None:
            return
        if crc32c.crc32c(payload, value=crc32c.crc32c(head[_CRC_FROM:])) != crc:
            return
        yield _Scanned(kind, pos, next_position, session, sid, sepoch, base, last, payload)
        min_session = session
        pos = next_position


# --- File handling (blocking; always run in the WAL's thread) ---


def _datasync(fd: int) -> None:
    if sys.platform == "darwin":
        os.fsync(fd)
    else:
        os.fdatasync(fd)


def _read_latest_slot(fd: int) -> HeaderSlot | None:
    raw = os.pread(fd, HEADER_AREA, 0)
    slots = [s for s in (decode_slot(raw[:SLOT_SIZE]), decode_slot(raw[SLOT_SIZE:])) if s]
    return max(slots, key=lambda s: s.generation) if slots else None


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some file systems (NFS, FUSE) refuse fsync on directories
    finally:
        os.close(dfd)


def _preallocate(fd: int, size: int) -> None:
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError:
            pass
    os.ftruncate(fd, size)


def _create(path: str, capacity: int, replace_existing: bool) -> None:
    """Create a fully initialised WAL file at `path` atomically (temp file + link/rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _preallocate(fd, HEADER_AREA + capacity)
        os.pwrite(fd, encode_slot(HeaderSlot(0, 0, capacity, 0, 0, 0)), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if replace_existing:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # create-if-absent: a racing creator's file wins
            except FileExistsError:
                pass
            except OSError:
                if not os.path.exists(path):  # no hard links on this file system
                    os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(directory)


def _open_or_create(path: str, capacity: int) -> tuple[int, HeaderSlot]:
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            _create(path, capacity, replace_existing=False)
            continue
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                os.close(fd)
                _create(path, capacity, replace_existing=True)
                continue
            slot = _read_latest_slot(fd)
            if slot is None:
                raise WalError(f"{path} is not a Tidelog WAL (format {FORMAT_VERSION})")
            if size < HEADER_AREA + slot.capacity:
                os.ftruncate(fd, HEADER_AREA + slot.capacity)
            return fd, slot
        except BaseException:
            os.close(fd)
            raise
    raise WalError(f"could not create {path}")


def _pwritev_all(fd: int, buffers: list[bytes | bytearray | memoryview], offset: int) -> None:
    """Write every buffer at `offset`, in `IOV_MAX` batches, retrying short writes."""
    i = 0
    while i < len(buffers):
        batch = buffers[i : i + _IOV_MAX]
        written = os.pwritev(fd, batch, offset)
        if written <= 0:
            raise OSError(f"pwritev wrote {written} bytes")
        offset += written
        while written and i < len(buffers):
            size = len(buffers[i])
            if written >= size:
                written -= size
                i += 1
            else:
                buffers[i] = memoryview(buffers[i])[written:]
                written = 0


# --- The WAL ---


@dataclass(slots=True)
class WalStats:
    """Counters for metrics and tests; updated as groups complete."""

    groups: int = 0
    records: int = 0
    bytes: int = 0
    syncs: int = 0
    """fdatasync calls: one per group plus one per header slot write."""
    sync_seconds: float = 0.0
    """Total time spent in group fdatasyncs."""


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


def _byte_view(payload: memoryview) -> bytes | memoryview:
    if payload.c_contiguous:
        return payload if payload.format == "B" and payload.ndim == 1 else payload.cast("B")
    return payload.tobytes()


def _check_u64(**fields: int) -> None:
    for name, value in fields.items():
        if not 0 <= value < _U64_LIMIT:
            raise ValueError(f"{name}={value} does not fit in an unsigned 64-bit field")


class FileWAL(WAL):
    """Group-committing ring-file WAL; see the module docstring for the layout.

    `capacity` is the data region's size; an existing file keeps the capacity it was created
    with. `append_timeout` bounds how long an append waits for `trim` to free space.
    `max_write_bytes` caps one group's write (a larger record still goes alone).
    """

    def __init__(
        self,
        path: str,
        capacity: int = 2 * GiB,
        append_timeout: float = 30.0,
        max_write_bytes: int = 4 * MiB,
    ) -> None:
        if capacity < MIN_CAPACITY:
            raise ValueError(f"capacity must be at least {MIN_CAPACITY} bytes")
        if max_write_bytes <= 0:
            raise ValueError("max_write_bytes must be positive")
        self.path = path
        self.stats = WalStats()
        self._capacity = capacity
        self._append_timeout = append_timeout
        self._max_write_bytes = max_write_bytes
        self._state = _NEW
        self._failure: WalError | None = None
        self._fd = -1
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
            raise WalError("a FileWAL can be opened once")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidelog-wal")
        try:
            self._fd, slot = await self._run(_open_or_create, self.path, self._capacity)
            if slot.epoch > epoch:
                raise WalFencedError(f"{self.path} is owned by epoch {slot.epoch} > {epoch}")
            if slot.capacity != self._capacity:
                log.warning(
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
            "%s: opened epoch %d session %d, %d records in [%d, %d)",
            self.path,
            epoch,
            self._session,
            records,
            self._trim,
            end,
        )

    def recover(self) -> Iterator[WalRecord]:
        """Records between the trim position and the end found by `open`.

        `open` already validated them off the event loop; each step here reads at most one
        window (1 MiB or one record) so a caller can interleave other work.
        """
        self._check_usable()
        for entry in _scan(
            self._fd,
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
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            await self._run(os.close, fd)
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
            payload = _byte_view(payload)
        size = RECORD_HEADER_SIZE + len(payload)
        if size > self._capacity or len(payload) > _U32_MAX:
            raise WalFullError(f"a {size}-byte record exceeds the capacity {self._capacity}")
        _check_u64(
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
        if self._waiting or not self._try_reserve(entry):
            await self._reserve_slow(entry, timeout)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await future

    def _try_reserve(self, entry: _Entry) -> bool:
        """Place `entry` at the end (after a padding marker if it starts a lap) if it fits."""
        if self._skipping is not None:
            return False
        capacity, end = self._capacity, self._end
        size = entry.write_size
        room = capacity - end % capacity
        position = end if size <= room else end + room
        if position + size - self._trim > capacity:
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
                for entry in group:
                    if entry.future is not None:
                        stats.records += 1
                        if not entry.future.done():
                            entry.future.set_result(entry.next_position)
        finally:
            self._flusher = None

    def _write_group_sync(self, group: list[_Entry]) -> float:
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
            _pwritev_all(self._fd, buffers, offset)
        started = time.perf_counter()
        _datasync(self._fd)
        self.stats.syncs += 1
        return time.perf_counter() - started

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
        current = self._check_owner_sync(epoch, session)
        slot = replace(update(current), generation=current.generation + 1)
        os.pwrite(self._fd, encode_slot(slot), (slot.generation % 2) * SLOT_SIZE)
        _datasync(self._fd)
        self.stats.syncs += 1
        return slot

    def _check_owner_sync(self, epoch: int | None = None, session: int | None = None) -> HeaderSlot:
        """Refuse to write once a newer opener (higher epoch, or a later session) took over.

        Best effort across hosts (NFS caches may hide another host's slot write for a
        while); leases make that window safe.
        """
        if epoch is None:
            epoch, session = self._epoch, self._session
        current = _read_latest_slot(self._fd)
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
        for entry in _scan(
            self._fd, self._capacity, slot.trim, slot.trim_session, slot.session, chunk=4 * MiB
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
