"""Object compaction and the object lifecycle: small objects merge, every byte stays
readable, garbage leaves the store only after the grace period, restarts agree."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from tests.unit.test_engine import batch, read_all, stop
from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.objectstore.base import ObjectStore
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.partition import Partition, describe
from tidelog.stream.engine import EngineConfig, StreamEngine
from tidelog.stream.object_compaction import CompactionConfig, compact_objects
from tidelog.stream.objects import GARBAGE, OBJECTS, object_key
from tidelog.stream.wal.file_wal import FileWAL


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    (tmp_path / "objects").mkdir()
    return open_object_store(f"file://{tmp_path / 'objects'}")


async def start(tmp: Path, store: ObjectStore, epoch: int, clock: list[float],
                **cfg: object) -> StreamEngine:
    meta = EmbeddedMetadataStore(str(tmp / "meta.db"))
    config = EngineConfig(compaction_interval=0, gc_grace=10, block_bytes=4096,
                          split_bytes=64 << 10, **cfg)  # type: ignore[arg-type]
    engine = StreamEngine(FileWAL(str(tmp / "wal"), capacity=8 << 20), store, meta, config,
                          describe=describe, wall_clock=lambda: clock[0])
    await engine.start(epoch)
    return engine


def digest(batches: list[bytes]) -> str:
    return hashlib.sha256(b"".join(batches)).hexdigest()


async def ten_uploads(engine: StreamEngine) -> Partition:
    """A partition whose ten batches went up in ten uploads: ten small objects."""
    p = Partition("t", 0, await engine.create_stream())
    for i in range(10):
        await p.append(batch(i))
        await engine.upload()
    return p


async def no_dangling_reference(engine: StreamEngine, store: ObjectStore) -> None:
    present = set(await store.list())
    for e in await engine.meta.list(OBJECTS):
        assert json.loads(e.value)["key"] in present


async def test_two_hundred_small_uploads_compact_to_a_few_objects(
        tmp_path: Path, store: ObjectStore) -> None:
    clock = [0.0]
    engine = await start(tmp_path, store, 1, clock)
    parts = [Partition("t", i, await engine.create_stream()) for i in range(4)]
    for i in range(200):  # partition 0 is busy, the others trickle
        await parts[0].append(batch(i, n=20))
        await parts[1 + i % 3].append(batch(i))
        await engine.upload()
    assert len(engine.catalog.objects) == 200
    before = [digest(await read_all(p)) for p in parts]

    merged = await engine.compact()
    assert merged == 200
    # the bound: one stream object for the busy partition (it passes split_bytes), one
    # stream set object for the rest
    assert len(engine.catalog.objects) <= 2
    kinds = sorted(k.split("/")[1] for k in engine.catalog.objects)
    assert kinds == ["s", "ss"]
    assert [digest(await read_all(p)) for p in parts] == before
    assert len(await store.list()) == 202  # the old ones wait out the grace period
    await no_dangling_reference(engine, store)

    clock[0] = 11
    await engine._collect_garbage()
    assert len(await store.list()) == 2
    assert await engine.meta.list(GARBAGE) == []
    await stop(engine, flush=True)

    engine2 = await start(tmp_path, store, 2, clock)  # a restart sees the same objects
    parts2 = [Partition("t", i, engine2.streams[p.stream.stream_id]) for i, p in
              enumerate(parts)]
    assert [digest(await read_all(p)) for p in parts2] == before
    await stop(engine2, flush=True)


async def test_compaction_drops_deleted_and_trimmed_data(
        tmp_path: Path, store: ObjectStore) -> None:
    clock = [0.0]
    engine = await start(tmp_path, store, 1, clock)
    keep = Partition("t", 0, await engine.create_stream())
    gone = Partition("t", 1, await engine.create_stream())
    trimmed = Partition("t", 2, await engine.create_stream())
    for i in range(10):
        for p in (keep, gone, trimmed):
            await p.append(batch(i))
        await engine.upload()
    await engine.delete_stream(gone.stream.stream_id)
    await trimmed.stream.trim(15)
    merged, written = await compact_objects(engine, CompactionConfig(min_objects=2),
                                            engine._live_starts)
    assert (merged, written) == (10, 1)
    (blocks,) = engine.index.objects.values()
    assert {b.stream_id for b in blocks} == {keep.stream.stream_id, trimmed.stream.stream_id}
    assert min(b.start_offset for b in blocks if b.stream_id == trimmed.stream.stream_id) == 15
    assert len(await read_all(keep)) == 10
    assert (await trimmed.stream.fetch(15, 1 << 20))[0]
    await stop(engine, flush=True)


async def test_reader_on_an_old_block_finishes_during_the_grace_period(
        tmp_path: Path, store: ObjectStore) -> None:
    clock = [0.0]
    engine = await start(tmp_path, store, 1, clock, block_cache_bytes=0)
    p = await ten_uploads(engine)
    key, block = engine.index.blocks(p.stream.stream_id)[0]
    await engine.compact()
    assert key not in engine.catalog.objects
    # a fetch that looked the block up before the swap still gets its bytes
    assert await engine.blocks.get(key, block.position, block.size)
    await stop(engine, flush=True)


async def test_crash_between_put_and_commit_leaves_no_orphan(
        tmp_path: Path, store: ObjectStore) -> None:
    clock = [0.0]
    engine = await start(tmp_path, store, 1, clock)
    p = await ten_uploads(engine)

    def fail(*args: object) -> None:
        raise RuntimeError("crash before the commit")

    engine.catalog.unlink = fail  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError):
        await engine.compact()
    assert len(await store.list()) == 11  # the merged object was PUT, never referenced
    await engine.wal.close()
    await engine.meta.close()

    engine2 = await start(tmp_path, store, 2, clock)  # kill -9 and restart
    assert len(engine2.catalog.objects) == 10 and len(engine2.catalog.garbage) == 1
    clock[0] = 11
    await engine2._collect_garbage()
    assert len(await store.list()) == 10
    await no_dangling_reference(engine2, store)
    assert len(await read_all(Partition("t", 0, engine2.streams[p.stream.stream_id]))) == 10
    await stop(engine2, flush=True)


async def test_crash_between_delete_and_its_record_finishes_after_restart(
        tmp_path: Path, store: ObjectStore) -> None:
    """kill -9 inside object deletion: the bytes are gone but the garbage record is not.
    The restarted engine deletes again (a no-op) and drops the record; nothing that
    metadata references was deleted, and every record stays readable."""
    clock = [0.0]
    engine = await start(tmp_path, store, 1, clock)
    p = await ten_uploads(engine)
    before = digest(await read_all(p))
    await engine.compact()
    assert len(engine.catalog.garbage) == 10
    clock[0] = 11
    real_delete = engine.meta.delete

    async def crash_on_garbage(key: str) -> None:
        if key.startswith(GARBAGE):
            raise RuntimeError("killed between the store's DELETE and the record's")
        await real_delete(key)

    engine.meta.delete = crash_on_garbage  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await engine._collect_garbage()
    assert len(await store.list()) == 10  # one merged object + 9 garbage; 1 deleted
    await engine.wal.close()
    await engine.meta.close()

    engine2 = await start(tmp_path, store, 2, clock)  # kill -9 and restart
    assert len(engine2.catalog.garbage) == 10  # the deleted one's record survived
    await no_dangling_reference(engine2, store)
    await engine2._collect_garbage()
    assert len(engine2.catalog.garbage) == 0 and len(await engine2.meta.list(GARBAGE)) == 0
    assert len(await store.list()) == 1
    await no_dangling_reference(engine2, store)
    p2 = Partition("t", 0, engine2.streams[p.stream.stream_id])
    assert digest(await read_all(p2)) == before
    await stop(engine2, flush=True)


async def test_object_referenced_while_garbage_is_deleted_is_kept(
        tmp_path: Path, store: ObjectStore) -> None:
    """Garbage is deleted outside the upload lock, so an upload can commit the object of
    an intent the deletion round already listed. The round must see that the intent is
    gone and keep the object (it deleted it, and metadata referenced a missing object)."""
    clock = [0.0]
    engine = await start(tmp_path, store, 1, clock)
    p = await ten_uploads(engine)
    await engine.compact()  # ten garbage objects
    await p.append(batch(10))
    putting, release = asyncio.Event(), asyncio.Event()
    real_put, real_delete = engine.store.put, engine.store.delete

    async def held_put(key: str, data: object) -> None:
        putting.set()
        await release.wait()
        await real_put(key, data)  # type: ignore[arg-type]

    engine.store.put = held_put  # type: ignore[method-assign]
    upload = asyncio.create_task(engine.upload())
    await putting.wait()  # the upload's intent is recorded (at clock 0)
    engine.store.put = real_put  # type: ignore[method-assign]
    clock[0] = 11  # every intent and garbage record is past the grace period

    async def delete_while_the_upload_commits(key: str) -> None:
        if not release.is_set():
            release.set()
            await upload
        await real_delete(key)

    engine.store.delete = delete_while_the_upload_commits  # type: ignore[method-assign]
    assert await engine.catalog.delete_expired() == 10
    await no_dangling_reference(engine, store)
    assert len(await read_all(p)) == 11
    await stop(engine, flush=True)


async def test_objects_no_record_names_are_deleted_after_the_grace_period(
        tmp_path: Path, store: ObjectStore) -> None:
    """The audit: an object in the store that neither a live nor a garbage record names
    (a PUT that landed after a collector gave up on its intent) is deleted once it stayed
    unnamed past the grace period, and counted; named objects and keys that are not
    objects (a WAL sharing the bucket) stay."""
    clock = [0.0]
    engine = await start(tmp_path, store, 1, clock, orphan_audit_interval=1)
    p = await ten_uploads(engine)
    before = digest(await read_all(p))
    orphan = object_key(999_999, "ss")
    await store.put(orphan, b"written after its intent was collected")
    await store.put("wal-1/00000000000000000001.wal", b"not an object")
    await engine._collect_garbage()  # first seen: kept for the grace period
    assert orphan in await store.list() and engine.catalog.orphans_deleted == 0
    clock[0] = 11
    engine._next_audit = 0.0
    await engine._collect_garbage()
    listed = await store.list()
    assert orphan not in listed and "wal-1/00000000000000000001.wal" in listed
    assert engine.catalog.orphans_deleted == 1
    await no_dangling_reference(engine, store)
    assert len(engine.catalog.objects) == 10
    assert digest(await read_all(p)) == before
    await stop(engine, flush=True)
