"""ListOffsets: earliest (-2), latest (-1: the high watermark, or the last stable offset for
read_committed), max timestamp (-3), or the first offset at or after a timestamp."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tidelog.api.acl_model import Operation, ResourceType
from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.api.zone_routing import ask_owner, proxied_owner, unreachable
from tidelog.protocol.codec import RequestHeader

LIST_OFFSETS = 2
LATEST, EARLIEST, MAX_TIMESTAMP = -1, -2, -3


async def _lookup(ctx: Context, name: str, index: int, ts: int,
                  committed: bool) -> tuple[Any, int, int]:
    """(error, offset, timestamp); `committed`: read_committed (latest is the LSO)."""
    p = ctx.topics.partition(name, index)
    if p is None:
        return error(ctx.topics.missing(name, index)), -1, -1
    if ts == LATEST:
        return NONE, p.last_stable_offset if committed else p.high_watermark, -1
    if ts == EARLIEST or ts == -4:  # -4: earliest local, the same here
        return NONE, p.log_start_offset, -1
    if ts == MAX_TIMESTAMP:
        found = await p.max_timestamp()
    elif ts < 0:
        return error("invalid_request"), -1, -1
    else:
        found = await p.offset_for_timestamp(ts)
    if found is None:
        # no record at or after the timestamp: Kafka answers offset -1 (v1+)
        return NONE, -1, -1
    return NONE, found[0], found[1]


async def handle_list_offsets(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(LIST_OFFSETS, header.api_version)
    committed = getattr(req, "isolation_level", 0) == 1
    topics = []
    for t in req.topics:
        parts = []
        may = ctx.allowed(header, Operation.DESCRIBE, ResourceType.TOPIC, t.name)
        for p in t.partitions:
            owner = proxied_owner(ctx, header, t.name, p.partition_index) if may else None
            if owner is not None:
                got = await ask_owner(ctx, owner, req, t, p)
                parts.append(got if got is not None else make(
                    mod.ListOffsetsPartitionResponse, partition_index=p.partition_index,
                    error_code=unreachable(), timestamp=-1, offset=-1, leader_epoch=-1))
                continue
            code, offset, ts = (
                await _lookup(ctx, t.name, p.partition_index, p.timestamp, committed) if may
                else (error("topic_authorization_failed"), -1, -1))
            part = ctx.topics.partition(t.name, p.partition_index)
            parts.append(make(mod.ListOffsetsPartitionResponse, partition_index=p.partition_index,
                              error_code=code, timestamp=ts, offset=offset,
                              leader_epoch=part.leader_epoch if part else -1))
        topics.append(make(mod.ListOffsetsTopicResponse, name=t.name, partitions=tuple(parts)))
    return make(mod.ListOffsetsResponse, throttle_time=timedelta(0), topics=tuple(topics))


APIS = [Api(LIST_OFFSETS, 1, 9, handle_list_offsets)]
