"""One record of a ring WAL read by its position, by any broker: the owner's tail for a
same-zone reader, a proxy's record for the partition's owner (docs/design/0003-zones.md).

Read only: no slot is written, nothing is locked, the writer is never disturbed. Positions
never repeat, and a record is returned only if its header names the position asked for
and its CRC holds, so a record trimmed and overwritten since (or torn, or not yet
written) is refused, never misread; the caller falls back to objects, where a trimmed
record is.
"""

from __future__ import annotations

import contextlib
import os

import crc32c

from tidelog.stream.wal.base import WalRecord
from tidelog.stream.wal.file_io import WalFile
from tidelog.stream.wal.ring_format import (
    HEADER_AREA,
    KIND_DATA,
    RECORD_CRC_FROM,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    RECORD_MAGIC,
    read_latest_slot,
)

_O_DIRECT = getattr(os, "O_DIRECT", 0)

Expect = tuple[int, int, int, int]
"""(stream id, base offset, last offset, payload length) a record must name."""


class RingRecordReader:
    """Reads records of the ring WAL file at `path` (blocking: call it off the event
    loop). `direct` opens it with O_DIRECT, as the writer may, so the read goes to the
    shared volume's server and not a stale client cache."""

    def __init__(self, path: str, direct: bool = False) -> None:
        self.path = path
        self._file = _open_read_only(path, direct)
        slot = read_latest_slot(self._file.pread)
        if slot is None:
            self._file.close()
            raise ValueError(f"{path}: no valid header slot: not a WAL file")
        self.capacity = slot.capacity
        """Fixed for the file's life: a reopen keeps it."""

    def read(self, position: int, expect: Expect | None = None) -> WalRecord | None:
        """The data record starting at `position`, or None when the ring no longer (or
        does not yet) hold it there. With `expect` (stream id, base offset, last offset,
        payload length), a record naming anything else is refused too: a file that is
        not the WAL the caller means (another host's file at the same path) cannot pass
        for it."""
        if position < 0:
            return None
        offset = position % self.capacity
        room = self.capacity - offset
        if room < RECORD_HEADER_SIZE:
            return None
        head = self._file.pread(RECORD_HEADER_SIZE, HEADER_AREA + offset)
        if len(head) < RECORD_HEADER_SIZE:
            return None
        (magic, crc, kind, length, _session, at, sid, sepoch, base,
         last) = RECORD_HEADER.unpack(head)
        if (magic != RECORD_MAGIC or at != position or kind != KIND_DATA
                or length > room - RECORD_HEADER_SIZE
                or (expect is not None and expect != (sid, base, last, length))):
            return None
        payload = self._file.pread(length, HEADER_AREA + offset + RECORD_HEADER_SIZE)
        if len(payload) != length:
            return None
        if crc32c.crc32c(payload, value=crc32c.crc32c(head[RECORD_CRC_FROM:])) != crc:
            return None
        return WalRecord(sid, sepoch, base, last, payload, position,
                         position + RECORD_HEADER_SIZE + length)

    def close(self) -> None:
        self._file.close()


def _open_read_only(path: str, direct: bool) -> WalFile:
    """O_DIRECT when asked and the file system takes it (some refuse at the first
    transfer), else buffered."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    if direct and _O_DIRECT:
        with contextlib.suppress(OSError):
            file = WalFile(path, os.open(path, flags | _O_DIRECT), direct=True,
                           block_device=False)
            try:
                file.pread(HEADER_AREA, 0)
            except OSError:
                file.close()
            else:
                return file
    return WalFile(path, os.open(path, flags), direct=False, block_device=False)
