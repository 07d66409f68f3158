"""Zone routing (docs/design/0003-zones.md): a zoned client is told that a broker of its
own zone leads every partition (`zone.routing.enable`), and that broker stands in for
the owner: it writes produce through (`zone/produce_proxy.py`), serves fetches from the
shared WAL volume and objects (`zone/remote_fetch.py`), and passes on to the owner what
only the owner can answer (ListOffsets, OffsetForLeaderEpoch, DeleteRecords,
DescribeProducers: control bytes)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from kio.schema.errors import ErrorCode

from tidelog.api.base import Context, error
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)


def stand_in_brokers(ctx: Context, header: RequestHeader) -> list[int] | None:
    """The live brokers of the client's zone when it is routed there (None: plain Kafka
    metadata: no routing, no known zone, or no broker in it)."""
    if ctx.zone_proxy() is None or ctx.zone_fetch() is None or header.zone is None:
        return None
    return ctx.zone_brokers(header.zone) or None


def stand_in(brokers: list[int], stream_id: int) -> int:
    """A stream's broker among a zone's (`Context.zone_brokers`): every broker asked picks
    the same one, and the zone's streams spread over them."""
    return brokers[stream_id % len(brokers)]


def remote_owner(ctx: Context, header: RequestHeader, name: str, index: int) -> int | None:
    """The owner of a partition this broker reads for this client from the owner's WAL
    and objects: zone fetch is on, the client is zoned, the partition lives on another
    broker whose WAL this one can read. None: served here as usual (owned here, or
    answered as not led here)."""
    remote = ctx.zone_fetch()
    if remote is None or header.zone is None or ctx.topics.partition(name, index) is not None:
        return None
    topic = ctx.topics.get(name)
    if topic is None or not 0 <= index < topic.count:
        return None
    owner, _epoch = ctx.topics.leader(topic, index)
    if owner < 0 or owner == ctx.broker.node_id or not remote.serves(owner):
        return None
    return owner


def proxied_owner(ctx: Context, header: RequestHeader, name: str, index: int) -> int | None:
    """As `remote_owner`, while zone routing is on: this broker stands in for the owner
    in everything the client sends a partition's leader."""
    return remote_owner(ctx, header, name, index) if ctx.zone_proxy() is not None else None


async def ask_owner(ctx: Context, owner: int, req: Any, topic: Any, partition: Any,
                    field: str = "partitions") -> Any:
    """`req` cut down to one partition (`topic` and `partition` are its own entries; the
    topic lists its partitions in `field`), sent to `owner`; the answer's one partition
    entry, or None when the owner cannot be reached (the client gets
    NOT_LEADER_OR_FOLLOWER and looks again)."""
    if ctx.peer is None:
        return None
    one = dataclasses.replace(req, topics=(dataclasses.replace(topic,
                                                               **{field: (partition,)}),))
    try:
        resp = await ctx.peer(owner, one)
        return resp.topics[0].partitions[0]
    except Exception as exc:
        log.info("asking broker %d for %s failed: %r", owner, type(req).__name__, exc)
        return None


def unreachable() -> ErrorCode:
    return error("not_leader_or_follower")
