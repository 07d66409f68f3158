"""The WAL contract, run against every implementation (and `open_wal`'s URI forms):
`FileWAL` buffered and O_DIRECT, `MemoryWAL`, `ObjectWAL` over an in-memory store and over
S3 (moto), and `LatencyWAL` around a `FileWAL`."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tidelog.objectstore.latency import LatencyObjectStore, LatencyProfile
from tidelog.objectstore.uri import open_object_store
from tidelog.stream.wal.base import (
    WAL,
    WalClosedError,
    WalFencedError,
    WalFullError,
    WalRecord,
)
from tidelog.stream.wal.file_io import ALIGN
from tidelog.stream.wal.file_wal import FileWAL
from tidelog.stream.wal.latency import LatencyWAL
from tidelog.stream.wal.memory_wal import MemoryWAL, MemoryWALStore
from tidelog.stream.wal.object_wal import ObjectWAL
from tidelog.stream.wal.ring_format import RECORD_HEADER_SIZE
from tidelog.stream.wal.uri import open_wal, parse_size

# A factory returns a new WAL instance over the same storage each call: a "restart".
WalFactory = Callable[..., WAL]
CAPACITY = 16 * 1024


@pytest.fixture(params=["file", "file-direct", "memory", "object", "object-s3", "latency"])
def make_wal(request: pytest.FixtureRequest, tmp_path: Path) -> WalFactory:
    path = str(tmp_path / "wal")
    if request.param in ("file", "file-direct", "latency"):
        direct = request.param == "file-direct"

        def make_file(capacity: int = CAPACITY, **options: Any) -> WAL:
            # O_DIRECT keeps one block free in front of the trim: add it, same usable room
            wal = FileWAL(path, capacity=capacity + (ALIGN if direct else 0), direct=direct,
                          **options)
            if request.param == "latency":  # a constant 1 ms on every group
                return LatencyWAL(wal, LatencyProfile(median=0.001, p99=0.001))
            return wal

        return make_file
    if request.param.startswith("object"):
        if request.param == "object-s3":
            moto = request.getfixturevalue("moto_s3")
            uri = str(moto["uri"]).replace("?", f"/wal-{uuid.uuid4().hex}?", 1)
        else:
            uri = "memory://"
        object_store = open_object_store(uri)

        def make_object(capacity: int = CAPACITY, **options: Any) -> WAL:
            return ObjectWAL(object_store, capacity=capacity, batch_interval=0.001, **options)

        return make_object
    store = MemoryWALStore()

    def make_memory(capacity: int = CAPACITY, **options: Any) -> WAL:
        return MemoryWAL(capacity=capacity, store=store, **options)

    return make_memory


async def opened(make_wal: WalFactory, epoch: int = 1, **options: Any) -> WAL:
    wal = make_wal(**options)
    await wal.open(epoch)
    return wal


def fields(record: WalRecord) -> tuple[int, int, int, int, bytes]:
    return (
        record.stream_id,
        record.stream_epoch,
        record.base_offset,
        record.last_offset,
        record.payload,
    )


async def test_recover_returns_exactly_what_was_appended(make_wal: WalFactory) -> None:
    wal = await opened(make_wal)
    assert list(wal.recover()) == []
    assert wal.trim_position == wal.end_position == 0
    appended = [(i % 3, 7, i * 10, i * 10 + 9, os.urandom(i * 13)) for i in range(40)]
    ends = []
    for sid, sepoch, base, last, payload in appended:
        ends.append(await wal.append(sid, sepoch, base, last, payload))
    assert ends == sorted(ends) and ends[-1] == wal.end_position
    await wal.close()

    wal = await opened(make_wal, epoch=2)
    records = list(wal.recover())
    assert [fields(r) for r in records] == appended
    assert [r.next_position for r in records] == ends
    assert records[0].position == 0
    for before, after in zip(records, records[1:], strict=False):
        assert before.position < before.next_position <= after.position
    assert wal.end_position == ends[-1]
    await wal.close()


async def test_memoryview_payload(make_wal: WalFactory) -> None:
    wal = await opened(make_wal)
    buffer = bytearray(b"0123456789")
    await wal.append(1, 1, 0, 0, memoryview(buffer)[2:6])
    await wal.close()
    wal = await opened(make_wal, epoch=2)
    assert [r.payload for r in wal.recover()] == [b"2345"]
    await wal.close()


async def test_concurrent_appends_complete_in_call_order(make_wal: WalFactory) -> None:
    wal = await opened(make_wal, capacity=256 * 1024)
    completed: list[int] = []

    async def one(i: int) -> int:
        position = await wal.append(1, 1, i, i, b"r%d" % i)
        completed.append(i)
        return position

    positions = await asyncio.gather(*(one(i) for i in range(200)))
    assert completed == list(range(200))
    assert positions == sorted(set(positions))
    await wal.close()
    wal = await opened(make_wal, epoch=2)
    assert [r.base_offset for r in wal.recover()] == list(range(200))
    await wal.close()


async def test_trim_then_recover(make_wal: WalFactory) -> None:
    wal = await opened(make_wal)
    ends = [await wal.append(1, 1, i, i, b"x" * 50) for i in range(20)]
    await wal.trim(ends[9])
    await wal.trim(ends[4])  # going back is a no-op
    assert wal.trim_position == ends[9]
    with pytest.raises(ValueError):
        await wal.trim(wal.end_position + 1)
    await wal.close()

    wal = await opened(make_wal, epoch=2)
    assert wal.trim_position == ends[9]
    assert [r.base_offset for r in wal.recover()] == list(range(10, 20))
    await wal.close()


async def test_reset_discards_everything(make_wal: WalFactory) -> None:
    wal = await opened(make_wal)
    for i in range(5):
        await wal.append(1, 1, i, i, b"x")
    await wal.reset()
    assert wal.trim_position == wal.end_position
    await wal.close()
    wal = await opened(make_wal, epoch=2)
    assert list(wal.recover()) == []
    end = await wal.append(2, 1, 0, 0, b"after reset")
    await wal.close()
    wal = await opened(make_wal, epoch=3)
    assert [(r.stream_id, r.payload, r.next_position) for r in wal.recover()] == [
        (2, b"after reset", end)
    ]
    await wal.close()


async def test_wrap_around_many_laps_recovers_exactly_the_live_records(
    make_wal: WalFactory,
) -> None:
    rng = random.Random(7)
    capacity = 4096
    live: list[WalRecord] = []
    wal = await opened(make_wal, capacity=capacity)
    epoch = 1
    for i in range(1500):
        payload = rng.randbytes(rng.choice([0, 1, 10, 100, 300, 700]))
        end_before = wal.end_position
        end = await wal.append(i % 5, epoch, i, i, payload)
        position = end - len(payload) - RECORD_HEADER_SIZE
        assert position >= end_before  # the same, unless the record started a new lap
        live.append(WalRecord(i % 5, epoch, i, i, payload, position, end))
        if wal.end_position - wal.trim_position > capacity // 2:
            keep = rng.randrange(0, 4)  # the newest records an upload has not covered yet
            if keep < len(live):
                await wal.trim(live[-keep - 1].next_position)
                live = live[len(live) - keep :]
        if i % 97 == 0:
            await wal.close()
            epoch += 1
            wal = await opened(make_wal, epoch=epoch, capacity=capacity)
            recovered = list(wal.recover())
            assert [fields(r) for r in recovered] == [fields(r) for r in live]
            assert [r.next_position for r in recovered] == [r.next_position for r in live]
    assert wal.end_position > 50 * capacity or isinstance(wal, MemoryWAL | ObjectWAL)
    await wal.close()


async def test_append_waits_for_trim(make_wal: WalFactory) -> None:
    wal = await opened(make_wal, capacity=8192)
    first = await wal.append(1, 1, 0, 0, b"a" * 3000)
    waiting = asyncio.create_task(wal.append(1, 1, 1, 1, b"b" * 6000))
    later = asyncio.create_task(wal.append(1, 1, 2, 2, b"small"))  # fits, but must queue
    await asyncio.sleep(0.05)
    assert not waiting.done() and not later.done()
    await wal.trim(first)
    second, third = await asyncio.wait_for(asyncio.gather(waiting, later), 5)
    assert first < second < third
    await wal.close()
    wal = await opened(make_wal, epoch=2)
    assert [r.base_offset for r in wal.recover()] == [1, 2]
    await wal.close()


async def test_append_times_out_when_full(make_wal: WalFactory) -> None:
    wal = await opened(make_wal, capacity=8192, append_timeout=0.05)
    await wal.append(1, 1, 0, 0, b"x" * 6000)
    with pytest.raises(WalFullError):
        await wal.append(1, 1, 1, 1, b"x" * 6000)
    with pytest.raises(WalFullError):
        await wal.append(1, 1, 1, 1, b"x" * 6000, timeout=0.01)
    await wal.close()


async def test_record_larger_than_capacity_fails_at_once(make_wal: WalFactory) -> None:
    wal = await opened(make_wal, capacity=8192, append_timeout=60)
    with pytest.raises(WalFullError):
        await asyncio.wait_for(wal.append(1, 1, 0, 0, b"x" * 8192), 1)
    await wal.close()


async def test_fencing_by_epoch(make_wal: WalFactory) -> None:
    owner = await opened(make_wal, epoch=5)
    await owner.append(1, 1, 0, 0, b"from epoch 5")
    with pytest.raises(WalFencedError):
        await opened(make_wal, epoch=4)
    successor = await opened(make_wal, epoch=6)
    with pytest.raises(WalFencedError):
        await owner.append(1, 1, 1, 1, b"stale writer")
    assert [r.payload for r in successor.recover()] == [b"from epoch 5"]
    await successor.close()
    await owner.close()


async def test_closed_wal_refuses_appends(make_wal: WalFactory) -> None:
    wal = await opened(make_wal, capacity=8192)
    await wal.append(1, 1, 0, 0, b"x" * 6000)
    waiting = asyncio.create_task(wal.append(1, 1, 1, 1, b"x" * 6000))
    await asyncio.sleep(0.01)
    await wal.close()
    with pytest.raises(WalClosedError):
        await waiting
    with pytest.raises(WalClosedError):
        await wal.append(1, 1, 2, 2, b"late")
    await wal.close()  # idempotent


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("memory://", MemoryWAL),
        ("memory://shared-test-store", MemoryWAL),
        ("file:///tmp/tidelog-wal-uri-test", FileWAL),
        ("file://./data/wal", FileWAL),
        ("data/wal", FileWAL),
        ("file:///tmp/wal?emulate.latency=1ms/5ms", LatencyWAL),
        ("s3://bucket/wal?region=us-east-1", ObjectWAL),
        ("gs://bucket/wal", ObjectWAL),
    ],
)
def test_open_wal_builds_each_kind(uri: str, kind: type[WAL]) -> None:
    assert isinstance(open_wal(uri), kind)


def test_open_wal_paths_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_wal("file://./data/wal?capacity=1MiB&append_timeout=2.5")
    assert isinstance(relative, FileWAL)
    assert relative.path == str(tmp_path / "data" / "wal")
    assert relative.capacity == 1 << 20
    absolute = open_wal("file:///var/lib/tidelog/wal%20x", capacity=8192)
    assert isinstance(absolute, FileWAL)
    assert absolute.path == "/var/lib/tidelog/wal x" and absolute.capacity == 8192
    memory = open_wal("memory://one", capacity=4096)
    again = open_wal("memory://one")
    assert isinstance(memory, MemoryWAL) and isinstance(again, MemoryWAL)
    assert memory.store is again.store and memory.capacity == 4096
    fresh, other = open_wal("memory://"), open_wal("memory://")
    assert isinstance(fresh, MemoryWAL) and isinstance(other, MemoryWAL)
    assert fresh.store is not other.store
    hostish = open_wal("file://data/x.wal")  # read as relative, like server.wal_file_uri
    assert isinstance(hostish, FileWAL) and hostish.path == str(tmp_path / "data" / "x.wal")
    direct = open_wal("file:///dev/nvme1n1?direct=true")
    assert isinstance(direct, FileWAL) and direct.path == "/dev/nvme1n1"
    assert direct._direct
    for bad in ("ftp://host/wal", "file://", "file:///x?colour=red", "file:///x?direct=maybe",
                "file:///x?emulate.colour=red", "memory://?batch.bytes=1"):
        with pytest.raises(ValueError):
            open_wal(bad)
    with pytest.raises(ValueError):
        open_wal("memory://", max_write_bytes=10)


def test_open_wal_object_options() -> None:
    """WAL keys configure the ObjectWAL, the rest the store; emulation wraps the store."""
    wal = open_wal(
        "s3://bucket/wal/broker-1?batch.interval.ms=100&batch.bytes=1MiB&capacity=64MiB"
        "&region=us-east-1&emulate.latency=80ms/300ms&emulate.seed=3",
        append_timeout=2.0,
    )
    assert isinstance(wal, ObjectWAL)
    assert wal.name == "s3://bucket/wal/broker-1"  # no query: it may hold secrets
    assert (wal._batch_interval, wal._batch_bytes) == (0.1, 1 << 20)
    assert wal.capacity == 64 << 20 and wal._append_timeout == 2.0
    assert isinstance(wal.store, LatencyObjectStore)
    assert wal.store.sampler.profile == LatencyProfile(0.08, 0.3, seed=3)
    assert "EMULATED" in repr(wal.store)
    wrapped: list[object] = []

    def wrap(store: Any) -> Any:
        wrapped.append(store)
        return store

    plain = open_wal("s3://bucket/wal?region=us-east-1", wrap_store=wrap)
    assert isinstance(plain, ObjectWAL) and wrapped == [plain.store]
    with pytest.raises(ValueError):  # not an S3 setting
        open_wal("s3://bucket/wal?colour=red")


def test_parse_size() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("64KiB") == 64 << 10
    assert parse_size("2G") == 2 << 30
    assert parse_size("512mb") == 512 << 20
    with pytest.raises(ValueError):
        parse_size("lots")


def test_each_broker_gets_its_own_wal(tmp_path: Path) -> None:
    """`wal.uri` is one value for a cluster: a directory or prefix, each broker under it."""
    from tidelog.server import wal_file_uri

    assert wal_file_uri("s3://b/wal?batch.interval.ms=100&region=x", 3) == (
        "s3://b/wal/broker-3?batch.interval.ms=100&region=x"
    )
    assert wal_file_uri("s3://b", 3) == "s3://b/broker-3"
    assert wal_file_uri(f"file://{tmp_path}/wal?direct=true", 3) == (
        f"file://{tmp_path}/wal/broker-3.wal?direct=true"
    )
    assert (tmp_path / "wal").is_dir()
    assert wal_file_uri(f"file://{tmp_path}/one.wal", 3) == f"file://{tmp_path}/one.wal"
    assert wal_file_uri("file:///dev/null", 3) == "file:///dev/null"  # a device as it is
    assert wal_file_uri("memory://x", 3) == "memory://x"
