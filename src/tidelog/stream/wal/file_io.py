"""The medium under a `FileWAL`: a regular file or a raw block device, buffered or O_DIRECT.

Vocabulary:
- *block device*: a raw device (`/dev/nvme1n1`, an EBS volume) is used as it is: the WAL's
  capacity is the device's size, nothing is preallocated or truncated, and a device whose
  two header slots are all zeros is formatted on first open (anything else that is not a
  WAL is refused). A formatted device starts at a random lap, so records a previous format
  left behind never line up with the positions the new one expects.
- *direct*: O_DIRECT bypasses the page cache (on NFS, the client cache too, so the fencing
  re-read of the header sees another host's writes). Every transfer must be aligned to
  `ALIGN` (offset, length and buffer address), so writes are assembled in a page-aligned
  buffer: the partial block in front of a write is copied from what this writer last wrote
  there (or read back once), so those bytes are rewritten unchanged and a torn write cannot
  damage them; the partial block behind it is zero-filled, which is why the writer keeps
  `ALIGN` bytes free in front of the trim position. A file system that refuses O_DIRECT
  (EINVAL at open or on the first aligned read) gets buffered I/O and a WARNING.
Durability is the same either way: every group ends with `fdatasync`.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import random
import stat
import sys
import time

from tidelog.stream.wal.base import WalError
from tidelog.stream.wal.ring_format import (
    FORMAT_VERSION,
    HEADER_AREA,
    HeaderSlot,
    encode_slot,
    read_latest_slot,
)

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview

ALIGN = 4096
"""Alignment of O_DIRECT transfers: a multiple of every common logical block size."""
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_FORMAT_LAPS = 1 << 20
"""A formatted device starts at a random lap below this (positions stay far below 2**63)."""


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _datasync(fd: int) -> None:
    if sys.platform == "darwin":
        os.fsync(fd)
    else:
        os.fdatasync(fd)


def _pwritev_all(fd: int, buffers: list[Buffer], offset: int) -> None:
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


class WalFile:
    """Positioned reads and writes on the WAL's fd. Writes come from the WAL's one thread
    (they share a scratch buffer); reads may come from any thread."""

    def __init__(self, path: str, fd: int, *, direct: bool, block_device: bool) -> None:
        self.path = path
        self.fd = fd
        self.direct = direct
        self.block_device = block_device
        self._scratch = mmap.mmap(-1, ALIGN) if direct else None
        self._tail: tuple[int, bytes] | None = None
        """(offset, bytes) of the last aligned block written: the prefix of the next write."""

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset` (fewer at the end of the file)."""
        if not self.direct:
            return os.pread(self.fd, size, offset)
        start = offset - offset % ALIGN
        length = _round_up(offset + size, ALIGN) - start
        with mmap.mmap(-1, length) as buf:  # its own buffer: `recover` reads off-thread
            got = os.preadv(self.fd, [buf], start)
            skip = offset - start
            return buf[skip : skip + max(0, min(size, got - skip))]

    def write(self, offset: int, buffers: list[Buffer]) -> None:
        """Write `buffers` back to back at `offset` (not yet durable: see `datasync`)."""
        if not self.direct:
            _pwritev_all(self.fd, buffers, offset)
            return
        start = offset - offset % ALIGN
        size = sum(memoryview(b).nbytes for b in buffers)
        end = _round_up(offset + size, ALIGN)
        at = offset - start
        prefix = self._block(start)[:at] if at else b""
        buf = self._buffer(end - start)
        buf[:at] = prefix
        for b in buffers:
            n = memoryview(b).nbytes
            buf[at : at + n] = b
            at += n
        buf[at : end - start] = bytes(end - start - at)
        view = memoryview(buf)
        done = 0
        while done < end - start:
            written = os.pwrite(self.fd, view[done : end - start], start + done)
            if written <= 0 or written % ALIGN:
                raise OSError(f"O_DIRECT pwrite wrote {written} bytes")
            done += written
        self._tail = (end - ALIGN, buf[end - start - ALIGN : end - start])

    def write_slot(self, offset: int, data: bytes) -> None:
        """A header-slot write (kept apart from data writes: tests tear those only)."""
        if self.direct:
            self.write(offset, [data])
        else:
            os.pwrite(self.fd, data, offset)

    def datasync(self) -> None:
        _datasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None

    def _buffer(self, size: int) -> mmap.mmap:
        """The page-aligned scratch buffer, grown to at least `size` bytes."""
        assert self._scratch is not None
        if len(self._scratch) < size:
            self._scratch.close()
            self._scratch = mmap.mmap(-1, _round_up(size, 1 << 20))
        return self._scratch

    def _block(self, offset: int) -> bytes:
        """The aligned block at `offset` as it is on the medium (what we last wrote there)."""
        if self._tail is not None and self._tail[0] == offset:
            return self._tail[1]
        data = self.pread(ALIGN, offset)
        return data + bytes(ALIGN - len(data))


# --- Opening (blocking; run in the WAL's thread) ---


def open_wal_file(path: str, capacity: int, direct: bool) -> tuple[WalFile, HeaderSlot]:
    """The WAL medium at `path` and its current slot: a regular file (created with `capacity`
    if it is missing or empty) or a block device (its size is the capacity)."""
    try:
        mode: int | None = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISBLK(mode):
        return _open_device(path, direct)
    if mode is not None and not stat.S_ISREG(mode):
        raise WalError(f"{path} is neither a regular file nor a block device")
    for _ in range(3):
        try:
            file = _open(path, direct, block_device=False)
        except FileNotFoundError:
            _create(path, capacity, replace_existing=False)
            continue
        try:
            size = os.fstat(file.fd).st_size
            if size == 0:
                file.close()
                _create(path, capacity, replace_existing=True)
                continue
            slot = read_latest_slot(file.pread)
            if slot is None:
                raise WalError(f"{path} is not a Tidelog WAL (format {FORMAT_VERSION})")
            _check_alignment(file, slot)
            if size < HEADER_AREA + slot.capacity:
                os.ftruncate(file.fd, HEADER_AREA + slot.capacity)
            return file, slot
        except BaseException:
            file.close()
            raise
    raise WalError(f"could not create {path}")


def _open(path: str, direct: bool, *, block_device: bool) -> WalFile:
    """Open read-write, with O_DIRECT when asked and the file system takes it."""
    flags = os.O_RDWR | os.O_CLOEXEC
    if direct and _O_DIRECT:
        try:
            file = WalFile(path, os.open(path, flags | _O_DIRECT), direct=True,
                           block_device=block_device)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        else:
            try:
                file.pread(HEADER_AREA, 0)  # some file systems refuse at the first transfer
                return file
            except OSError as exc:
                file.close()
                if exc.errno != errno.EINVAL:
                    raise
        log.warning("%s: the file system refuses O_DIRECT (EINVAL); using buffered I/O "
                    "with fdatasync instead (durability is the same)", path)
    elif direct:
        log.warning("%s: no O_DIRECT on this platform; using buffered I/O", path)
    return WalFile(path, os.open(path, flags), direct=False, block_device=block_device)


def _check_alignment(file: WalFile, slot: HeaderSlot) -> None:
    if file.direct and slot.capacity % ALIGN:
        raise WalError(
            f"{file.path}: capacity {slot.capacity} is not a multiple of {ALIGN}, "
            "which O_DIRECT needs; open it without direct=true"
        )


def _open_device(path: str, direct: bool) -> tuple[WalFile, HeaderSlot]:
    file = _open(path, direct, block_device=True)
    try:
        size = os.lseek(file.fd, 0, os.SEEK_END)
        capacity = (size - HEADER_AREA) // ALIGN * ALIGN
        if capacity < ALIGN:
            raise WalError(f"{path}: a {size}-byte device is too small for a WAL")
        slot = read_latest_slot(file.pread)
        if slot is None:
            if any(file.pread(HEADER_AREA, 0)):
                raise WalError(
                    f"{path} holds something that is not a Tidelog WAL (format "
                    f"{FORMAT_VERSION}); to use it, zero its first {HEADER_AREA} bytes "
                    f"(dd if=/dev/zero of={path} bs={HEADER_AREA} count=1)"
                )
            start = random.randrange(1, _FORMAT_LAPS) * capacity
            slot = HeaderSlot(0, 0, capacity, start, 0, 0)
            file.write_slot(0, encode_slot(slot))
            file.datasync()
            log.info("%s: formatted a %d-byte WAL on the device", path, capacity)
        elif HEADER_AREA + slot.capacity > size:
            raise WalError(f"{path}: the WAL needs {slot.capacity} bytes, the device has {size}")
        _check_alignment(file, slot)
        return file, slot
    except BaseException:
        file.close()
        raise


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
