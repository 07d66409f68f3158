"""The on-disk format of `FileWAL`'s ring file: encoding, the recovery scan, creating/opening.

Vocabulary:
- *slot*: the file starts with two `SLOT_SIZE` header slots holding the WAL's state (epoch,
  capacity, trim position, session, ...). Every update writes the slot the previous update
  did not, so a torn slot write always leaves the other one valid; the valid slot with the
  higher generation wins.
- *position*: a logical byte offset that only grows. The data region is the `capacity` bytes
  after the slots (`HEADER_AREA`); position `p` lives at physical offset
  `HEADER_AREA + p % capacity`.
- *record*: a data record or a padding marker (either is an *entry*), each starting with a
  `RECORD_HEADER` that carries its own position, session, kind and a CRC32C over the rest of
  the header and the payload.
- *lap*: one pass over the data region. Entries never straddle the ring end: one that does
  not fit before it starts the next lap, preceded by a padding marker (or by nothing when
  less than a header's bytes are left). The position field rejects data from an earlier lap.
- *session*: a counter bumped by every `open`. Each entry carries its session and a scan only
  accepts non-decreasing sessions from the slot's `trim_session` on. After a torn tail is cut
  its positions are reused by the next session; the session check stops stale but intact
  entries that lie beyond the cut from being served when the new writer's entries happen to
  line up with them.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import crc32c

from tidelog.stream.wal.base import WalError

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

U32_MAX = 0xFFFF_FFFF
_U64_LIMIT = 1 << 64
_EMPTY = memoryview(b"")


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


def check_u64(**fields: int) -> None:
    """Raise ValueError unless every value fits a record header's unsigned 64-bit field."""
    for name, value in fields.items():
        if not 0 <= value < _U64_LIMIT:
            raise ValueError(f"{name}={value} does not fit in an unsigned 64-bit field")


# --- Reading ---


class Scanned(NamedTuple):
    """One valid entry found by `scan`."""

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


def scan(
    fd: int,
    capacity: int,
    start: int,
    min_session: int,
    max_session: int,
    stop: int | None = None,
    chunk: int = MiB,
) -> Iterator[Scanned]:
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
        yield Scanned(kind, pos, next_position, session, sid, sepoch, base, last, payload)
        min_session = session
        pos = next_position


def read_latest_slot(fd: int) -> HeaderSlot | None:
    """The current slot: the valid one with the higher generation, None if neither is."""
    raw = os.pread(fd, HEADER_AREA, 0)
    slots = [s for s in (decode_slot(raw[:SLOT_SIZE]), decode_slot(raw[SLOT_SIZE:])) if s]
    return max(slots, key=lambda s: s.generation) if slots else None


# --- Creating and opening (blocking; run in the WAL's thread) ---


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


def open_or_create(path: str, capacity: int) -> tuple[int, HeaderSlot]:
    """A read-write fd on the WAL file at `path` (created with `capacity` if it is missing or
    empty) and its current slot."""
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
            slot = read_latest_slot(fd)
            if slot is None:
                raise WalError(f"{path} is not a Tidelog WAL (format {FORMAT_VERSION})")
            if size < HEADER_AREA + slot.capacity:
                os.ftruncate(fd, HEADER_AREA + slot.capacity)
            return fd, slot
        except BaseException:
            os.close(fd)
            raise
    raise WalError(f"could not create {path}")
