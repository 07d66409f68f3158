"""Producer state: Kafka's sequence/epoch rules, transactions, LSO, snapshots, restart."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.objectstore.base import ObjectStore
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.partition import PRODUCERS, Partition, describe
from tidelog.partition.producer_state import (
    ABORT,
    COMMIT,
    MAX_SEQUENCE,
    DuplicateBatch,
    ProducerEntry,
    ProducerState,
    ProducerStateError,
    last_sequence,
)
from tidelog.protocol import records
from tidelog.protocol.record_reader import read_records
from tidelog.stream.engine import EngineConfig, StreamEngine
from tidelog.stream.wal.file_wal import FileWAL


def batch(pid: int, epoch: int, seq: int, n: int = 2, txn: bool = False,
          ts: int | None = None) -> bytes:
    return records.build_batch([(None, f"v{seq}-{j}".encode()) for j in range(n)],
                               timestamp=int(time.time() * 1000) if ts is None else ts,
                               producer_id=pid, producer_epoch=epoch,
                               base_sequence=seq,
                               attributes=records.TRANSACTIONAL_BIT if txn else 0)


def info(pid: int, epoch: int, seq: int, n: int = 2, txn: bool = False) -> records.BatchInfo:
    return records.read_header(batch(pid, epoch, seq, n, txn))


def code(exc: pytest.ExceptionInfo[ProducerStateError]) -> str:
    return exc.value.code


def test_last_sequence_wraps() -> None:
    assert last_sequence(5, 2) == 7
    assert last_sequence(MAX_SEQUENCE, 0) == MAX_SEQUENCE
    assert last_sequence(MAX_SEQUENCE, 1) == 0
    assert last_sequence(MAX_SEQUENCE - 1, 3) == 1


def test_sequences_duplicates_and_gaps() -> None:
    s = ProducerState()
    s.append(info(7, 0, 40), 0)  # an unknown producer may start anywhere
    s.append(info(7, 0, 42), 2)
    with pytest.raises(DuplicateBatch) as dup:
        s.append(info(7, 0, 40), 4)
    assert (dup.value.base_offset, dup.value.last_offset) == (0, 1)
    with pytest.raises(ProducerStateError) as gap:
        s.append(info(7, 0, 45), 4)
    assert code(gap) == "out_of_order_sequence_number"
    with pytest.raises(ProducerStateError) as partial:  # overlaps but is not a stored batch
        s.append(info(7, 0, 41), 4)
    assert code(partial) == "out_of_order_sequence_number"
    for i in range(5):
        s.append(info(7, 0, 44 + 2 * i), 4 + 2 * i)
    with pytest.raises(DuplicateBatch):  # the 5th-last is still remembered
        s.append(info(7, 0, 44), 99)
    with pytest.raises(ProducerStateError):  # the 6th-last is not
        s.append(info(7, 0, 42), 99)
    assert s.producers[7].batches[-1] == (52, 53, 12, 13)


def test_sequence_wrap_and_epochs() -> None:
    s = ProducerState()
    s.append(info(1, 3, MAX_SEQUENCE, n=1), 0)
    s.append(info(1, 3, 0), 1)
    with pytest.raises(ProducerStateError) as old:
        s.append(info(1, 2, 2), 3)
    assert code(old) == "invalid_producer_epoch"
    with pytest.raises(ProducerStateError) as bad_start:
        s.append(info(1, 4, 2), 3)
    assert code(bad_start) == "out_of_order_sequence_number"
    s.append(info(1, 4, 0), 3)
    assert s.producers[1].epoch == 4 and len(s.producers[1].batches) == 1
    with pytest.raises(DuplicateBatch):
        s.append(info(1, 4, 0), 5)


def test_transactions_lso_and_aborted_index() -> None:
    s = ProducerState()
    s.append(info(1, 0, 0, txn=True), 10)
    s.append(info(2, 0, 0, txn=True), 12)
    s.append(info(1, 0, 2, txn=True), 14)
    assert s.last_stable_offset(20) == 10
    with pytest.raises(ProducerStateError) as mixed:
        s.append(info(1, 0, 4), 20)
    assert code(mixed) == "invalid_txn_state"
    s.marker(1, 0, ABORT, 0, 16, 0)
    assert s.last_stable_offset(20) == 12
    s.marker(2, 0, COMMIT, 0, 17, 0)
    assert s.last_stable_offset(20) == 20
    assert s.aborted_transactions(0, 100) == [(1, 10)]
    assert s.aborted_transactions(16, 100) == [(1, 10)]
    assert s.aborted_transactions(17, 100) == []
    assert s.aborted_transactions(0, 10) == []
    s.check_marker(1, 0, 0)
    with pytest.raises(ProducerStateError) as fenced:
        s.check_marker(1, 0, -1)
    assert code(fenced) == "transaction_coordinator_fenced"
    s.marker(1, 1, ABORT, 0, 18, 0)  # an epoch bump by the coordinator (timeout abort)
    assert s.aborted_transactions(0, 100) == [(1, 10)]  # no open txn: nothing indexed
    with pytest.raises(ProducerStateError) as stale:
        s.append(info(1, 0, 4), 19)
    assert code(stale) == "invalid_producer_epoch"
    s.trim(17)
    assert s.aborted == []


def test_snapshot_round_trip_and_expiry() -> None:
    s = ProducerState()
    s.append(info(1, 0, 0), 0)
    s.append(info(2, 5, 9, txn=True), 2)
    s.append(info(3, 0, 0, txn=True), 4)
    s.marker(3, 0, ABORT, 2, 6, 5000)
    r = ProducerState.from_json(json.loads(s.dumps(7)))
    assert r.to_json() == s.to_json()
    assert r.ongoing == {2: 2} and r.last_stable_offset(9) == 2
    with pytest.raises(DuplicateBatch):
        r.append(info(1, 0, 0), 9)
    r.expire(now_ms=r.producers[1].last_timestamp + 10, max_idle_ms=5)
    assert set(r.producers) == {2}  # idle, but its transaction is open


# ---- partitions on a real engine -----------------------------------------------------------


async def open_engine(tmp: Path, store: ObjectStore, epoch: int) -> StreamEngine:
    meta = EmbeddedMetadataStore(str(tmp / "meta.db"))
    engine = StreamEngine(FileWAL(str(tmp / "wal"), capacity=8 << 20), store, meta,
                          EngineConfig(upload_bytes=4096, block_bytes=1024),
                          describe=describe)
    await engine.start(epoch)
    return engine


@pytest.fixture
def store() -> ObjectStore:
    return open_object_store("memory://")


async def test_concurrent_retry_waits_for_the_original(tmp_path: Path,
                                                       store: ObjectStore) -> None:
    engine = await open_engine(tmp_path, store, 1)
    p = Partition("t", 0, await engine.create_stream(), meta=engine.meta)
    first = await p.append(batch(9, 0, 0))
    results = await asyncio.gather(*(p.append(batch(9, 0, 2)) for _ in range(3)),
                                   p.append(batch(9, 0, 4)))
    assert [r.base_offset for r in results] == [2, 2, 2, 4]
    assert first.base_offset == 0 and p.high_watermark == 6
    with pytest.raises(records.InvalidRecordError):  # clients may not write markers
        await p.append(records.build_control_batch(9, 0, True, 0, 0))
    await engine.close(flush=True)
    await engine.meta.close()


async def test_markers_and_restart_rebuild(tmp_path: Path, store: ObjectStore) -> None:
    engine = await open_engine(tmp_path, store, 1)
    s = await engine.create_stream()
    p = Partition("t", 0, s, meta=engine.meta)
    await p.restore_producers()  # a new partition: writes an empty snapshot
    await p.append(batch(1, 0, 0, txn=True))  # 0-1
    await p.append(batch(2, 0, 0))  # 2-3
    assert p.last_stable_offset == 0 and p.high_watermark == 4
    assert await p.write_marker(1, 0, commit=False, coordinator_epoch=3) == 4
    assert p.last_stable_offset == 5 and p.aborted_transactions(0, 5) == [(1, 0)]
    marker = (await p.read(4, 1 << 20))[0]
    [(_, _, key, value)] = read_records(marker, records.read_header(marker))
    assert key == b"\x00\x00\x00\x00" and value == b"\x00\x00\x00\x00\x00\x03"
    assert records.read_header(marker).is_control
    await p.snapshot_producers()  # as of 5; what follows is rebuilt from the log
    await engine.upload()
    await p.append(batch(1, 0, 2, txn=True))  # 5-6
    await p.append(batch(2, 0, 2))  # 7-8
    with pytest.raises(ProducerStateError) as fenced:
        await p.write_marker(1, 0, commit=True, coordinator_epoch=2)
    assert fenced.value.code == "transaction_coordinator_fenced"
    assert p.high_watermark == 9  # the refused marker took no offset
    await p.append(batch(3, 0, 0, txn=True))  # 9-10
    assert await p.write_marker(3, 0, commit=False) == 11
    before = p.producers.to_json()
    await engine.close(flush=False)  # a crash: the tail is only in the WAL
    await engine.meta.close()

    engine2 = await open_engine(tmp_path, store, 2)
    p2 = Partition("t", 0, engine2.streams[s.stream_id], meta=engine2.meta)
    await p2.restore_producers()
    assert p2.producers.to_json() == before
    assert p2.last_stable_offset == 5  # producer 1's second transaction is still open
    assert p2.aborted_transactions(0, 12) == [(1, 0), (3, 9)]
    assert (await p2.append(batch(2, 0, 2))).base_offset == 7  # a retry after restart
    assert p2.high_watermark == 12
    entry = await engine2.meta.get(f"{PRODUCERS}{s.stream_id}")
    assert entry is not None and b'"as_of": 12' in entry.value  # rescanned, re-snapshotted
    await engine2.close(flush=True)
    await engine2.meta.close()


def test_drop_below_forgets_producers_whose_batches_are_gone() -> None:
    state = ProducerState()
    state.producers[1] = ProducerEntry(epoch=0)
    state.producers[1].batches.append((0, 9, 0, 9))
    state.producers[2] = ProducerEntry(epoch=0)
    state.producers[2].batches.append((0, 9, 20, 29))
    state.producers[3] = ProducerEntry(epoch=0, txn_first=5)  # open transaction: kept
    state.producers[3].batches.append((0, 0, 5, 5))
    state.drop_below(15)
    assert sorted(state.producers) == [2, 3] and state.changed
