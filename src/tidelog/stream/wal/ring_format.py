"""The on-disk format of `FileWAL`'s ring file: encoding and the recovery scan.

Reading goes through a `Reader` (`(size, offset) -> bytes`, like `os.pread` on one fd) so the
same scan serves buffered and O_DIRECT files (`file_io`).

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

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import crc32c

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
RECORD_CRC_FROM = _CRC_FROM
"""The record CRC covers the header from this byte on, then the payload."""
_TAIL = struct.Struct(">BIIQQQQQ")

U32_MAX = 0xFFFF_FFFF
_U64_LIMIT = 1 << 64
_EMPTY = memoryview(b"")

Reader = Callable[[int, int], bytes]
"""`(size, offset) -> bytes` read from the file (fewer bytes at its end)."""


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


def byte_view(payload: memoryview) -> bytes | memoryview:
    """`payload` as a flat byte view (copied only when it is not contiguous)."""
    if payload.c_contiguous:
        return payload if payload.format == "B" and payload.ndim == 1 else payload.cast("B")
    return payload.tobytes()


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

    def __init__(self, pread: Reader, capacity: int, chunk: int) -> None:
        self._pread = pread
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
        data = self._pread(want, HEADER_AREA + offset)
        if len(data) < size:
            return None
        self._base = offset
        self._view = memoryview(data)
        return self._view[:size]


def scan(
    pread: Reader,
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
    reader = _RingReader(pread, capacity, chunk)
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


def read_latest_slot(pread: Reader) -> HeaderSlot | None:
    """The current slot: the valid one with the higher generation, None if neither is."""
    raw = pread(HEADER_AREA, 0)
    slots = [s for s in (decode_slot(raw[:SLOT_SIZE]), decode_slot(raw[SLOT_SIZE:])) if s]
    return max(slots, key=lambda s: s.generation) if slots else None
