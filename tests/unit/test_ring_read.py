"""Reading one record of a ring WAL by its position, read-only, from another process's
point of view: what is there is returned; what is not (any more, or yet) is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidelog.stream.wal.file_wal import FileWAL
from tidelog.stream.wal.ring_format import RECORD_HEADER_SIZE
from tidelog.stream.wal.ring_read import RingRecordReader


def record_start(next_position: int, length: int) -> int:
    return next_position - RECORD_HEADER_SIZE - length


async def test_records_are_read_back_at_their_positions(tmp_path: Path) -> None:
    wal = FileWAL(str(tmp_path / "wal"), capacity=64 * 1024)
    await wal.open(1)
    ends = [await wal.append(7, 3, i * 10, i * 10 + 9, bytes([i]) * (100 + i))
            for i in range(20)]
    reader = RingRecordReader(str(tmp_path / "wal"))
    try:
        for i, end in enumerate(ends):
            rec = reader.read(record_start(end, 100 + i))
            assert rec is not None
            assert (rec.stream_id, rec.stream_epoch, rec.base_offset, rec.last_offset) == (
                7, 3, i * 10, i * 10 + 9)
            assert rec.payload == bytes([i]) * (100 + i) and rec.next_position == end
        assert wal.record_start(ends[5], 105) == record_start(ends[5], 105)
        at = record_start(ends[4], 104)
        assert reader.read(at, (7, 40, 49, 104)) is not None
        for wrong in ((8, 40, 49, 104), (7, 41, 49, 104), (7, 40, 48, 104), (7, 40, 49, 10)):
            assert reader.read(at, wrong) is None  # names another record
        assert reader.read(record_start(ends[3], 103) + 1) is None  # not a record start
        assert reader.read(ends[-1]) is None  # not written yet
        assert reader.read(-1) is None
    finally:
        reader.close()
        await wal.close()


async def test_a_trimmed_and_overwritten_record_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "wal")
    wal = FileWAL(path, capacity=16 * 1024)
    await wal.open(1)
    first = await wal.append(1, 1, 0, 0, b"a" * 1000)
    start = record_start(first, 1000)
    reader = RingRecordReader(path, direct=True)  # falls back to buffered where refused
    assert reader.read(start) is not None
    offset = 1
    while True:  # a lap later the ring holds other records where the first one was
        end = await wal.append(1, 1, offset, offset, b"b" * 1000)
        await wal.trim(end)
        offset += 1
        if end - start > 16 * 1024 + 2000:
            break
    try:
        assert reader.read(start) is None
        last = reader.read(record_start(end, 1000))
        assert last is not None and last.payload == b"b" * 1000
    finally:
        reader.close()
        await wal.close()


def test_a_file_that_is_no_wal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\0" * 20000)
    with pytest.raises(ValueError):
        RingRecordReader(str(tmp_path / "junk"))
