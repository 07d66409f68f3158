"""Retention and log compaction on a real engine: which offsets go, which records stay."""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.unit.harness import open_topics
from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.log_compactor import CleanerState, compact_partition
from tidelog.partition.log_manager import LogManager, LogManagerConfig
from tidelog.partition.partition import Partition, describe
from tidelog.partition.retention import enforce_retention, retention_start
from tidelog.partition.topic_config import TopicConfig, resolve
from tidelog.protocol import records
from tidelog.protocol.record_reader import read_records
from tidelog.stream.engine import EngineConfig, StreamEngine
from tidelog.stream.wal.file_wal import FileWAL


def config(**topic: str) -> TopicConfig:
    return resolve(topic, {})


async def engine_at(tmp: Path) -> StreamEngine:
    meta = EmbeddedMetadataStore(str(tmp / "meta.db"))
    engine = StreamEngine(FileWAL(str(tmp / "wal"), capacity=32 << 20),
                          open_object_store("memory://"), meta,
                          EngineConfig(compaction_interval=0, block_bytes=64 << 10,
                                       gc_grace=0), describe=describe)
    await engine.start(1)
    return engine


async def read_values(p: Partition) -> list[tuple[int, bytes | None, bytes | None]]:
    out = []
    offset = p.log_start_offset
    while offset < p.high_watermark:
        bufs, nxt = await p.stream.fetch(offset, 1 << 20)
        if not bufs:
            break
        for buf in bufs:
            for info in records.iter_headers(buf):
                if info.is_control:
                    continue
                out.extend((o, k, v) for o, _ts, k, v in read_records(buf, info)
                           if o >= offset)
        offset = nxt
    return out


def test_retention_start_by_time_and_size() -> None:
    ranges = [(0, 10, 1_000), (10, 20, 2_000), (20, 30, 3_000)]
    sizes = [(0, 10, 100), (10, 20, 100), (20, 30, 100)]
    by_time = config(**{"retention.ms": "1500"})
    assert retention_start(ranges, sizes, 0, by_time, now_ms=3_600) == 20
    assert retention_start(ranges, sizes, 0, by_time, now_ms=3_000) == 10
    by_size = config(**{"retention.bytes": "150", "retention.ms": "-1"})
    assert retention_start(ranges, sizes, 0, by_size, now_ms=0) == 20
    forever = config(**{"retention.ms": "-1"})
    assert retention_start(ranges, sizes, 0, forever, now_ms=10**12) == 0


async def test_retention_trims_and_objects_leave_the_store(tmp_path: Path) -> None:
    engine = await engine_at(tmp_path)
    p = Partition("t", 0, await engine.create_stream())
    for i in range(10):
        await p.append(records.build_batch([(b"k", b"v" * 100)], timestamp=1_000 + i))
        await engine.upload()
    assert len(await engine.store.list()) == 10
    removed = await enforce_retention(p, config(**{"retention.ms": "100"}), now_ms=1_105)
    assert removed == 5 and p.log_start_offset == 5  # records stamped 1000..1004 expired
    await engine._collect_garbage()
    assert len(await engine.store.list()) == 5
    assert [o for o, _k, _v in await read_values(p)] == [5, 6, 7, 8, 9]
    compacted_only = config(**{"retention.ms": "1", "cleanup.policy": "compact"})
    assert await enforce_retention(p, compacted_only, now_ms=10**12) == 0
    await engine.close()
    await engine.meta.close()


async def test_compaction_keeps_latest_value_per_key(tmp_path: Path) -> None:
    engine = await engine_at(tmp_path)
    p = Partition("t", 0, await engine.create_stream())
    rng = random.Random(7)
    latest: dict[bytes, tuple[int, bytes | None]] = {}
    offset = 0
    for _ in range(100):  # 100,000 records over 1,000 keys
        batch = []
        for _ in range(1000):
            key = b"key-%d" % rng.randrange(1000)
            value = b"value-%d" % offset
            batch.append((key, value))
            latest[key] = (offset, value)
            offset += 1
        await p.append(records.build_batch(batch, timestamp=1_000))
    tombstoned = sorted(latest)[:100]
    await p.append(records.build_batch([(k, None) for k in tombstoned], timestamp=1_000))
    for k in tombstoned:
        latest[k] = (offset, None)
        offset += 1
    await engine.upload()
    cfg = config(**{"cleanup.policy": "compact", "delete.retention.ms": "60000"})
    state = CleanerState()
    result = await compact_partition(engine, p, cfg, state, now_ms=2_000)
    assert result is not None and result.records_before == 100_100
    kept = await read_values(p)
    # tombstones are still inside delete.retention.ms: 1,000 keys, one record each
    assert kept == sorted((o, k, v) for k, (o, v) in latest.items())
    assert await compact_partition(engine, p, cfg, state, now_ms=2_000) is None  # clean

    result = await compact_partition(engine, p, cfg, state, now_ms=70_000)
    assert result is not None  # tombstones expired
    kept = await read_values(p)
    expect = sorted((o, k, v) for k, (o, v) in latest.items() if v is not None)
    assert len(expect) == 900 and kept == expect
    assert p.high_watermark == offset  # offsets are kept: the log end did not move
    await engine._collect_garbage()
    assert len(await engine.store.list()) == 1
    await engine.close()
    await engine.meta.close()


async def test_compaction_waits_for_min_compaction_lag(tmp_path: Path) -> None:
    engine = await engine_at(tmp_path)
    p = Partition("t", 0, await engine.create_stream())
    await p.append(records.build_batch([(b"a", b"1"), (b"a", b"2")], timestamp=1_000))
    await engine.upload()
    young = config(**{"cleanup.policy": "compact", "min.compaction.lag.ms": "10000"})
    assert await compact_partition(engine, p, young, CleanerState(), now_ms=5_000) is None
    assert await compact_partition(engine, p, young, CleanerState(), now_ms=20_000)
    assert [(o, v) for o, _k, v in await read_values(p)] == [(1, b"2")]
    await engine.close()
    await engine.meta.close()


async def test_compaction_drops_aborted_transactions_and_keeps_markers(
        tmp_path: Path) -> None:
    engine = await engine_at(tmp_path)
    p = Partition("t", 0, await engine.create_stream())
    await p.append(records.build_batch([(b"a", b"committed")], timestamp=1_000))
    await p.append(records.build_batch([(b"a", b"aborted"), (b"b", b"aborted")],
                                       timestamp=1_000, producer_id=5, producer_epoch=0,
                                       base_sequence=0,
                                       attributes=records.TRANSACTIONAL_BIT))
    marker = await p.write_marker(5, 0, commit=False)
    await engine.upload()
    now_ms = int(time.time() * 1000) + 1_000
    cfg = config(**{"cleanup.policy": "compact"})
    assert await compact_partition(engine, p, cfg, CleanerState(), now_ms=now_ms)
    assert [(o, k, v) for o, k, v in await read_values(p)] == [(0, b"a", b"committed")]
    bufs, _ = await p.stream.fetch(0, 1 << 20)
    controls = [i.base_offset for b in bufs for i in records.iter_headers(b) if i.is_control]
    assert controls == [marker]  # read_committed consumers still see where it ended
    await engine.close()
    await engine.meta.close()


async def test_max_compaction_lag_forces_a_pass_below_the_dirty_ratio(tmp_path: Path) -> None:
    engine = await engine_at(tmp_path)
    p = Partition("t", 0, await engine.create_stream())
    await p.append(records.build_batch([(b"a", b"x" * 1000)] * 50, timestamp=1_000))
    await engine.upload()
    state = CleanerState()
    lazy = config(**{"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.9"})
    assert await compact_partition(engine, p, lazy, state, now_ms=5_000)  # all dirty
    await p.append(records.build_batch([(b"a", b"y")], timestamp=6_000))
    await engine.upload()
    assert await compact_partition(engine, p, lazy, state, now_ms=7_000) is None  # ratio
    forced = config(**{"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.9",
                       "max.compaction.lag.ms": "500"})
    assert await compact_partition(engine, p, forced, state, now_ms=7_000)
    assert [v for _o, _k, v in await read_values(p)] == [b"y"]
    await engine.close()
    await engine.meta.close()


async def test_cleaner_uploads_data_that_a_segment_roll_would_make_cleanable(
        tmp_path: Path) -> None:
    """Only uploaded data is cleanable: where Kafka would roll the active segment
    (max.compaction.lag.ms, segment.ms, segment.bytes), the cleaner uploads first."""
    wal = FileWAL(str(tmp_path / "wal"), capacity=32 << 20)
    engine, topics = await open_topics(tmp_path, wal, open_object_store("memory://"), 1)
    clock = [10.0]
    manager = LogManager(topics, LogManagerConfig(), clock=lambda: clock[0])
    lagged = await topics.create("lagged", 1, {"cleanup.policy": "compact",
                                               "max.compaction.lag.ms": "1000"})
    rolled = await topics.create("rolled", 1, {"cleanup.policy": "compact",
                                               "segment.bytes": "2000"})
    for t in (lagged, rolled):
        for v in (b"1", b"2", b"3"):
            await t.owned[0].append(records.build_batch([(b"k", v * 500)],
                                                             timestamp=10_000))
    assert engine.unuploaded(lagged.owned[0].stream.stream_id)[0] > 0

    # rolled holds 1,500 bytes, under its segment.bytes; lagged's data is 0.5 s old
    clock[0] = 10.5
    assert await manager.clean() == 0 and manager.rolls == 0
    clock[0] = 11.0  # lagged's records are max.compaction.lag.ms old: one upload, both clean
    assert await manager.clean() == 2 and manager.rolls == 1
    assert engine.unuploaded(lagged.owned[0].stream.stream_id) == (0, None)
    for t in (lagged, rolled):
        assert [v for _o, _k, v in await read_values(t.owned[0])] == [b"3" * 500]
    for v in (b"4", b"5", b"6", b"7"):  # 2,000 bytes reach rolled's segment.bytes
        await rolled.owned[0].append(records.build_batch([(b"k", v * 500)],
                                                              timestamp=11_000))
    assert await manager.clean() == 1 and manager.rolls == 2
    assert [v for _o, _k, v in await read_values(rolled.owned[0])] == [b"7" * 500]
    await engine.close()
    await engine.meta.close()


async def test_compact_and_delete_both_apply(tmp_path: Path) -> None:
    """cleanup.policy=compact,delete: retention drops old data, compaction the superseded."""
    engine = await engine_at(tmp_path)
    p = Partition("t", 0, await engine.create_stream())
    for i, ts in enumerate((1_000, 1_000, 5_000, 5_000)):  # a, b at 1 s; a, b at 5 s
        await p.append(records.build_batch([(b"ab"[i % 2:i % 2 + 1], b"v%d" % i)],
                                           timestamp=ts))
        await engine.upload()
    both = config(**{"cleanup.policy": "compact,delete", "retention.ms": "3000"})
    assert await compact_partition(engine, p, both, CleanerState(), now_ms=5_500)
    assert [(o, v) for o, _k, v in await read_values(p)] == [(2, b"v2"), (3, b"v3")]
    await p.append(records.build_batch([(b"c", b"v4")], timestamp=9_000))
    await engine.upload()
    assert await enforce_retention(p, both, now_ms=8_500) == 4  # 0-1 compacted, 2-3 expired
    assert p.log_start_offset == 4
    assert [(o, v) for o, _k, v in await read_values(p)] == [(4, b"v4")]
    await engine.close()
    await engine.meta.close()
