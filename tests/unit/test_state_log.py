"""StateLog: the coordinators' key-value log in `__consumer_offsets`, over a real engine
(FileWAL in tmp_path, in-memory object store, embedded metadata)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.harness import open_topics
from tidelog.coordinator.state_log import TOPIC, StateLog
from tidelog.objectstore.base import ObjectStore
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.topics import TopicManager
from tidelog.stream.engine import StreamEngine
from tidelog.stream.wal.file_wal import FileWAL


class Node:
    """One broker's storage: engine + topics; `crash` drops it without a flush."""

    def __init__(self, tmp: Path, store: ObjectStore) -> None:
        self.tmp, self.store, self.epoch = tmp, store, 0
        self.engine: StreamEngine | None = None
        self.topics: TopicManager | None = None

    async def start(self, **log_args: float) -> StateLog:
        self.epoch += 1
        self.engine, self.topics = await open_topics(
            self.tmp, FileWAL(str(self.tmp / "wal"), capacity=8 << 20), self.store, self.epoch)
        return StateLog(self.topics, **log_args)  # type: ignore[arg-type]

    async def stop(self, flush: bool) -> None:
        assert self.engine is not None
        await self.engine.close(flush=flush)
        await self.engine.meta.close()


@pytest.fixture
def store() -> ObjectStore:
    return open_object_store("memory://")


async def test_round_trip_across_crash(tmp_path: Path, store: ObjectStore) -> None:
    node = Node(tmp_path, store)
    log = await node.start()
    assert await log.load() == {}
    await log.write([(b"a", b"1"), (b"b/with/slashes", b"2")])
    await log.write([(b"a", b"3")])
    await node.stop(flush=False)  # kill -9: only the WAL holds them

    log2 = await node.start()
    assert await log2.load() == {b"a": b"3", b"b/with/slashes": b"2"}
    assert node.topics is not None and node.topics.get(TOPIC) is not None
    assert node.topics.get(TOPIC).internal  # type: ignore[union-attr]
    await log2.write([(b"c", b"4")])
    await node.stop(flush=True)  # clean stop: uploaded to objects

    log3 = await node.start()
    assert await log3.load() == {b"a": b"3", b"b/with/slashes": b"2", b"c": b"4"}
    await node.stop(flush=True)


async def test_tombstones_delete_keys(tmp_path: Path, store: ObjectStore) -> None:
    node = Node(tmp_path, store)
    log = await node.start()
    await log.load()
    await log.write([(b"k1", b"v1"), (b"k2", b"v2"), (b"k3", b"v3")])
    await log.write([(b"k1", None), (b"k3", b"v3b"), (b"never", None)])
    await node.stop(flush=False)
    log2 = await node.start()
    assert await log2.load() == {b"k2": b"v2", b"k3": b"v3b"}
    await log2.write([(b"k1", b"again")])  # a deleted key can come back
    await node.stop(flush=False)
    log3 = await node.start()
    assert await log3.load() == {b"k1": b"again", b"k2": b"v2", b"k3": b"v3b"}
    await node.stop(flush=True)


async def test_compaction_trims_and_keeps_state(tmp_path: Path, store: ObjectStore) -> None:
    node = Node(tmp_path, store)
    log = await node.start(compact_ratio=4.0, compact_min_records=40)
    await log.load()
    expected: dict[bytes, bytes] = {}
    for i in range(60):
        key = f"key-{i % 5}".encode()
        expected[key] = f"value-{i}".encode()
        await log.write([(key, expected[key])])
    await log.write([(b"key-4", None)])
    del expected[b"key-4"]
    p = log.partition
    # past 40 records for 5 live keys: compaction rewrote the live ones and trimmed the rest
    assert p.log_start_offset >= 40
    assert p.high_watermark - p.log_start_offset <= 40
    assert await StateLog(node.topics).load() == expected  # type: ignore[arg-type]
    await node.stop(flush=False)

    log2 = await node.start()
    assert await log2.load() == expected
    assert log2.partition.log_start_offset > 0
    await node.stop(flush=True)
    log3 = await node.start()
    assert await log3.load() == expected
    await node.stop(flush=True)


async def test_explicit_compaction_after_upload(tmp_path: Path, store: ObjectStore) -> None:
    node = Node(tmp_path, store)
    log = await node.start()
    await log.load()
    for i in range(30):
        await log.write([(b"hot", str(i).encode()), (f"cold-{i % 3}".encode(), b"x")])
    assert node.engine is not None
    await node.engine.upload()  # the history is in objects now
    start = log.partition.high_watermark
    await log.compact()
    assert log.partition.log_start_offset == start
    await node.stop(flush=False)
    log2 = await node.start()
    assert await log2.load() == {b"hot": b"29", b"cold-0": b"x", b"cold-1": b"x",
                                 b"cold-2": b"x"}
    await node.stop(flush=True)


async def test_write_racing_compaction_keeps_latest(tmp_path: Path, store: ObjectStore) -> None:
    node = Node(tmp_path, store)
    log = await node.start()
    await log.load()
    await log.write([(b"k", b"old"), (b"other", b"1")])
    # a write in flight when a compaction starts: the compaction waits for it
    first = asyncio.create_task(log.write([(b"k", b"middle")]))
    await asyncio.sleep(0)
    await log.compact()
    await first
    # a write arriving while a compaction is rewriting: it waits, and lands after it, so
    # the compaction's snapshot cannot resurrect an older value
    compaction = asyncio.create_task(log.compact())
    while not log._compacting:
        await asyncio.sleep(0)
    last = asyncio.create_task(log.write([(b"k", b"newest"), (b"other", None)]))
    await asyncio.sleep(0)
    assert not last.done()
    await asyncio.gather(compaction, last)
    assert await StateLog(node.topics).load() == {b"k": b"newest"}  # type: ignore[arg-type]
    assert log.partition.log_start_offset > 0
    await node.stop(flush=False)
    log2 = await node.start()
    assert await log2.load() == {b"k": b"newest"}
    await node.stop(flush=True)


async def test_many_writes_race_many_compactions(tmp_path: Path, store: ObjectStore) -> None:
    node = Node(tmp_path, store)
    log = await node.start()
    await log.load()

    async def writer(w: int) -> None:
        for i in range(20):
            await log.write([(f"w{w}".encode(), str(i).encode())])

    async def compactor() -> None:
        for _ in range(5):
            await log.compact()
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(w) for w in range(4)), compactor())
    want = {f"w{w}".encode(): b"19" for w in range(4)}
    await node.stop(flush=False)
    log2 = await node.start()
    assert await log2.load() == want
    await node.stop(flush=True)


async def test_a_partition_loaded_twice_at_once_is_restored_once(tmp_path: Path,
                                                                  store: ObjectStore) -> None:
    """Two opens of one partition racing (a watch event and the open that caused it): the
    second replay returns nothing, so the coordinator does not restore its groups again
    over the copies members have requests parked on."""
    from tidelog.coordinator.state_log import StateLogs

    node = Node(tmp_path, store)
    log = await node.start()
    await log.load()
    await log.write([(b"g/x", b"1")])
    assert node.topics is not None
    logs = StateLogs(node.topics)
    first, second = await asyncio.gather(logs.load_partition(0), logs.load_partition(0))
    assert sorted([first, second], key=len) == [{}, {b"g/x": b"1"}]
    assert list(logs.logs) == [0]
    await node.stop(flush=False)
