"""`StreamEngine.save_wal_tail`, the taker's half of failover, on real parts (file WALs, an
embedded metadata store, an in-memory object store): a dead broker's unuploaded records
reach objects exactly once, even when a first taker dies between its PUTs and its commit
and then comes back late with what it had read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidelog.metadata.base import Fenced, Txn
from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.partition import Partition, describe
from tidelog.protocol import records
from tidelog.stream.engine import STREAMS, EngineConfig, StreamEngine, decode_stream, encode_stream
from tidelog.stream.objects import meta_key
from tidelog.stream.stream import StreamMeta
from tidelog.stream.wal.file_wal import FileWAL

CAPACITY = 8 << 20


def batch(i: int) -> bytes:
    return records.build_batch([(f"k{i}".encode(), f"v{i}-{j}".encode() * 10)
                                for j in range(3)], timestamp=1000 + i)


async def streams_of(meta: EmbeddedMetadataStore, owner: int) -> list[StreamMeta]:
    return [m for m in (decode_stream(e.key, e.value, e.version)
                        for e in await meta.list_all(STREAMS)) if m.owner == owner]


async def test_a_dead_brokers_tail_is_saved_once_through_a_dead_and_a_late_taker(
        tmp_path: Path) -> None:
    meta = EmbeddedMetadataStore(str(tmp_path / "meta.db"))
    store = open_object_store("memory://")
    config = EngineConfig(upload_interval=3600, gc_interval=3600, compaction_interval=0)
    dead = StreamEngine(FileWAL(str(tmp_path / "broker-1.wal"), capacity=CAPACITY), store,
                        meta, config, describe=describe, node_id=1, cluster=True)
    await dead.start(1)
    streams = await dead.create_streams(2)
    for s in streams:
        p = Partition("t", s.stream_id, s)
        for i in range(10):
            await p.append(batch(i))
    await dead.upload()  # the first ten batches of each are in objects
    for s in streams:
        p = Partition("t", s.stream_id, s)
        for i in range(10, 20):
            await p.append(batch(i))
    await dead.close(flush=False)  # killed: the last ten of each only in its WAL

    taker = StreamEngine(FileWAL(str(tmp_path / "broker-2.wal"), capacity=CAPACITY), store,
                         meta, config, describe=describe, node_id=2, cluster=True)
    await taker.start(1)

    # a first taker reads and PUTs, then dies before its commit
    first = FileWAL(str(tmp_path / "broker-1.wal"), capacity=CAPACITY)
    await first.open(2)
    stale = await streams_of(meta, 1)
    assert [m.end_offset for m in stale] == [30, 30]

    def dies(txn: Txn, last: bool) -> None:
        raise RuntimeError("the taker died before its commit")

    with pytest.raises(RuntimeError):
        await taker.save_wal_tail(first, stale, dies)
    assert [m.end_offset for m in await streams_of(meta, 1)] == [30, 30]  # nothing visible

    # the replacement opens the WAL with a higher epoch and saves the tail
    second = FileWAL(str(tmp_path / "broker-1.wal"), capacity=CAPACITY)
    await second.open(3)
    saved = await taker.save_wal_tail(second, await streams_of(meta, 1), lambda t, last: None)
    assert saved[0] == 20 and saved[1] > 0
    after = {m.stream_id: m for m in (decode_stream(e.key, e.value, e.version)
                                      for e in await meta.list_all(STREAMS))}
    assert [(m.end_offset, m.owner) for m in after.values()] == [(60, -1), (60, -1)]
    await second.reset()
    await second.close()

    # the first taker, back late with what it read, cannot commit anything
    with pytest.raises(Fenced):
        await taker.save_wal_tail(first, stale, lambda t, last: None)
    await first.close()

    # placed on the taker: every offset once, dense, from objects alone
    for sid, m in after.items():
        await meta.put_if(meta_key(STREAMS, sid), encode_stream(
            StreamMeta(sid, m.epoch, m.start_offset, m.end_offset, 2, topic=m.topic)),
            m.version)
        s = await taker.open_stream(sid)
        assert s is not None and s.next_offset == 60
        got, off = [], 0
        while off < 60:
            bufs, off = await s.fetch(off, 1 << 20)
            got.extend(records.read_header(b).base_offset for b in bufs)
        assert got == [i * 3 for i in range(20)]

    # and a restart of the dead broker finds an empty WAL
    again = FileWAL(str(tmp_path / "broker-1.wal"), capacity=CAPACITY)
    await again.open(4)
    assert list(again.recover()) == []
    await again.close()
    await taker.close(flush=False)
    await meta.close()
