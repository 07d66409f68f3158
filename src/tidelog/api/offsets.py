"""OffsetCommit, OffsetFetch and OffsetDelete: committed offsets of consumer groups.

Membership is checked by the protocol that owns the group (classic or KIP-848); a group
with no active members takes commits only without a generation (-1), as Kafka lets
assign-only consumers and admin tools keep "simple" group offsets. The offsets themselves
live in `coordinator.offsets.OffsetStore` (one durable state-log write per commit).
A group coordinated by another broker is answered NOT_COORDINATOR (after the authorization
check), so the client finds its coordinator again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from kio.schema.errors import ErrorCode

from tidelog.api.acl_model import Operation, ResourceType
from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.coordinator.offsets import CommitEntry
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
OFFSET_COMMIT, OFFSET_FETCH, OFFSET_DELETE = 8, 9, 47
MAX_METADATA_BYTES = 4096  # Kafka's offset.metadata.max.bytes default


def _code(name: str | None) -> ErrorCode | None:
    """A coordinator's error name as a Kafka error code (names are case-insensitive)."""
    if name is None:
        return None
    try:
        return error(name.lower())
    except KeyError:
        log.error("unknown error name %r from a group coordinator", name)
        return error("unknown_server_error")


def _may(ctx: Context, header: RequestHeader, op: Operation, rtype: ResourceType,
         name: str) -> bool:
    return ctx.allowed(header, op, rtype, name)


def _group_refused(ctx: Context, header: RequestHeader, op: Operation,
                   group_id: str) -> ErrorCode | None:
    """The group-level refusal of a request (None: served here): invalid id, then
    authorization (an unauthorized client learns nothing more), then coordination."""
    if not group_id:
        return error("invalid_group_id")
    if not _may(ctx, header, op, ResourceType.GROUP, group_id):
        return error("group_authorization_failed")
    if not ctx.coordinator.owns(group_id):
        return error("not_coordinator")
    return None


def _commit_error(ctx: Context, header: RequestHeader, req: Any) -> ErrorCode | None:
    """The request-level error of an OffsetCommit, None when it may commit."""
    group_id, generation = req.group_id, req.generation_id_or_member_epoch
    version = header.api_version
    refused = _group_refused(ctx, header, Operation.READ, group_id)
    if refused is not None:
        return refused
    coord = ctx.coordinator
    kind = coord.group_kind(group_id)
    if kind == "classic":
        return _code(coord.classic.validate_commit(
            group_id, req.member_id, generation, getattr(req, "group_instance_id", None)))
    if kind == "consumer":
        return _code(coord.consumer.validate_commit(group_id, req.member_id, generation))
    if generation < 0:
        return None  # a simple group: assign-only consumers, admin tools
    # No group to be a member of: Kafka answers GROUP_ID_NOT_FOUND from v9 and
    # ILLEGAL_GENERATION before (both make a client rejoin).
    return error("group_id_not_found" if version >= 9 else "illegal_generation")


async def handle_offset_commit(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(OFFSET_COMMIT, header.api_version)
    failed = _commit_error(ctx, header, req)
    codes: list[tuple[str, list[list[Any]]]] = []  # (topic, [[partition, code]])
    entries: list[CommitEntry] = []
    pending: list[list[Any]] = []
    for t in req.topics:
        parts: list[list[Any]] = []
        topic_failed = failed
        if failed is None and not _may(ctx, header, Operation.READ, ResourceType.TOPIC, t.name):
            topic_failed = error("topic_authorization_failed")
        for p in t.partitions:
            code = topic_failed
            if code is None:
                meta = p.committed_metadata
                if not ctx.topics.exists(t.name, p.partition_index):
                    code = error("unknown_topic_or_partition")
                elif meta is not None and len(meta.encode()) > MAX_METADATA_BYTES:
                    code = error("offset_metadata_too_large")
            parts.append([p.partition_index, code])
            if code is None:
                entries.append((t.name, p.partition_index, p.committed_offset,
                                getattr(p, "committed_leader_epoch", -1), p.committed_metadata))
                pending.append(parts[-1])
        codes.append((t.name, parts))
    retention = getattr(req, "retention_time", None)  # v2-v4
    retention_ms = None if retention is None else retention // timedelta(milliseconds=1)
    result = NONE
    try:
        await ctx.coordinator.offsets.commit(req.group_id, entries, retention_ms)
    except Exception:
        # The state log could not take it: Kafka's answer to a failed append is
        # COORDINATOR_NOT_AVAILABLE, which clients retry after finding the coordinator.
        log.exception("OffsetCommit of group %s failed", req.group_id)
        result = error("coordinator_not_available")
    for part in pending:
        part[1] = result
    topics = tuple(make(mod.OffsetCommitResponseTopic, name=name, partitions=tuple(
        make(mod.OffsetCommitResponsePartition, partition_index=i, error_code=code)
        for i, code in parts)) for name, parts in codes)
    return make(mod.OffsetCommitResponse, throttle_time=timedelta(0), topics=topics)


Row = tuple[int, int, int, str, ErrorCode]  # partition, offset, leader epoch, metadata, error


def _fetch_group(ctx: Context, header: RequestHeader, group_id: str,
                 topics: Iterable[Any] | None, member_id: str | None, member_epoch: int,
                 require_stable: bool = False
                 ) -> tuple[ErrorCode, list[tuple[str, list[Row]]]]:
    """(group error, [(topic, [(partition, offset, leader epoch, metadata, error)])]).
    Topics the client may not DESCRIBE are refused by name and left out of "all"."""
    refused = _group_refused(ctx, header, Operation.DESCRIBE, group_id)
    if refused is not None:
        return refused, []
    coord = ctx.coordinator
    if coord.group_kind(group_id) == "consumer" and (member_id is not None or member_epoch >= 0):
        # KIP-848 members fetch with their id and epoch (v9): a stale member must rejoin.
        code = _code(coord.consumer.validate_commit(group_id, member_id or "", member_epoch))
        if code is not None:
            return code, []
    store = coord.offsets
    wanted: list[tuple[str, list[int]]]
    if topics is None:  # every partition the group has an offset for
        by_topic: dict[str, list[int]] = {}
        for topic, partition in store.partitions(group_id):
            if _may(ctx, header, Operation.DESCRIBE, ResourceType.TOPIC, topic):
                by_topic.setdefault(topic, []).append(partition)
        wanted = list(by_topic.items())
    else:
        wanted = [(t.name, list(t.partition_indexes)) for t in topics]
    unstable = (ctx.transactions.pending_offsets(group_id)
                if require_stable and ctx.transactions is not None else set())
    out = []
    for topic, partitions in wanted:
        rows: list[Row] = []
        if not _may(ctx, header, Operation.DESCRIBE, ResourceType.TOPIC, topic):
            out.append((topic, [(i, -1, -1, "", error("topic_authorization_failed"))
                                for i in partitions]))
            continue
        for partition in partitions:
            if (topic, partition) in unstable:
                rows.append((partition, -1, -1, "", error("unstable_offset_commit")))
                continue
            found = store.fetch(group_id, topic, partition)
            offset, epoch, meta = found if found is not None else (-1, -1, "")
            rows.append((partition, offset, epoch, meta, NONE))
        out.append((topic, rows))
    return NONE, out


async def handle_offset_fetch(ctx: Context, header: RequestHeader, req: Any) -> Any:
    version = header.api_version
    mod = response_module(OFFSET_FETCH, version)
    if version >= 8:
        groups = []
        for g in req.groups:
            code, found = _fetch_group(ctx, header, g.group_id, g.topics,
                                       getattr(g, "member_id", None),
                                       getattr(g, "member_epoch", -1), req.require_stable)
            groups.append(make(mod.OffsetFetchResponseGroup, group_id=g.group_id, error_code=code,
                               topics=_fetch_topics(mod.OffsetFetchResponseTopics,
                                                    mod.OffsetFetchResponsePartitions, found)))
        return make(mod.OffsetFetchResponse, throttle_time=timedelta(0), groups=tuple(groups))
    code, found = _fetch_group(ctx, header, req.group_id, req.topics, None, -1,
                               getattr(req, "require_stable", False))
    if code != NONE and version < 2:  # no top-level error yet: every partition carries it
        found = [(t.name, [(i, -1, -1, "", code) for i in t.partition_indexes])
                 for t in req.topics]
    topics = _fetch_topics(mod.OffsetFetchResponseTopic, mod.OffsetFetchResponsePartition,
                           found)
    return make(mod.OffsetFetchResponse, throttle_time=timedelta(0), topics=topics,
                error_code=code)


def _fetch_topics(topic_cls: type, part_cls: type,
                  found: list[tuple[str, list[Row]]]) -> tuple[Any, ...]:
    return tuple(make(topic_cls, name=topic, partitions=tuple(
        make(part_cls, partition_index=p, committed_offset=offset,
             committed_leader_epoch=epoch, metadata=meta, error_code=code)
        for p, offset, epoch, meta, code in rows)) for topic, rows in found)


async def handle_offset_delete(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(OFFSET_DELETE, header.api_version)
    coord, group_id = ctx.coordinator, req.group_id

    def answer(code: ErrorCode, topics: tuple[Any, ...] = ()) -> Any:
        return make(mod.OffsetDeleteResponse, error_code=code, throttle_time=timedelta(0),
                    topics=topics)

    refused = _group_refused(ctx, header, Operation.DELETE, group_id)
    if refused is not None:
        return answer(refused)
    kind = coord.group_kind(group_id)
    if kind is None and group_id not in coord.offsets.groups():
        return answer(error("group_id_not_found"))
    subscribed: set[str] | None = None
    if kind == "classic":
        subscribed = coord.classic.subscribed_topics(group_id)
    elif kind == "consumer":
        subscribed = coord.consumer.subscribed_topics(group_id)
    doomed: list[tuple[str, int]] = []
    codes: list[tuple[str, list[list[Any]]]] = []
    for t in req.topics:
        if ctx.topics.get(t.name) is None:
            code = error("unknown_topic_or_partition")
        elif subscribed is not None and t.name in subscribed:
            code = error("group_subscribed_to_topic")  # a live consumer still needs it
        else:
            code = NONE
            doomed.extend((t.name, p.partition_index) for p in t.partitions)
        codes.append((t.name, [[p.partition_index, code] for p in t.partitions]))
    try:
        await coord.offsets.delete(group_id, doomed)
    except Exception:
        log.exception("OffsetDelete of group %s failed", group_id)
        return answer(error("coordinator_not_available"))
    return answer(NONE, tuple(
        make(mod.OffsetDeleteResponseTopic, name=name, partitions=tuple(
            make(mod.OffsetDeleteResponsePartition, partition_index=i, error_code=code)
            for i, code in parts)) for name, parts in codes))


APIS = [
    Api(OFFSET_COMMIT, 2, 9, handle_offset_commit),
    Api(OFFSET_FETCH, 1, 9, handle_offset_fetch),
    Api(OFFSET_DELETE, 0, 0, handle_offset_delete),
]
