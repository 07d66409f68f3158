"""The transaction coordinator over a real engine and state log with a fake clock: producer
ids, epochs and fencing (KIP-360 recovery, overflow), the state table, markers, pending
offsets, timeouts, expiry, a crash between prepare and complete; and the API handlers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType

from tests.unit.harness import open_topics
from tidelog.api import txn as api
from tidelog.api.base import BrokerInfo, Context
from tidelog.coordinator.coordinator import GroupCoordinator
from tidelog.coordinator.transactions import TransactionCoordinator, TxnConfig
from tidelog.coordinator.transactions_state import (
    MAX_EPOCH,
    TRANSITIONS,
    IllegalTransition,
    TxnMetadata,
    TxnState,
)
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.partition import Partition
from tidelog.protocol.codec import RequestHeader
from tidelog.stream.engine import StreamEngine
from tidelog.stream.wal.memory_wal import MemoryWAL, MemoryWALStore

TIMEOUT = 60_000
EXPIRY = 3_600_000
ALL_T = [("t", 0), ("t", 1), ("t", 2)]


@dataclass
class Clock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms / 1000


@dataclass
class Env:
    """Storage, a group coordinator and a transaction coordinator; `restart` crashes
    (no flush) and recovers from the WAL. Markers are recorded as they are written."""

    tmp: Path
    clock: Clock = field(default_factory=Clock)
    wal_store: MemoryWALStore = field(default_factory=MemoryWALStore)
    objects: Any = field(default_factory=lambda: open_object_store("memory://"))
    markers: list[tuple[str, int, int, int, bool]] = field(default_factory=list)
    refuse_markers: bool = False
    epoch: int = 0
    engine: StreamEngine | None = None
    groups: GroupCoordinator | None = None
    txns: TransactionCoordinator | None = None

    async def start(self) -> TransactionCoordinator:
        self.epoch += 1
        self.engine, topics = await open_topics(
            self.tmp, MemoryWAL(capacity=64 << 20, store=self.wal_store), self.objects,
            self.epoch)
        if topics.get("t") is None:
            await topics.create("t", 3)
        self.groups = GroupCoordinator(topics)
        self.groups.offsets.restore(await self.groups.log.load())
        self.txns = TransactionCoordinator(
            topics, self.groups.offsets,
            TxnConfig(max_timeout_ms=TIMEOUT * 10, id_expiration_ms=EXPIRY), self.clock)
        await self.txns.start()
        await self.txns.stop()  # tests drive `tick` themselves
        return self.txns

    async def restart(self) -> TransactionCoordinator:
        await self.stop(flush=False)
        return await self.start()

    async def stop(self, flush: bool = True) -> None:
        assert self.engine is not None
        await self.engine.close(flush=flush)
        await self.engine.meta.close()

    def offset(self, group: str, topic: str, partition: int) -> int | None:
        assert self.groups is not None
        found = self.groups.offsets.fetch(group, topic, partition)
        return None if found is None else found[0]


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    e = Env(tmp_path)
    original = Partition.write_marker

    async def recording(self: Partition, pid: int, epoch: int, commit: bool,
                        coordinator_epoch: int = 0) -> int:
        if e.refuse_markers:
            raise RuntimeError("partition unavailable")
        e.markers.append((self.topic, self.index, pid, epoch, commit))
        return await original(self, pid, epoch, commit, coordinator_epoch)

    monkeypatch.setattr(Partition, "write_marker", recording)
    await e.start()
    yield e
    await e.stop()


async def begin(tc: TransactionCoordinator, tid: str = "tx") -> tuple[int, int]:
    res = await tc.init_producer_id(tid, TIMEOUT)
    assert res.error is None
    return res.producer_id, res.producer_epoch


# -- the state table and record ---------------------------------------------------------


def test_state_table() -> None:
    assert TRANSITIONS[TxnState.PREPARE_COMMIT] == {TxnState.COMPLETE_COMMIT}
    assert TxnState.DEAD not in TRANSITIONS[TxnState.ONGOING]
    assert all(s in TRANSITIONS for s in TxnState)
    m = TxnMetadata("x", 5, 0, 1000)
    m.to(TxnState.ONGOING)
    with pytest.raises(IllegalTransition):
        m.to(TxnState.COMPLETE_COMMIT)


def test_record_format_is_pinned() -> None:
    m = TxnMetadata("x", 1000, 3, 60000, TxnState.ONGOING, 2, -1, {("t", 1), ("t", 0)},
                    {"g": {("t", 0): (42, 7, "m")}}, 111, 222)
    assert m.key() == b"t/x"
    assert json.loads(m.encode()) == {
        "epoch": 3, "last_epoch": 2, "offsets": {"g": [["t", 0, 42, 7, "m"]]},
        "partitions": [["t", 0], ["t", 1]], "pid": 1000, "prev_pid": -1, "start_ms": 111,
        "state": "Ongoing", "timeout_ms": 60000, "update_ms": 222}
    assert TxnMetadata.decode(m.key(), m.encode()) == m


# -- producer ids and epochs ------------------------------------------------------------


async def test_idempotent_producer_ids_are_never_reused(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    first = [await tc.init_producer_id(None, 0) for _ in range(3)]
    assert [r.error for r in first] == [None] * 3
    assert [r.producer_epoch for r in first] == [0, 0, 0]
    assert len({r.producer_id for r in first}) == 3
    tc = await env.restart()
    again = await tc.init_producer_id(None, 0)
    assert again.producer_id > max(r.producer_id for r in first)


async def test_init_rejects_bad_ids_and_timeouts(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    assert (await tc.init_producer_id("", TIMEOUT)).error == "invalid_request"
    assert (await tc.init_producer_id("x", 0)).error == "invalid_transaction_timeout"
    assert (await tc.init_producer_id("x", TIMEOUT * 11)).error == "invalid_transaction_timeout"


async def test_reinit_bumps_epoch_and_fences_the_old_producer(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, e0 = await begin(tc)
    pid2, e1 = await begin(tc)
    assert (pid2, e0, e1) == (pid, 0, 1)
    assert await tc.add_partitions("tx", pid, e0, [("t", 0)]) == "producer_fenced"
    assert await tc.add_partitions("tx", pid + 1, e1, [("t", 0)]) == \
        "invalid_producer_id_mapping"
    assert await tc.add_partitions("tx", pid, e1, [("t", 0)]) is None
    tc = await env.restart()
    m = tc.describe("tx")
    assert m is not None and (m.state, m.producer_epoch) == (TxnState.ONGOING, 1)


async def test_init_aborts_the_open_transaction_first(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, _ = await begin(tc)
    await tc.add_partitions("tx", pid, 0, ALL_T)
    res = await tc.init_producer_id("tx", TIMEOUT)
    assert res.producer_epoch == 2  # 1 aborted the old transaction, 2 is the new producer's
    assert sorted(env.markers) == [("t", i, pid, 1, False) for i in range(3)]
    m = tc.describe("tx")
    assert m is not None and m.state is TxnState.EMPTY and not m.partitions


async def test_kip360_recovery_after_a_timeout_abort(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, e = await begin(tc)
    await tc.add_partitions("tx", pid, e, [("t", 0)])
    env.clock.advance(TIMEOUT + 1)
    await tc.tick()
    m = tc.describe("tx")
    assert m is not None and (m.state, m.producer_epoch, m.last_epoch) == \
        (TxnState.COMPLETE_ABORT, e + 1, e)
    assert env.markers == [("t", 0, pid, e + 1, False)]
    assert await tc.end_txn("tx", pid, e, True) == "producer_fenced"  # the zombie
    res = await tc.init_producer_id("tx", TIMEOUT, pid, e)  # its recovery: no second bump
    assert (res.error, res.producer_id, res.producer_epoch) == (None, pid, e + 1)
    assert (await tc.init_producer_id("tx", TIMEOUT, pid, e + 7)).error == "producer_fenced"
    assert (await tc.init_producer_id("tx", TIMEOUT, pid, e + 1)).producer_epoch == e + 2


async def test_epoch_overflow_moves_to_a_new_producer_id(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, _ = await begin(tc)
    m = tc.describe("tx")
    assert m is not None
    m.producer_epoch = MAX_EPOCH - 1
    await tc._store(m)
    res = await tc.init_producer_id("tx", TIMEOUT)
    assert res.producer_id != pid and res.producer_epoch == 0
    m = tc.describe("tx")
    assert m is not None and m.prev_producer_id == pid


# -- transactions -----------------------------------------------------------------------


async def test_commit_writes_markers_then_makes_offsets_visible(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, e = await begin(tc)
    assert await tc.add_partitions("tx", pid, e, ALL_T) is None
    assert await tc.add_offsets("tx", pid, e, "g") is None
    assert await tc.txn_offset_commit("tx", pid, e, "g", [("t", 0, 42, 1, "m")]) is None
    assert env.offset("g", "t", 0) is None  # pending until the commit
    m = tc.describe("tx")
    assert m is not None and m.state is TxnState.ONGOING and m.start_ms > 0
    assert await tc.end_txn("tx", pid, e, True) is None
    assert sorted(env.markers) == [("t", i, pid, e, True) for i in range(3)]
    assert env.offset("g", "t", 0) == 42
    m = tc.describe("tx")
    assert m is not None and m.state is TxnState.COMPLETE_COMMIT and not m.offsets
    assert await tc.end_txn("tx", pid, e, True) is None  # a retry
    assert await tc.end_txn("tx", pid, e, False) == "invalid_txn_state"
    # the next transaction starts from CompleteCommit
    assert await tc.add_partitions("tx", pid, e, [("t", 1)]) is None
    tc = await env.restart()
    m = tc.describe("tx")
    assert m is not None and m.state is TxnState.ONGOING and m.partitions == {("t", 1)}
    assert env.offset("g", "t", 0) == 42


async def test_abort_drops_pending_offsets(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, e = await begin(tc)
    await tc.add_partitions("tx", pid, e, [("t", 2)])
    await tc.add_offsets("tx", pid, e, "g")
    await tc.txn_offset_commit("tx", pid, e, "g", [("t", 0, 9, -1, None)])
    assert await tc.end_txn("tx", pid, e, False) is None
    assert env.markers == [("t", 2, pid, e, False)]
    assert env.offset("g", "t", 0) is None
    m = tc.describe("tx")
    assert m is not None and m.state is TxnState.COMPLETE_ABORT


async def test_invalid_states(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, e = await begin(tc)
    assert await tc.end_txn("tx", pid, e, True) == "invalid_txn_state"  # nothing open
    assert await tc.txn_offset_commit("tx", pid, e, "g", [("t", 0, 1, -1, None)]) == \
        "invalid_txn_state"
    assert await tc.end_txn("nope", pid, e, True) == "invalid_producer_id_mapping"
    await tc.add_partitions("tx", pid, e, [("t", 0)])
    assert await tc.txn_offset_commit("tx", pid, e + 1, "g", []) == "invalid_producer_epoch"


async def test_crash_between_prepare_and_complete_finishes_on_restart(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, e = await begin(tc)
    await tc.add_partitions("tx", pid, e, ALL_T)
    await tc.add_offsets("tx", pid, e, "g")
    await tc.txn_offset_commit("tx", pid, e, "g", [("t", 1, 5, -1, None)])
    env.refuse_markers = True
    assert await tc.end_txn("tx", pid, e, True) is None  # decided: PrepareCommit is durable
    m = tc.describe("tx")
    assert m is not None and m.state is TxnState.PREPARE_COMMIT
    assert await tc.add_partitions("tx", pid, e, [("t", 0)]) == "concurrent_transactions"
    assert (await tc.init_producer_id("tx", TIMEOUT)).error == "concurrent_transactions"
    assert env.offset("g", "t", 1) is None
    env.refuse_markers = False
    tc = await env.restart()
    m = tc.describe("tx")
    assert m is not None and m.state is TxnState.COMPLETE_COMMIT
    assert sorted(env.markers) == [("t", i, pid, e, True) for i in range(3)]
    assert env.offset("g", "t", 1) == 5


async def test_tick_retries_a_stuck_completion(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, e = await begin(tc)
    await tc.add_partitions("tx", pid, e, [("t", 0)])
    env.refuse_markers = True
    assert await tc.end_txn("tx", pid, e, False) is None
    await tc.tick()
    m = tc.describe("tx")
    assert m is not None and m.state is TxnState.PREPARE_ABORT
    env.refuse_markers = False
    await tc.tick()
    m = tc.describe("tx")
    assert m is not None and m.state is TxnState.COMPLETE_ABORT


async def test_timeout_aborts_only_expired_transactions(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    pid, e = await begin(tc, "old")
    await tc.add_partitions("old", pid, e, [("t", 0)])
    env.clock.advance(TIMEOUT // 2)
    pid2, e2 = await begin(tc, "young")
    await tc.add_partitions("young", pid2, e2, [("t", 1)])
    env.clock.advance(TIMEOUT // 2 + 1)
    await tc.tick()
    states = {m.transactional_id: m.state for m in tc.all()}
    assert states == {"old": TxnState.COMPLETE_ABORT, "young": TxnState.ONGOING}
    assert await tc.add_partitions("old", pid, e, [("t", 0)]) == "producer_fenced"


async def test_idle_ids_expire(env: Env) -> None:
    tc = env.txns
    assert tc is not None
    await begin(tc, "a")
    pid, e = await begin(tc, "b")
    await tc.add_partitions("b", pid, e, [("t", 0)])
    env.clock.advance(EXPIRY + 1)
    await tc.end_txn("b", pid, e, False)  # timed out anyway; abort it now
    await tc.tick()
    assert [m.transactional_id for m in tc.all()] == ["b"]
    tc = await env.restart()
    assert [m.transactional_id for m in tc.all()] == ["b"]


# -- the API handlers -------------------------------------------------------------------

NAMES = {22: "InitProducerIdRequest", 24: "AddPartitionsToTxnRequest",
         25: "AddOffsetsToTxnRequest", 26: "EndTxnRequest", 28: "TxnOffsetCommitRequest",
         65: "DescribeTransactionsRequest", 66: "ListTransactionsRequest"}


def req(api_key: int, version: int, **kwargs: Any) -> tuple[RequestHeader, Any]:
    mod = load_payload_module(api_key, version, EntityType.request)
    return RequestHeader(api_key, version, 1, "test"), getattr(mod, NAMES[api_key])(**kwargs)


def ctx_of(env: Env) -> Context:
    assert env.groups is not None and env.txns is not None
    return Context(BrokerInfo(1, "localhost", 9092), env.groups.topics, env.groups,
                   transactions=env.txns)


@pytest.mark.parametrize("version", range(6))
async def test_init_producer_id_handler(env: Env, version: int) -> None:
    ctx = ctx_of(env)
    h, r = req(22, version, transactional_id="tx", transaction_timeout=timedelta(seconds=60))
    first = await api.handle_init_producer_id(ctx, h, r)
    again = await api.handle_init_producer_id(ctx, h, r)
    assert first.error_code == again.error_code == ErrorCode.none
    assert (again.producer_id, again.producer_epoch) == (first.producer_id, 1)
    h, r = req(22, version, transactional_id=None, transaction_timeout=timedelta(0))
    assert (await api.handle_init_producer_id(ctx, h, r)).producer_epoch == 0


async def test_add_partitions_handler_v3_and_v4(env: Env) -> None:
    ctx = ctx_of(env)
    assert env.txns is not None
    pid, e = await begin(env.txns)
    mod = load_payload_module(24, 3, EntityType.request)
    h, r = req(24, 3, v3_and_below_transactional_id="tx", v3_and_below_producer_id=pid,
               v3_and_below_producer_epoch=e, v3_and_below_topics=(
                   mod.AddPartitionsToTxnTopic(name="t", partitions=(0, 5)),))
    res = await api.handle_add_partitions_to_txn(ctx, h, r)
    codes = [p.partition_error_code for p in res.results_by_topic_v3_and_below[0]
             .results_by_partition]
    assert codes == [ErrorCode.operation_not_attempted, ErrorCode.unknown_topic_or_partition]
    h, r = req(24, 1, v3_and_below_transactional_id="tx", v3_and_below_producer_id=pid,
               v3_and_below_producer_epoch=e + 1, v3_and_below_topics=(
                   load_payload_module(24, 1, EntityType.request)
                   .AddPartitionsToTxnTopic(name="t", partitions=(0,)),))
    res = await api.handle_add_partitions_to_txn(ctx, h, r)
    assert res.results_by_topic_v3_and_below[0].results_by_partition[0] \
        .partition_error_code == ErrorCode.invalid_producer_epoch  # KIP-588: old clients
    mod = load_payload_module(24, 4, EntityType.request)
    topic = mod.AddPartitionsToTxnTopic(name="t", partitions=(1,))
    for verify_only, want in ((True, ErrorCode.invalid_txn_state), (False, ErrorCode.none),
                              (True, ErrorCode.none)):
        h, r = req(24, 4, transactions=(mod.AddPartitionsToTxnTransaction(
            transactional_id="tx", producer_id=pid, producer_epoch=e, verify_only=verify_only,
            topics=(topic,)),))
        res = await api.handle_add_partitions_to_txn(ctx, h, r)
        got = res.results_by_transaction[0].topic_results[0].results_by_partition[0]
        assert got.partition_error_code == want


async def test_offsets_end_describe_list_handlers(env: Env) -> None:
    ctx = ctx_of(env)
    assert env.txns is not None
    pid, e = await begin(env.txns)
    await env.txns.add_partitions("tx", pid, e, [("t", 0)])
    h, r = req(25, 3, transactional_id="tx", producer_id=pid, producer_epoch=e, group_id="g")
    assert (await api.handle_add_offsets_to_txn(ctx, h, r)).error_code == ErrorCode.none
    mod = load_payload_module(28, 3, EntityType.request)
    h, r = req(28, 3, transactional_id="tx", group_id="g", producer_id=pid, producer_epoch=e,
               generation_id=-1, member_id="", group_instance_id=None, topics=(
                   mod.TxnOffsetCommitRequestTopic(name="t", partitions=(
                       mod.TxnOffsetCommitRequestPartition(
                           partition_index=0, committed_offset=7, committed_leader_epoch=-1,
                           committed_metadata=None),)),))
    res = await api.handle_txn_offset_commit(ctx, h, r)
    assert res.topics[0].partitions[0].error_code == ErrorCode.none
    h, r = req(65, 0, transactional_ids=("tx", "nope"))
    res = await api.handle_describe_transactions(ctx, h, r)
    ok, missing = res.transaction_states
    assert (ok.transaction_state, ok.producer_id, ok.topics[0].partitions) == \
        ("Ongoing", pid, (0,))
    assert missing.error_code == ErrorCode.transactional_id_not_found
    h, r = req(66, 2, state_filters=("Ongoing", "Bogus"), producer_id_filters=(),
               duration_filter=-1, transactional_id_pattern="t.")
    res = await api.handle_list_transactions(ctx, h, r)
    assert [s.transactional_id for s in res.transaction_states] == ["tx"]
    assert res.unknown_state_filters == ("Bogus",)
    h, r = req(26, 3, transactional_id="tx", producer_id=pid, producer_epoch=e, committed=True)
    assert (await api.handle_end_txn(ctx, h, r)).error_code == ErrorCode.none
    assert env.offset("g", "t", 0) == 7
    h, r = req(66, 0, state_filters=("Ongoing",), producer_id_filters=())
    assert (await api.handle_list_transactions(ctx, h, r)).transaction_states == ()
