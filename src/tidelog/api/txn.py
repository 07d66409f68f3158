"""Transaction APIs: InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn,
TxnOffsetCommit, DescribeTransactions, ListTransactions.

The logic lives in `coordinator.transactions`; these handlers check topics and group
membership, call it and translate its error names. KIP-588: PRODUCER_FENCED goes to clients
that know it (InitProducerId v4+, AddPartitionsToTxn/AddOffsetsToTxn/EndTxn v2+); older
versions get INVALID_PRODUCER_EPOCH. EndTxn stops at v4 and InitProducerId at v5: EndTxn v5
(KIP-890 transactions v2) bumps the epoch on every transaction, InitProducerId v6 (KIP-939)
keeps prepared transactions; neither is offered, so clients use the versions served here.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from kio.schema.errors import ErrorCode

from tidelog.api.acl_model import Operation, ResourceType
from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.coordinator.offsets import CommitEntry
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
INIT_PRODUCER_ID, ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN = 22, 24, 25, 26
TXN_OFFSET_COMMIT, DESCRIBE_TRANSACTIONS, LIST_TRANSACTIONS = 28, 65, 66
ZERO = timedelta(0)
MAX_METADATA_BYTES = 4096  # Kafka's offset.metadata.max.bytes default
UNAVAILABLE = "coordinator_not_available"

PartitionCodes = list[tuple[str, list[tuple[int, ErrorCode]]]]


def _code(name: str | None, version: int = 99, fenced_since: int = 0) -> ErrorCode:
    """An error name as a code; PRODUCER_FENCED becomes INVALID_PRODUCER_EPOCH below
    `fenced_since`."""
    if name is None:
        return NONE
    if name == "producer_fenced" and version < fenced_since:
        name = "invalid_producer_epoch"
    return error(name)


TXN_DENIED = "transactional_id_authorization_failed"


def _may_write_txn(ctx: Context, header: RequestHeader, tid: str | None) -> bool:
    return tid is None or ctx.allowed(header, Operation.WRITE, ResourceType.TRANSACTIONAL_ID,
                                      tid)


def _may_read_group(ctx: Context, header: RequestHeader, group_id: str) -> bool:
    return ctx.allowed(header, Operation.READ, ResourceType.GROUP, group_id)


def _ms(value: timedelta) -> int:
    return int(value / timedelta(milliseconds=1))


async def handle_init_producer_id(ctx: Context, header: RequestHeader, req: Any) -> Any:
    v = header.api_version
    mod = response_module(INIT_PRODUCER_ID, v)
    err: str | None = UNAVAILABLE
    pid, epoch = -1, -1
    if not _may_write_txn(ctx, header, req.transactional_id):
        err = TXN_DENIED
    elif ctx.transactions is not None:
        res = await ctx.transactions.init_producer_id(
            req.transactional_id, _ms(req.transaction_timeout),
            getattr(req, "producer_id", -1), getattr(req, "producer_epoch", -1))
        err, pid, epoch = res.error, res.producer_id, res.producer_epoch
    return make(mod.InitProducerIdResponse, throttle_time=ZERO,
                error_code=_code(err, v, fenced_since=4), producer_id=pid,
                producer_epoch=epoch)


async def _add_partitions(ctx: Context, header: RequestHeader, tid: str, pid: int,
                          epoch: int, topics: Any, verify_only: bool = False
                          ) -> PartitionCodes:
    """Every requested partition with its code: unknown or unwritable ones fail, the
    others then get OPERATION_NOT_ATTEMPTED (Kafka's all-or-nothing)."""
    version = header.api_version
    wanted = [(t.name, list(t.partitions)) for t in topics]
    if not _may_write_txn(ctx, header, tid):
        return [(name, [(p, error(TXN_DENIED)) for p in parts]) for name, parts in wanted]
    denied = {name for name, _ in wanted
              if not ctx.allowed(header, Operation.WRITE, ResourceType.TOPIC, name)}
    unknown = {(name, p) for name, parts in wanted for p in parts
               if name not in denied and not ctx.topics.exists(name, p)}
    if unknown or denied:
        return [(name, [(p, error("topic_authorization_failed" if name in denied else
                                  "unknown_topic_or_partition" if (name, p) in unknown
                                  else "operation_not_attempted")) for p in parts])
                for name, parts in wanted]
    txns = ctx.transactions
    flat = [(name, p) for name, parts in wanted for p in parts]
    if txns is None:
        err: str | None = UNAVAILABLE
    elif verify_only:
        m = txns.describe(tid)
        ok = m is not None and m.producer_id == pid and m.producer_epoch == epoch
        return [(name, [(p, NONE if ok and m is not None and (name, p) in m.partitions
                         else error("invalid_txn_state")) for p in parts])
                for name, parts in wanted]
    else:
        err = await txns.add_partitions(tid, pid, epoch, flat)
    code = _code(err, version, fenced_since=2)
    return [(name, [(p, code) for p in parts]) for name, parts in wanted]


async def handle_add_partitions_to_txn(ctx: Context, header: RequestHeader, req: Any) -> Any:
    v = header.api_version
    mod = response_module(ADD_PARTITIONS_TO_TXN, v)

    def results(codes: PartitionCodes) -> tuple[Any, ...]:
        return tuple(make(mod.AddPartitionsToTxnTopicResult, name=name, results_by_partition=tuple(
            make(mod.AddPartitionsToTxnPartitionResult, partition_index=p,
                 partition_error_code=c) for p, c in parts)) for name, parts in codes)

    if v <= 3:
        codes = await _add_partitions(ctx, header, req.v3_and_below_transactional_id,
                                      req.v3_and_below_producer_id,
                                      req.v3_and_below_producer_epoch, req.v3_and_below_topics)
        return make(mod.AddPartitionsToTxnResponse, throttle_time=ZERO,
                    results_by_topic_v3_and_below=results(codes))
    out = []
    for t in req.transactions:
        codes = await _add_partitions(ctx, header, t.transactional_id, t.producer_id,
                                      t.producer_epoch, t.topics, t.verify_only)
        out.append(make(mod.AddPartitionsToTxnResult, transactional_id=t.transactional_id,
                        topic_results=results(codes)))
    return make(mod.AddPartitionsToTxnResponse, throttle_time=ZERO, error_code=NONE,
                results_by_transaction=tuple(out))


async def handle_add_offsets_to_txn(ctx: Context, header: RequestHeader, req: Any) -> Any:
    v = header.api_version
    mod = response_module(ADD_OFFSETS_TO_TXN, v)
    err: str | None = UNAVAILABLE
    if not req.group_id:
        err = "invalid_group_id"
    elif not _may_write_txn(ctx, header, req.transactional_id):
        err = TXN_DENIED
    elif not _may_read_group(ctx, header, req.group_id):
        err = "group_authorization_failed"
    elif ctx.transactions is not None:
        err = await ctx.transactions.add_offsets(req.transactional_id, req.producer_id,
                                                 req.producer_epoch, req.group_id)
    return make(mod.AddOffsetsToTxnResponse, throttle_time=ZERO,
                error_code=_code(err, v, fenced_since=2))


async def handle_end_txn(ctx: Context, header: RequestHeader, req: Any) -> Any:
    v = header.api_version
    mod = response_module(END_TXN, v)
    err: str | None = UNAVAILABLE
    if not _may_write_txn(ctx, header, req.transactional_id):
        err = TXN_DENIED
    elif ctx.transactions is not None:
        err = await ctx.transactions.end_txn(req.transactional_id, req.producer_id,
                                             req.producer_epoch, req.committed)
    return make(mod.EndTxnResponse, throttle_time=ZERO, error_code=_code(err, v, fenced_since=2))


def _member_error(ctx: Context, req: Any) -> str | None:
    """TxnOffsetCommit v3+ names the consumer's member and generation (KIP-447): a stale
    member must not commit. -1 (or an older version) skips the check."""
    generation = getattr(req, "generation_id", -1)
    if generation < 0:
        return None
    coord = ctx.coordinator
    kind = coord.group_kind(req.group_id)
    if kind == "classic":
        return coord.classic.validate_commit(req.group_id, req.member_id, generation,
                                             getattr(req, "group_instance_id", None))
    if kind == "consumer":
        return coord.consumer.validate_commit(req.group_id, req.member_id, generation)
    return "illegal_generation"


async def handle_txn_offset_commit(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(TXN_OFFSET_COMMIT, header.api_version)
    failed: str | None = None
    if not req.group_id:
        failed = "invalid_group_id"
    elif not _may_write_txn(ctx, header, req.transactional_id):
        failed = TXN_DENIED
    elif not _may_read_group(ctx, header, req.group_id):
        failed = "group_authorization_failed"
    elif ctx.transactions is None:
        failed = UNAVAILABLE
    else:
        failed = _member_error(ctx, req)
    failed = failed.lower() if failed is not None else None
    codes: list[tuple[str, list[list[Any]]]] = []
    entries: list[CommitEntry] = []
    pending: list[list[Any]] = []
    for t in req.topics:
        parts: list[list[Any]] = []
        for p in t.partitions:
            code: str | None = failed
            meta = p.committed_metadata
            if code is None and not ctx.topics.exists(t.name, p.partition_index):
                code = "unknown_topic_or_partition"
            elif code is None and meta is not None and len(meta.encode()) > MAX_METADATA_BYTES:
                code = "offset_metadata_too_large"
            parts.append([p.partition_index, code])
            if code is None:
                entries.append((t.name, p.partition_index, p.committed_offset,
                                getattr(p, "committed_leader_epoch", -1), meta))
                pending.append(parts[-1])
        codes.append((t.name, parts))
    if entries and ctx.transactions is not None and ctx.cluster is not None \
            and not ctx.transactions.owns(req.transactional_id):
        # the transaction is coordinated on another broker: hold the offsets here until
        # its coordinator's marker for the group's __consumer_offsets partition arrives
        try:
            await ctx.coordinator.offsets.stage(req.group_id, req.producer_id, entries)
            err = None
        except Exception as exc:
            log.warning("staging transactional offsets of %s failed: %r", req.group_id, exc)
            err = "coordinator_not_available"
        for part in pending:
            part[1] = err
    elif entries and ctx.transactions is not None:
        err = await ctx.transactions.txn_offset_commit(
            req.transactional_id, req.producer_id, req.producer_epoch, req.group_id, entries)
        for part in pending:
            part[1] = err
    topics = tuple(make(mod.TxnOffsetCommitResponseTopic, name=name, partitions=tuple(
        make(mod.TxnOffsetCommitResponsePartition, partition_index=i, error_code=_code(c))
        for i, c in parts)) for name, parts in codes)
    return make(mod.TxnOffsetCommitResponse, throttle_time=ZERO, topics=topics)


async def handle_describe_transactions(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DESCRIBE_TRANSACTIONS, header.api_version)
    out = []
    for tid in req.transactional_ids:
        m = ctx.transactions.describe(tid) if ctx.transactions is not None else None
        if m is None:
            out.append(make(mod.TransactionState, error_code=error(
                "transactional_id_not_found" if ctx.transactions else UNAVAILABLE),
                transactional_id=tid, transaction_state="", transaction_timeout=ZERO,
                transaction_start_time=datetime.fromtimestamp(-0.001, UTC),
                producer_id=-1, producer_epoch=-1, topics=()))
            continue
        by_topic: dict[str, list[int]] = {}
        for topic, p in sorted(m.partitions):
            by_topic.setdefault(topic, []).append(p)
        out.append(make(mod.TransactionState, error_code=NONE, transactional_id=tid,
                        transaction_state=m.state.value,
                        transaction_timeout=timedelta(milliseconds=m.timeout_ms),
                        transaction_start_time=datetime.fromtimestamp(m.start_ms / 1000, UTC),
                        producer_id=m.producer_id, producer_epoch=m.producer_epoch,
                        topics=tuple(make(mod.TopicData, topic=t, partitions=tuple(ps))
                                     for t, ps in by_topic.items())))
    return make(mod.DescribeTransactionsResponse, throttle_time=ZERO,
                transaction_states=tuple(out))


STATES = ("Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit",
          "CompleteAbort", "Dead", "PrepareEpochFence")


async def handle_list_transactions(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(LIST_TRANSACTIONS, header.api_version)

    def answer(code: ErrorCode, states: tuple[Any, ...] = (),
               unknown: tuple[str, ...] = ()) -> Any:
        return make(mod.ListTransactionsResponse, throttle_time=ZERO, error_code=code,
                    unknown_state_filters=unknown, transaction_states=states)

    if ctx.transactions is None:
        return answer(error(UNAVAILABLE))
    pattern = getattr(req, "transactional_id_pattern", None)
    try:
        regex = re.compile(pattern) if pattern else None
    except re.error:
        return answer(error("invalid_regular_expression"))
    states = set(req.state_filters)
    pids = set(req.producer_id_filters)
    duration = getattr(req, "duration_filter", -1)
    now = ctx.transactions.now_ms()
    out = []
    for m in ctx.transactions.all():
        if states and m.state.value not in states:
            continue
        if pids and m.producer_id not in pids:
            continue
        if duration >= 0 and now - m.start_ms < duration:
            continue
        if regex is not None and not regex.fullmatch(m.transactional_id):
            continue
        out.append(make(mod.TransactionState, transactional_id=m.transactional_id,
                        producer_id=m.producer_id, transaction_state=m.state.value))
    return answer(NONE, tuple(out), tuple(s for s in req.state_filters if s not in STATES))


APIS = [
    Api(INIT_PRODUCER_ID, 0, 5, handle_init_producer_id),
    Api(ADD_PARTITIONS_TO_TXN, 0, 5, handle_add_partitions_to_txn),
    Api(ADD_OFFSETS_TO_TXN, 0, 4, handle_add_offsets_to_txn),
    Api(END_TXN, 0, 4, handle_end_txn),
    Api(TXN_OFFSET_COMMIT, 0, 5, handle_txn_offset_commit),
    Api(DESCRIBE_TRANSACTIONS, 0, 0, handle_describe_transactions),
    Api(LIST_TRANSACTIONS, 0, 2, handle_list_transactions),
]
