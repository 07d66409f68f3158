"""FileWAL specifics: on-disk formats, torn tails, stale data, group commit, O_DIRECT,
block devices, fencing, kill -9."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crc32c
import pytest

from tidelog.stream.wal import file_io
from tidelog.stream.wal.base import WalError, WalFencedError, WalFullError, WalRecord
from tidelog.stream.wal.file_io import ALIGN
from tidelog.stream.wal.file_wal import FileWAL
from tidelog.stream.wal.ring_format import (
    HEADER_AREA,
    KIND_DATA,
    KIND_PAD,
    RECORD_HEADER_SIZE,
    SLOT_SIZE,
    HeaderSlot,
    decode_slot,
    encode_record_header,
    encode_slot,
)


async def opened(path: Path, epoch: int = 1, capacity: int = 64 * 1024, **options: Any) -> FileWAL:
    wal = FileWAL(str(path), capacity=capacity, **options)
    await wal.open(epoch)
    return wal


async def fill(wal: FileWAL, count: int, size: int = 100) -> list[int]:
    return [await wal.append(1, 1, i, i, bytes([i % 256]) * size) for i in range(count)]


# --- formats ---


def test_record_header_golden_bytes() -> None:
    header = encode_record_header(
        KIND_DATA, 3, 0x0102030405060708, 0x1112131415161718, 7, 100, 109, b"abc"
    )
    assert header == bytes.fromhex(
        "a1"  # magic
        "4ccd8692"  # crc32c over the rest of the header, then the payload
        "01"  # kind: data
        "00000003"  # payload length
        "00000003"  # session
        "0102030405060708"  # position
        "1112131415161718"  # stream_id
        "0000000000000007"  # stream_epoch
        "0000000000000064"  # base_offset
        "000000000000006d"  # last_offset
    )
    assert len(header) == RECORD_HEADER_SIZE == 54
    assert crc32c.crc32c(header[5:] + b"abc") == 0x4CCD8692


def test_padding_marker_golden_bytes() -> None:
    assert encode_record_header(KIND_PAD, 2, 4000, 0, 0, 0, 0, b"") == bytes.fromhex(
        "a11ac8dbb10200000000000000020000000000000fa0" + "00" * 32
    )


def test_header_slot_golden_bytes() -> None:
    slot = HeaderSlot(
        generation=9, epoch=5, capacity=65536, trim=0x10000, session=3, trim_session=2
    )
    encoded = encode_slot(slot)
    assert encoded == bytes.fromhex(
        "544c574c"  # magic "TLWL"
        "0001"  # format version
        "0000"  # reserved
        "0000000000000009"  # generation
        "0000000000000005"  # epoch
        "0000000000010000"  # capacity (data region bytes)
        "0000000000010000"  # trim position
        "00000003"  # session
        "00000002"  # trim session
        "c092eb0d"  # crc32c of all of the above
    )
    assert decode_slot(encoded + bytes(SLOT_SIZE - len(encoded))) == slot
    torn = bytearray(encoded)
    torn[20] ^= 1
    assert decode_slot(bytes(torn)) is None
    assert decode_slot(bytes(SLOT_SIZE)) is None


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_slots(path: Path) -> list[HeaderSlot | None]:
    raw = path.read_bytes()[:HEADER_AREA]
    return [decode_slot(raw[:SLOT_SIZE]), decode_slot(raw[SLOT_SIZE:])]


async def test_new_file_is_preallocated_and_slots_alternate(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "wal"
    wal = await opened(path, epoch=4, capacity=8192)
    assert path.stat().st_size == HEADER_AREA + 8192
    initial, current = read_slots(path)
    assert initial == HeaderSlot(0, 0, 8192, 0, 0, 0)
    assert current == HeaderSlot(1, 4, 8192, 0, 1, 0)
    ends = await fill(wal, 3)
    await wal.trim(ends[0])
    assert read_slots(path)[0] == HeaderSlot(2, 4, 8192, ends[0], 1, 1)
    await wal.trim(ends[1])
    assert read_slots(path)[1] == HeaderSlot(3, 4, 8192, ends[1], 1, 1)
    await wal.close()

    # A torn write of the newest slot: the other one (one trim older) takes over.
    overwrite(path, SLOT_SIZE + 10, b"\xff\xff")
    wal = await opened(path, epoch=5, capacity=8192)
    assert wal.trim_position == ends[0]
    assert [r.base_offset for r in wal.recover()] == [1, 2]
    await wal.close()


async def test_existing_file_keeps_its_capacity(tmp_path: Path) -> None:
    wal = await opened(tmp_path / "wal", capacity=8192)
    await wal.close()
    wal = await opened(tmp_path / "wal", epoch=2, capacity=1 << 20)
    assert wal.capacity == 8192
    await wal.close()


async def test_refuses_what_is_neither_a_file_nor_a_block_device(tmp_path: Path) -> None:
    with pytest.raises(WalError, match="neither"):
        await opened(Path("/dev/null"))  # a character device: never replaced by a file
    with pytest.raises(WalError, match="neither"):
        await opened(tmp_path)  # a directory
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


async def test_refuses_a_file_that_is_not_a_wal(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"precious data, not a WAL" * 1000)
    with pytest.raises(WalError):
        await opened(path)
    assert path.read_bytes() == b"precious data, not a WAL" * 1000


# --- torn tails and stale data ---


async def test_garbage_in_the_last_record_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    wal = await opened(path)
    ends = await fill(wal, 10)
    await wal.close()
    last_position = ends[8]
    overwrite(path, HEADER_AREA + last_position + RECORD_HEADER_SIZE + 50, b"garbage")

    wal = await opened(path, epoch=2)
    assert [r.base_offset for r in wal.recover()] == list(range(9))
    assert wal.end_position == ends[8]
    await wal.append(2, 2, 0, 0, b"after the cut")
    await wal.close()
    wal = await opened(path, epoch=3)
    records = list(wal.recover())
    assert [r.base_offset for r in records[:9]] == list(range(9))
    assert [r.payload for r in records[9:]] == [b"after the cut"]
    await wal.close()


async def test_truncated_last_record_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    wal = await opened(path)
    ends = await fill(wal, 10)
    await wal.close()
    os.truncate(path, HEADER_AREA + ends[8] + 30)  # mid-header of the last record

    wal = await opened(path, epoch=2)
    assert [r.base_offset for r in wal.recover()] == list(range(9))
    assert path.stat().st_size == HEADER_AREA + 64 * 1024
    await wal.close()


async def test_data_from_an_earlier_lap_is_not_recovered(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    wal = await opened(path, capacity=4096)
    ends = await fill(wal, 20, size=200 - RECORD_HEADER_SIZE)  # [0, 4000): intact CRCs
    await wal.trim(ends[-1])
    new_ends = [await wal.append(2, 1, i, i, b"new" * 40) for i in range(3)]
    assert new_ends[0] == 4096 + RECORD_HEADER_SIZE + 120  # a padding marker skipped 96 bytes
    await wal.close()

    wal = await opened(path, epoch=2, capacity=4096)
    records = list(wal.recover())
    assert [(r.stream_id, r.next_position) for r in records] == [(2, e) for e in new_ends]
    assert wal.end_position == new_ends[-1]
    await wal.close()


async def test_intact_records_beyond_a_cut_tail_are_never_revived(tmp_path: Path) -> None:
    """Positions after a cut are reused; old entries there must not line up with new ones."""
    path = tmp_path / "wal"
    wal = await opened(path)
    ends = await fill(wal, 3)
    await wal.close()
    # Tear the middle record; the last one stays intact.
    overwrite(path, HEADER_AREA + ends[0] + RECORD_HEADER_SIZE + 10, b"torn")

    wal = await opened(path, epoch=2)
    assert [r.base_offset for r in wal.recover()] == [0]
    # Same size as the torn record: the next position is where the stale one starts.
    assert await wal.append(9, 2, 1, 1, b"n" * 100) == ends[1]
    await wal.close()
    wal = await opened(path, epoch=3)
    assert [(r.stream_id, r.base_offset) for r in wal.recover()] == [(1, 0), (9, 1)]
    await wal.trim(ends[1])  # the trim position now points at the stale record
    await wal.close()
    wal = await opened(path, epoch=4)
    assert list(wal.recover()) == []
    assert wal.end_position == ends[1]
    await wal.close()


async def test_empty_wal_starts_a_new_lap_for_a_record_that_only_fits_there(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wal"
    wal = await opened(path, capacity=4096, append_timeout=2)
    end = await wal.append(1, 1, 0, 0, b"x" * 3000)
    await wal.trim(end)
    big_end = await wal.append(1, 1, 1, 1, b"y" * 3500)  # needs the whole next lap
    assert big_end == 4096 + RECORD_HEADER_SIZE + 3500
    assert wal.trim_position == 4096
    await wal.close()
    wal = await opened(path, epoch=2, capacity=4096)
    assert [(r.base_offset, r.position) for r in wal.recover()] == [(1, 4096)]
    await wal.close()


# --- group commit ---


async def test_group_commit_makes_one_fdatasync_per_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = await opened(tmp_path / "wal", capacity=1 << 20)
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    ends = await asyncio.gather(*(wal.append(1, 1, i, i, b"p" * 100) for i in range(200)))
    assert ends == sorted(ends)
    assert len(calls) <= 3, calls
    assert wal.stats.records == 200 and wal.stats.groups == len(calls)
    await wal.close()


async def test_groups_are_capped_by_max_write_bytes(tmp_path: Path) -> None:
    wal = await opened(tmp_path / "wal", max_write_bytes=1000)
    await asyncio.gather(*(wal.append(1, 1, i, i, b"p" * 100) for i in range(50)))
    assert wal.stats.groups >= 50 * 154 // 1000
    await wal.close()
    wal = await opened(tmp_path / "wal", epoch=2)
    assert [r.base_offset for r in wal.recover()] == list(range(50))
    await wal.close()


async def test_concurrent_groups_wrapping_the_ring_end(tmp_path: Path) -> None:
    rng = random.Random(3)
    path = tmp_path / "wal"
    wal = await opened(path, capacity=8192)
    live: list[tuple[int, bytes, int]] = []
    for round_ in range(250):
        payloads = [rng.randbytes(rng.randrange(0, 400)) for _ in range(rng.randrange(1, 8))]
        base = round_ * 10
        ends = await asyncio.gather(
            *(wal.append(1, 1, base + i, base + i, p) for i, p in enumerate(payloads))
        )
        live += [(base + i, p, e) for i, (p, e) in enumerate(zip(payloads, ends, strict=True))]
        if len(live) > 6:
            await wal.trim(live[-6][2])
            live = live[-5:]
    await wal.close()
    assert wal.end_position > 20 * 8192
    wal = await opened(path, epoch=2, capacity=8192)
    assert [(r.base_offset, r.payload, r.next_position) for r in wal.recover()] == live
    await wal.close()


async def test_a_failed_fdatasync_fails_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = await opened(tmp_path / "wal")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    results = await asyncio.gather(
        *(wal.append(1, 1, i, i, b"x") for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, WalError) for r in results)
    with pytest.raises(WalError):
        await wal.append(1, 1, 3, 3, b"x")
    monkeypatch.undo()
    await wal.close()


async def test_a_fenced_writer_cannot_trim(tmp_path: Path) -> None:
    old = await opened(tmp_path / "wal", epoch=1)
    end = await old.append(1, 1, 0, 0, b"x")
    new = await opened(tmp_path / "wal", epoch=1)  # same epoch, later session: still fences
    with pytest.raises(WalFencedError):
        await old.trim(end)
    assert new.trim_position == 0
    await old.close()
    await new.close()


# --- power loss ---


async def test_power_loss_mid_group_serves_only_whole_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost power cut persists any subset of a group's sectors; recovery must still serve
    every acknowledged record, then at most an intact prefix of the torn group, and never
    stale data lined up behind it, over many crashes that reuse the cut positions."""
    rng = random.Random(5)
    path = tmp_path / "wal"
    real_write = file_io._pwritev_all
    crash = False

    def torn_write(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
        if not crash:
            return real_write(fd, buffers, offset)
        data = b"".join(buffers)
        for start in range(0, len(data), 512):
            if rng.random() < 0.5:
                os.pwrite(fd, data[start : start + 512], offset + start)
        raise OSError(5, "power lost")

    monkeypatch.setattr(file_io, "_pwritev_all", torn_write)
    live: list[tuple[int, bytes, int]] = []  # (seq, payload, next_position)
    seq = 0
    for epoch in range(2, 240, 2):
        wal = await opened(path, epoch=epoch, capacity=8192)
        recovered = [(r.base_offset, r.payload, r.next_position) for r in wal.recover()]
        assert recovered[: len(live)] == live
        live = recovered  # what the engine now builds on, intact torn-group records included
        for crash in (False, True):
            if len(live) > 8:
                await wal.trim(live[-5][2])
                live = live[-4:]
            # Few sizes, so new records often line up exactly with old ones.
            sizes = [rng.choice([0, 100, 300]) for _ in range(rng.randrange(1, 6))]
            batch = [(seq + i, rng.randbytes(size)) for i, size in enumerate(sizes)]
            seq += len(batch)
            results = await asyncio.gather(
                *(wal.append(1, 1, s, s, p) for s, p in batch), return_exceptions=True
            )
            if not crash:
                ends = [r for r in results if isinstance(r, int)]
                live += [(s, p, end) for (s, p), end in zip(batch, ends, strict=True)]
            else:
                assert all(isinstance(r, WalError) for r in results)
        await wal.close()
        torn = await _reopen_records(path, epoch + 1)
        assert [(r.base_offset, r.payload, r.next_position) for r in torn[: len(live)]] == live
        assert [(r.base_offset, r.payload) for r in torn[len(live) :]] == batch[
            : len(torn) - len(live)
        ]
    assert seq > 600


async def _reopen_records(path: Path, epoch: int) -> list[WalRecord]:
    wal = await opened(path, epoch=epoch, capacity=8192)
    records = list(wal.recover())
    await wal.close()
    return records


# --- kill -9 ---

WRITER = textwrap.dedent(
    r"""
    import asyncio, sys
    from collections import deque
    from tidelog.stream.wal.file_wal import FileWAL

    def payload(seq):
        return seq.to_bytes(8, "big") * (1 + seq % 50)

    def say(line):  # one write per line: a kill never leaves half a line
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def main(path, epoch, seq, direct):
        wal = FileWAL(path, capacity=32 * 1024, direct=direct)
        await wal.open(epoch)
        ends = deque()

        async def one(seq):
            end = await wal.append(1, epoch, seq, seq, payload(seq))
            say(f"ack {seq} {end}")
            return end

        while True:
            ends.extend(await asyncio.gather(*(one(s) for s in range(seq, seq + 16))))
            seq += 16
            target = None
            while len(ends) > 60:  # like an uploader lagging 60 records behind
                target = ends.popleft()
            if target is not None:
                say(f"trimming {target}")
                await wal.trim(target)
                say(f"trimmed {target}")

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"))
    """
)


def payload_for(seq: int) -> bytes:
    return seq.to_bytes(8, "big") * (1 + seq % 50)


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
async def test_kill_9_never_loses_an_acknowledged_record(tmp_path: Path, direct: bool) -> None:
    path = tmp_path / "wal"
    rng = random.Random(11)
    next_seq, epoch = 0, 1
    for _ in range(5):
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            str(path),
            str(epoch),
            str(next_seq),
            "1" if direct else "0",
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        output: list[str] = []
        target, acked = rng.randrange(100, 600), 0
        while acked < target:
            line = (await child.stdout.readline()).decode()
            assert line, "the writer died"
            output.append(line)
            acked += line.startswith("ack")
        child.kill()  # SIGKILL, mid-stream
        output += (await child.stdout.read()).decode().split("\n")[:-1]  # whole lines only
        await child.wait()

        acks: dict[int, int] = {}
        requested_trim = confirmed_trim = 0
        for kind, *values in (line.split() for line in output):
            if kind == "ack":
                acks[int(values[0])] = int(values[1])
            elif kind == "trimming":
                requested_trim = max(requested_trim, int(values[0]))
            elif kind == "trimmed":
                confirmed_trim = max(confirmed_trim, int(values[0]))

        epoch += 1
        wal = await opened(path, epoch=epoch, capacity=32 * 1024, direct=direct)
        assert confirmed_trim <= wal.trim_position <= requested_trim
        records = list(wal.recover())
        assert records, "nothing recovered"
        seqs = [r.base_offset for r in records]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a hole or a reordering"
        assert all(r.payload == payload_for(r.base_offset) for r in records)
        must_have = {seq for seq, end in acks.items() if end > requested_trim}
        assert must_have <= set(seqs), sorted(must_have - set(seqs))[:5]
        assert len(must_have) > 30
        next_seq = seqs[-1] + 1
        await wal.reset()
        await wal.close()
        epoch += 1


# --- O_DIRECT ---


def direct_supported(path: Path) -> bool:
    probe = path / "odirect-probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | getattr(os, "O_DIRECT", 0), 0o644)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return hasattr(os, "O_DIRECT")


async def test_direct_io_writes_the_same_records_as_buffered(tmp_path: Path) -> None:
    """A random workload (groups starting mid-block, wrapping the ring, trims) recovers the
    same records with O_DIRECT as buffered: the copied block prefixes keep earlier records
    intact, the zero fill behind a group never reaches live data."""
    if not direct_supported(tmp_path):
        pytest.skip("the file system refuses O_DIRECT")
    recovered: dict[bool, list[tuple[int, bytes, int]]] = {}
    for direct in (False, True):
        rng = random.Random(9)
        path = tmp_path / f"wal-{direct}"
        wal = await opened(path, capacity=4 * ALIGN, direct=direct)
        assert wal.direct_io == direct
        live: list[tuple[int, bytes, int]] = []
        for round_ in range(120):
            payloads = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(rng.randrange(1, 5))]
            while wal.end_position - wal.trim_position + sum(len(p) + 100 for p in payloads) > (
                3 * ALIGN - 2000
            ):
                await wal.trim(live[-2][2])  # the newest record stays live
                live = live[-1:]
            base = round_ * 10
            ends = await asyncio.gather(
                *(wal.append(1, 1, base + i, base + i, p) for i, p in enumerate(payloads))
            )
            live += [(base + i, p, e) for i, (p, e) in enumerate(zip(payloads, ends, strict=True))]
        await wal.close()
        wal = await opened(path, epoch=2, capacity=4 * ALIGN, direct=direct)
        recovered[direct] = [(r.base_offset, r.payload, r.next_position) for r in wal.recover()]
        assert recovered[direct] == live
        await wal.close()
    assert recovered[True] == recovered[False]


async def test_direct_io_never_damages_live_records_of_a_full_ring(tmp_path: Path) -> None:
    """The ring is kept full (the oldest record is trimmed only when an append does not
    fit), so a group often ends in the block where the oldest live record starts: the zero
    fill behind an O_DIRECT write must never reach it."""
    if not direct_supported(tmp_path):
        pytest.skip("the file system refuses O_DIRECT")
    rng = random.Random(4)
    path = tmp_path / "wal"
    wal = await opened(path, capacity=4 * ALIGN, direct=True)
    live: list[tuple[int, bytes, int]] = []
    for i in range(400):
        payload = rng.randbytes(rng.randrange(0, 2000))
        while True:
            try:
                end = await wal.append(1, 1, i, i, payload, timeout=0.001)
                break
            except WalFullError:
                await wal.trim(live.pop(0)[2])
        live.append((i, payload, end))
    await wal.close()
    wal = await opened(path, epoch=2, capacity=4 * ALIGN, direct=True)
    assert [(r.base_offset, r.payload, r.next_position) for r in wal.recover()] == live
    await wal.close()


async def test_direct_io_falls_back_where_the_file_system_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_open = os.open

    def tmpfs_like(path: Any, flags: int, *args: Any) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", tmpfs_like)
    with caplog.at_level(logging.WARNING):
        wal = await opened(tmp_path / "wal", capacity=8192, direct=True)
    assert not wal.direct_io
    assert any("refuses O_DIRECT" in r.getMessage() for r in caplog.records)
    end = await wal.append(1, 1, 0, 0, b"still durable")
    await wal.close()
    monkeypatch.undo()
    wal = await opened(tmp_path / "wal", epoch=2, capacity=8192)
    assert [(r.payload, r.next_position) for r in wal.recover()] == [(b"still durable", end)]
    await wal.close()


def test_direct_io_needs_an_aligned_capacity(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FileWAL(str(tmp_path / "wal"), capacity=ALIGN + 512, direct=True)


# --- block devices ---


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB loop device (root and losetup needed; skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("loop devices need root and losetup")
    image = tmp_path / "device.img"
    image.write_bytes(b"\0" * (1 << 20))
    try:
        device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"no loop device: {exc}")
    try:
        yield Path(device)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
async def test_a_raw_block_device(loop_device: Path, direct: bool) -> None:
    """Size from the device, no truncate or preallocation, formatted when blank, a random
    first lap; records survive reopening."""
    wal = await opened(loop_device, capacity=64 << 20, direct=direct)  # the device wins
    assert wal.block_device and wal.direct_io == direct
    assert wal.capacity == (1 << 20) - HEADER_AREA
    assert wal.trim_position > 0 and wal.trim_position % wal.capacity == 0
    start = wal.trim_position
    ends = [await wal.append(1, 1, i, i, bytes([i]) * 3000) for i in range(40)]
    await wal.trim(ends[10])
    await wal.close()
    wal = await opened(loop_device, epoch=2, direct=direct)
    records = list(wal.recover())
    assert [r.base_offset for r in records] == list(range(11, 40))
    assert records[0].position == ends[10] and records[-1].next_position == ends[-1] > start
    await wal.close()


async def test_a_device_holding_something_else_is_refused(loop_device: Path) -> None:
    fd = os.open(loop_device, os.O_WRONLY)
    try:
        os.pwrite(fd, b"a file system superblock, say", 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    with pytest.raises(WalError, match="not a Tidelog WAL"):
        await opened(loop_device)


# --- fencing while a group is in flight ---


async def test_a_group_in_flight_when_a_newer_writer_opens_is_not_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The older writer checked the header, wrote, and sits in fdatasync while the newer
    one opens: its append must fail, not be acknowledged after the newer one took over."""
    path = tmp_path / "wal"
    old = await opened(path, epoch=1)
    await old.append(1, 1, 0, 0, b"before")
    armed, blocked, release = threading.Event(), threading.Event(), threading.Event()
    real = os.fdatasync

    def gated(fd: int) -> None:
        if armed.is_set():
            armed.clear()
            blocked.set()
            release.wait(30)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", gated)
    armed.set()
    in_flight = asyncio.create_task(old.append(1, 1, 1, 1, b"in flight"))
    assert await asyncio.to_thread(blocked.wait, 30)
    new = await opened(path, epoch=2)
    release.set()
    with pytest.raises(WalFencedError):
        await in_flight
    # The newer writer found the bytes (written before its scan) or not; either way the
    # older one acknowledged nothing after it opened.
    assert [r.payload for r in new.recover()][:1] == [b"before"]
    await new.close()
    await old.close()
