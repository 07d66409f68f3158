"""Partition administration: CreatePartitions, DeleteRecords, DescribeLogDirs,
OffsetForLeaderEpoch, DescribeProducers and ElectLeaders.

One copy per partition (in shared storage) shapes the answers: a replica assignment can
only name this broker, there is never a leader to elect (Kafka's ELECTION_NOT_NEEDED),
and the one "log dir" is the object store, whose bytes per partition DescribeLogDirs
reports (objects plus what waits in the WAL).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kio.schema.errors import ErrorCode

from tidelog.api.acl_model import CLUSTER_NAME, Operation, ResourceType
from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.api.zone_routing import ask_owner, proxied_owner, unreachable
from tidelog.partition.leader_epochs import end_offset_for_epoch
from tidelog.partition.partition import Partition, PartitionError
from tidelog.partition.topics import TopicError
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
DELETE_RECORDS, OFFSET_FOR_LEADER_EPOCH, DESCRIBE_LOG_DIRS = 21, 23, 35
CREATE_PARTITIONS, ELECT_LEADERS, DESCRIBE_PRODUCERS = 37, 43, 61
ALTER_PARTITION_REASSIGNMENTS, LIST_PARTITION_REASSIGNMENTS = 45, 46


# ---- CreatePartitions ---------------------------------------------------------------------


def _check_assignments(ctx: Context, t: Any, current: int) -> None:
    if t.assignments is None:
        return
    if len(t.assignments) != t.count - current:
        raise TopicError("invalid_replica_assignment", (
            f"increasing the number of partitions by {t.count - current} but "
            f"{len(t.assignments)} assignments provided"))
    for a in t.assignments:
        if len(a.broker_ids) != 1:
            raise TopicError("invalid_replica_assignment",
                             "inconsistent replication factor: partitions have one copy")
        if a.broker_ids[0] != ctx.broker.node_id:
            raise TopicError("invalid_replica_assignment",
                             f"unknown broker(s) in replica assignment: {list(a.broker_ids)}")


async def handle_create_partitions(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(CREATE_PARTITIONS, header.api_version)
    names = [t.name for t in req.topics]
    results = []
    for t in req.topics:
        code, msg = NONE, None
        try:
            if names.count(t.name) > 1:
                raise TopicError("invalid_request", "duplicate topic in request")
            if not ctx.allowed(header, Operation.ALTER, ResourceType.TOPIC, t.name):
                raise TopicError("topic_authorization_failed",
                                 f"ALTER on topic {t.name!r} is not allowed")
            topic = ctx.topics.get(t.name)
            if topic is None:
                raise TopicError("unknown_topic_or_partition",
                                 f"topic {t.name!r} does not exist")
            if t.count > topic.count:
                _check_assignments(ctx, t, topic.count)
            await ctx.topics.add_partitions(t.name, t.count, req.validate_only)
        except TopicError as exc:
            code, msg = error(exc.code), str(exc)
            log.info("CreatePartitions %s: %s", t.name, exc)
        results.append(make(mod.CreatePartitionsTopicResult, name=t.name, error_code=code,
                            error_message=msg))
    return make(mod.CreatePartitionsResponse, throttle_time=timedelta(0),
                results=tuple(results))


# ---- DeleteRecords ------------------------------------------------------------------------


async def _delete(ctx: Context, name: str, index: int, offset: int) -> tuple[ErrorCode, int]:
    topic = ctx.topics.get(name)
    p = ctx.topics.partition(name, index)
    if topic is None or p is None:
        return error(ctx.topics.missing(name, index)), -1
    if topic.internal:
        return error("invalid_topic_exception"), -1
    try:
        return NONE, await p.delete_records(offset)
    except PartitionError as exc:
        log.info("DeleteRecords %s-%d at %d: %s", name, index, offset, exc)
        return error(exc.code), -1


async def _refused(code: str) -> tuple[ErrorCode, int]:
    return error(code), -1


async def _owner_delete(ctx: Context, owner: int, req: Any, t: Any, p: Any
                        ) -> tuple[ErrorCode, int]:
    """The owner's answer, for a partition this broker stands in for (zone routing)."""
    got = await ask_owner(ctx, owner, req, t, p)
    return (unreachable(), -1) if got is None else (ErrorCode(got.error_code),
                                                      got.low_watermark)


async def handle_delete_records(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DELETE_RECORDS, header.api_version)
    jobs = []
    for t in req.topics:
        allowed = ctx.allowed(header, Operation.DELETE, ResourceType.TOPIC, t.name)
        for p in t.partitions:
            owner = proxied_owner(ctx, header, t.name, p.partition_index) if allowed else None
            jobs.append((t.name, p.partition_index,
                         _refused("topic_authorization_failed") if not allowed else
                         _delete(ctx, t.name, p.partition_index, p.offset) if owner is None
                         else _owner_delete(ctx, owner, req, t, p)))
    done = await asyncio.gather(*(j[2] for j in jobs))
    by_topic: dict[str, list[Any]] = {}
    for (name, index, _), (code, low) in zip(jobs, done, strict=True):
        by_topic.setdefault(name, []).append(make(
            mod.DeleteRecordsPartitionResult, partition_index=index, low_watermark=low,
            error_code=code))
    return make(mod.DeleteRecordsResponse, throttle_time=timedelta(0), topics=tuple(
        make(mod.DeleteRecordsTopicResult, name=n, partitions=tuple(ps))
        for n, ps in by_topic.items()))


# ---- DescribeLogDirs ----------------------------------------------------------------------


def log_dir(ctx: Context) -> str:
    """The object store's URI without its query (which may carry credentials)."""
    uri = ctx.topics.static_configs.get("objectstore.uri", "")
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


async def handle_describe_log_dirs(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DESCRIBE_LOG_DIRS, header.api_version)
    if req.topics is None:
        wanted = [(t, sorted(t.owned)) for t in ctx.topics.topics.values()]
    else:
        wanted = []
        for d in req.topics:
            topic = ctx.topics.get(d.topic)
            if topic is not None:
                wanted.append((topic, [i for i in d.partitions if i in topic.owned]))
    topics = tuple(
        make(mod.DescribeLogDirsTopic, name=t.name, partitions=tuple(
            make(mod.DescribeLogDirsPartition, partition_index=i,
                 partition_size=t.owned[i].stream.size_bytes, offset_lag=0,
                 is_future_key=False) for i in indexes))
        for t, indexes in wanted)
    result = make(mod.DescribeLogDirsResult, error_code=NONE, log_dir=log_dir(ctx),
                  topics=topics, total_bytes=-1, usable_bytes=-1, is_cordoned=False)
    return make(mod.DescribeLogDirsResponse, throttle_time=timedelta(0), error_code=NONE,
                results=(result,))


# ---- OffsetForLeaderEpoch -----------------------------------------------------------------


async def _epoch_end(ctx: Context, name: str, index: int, current: int,
                     epoch: int) -> tuple[ErrorCode, int, int]:
    p = ctx.topics.partition(name, index)
    if p is None:
        return error(ctx.topics.missing(name, index)), -1, -1
    if current >= 0 and current != p.leader_epoch:
        code = "fenced_leader_epoch" if current < p.leader_epoch else "unknown_leader_epoch"
        return error(code), -1, -1
    found_epoch, end = await end_offset_for_epoch(p, epoch)
    return NONE, found_epoch, end


async def _owner_epoch_end(ctx: Context, owner: int, req: Any, t: Any, p: Any
                           ) -> tuple[ErrorCode, int, int]:
    """What the owner answers, for a partition this broker stands in for (zone routing)."""
    got = await ask_owner(ctx, owner, req, t, p)
    if got is None:
        return unreachable(), -1, -1
    return ErrorCode(got.error_code), got.leader_epoch, got.end_offset


async def handle_offset_for_leader_epoch(ctx: Context, header: RequestHeader,
                                         req: Any) -> Any:
    mod = response_module(OFFSET_FOR_LEADER_EPOCH, header.api_version)
    jobs: list[tuple[str, int, Awaitable[tuple[ErrorCode, int, int]]]] = []
    for t in req.topics:
        for p in t.partitions:
            owner = proxied_owner(ctx, header, t.topic, p.partition)
            jobs.append((t.topic, p.partition, _epoch_end(
                ctx, t.topic, p.partition, p.current_leader_epoch, p.leader_epoch)
                if owner is None else _owner_epoch_end(ctx, owner, req, t, p)))
    done = await asyncio.gather(*(j[2] for j in jobs))
    by_topic: dict[str, list[Any]] = {}
    for (name, index, _), (code, epoch, end) in zip(jobs, done, strict=True):
        by_topic.setdefault(name, []).append(make(
            mod.EpochEndOffset, error_code=code, partition=index, leader_epoch=epoch,
            end_offset=end))
    return make(mod.OffsetForLeaderEpochResponse, throttle_time=timedelta(0), topics=tuple(
        make(mod.OffsetForLeaderTopicResult, topic=n, partitions=tuple(ps))
        for n, ps in by_topic.items()))


# ---- DescribeProducers --------------------------------------------------------------------


def _producers(mod: Any, p: Partition) -> tuple[Any, ...]:
    out = []
    for pid, e in sorted(p.producers.producers.items()):
        out.append(make(mod.ProducerState, producer_id=pid, producer_epoch=e.epoch,
                        last_sequence=e.batches[-1][1] if e.batches else -1,
                        last_timestamp=e.last_timestamp, coordinator_epoch=e.coordinator_epoch,
                        current_txn_start_offset=e.txn_first))
    return tuple(out)


async def handle_describe_producers(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DESCRIBE_PRODUCERS, header.api_version)
    topics = []
    for t in req.topics:
        parts = []
        for i in t.partition_indexes:
            p = ctx.topics.partition(t.name, i)
            owner = proxied_owner(ctx, header, t.name, i) if p is None else None
            if owner is not None:
                got = await ask_owner(ctx, owner, req, t, i, field="partition_indexes")
                parts.append(got if got is not None else make(
                    mod.PartitionResponse, partition_index=i, error_code=unreachable(),
                    error_message=f"broker {owner} did not answer", active_producers=()))
                continue
            if p is None:
                parts.append(make(mod.PartitionResponse, partition_index=i,
                                  error_code=error(ctx.topics.missing(t.name, i)),
                                  error_message=f"{t.name}-{i} does not exist",
                                  active_producers=()))
                continue
            parts.append(make(mod.PartitionResponse, partition_index=i, error_code=NONE,
                              error_message=None, active_producers=_producers(mod, p)))
        topics.append(make(mod.TopicResponse, name=t.name, partitions=tuple(parts)))
    return make(mod.DescribeProducersResponse, throttle_time=timedelta(0),
                topics=tuple(topics))


# ---- ElectLeaders -------------------------------------------------------------------------


async def handle_elect_leaders(ctx: Context, header: RequestHeader, req: Any) -> Any:
    """Every partition already has its only possible leader: Kafka answers
    ELECTION_NOT_NEEDED for a named partition and omits it when asked for all."""
    mod = response_module(ELECT_LEADERS, header.api_version)
    results = []
    if getattr(req, "election_type", 0) not in (0, 1):
        return make(mod.ElectLeadersResponse, throttle_time=timedelta(0),
                    error_code=error("invalid_request"), replica_election_results=())
    for t in req.topic_partitions or ():
        parts = []
        for i in t.partitions:
            known = ctx.topics.partition(t.topic, i) is not None
            parts.append(make(
                mod.PartitionResult, partition_id=i,
                error_code=error("election_not_needed" if known else
                                 "unknown_topic_or_partition"),
                error_message=("leader election not needed: one copy" if known else
                               f"{t.topic}-{i} does not exist")))
        results.append(make(mod.ReplicaElectionResult, topic=t.topic,
                            partition_result=tuple(parts)))
    return make(mod.ElectLeadersResponse, throttle_time=timedelta(0), error_code=NONE,
                replica_election_results=tuple(results))


# ---- AlterPartitionReassignments / ListPartitionReassignments ------------------------------
# A partition has one copy in shared storage: its "replicas" are its owner, and a
# reassignment to `[node]` moves it there (the owner flushes its tail and hands it over:
# seconds, whatever it holds). Answered at once; ListPartitionReassignments shows the moves
# not done yet, as Kafka shows reassignments in progress.


async def handle_alter_partition_reassignments(ctx: Context, header: RequestHeader,
                                               req: Any) -> Any:
    mod = response_module(ALTER_PARTITION_REASSIGNMENTS, header.api_version)
    if not ctx.allowed(header, Operation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        return make(mod.AlterPartitionReassignmentsResponse, throttle_time=timedelta(0),
                    error_code=error("cluster_authorization_failed"),
                    error_message="ALTER on the cluster is not allowed", responses=())
    live = {b.node_id for b in ctx.live_brokers()}
    topics = []
    for t in req.topics:
        parts = []
        for pt in t.partitions:
            code, msg = NONE, None
            try:
                target: int | None = None
                if pt.replicas is not None:
                    if len(pt.replicas) != 1:
                        raise TopicError("invalid_replica_assignment",
                                         "partitions have one copy (in shared storage): "
                                         "name exactly one broker")
                    target = int(pt.replicas[0])
                    if target not in live:
                        raise TopicError("invalid_replica_assignment",
                                         f"broker {target} is not live")
                if ctx.cluster is None:
                    if target not in (None, ctx.broker.node_id):
                        raise TopicError("invalid_replica_assignment",
                                         f"broker {target} is not live")
                    if ctx.topics.partition(t.name, pt.partition_index) is None:
                        raise TopicError(ctx.topics.missing(t.name, pt.partition_index),
                                         f"{t.name}-{pt.partition_index} does not exist")
                    if target is None:
                        raise TopicError("no_reassignment_in_progress",
                                         "no reassignment is in progress")
                else:
                    await ctx.topics.request_move(t.name, pt.partition_index, target)
            except TopicError as exc:
                code, msg = error(exc.code), str(exc)
                log.info("AlterPartitionReassignments %s-%d: %s", t.name,
                         pt.partition_index, exc)
            parts.append(make(mod.ReassignablePartitionResponse,
                              partition_index=pt.partition_index, error_code=code,
                              error_message=msg))
        topics.append(make(mod.ReassignableTopicResponse, name=t.name,
                           partitions=tuple(parts)))
    return make(mod.AlterPartitionReassignmentsResponse, throttle_time=timedelta(0),
                error_code=NONE, error_message=None, responses=tuple(topics))


async def handle_list_partition_reassignments(ctx: Context, header: RequestHeader,
                                              req: Any) -> Any:
    mod = response_module(LIST_PARTITION_REASSIGNMENTS, header.api_version)
    if not ctx.allowed(header, Operation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return make(mod.ListPartitionReassignmentsResponse, throttle_time=timedelta(0),
                    error_code=error("cluster_authorization_failed"),
                    error_message="DESCRIBE on the cluster is not allowed", topics=())
    wanted: dict[str, set[int] | None] | None = None
    if req.topics is not None:
        wanted = {t.name: set(t.partition_indexes) for t in req.topics}
    by_topic: dict[str, list[Any]] = {}
    for name, topic in sorted(ctx.topics.topics.items()):
        if wanted is not None and name not in wanted:
            continue
        for index, sid in enumerate(topic.streams):
            target = ctx.topics.moves.get(sid)
            chosen = wanted.get(name) if wanted is not None else None
            if target is None or (chosen is not None and index not in chosen):
                continue
            owner = ctx.topics.leader(topic, index)[0]
            removing = (owner,) if owner >= 0 and owner != target else ()
            by_topic.setdefault(name, []).append(make(
                mod.OngoingPartitionReassignment, partition_index=index,
                replicas=(target, *removing), adding_replicas=(target,),
                removing_replicas=removing))
    return make(mod.ListPartitionReassignmentsResponse, throttle_time=timedelta(0),
                error_code=NONE, error_message=None, topics=tuple(
                    make(mod.OngoingTopicReassignment, name=n, partitions=tuple(ps))
                    for n, ps in by_topic.items()))


APIS = [
    Api(DELETE_RECORDS, 0, 2, handle_delete_records),
    Api(OFFSET_FOR_LEADER_EPOCH, 2, 4, handle_offset_for_leader_epoch),
    Api(DESCRIBE_LOG_DIRS, 1, 4, handle_describe_log_dirs),
    Api(CREATE_PARTITIONS, 0, 3, handle_create_partitions),
    Api(ELECT_LEADERS, 0, 2, handle_elect_leaders),
    Api(DESCRIBE_PRODUCERS, 0, 0, handle_describe_producers),
    Api(ALTER_PARTITION_REASSIGNMENTS, 0, 0, handle_alter_partition_reassignments),
    Api(LIST_PARTITION_REASSIGNMENTS, 0, 0, handle_list_partition_reassignments),
]
