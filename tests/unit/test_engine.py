"""Storage engine: appends, uploads to objects, reads back, restarts from WAL + objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.objectstore.base import ObjectStore
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.partition import Partition, describe
from tidelog.protocol import records
from tidelog.stream.engine import BackPressureTimeout, EngineConfig, StreamEngine
from tidelog.stream.wal.file_wal import FileWAL


def batch(i: int, n: int = 3, ts: int = 1000) -> bytes:
    return records.build_batch([(f"k{i}".encode(), f"v{i}-{j}".encode() * 10)
                                for j in range(n)], timestamp=ts + i)


async def open_engine(tmp: Path, store: ObjectStore, epoch: int, **cfg: int) -> StreamEngine:
    meta = EmbeddedMetadataStore(str(tmp / "meta.db"))
    wal = FileWAL(str(tmp / "wal"), capacity=cfg.pop("capacity", 8 << 20))
    engine = StreamEngine(wal, store, meta, EngineConfig(**cfg), describe=describe)
    await engine.start(epoch)
    return engine


async def stop(engine: StreamEngine, flush: bool) -> None:
    await engine.close(flush=flush)
    await engine.meta.close()


async def read_all(p: Partition) -> list[bytes]:
    out, off = [], 0
    while off < p.high_watermark:
        bufs, off = await p.stream.fetch(off, 1 << 20)
        out.extend(bytes(b) for b in bufs)
    return out


@pytest.fixture
def store() -> ObjectStore:
    return open_object_store("memory://")


async def test_append_upload_read_and_restart(tmp_path: Path, store: ObjectStore) -> None:
    engine = await open_engine(tmp_path, store, 1, upload_bytes=4096, block_bytes=1024)
    s = await engine.create_stream()
    p = Partition("t", 0, s)
    sent = []
    for i in range(200):
        res = await p.append(batch(i))
        assert res.base_offset == i * 3
        sent.append(i)
    assert p.high_watermark == 600
    await engine.upload()
    assert engine.uploads >= 1 and len(engine.cache) == 0
    got = await read_all(p)
    assert len(got) == 200
    assert [records.read_header(b).base_offset for b in got] == [i * 3 for i in range(200)]
    # 50 more that stay in the WAL only, then a crash (no flush)
    for i in range(200, 250):
        await p.append(batch(i))
    await stop(engine, flush=False)

    engine2 = await open_engine(tmp_path, store, 2)
    s2 = engine2.streams[s.stream_id]
    p2 = Partition("t", 0, s2)
    assert p2.high_watermark == 750
    assert s2.epoch == s.epoch + 1
    got2 = await read_all(p2)
    assert [records.read_header(b).base_offset for b in got2] == [i * 3 for i in range(250)]
    assert await p2.offset_for_timestamp(1000 + 210) == (630, 1210)
    assert await p2.offset_for_timestamp(1000 + 10) == (30, 1010)
    assert await p2.max_timestamp() == (747, 1249)  # first record with the largest
    await stop(engine2, flush=True)


async def test_stream_object_split(tmp_path: Path, store: ObjectStore) -> None:
    engine = await open_engine(tmp_path, store, 1, split_bytes=2000)
    big = Partition("t", 0, await engine.create_stream())
    small = Partition("t", 1, await engine.create_stream())
    for i in range(30):
        await big.append(batch(i))
    await small.append(batch(0))
    await engine.upload()
    keys = sorted(engine.index.objects)
    assert len(keys) == 2 and any("/s/" in k for k in keys) and any("/ss/" in k for k in keys)
    assert len(await read_all(big)) == 30 and len(await read_all(small)) == 1
    await stop(engine, flush=True)


async def test_back_pressure_times_out_when_uploads_fail(tmp_path: Path) -> None:
    from tidelog.objectstore.faulty import FaultyObjectStore

    faulty = FaultyObjectStore(open_object_store("memory://"))
    engine = await open_engine(tmp_path, faulty, 1, capacity=64 << 10, append_timeout=1)
    p = Partition("t", 0, await engine.create_stream())
    faulty.fail_next(["put"], count=1000)
    with pytest.raises(BackPressureTimeout):
        for i in range(1000):
            await p.append(batch(i), timeout=0.5)
    acked = p.high_watermark
    faulty.clear_faults()
    await p.append(batch(0), timeout=10)  # uploads resume, the WAL drains, appends flow
    assert p.high_watermark == acked + 3
    await stop(engine, flush=True)


async def test_deleted_stream_objects_are_collected(tmp_path: Path, store: ObjectStore) -> None:
    clock = [0.0]
    meta = EmbeddedMetadataStore(str(tmp_path / "meta.db"))
    engine = StreamEngine(FileWAL(str(tmp_path / "wal"), capacity=8 << 20), store, meta,
                          EngineConfig(gc_grace=10), describe=describe,
                          wall_clock=lambda: clock[0])
    await engine.start(1)
    keep = Partition("t", 0, await engine.create_stream())
    gone = Partition("t", 1, await engine.create_stream())
    await gone.append(batch(0))
    await engine.upload()  # object 1 holds only the doomed stream
    await keep.append(batch(1))
    await gone.append(batch(2))
    await engine.upload()  # object 2 is shared
    assert len(await store.list()) == 2
    await engine.delete_stream(gone.stream.stream_id)
    await engine._collect_garbage()
    assert len(await store.list()) == 2  # grace period: readers may still be on it
    clock[0] = 11
    await engine._collect_garbage()
    remaining = await store.list()
    assert len(remaining) == 1 and remaining == list(engine.index.objects)
    assert len(await meta.list("/objects/")) == 1
    assert len(await read_all(keep)) == 1
    await stop(engine, flush=True)


async def test_trim_makes_old_objects_garbage(tmp_path: Path, store: ObjectStore) -> None:
    clock = [0.0]
    meta = EmbeddedMetadataStore(str(tmp_path / "meta.db"))
    engine = StreamEngine(FileWAL(str(tmp_path / "wal"), capacity=8 << 20), store, meta,
                          EngineConfig(gc_grace=0), describe=describe,
                          wall_clock=lambda: clock[0])
    await engine.start(1)
    p = Partition("t", 0, await engine.create_stream())
    await p.append(batch(0))
    await engine.upload()
    await p.append(batch(1))
    await engine.upload()
    await p.stream.trim(3)  # the first object holds offsets 0-2 only
    assert p.log_start_offset == 3
    await engine._collect_garbage()
    assert len(await store.list()) == 1
    assert [records.read_header(b).base_offset for b in await read_all_from(p, 3)] == [3]
    await stop(engine, flush=True)
    engine2 = await open_engine(tmp_path, store, 2)
    assert engine2.streams[p.stream.stream_id].start_offset == 3
    await stop(engine2, flush=True)


async def read_all_from(p: Partition, off: int) -> list[bytes]:
    out = []
    while off < p.high_watermark:
        bufs, off = await p.stream.fetch(off, 1 << 20)
        out.extend(bytes(b) for b in bufs)
    return out


async def test_an_append_after_the_lease_deadline_is_durable_but_not_acknowledged(
        tmp_path: Path, store: ObjectStore) -> None:
    """Self-fencing: past the deadline the append reaches the WAL (a taker saves it) but
    the producer is told it failed, counted in `tidelog_appends_fenced_total`."""
    engine = await open_engine(tmp_path, store, 1)
    p = Partition("t", 0, await engine.create_stream())
    await p.append(batch(0))
    engine.ack_deadline = 0.0  # the lease may have expired
    with pytest.raises(Exception, match="lease may have expired"):
        await p.append(batch(1))
    assert engine.fenced_appends == 1
    await stop(engine, flush=False)
