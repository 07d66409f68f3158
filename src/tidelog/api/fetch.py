"""Fetch: long polling (max_wait / min_bytes) over partitions read concurrently, with
fetch sessions (KIP-227) for incremental requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from tidelog.api.acl_model import Operation, ResourceType
from tidelog.api.base import NONE, Api, Context, Encoded, error
from tidelog.api.fetch_sessions import (
    FetchSession,
    FetchSessionCache,
    PartitionKey,
    SessionError,
    SessionPartition,
)
from tidelog.api.traffic import frame_bytes, traffic
from tidelog.api.zone_routing import remote_owner, stand_in
from tidelog.partition.partition import Partition
from tidelog.protocol.codec import RequestHeader
from tidelog.protocol.fetch_encoder import PartitionOut, TopicOut, encode_fetch_response
from tidelog.zone.tail_wire import TailPart

log = logging.getLogger(__name__)
FETCH = 1


def sessions(ctx: Context) -> FetchSessionCache:
    cache = ctx.extras.get("fetch_sessions")
    if cache is None:
        cache = ctx.extras["fetch_sessions"] = FetchSessionCache()
    assert isinstance(cache, FetchSessionCache)
    return cache


def _name(ctx: Context, t: Any) -> str | None:
    if getattr(t, "topic", None) is not None:
        return str(t.topic)
    topic = ctx.topics.by_id.get(getattr(t, "topic_id", None))  # type: ignore[arg-type]
    return topic.name if topic else None


def _requested(ctx: Context, req: Any) -> tuple[dict[PartitionKey, SessionPartition],
                                                list[tuple[Any, int]]]:
    """Partitions asked for, and (topic id, partition) pairs whose topic id is unknown."""
    wanted: dict[PartitionKey, SessionPartition] = {}
    unknown: list[tuple[Any, int]] = []
    for t in req.topics:
        name = _name(ctx, t)
        for p in t.partitions:
            if name is None:
                unknown.append((getattr(t, "topic_id", None), p.partition))
            else:
                wanted[(name, p.partition)] = SessionPartition(
                    p.fetch_offset, p.partition_max_bytes,
                    leader_epoch=getattr(p, "current_leader_epoch", -1))
    return wanted, unknown


async def handle_fetch(ctx: Context, header: RequestHeader, req: Any) -> Any:
    version = header.api_version
    cache = sessions(ctx)
    session: FetchSession | None = None
    incremental = False
    try:
        wanted, unknown = _requested(ctx, req)
        sid, epoch = getattr(req, "session_id", 0), getattr(req, "session_epoch", -1)
        if epoch == 0:
            # a full fetch that opens a session; with an id it also closes that session
            # (what a client sends after a session error: KIP-227's "close and recreate")
            if sid != 0:
                cache.remove(sid)
            session = cache.new()
            session.partitions = wanted
        elif epoch == -1:
            if sid != 0:  # a full fetch without a session, closing the one it had
                cache.remove(sid)
        elif sid == 0:
            raise SessionError("fetch_session_id_not_found")
        else:
            session = cache.get(sid, epoch)
            session.epoch += 1
            incremental = True
            for key, sp in wanted.items():  # new offsets; keep what was last reported
                known = session.partitions.get(key)
                if known is None:
                    session.partitions[key] = sp
                else:
                    known.fetch_offset, known.max_bytes = sp.fetch_offset, sp.max_bytes
                    known.leader_epoch = sp.leader_epoch
            for t in getattr(req, "forgotten_topics_data", ()):
                name = _name(ctx, t)
                for index in t.partitions:
                    session.partitions.pop((name, index), None)  # type: ignore[arg-type]
            wanted = session.partitions
    except SessionError as exc:
        return _respond(ctx, header, encode_fetch_response(
            version, header.correlation_id, [], error_code=error(exc.code).value), 0)

    deadline = time.monotonic() + min(req.max_wait.total_seconds(),
                                      ctx.config.fetch_max_wait_cap)
    min_bytes = max(req.min_bytes, 1)
    max_bytes = req.max_bytes if req.max_bytes > 0 else 0x7FFFFFFF
    committed = getattr(req, "isolation_level", 0) == 1
    denied: set[str] = set()
    if not ctx.authorizer.allows_all:
        denied = {name for name in {k[0] for k in wanted}
                  if not ctx.allowed(header, Operation.READ, ResourceType.TOPIC, name)}
    redirect = _redirect(ctx, header)
    while True:
        local, remote = _split(ctx, header, wanted, denied)
        reads = await _read_all(ctx, local, committed, denied, redirect)
        remaining = deadline - time.monotonic()
        if remote:
            enough = (sum(r.size for r in reads.values()) >= min_bytes
                      or any(r.code != NONE for r in reads.values()))
            got = await _read_remote(ctx, remote, committed,
                                     0.0 if enough or remaining <= 0 else remaining, local)
            if got is None:
                continue  # data arrived here first: read it, and the others without waiting
            reads.update(got)
        results = _limit({k: reads[k] for k in wanted}, max_bytes)
        total = sum(r.size for r in results.values())
        has_error = any(r.code != NONE for r in results.values())
        remaining = deadline - time.monotonic()
        if total >= min_bytes or has_error or remaining <= 0 or not wanted:
            break
        if remote:
            continue  # their owners' long poll ended empty; the deadline is near
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in wanted:
            if (p := ctx.topics.partition(*key)) is not None:
                p.add_waiter(arrived)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived, remaining)

    by_topic: dict[str, TopicOut] = {}
    counters = traffic(ctx)
    for key, r in results.items():
        if r.size:
            counters.fetched(key[0], r.size, header.zone)
        sp = wanted[key]
        if incremental and not r.bufs and r.code == NONE and r.hw == sp.last_hw and (
                r.start == sp.last_start):
            continue  # unchanged: an incremental response leaves it out
        sp.last_hw, sp.last_start = r.hw, r.start
        out = by_topic.get(key[0])
        if out is None:
            t = ctx.topics.get(key[0])
            out = by_topic[key[0]] = TopicOut(key[0], t.topic_id if t else None)
        out.partitions.append(PartitionOut(key[1], r.code.value, r.hw, r.lso, r.start, r.bufs,
                                           r.aborted, r.preferred))
    topics = list(by_topic.values())
    for topic_id, index in unknown:
        topics.append(TopicOut("", topic_id, [PartitionOut(
            index, error("unknown_topic_id").value, -1, -1, -1)]))
    return _respond(ctx, header, encode_fetch_response(
        version, header.correlation_id, topics, session_id=session.session_id if session else 0),
        total)


def _respond(ctx: Context, header: RequestHeader, frame: list[Any], data_bytes: int
             ) -> Encoded:
    """The response, counted as bytes to the client's zone (the dispatcher cannot split
    an encoded frame into data and control)."""
    t = traffic(ctx)
    t.to_client(header.zone or t.zone, frame_bytes(frame), data_bytes)
    return Encoded(frame)


@dataclass(slots=True)
class Read:
    code: ErrorCode
    hw: int
    lso: int
    start: int
    bufs: list[Any]
    size: int = 0
    aborted: list[tuple[int, int]] | None = None
    preferred: int = -1
    """KIP-392: the broker the client should fetch this partition from instead."""


async def _read_all(
    ctx: Context, wanted: dict[PartitionKey, SessionPartition], committed: bool,
    denied: set[str], redirect: list[int] | None = None,
) -> dict[PartitionKey, Read]:
    """Read every partition owned here (or answer why not).

    A fetch names every assigned partition (librdkafka has no incremental sessions), most
    with nothing new: those are answered without a coroutine, data in the log cache is
    read inline, and only reads that need object storage run concurrently. With
    `redirect` (the brokers of the client's zone), each partition names one of them as
    the preferred read replica instead: by stream id, so the zone's brokers share the
    streams, and every owner picks the same one for a stream."""
    keys = list(wanted)
    reads: list[Read] = []
    slow: list[tuple[int, Partition, SessionPartition, int, list[tuple[int, int]] | None]] = []
    for k in keys:
        if k[0] in denied:
            reads.append(Read(error("topic_authorization_failed"), -1, -1, -1, []))
            continue
        p = ctx.topics.partition(*k)
        sp = wanted[k]
        r = (answer_without_data(p, sp, committed) if p is not None else
             Read(error(ctx.topics.missing(*k)), -1, -1, -1, []))
        if p is not None and redirect is not None and (r is None or r.code == NONE):
            r = Read(NONE, p.high_watermark, p.last_stable_offset, p.log_start_offset, [],
                     preferred=stand_in(redirect, p.stream.stream_id))
        if r is None:
            assert p is not None
            end = p.last_stable_offset if committed else p.high_watermark
            aborted = p.aborted_transactions(sp.fetch_offset, end) if committed else None
            if p.in_memory(sp.fetch_offset):
                r = await _read_one(p, sp, end, aborted)
            else:
                slow.append((len(reads), p, sp, end, aborted))
                r = Read(NONE, -1, -1, -1, [])  # filled in below
        reads.append(r)
    if slow:
        done = await asyncio.gather(*(_read_one(p, sp, end, ab) for _, p, sp, end, ab in slow))
        for (i, *_rest), r in zip(slow, done, strict=True):
            reads[i] = r
    for r in reads:
        r.size = sum(len(b) for b in r.bufs)
    return dict(zip(keys, reads, strict=True))


def _limit(reads: dict[PartitionKey, Read], max_bytes: int) -> dict[PartitionKey, Read]:
    """The response size limit, applied in the request's order."""
    budget = max_bytes
    any_taken = False  # the first batch of a response goes out whatever its size (KIP-74)
    for r in reads.values():
        if r.bufs:
            taken: list[Any] = []
            n = 0
            for b in r.bufs:
                if any_taken and len(b) > budget:
                    break
                taken.append(b)
                n += len(b)
                budget -= len(b)
                any_taken = True
            r.bufs, r.size = taken, n
    return reads


# ---- zones: fetch through a same-zone broker (docs/design/0003-zones.md) ---------------

RemoteKeys = dict[int, list[tuple[PartitionKey, int, SessionPartition]]]
"""owner -> (partition, stream id, what to fetch) of the partitions read through it."""


def _redirect(ctx: Context, header: RequestHeader) -> list[int] | None:
    """The live brokers of the client's zone (by node id) when this broker, an owner,
    sends the client's fetches there (KIP-392, Fetch v11+): the client is zoned, in
    another zone, and that zone has brokers."""
    zone = header.zone
    if (ctx.zone_fetch() is None or zone is None or header.api_version < 11
            or zone == (ctx.broker.rack or None)):
        return None
    return ctx.zone_brokers(zone) or None


def _split(ctx: Context, header: RequestHeader, wanted: dict[PartitionKey, SessionPartition],
           denied: set[str]) -> tuple[dict[PartitionKey, SessionPartition], RemoteKeys]:
    """The partitions read here (or answered with an error), and those owned elsewhere
    that this broker reads for a zoned client, by owner."""
    if ctx.zone_fetch() is None or header.zone is None:
        return wanted, {}
    local: dict[PartitionKey, SessionPartition] = {}
    remote: RemoteKeys = {}
    for k, sp in wanted.items():
        owner = None if k[0] in denied else remote_owner(ctx, header, *k)
        if owner is None:
            local[k] = sp
            continue
        t = ctx.topics.get(k[0])
        assert t is not None
        remote.setdefault(owner, []).append((k, t.streams[k[1]], sp))
    return local, remote


async def _read_remote(ctx: Context, remote: RemoteKeys, committed: bool, wait: float,
                       local: dict[PartitionKey, SessionPartition]
                       ) -> dict[PartitionKey, Read] | None:
    """Read the partitions of other owners, each owner long-polled for up to `wait`;
    None when data arrived first in a partition read here (the caller reads again)."""
    task = asyncio.ensure_future(asyncio.gather(*(
        _read_owner(ctx, owner, parts, committed, wait) for owner, parts in remote.items())))
    if wait > 0 and local:
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in local:
            if (p := ctx.topics.partition(*key)) is not None:
                p.add_waiter(arrived)
        await asyncio.wait((task, arrived), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
    out: dict[PartitionKey, Read] = {}
    for part in await task:
        out.update(part)
    return out


async def _read_owner(ctx: Context, owner: int,
                      parts: list[tuple[PartitionKey, int, SessionPartition]],
                      committed: bool, wait: float) -> dict[PartitionKey, Read]:
    remote_fetch = ctx.zone_fetch()
    assert remote_fetch is not None
    asks = [(sid, TailPart(k[0], k[1], sp.fetch_offset, sp.leader_epoch, sp.max_bytes))
            for k, sid, sp in parts]
    try:
        got = await remote_fetch.fetch(owner, asks, wait, committed)
    except Exception as exc:  # the owner cannot be asked: the client finds it itself
        log.info("fetch through broker %d failed: %r", owner, exc)
        return {k: Read(error("not_leader_or_follower"), -1, -1, -1, [])
                for k, _sid, _sp in parts}
    out: dict[PartitionKey, Read] = {}
    for (k, _sid, _sp), r in zip(parts, got, strict=True):
        out[k] = Read(ErrorCode(r.error), r.high_watermark, r.last_stable_offset,
                      r.log_start_offset, r.bufs, sum(len(b) for b in r.bufs), r.aborted)
    return out


def answer_without_data(p: Partition | None, sp: SessionPartition,
                         committed: bool) -> Read | None:
    """The answer for a partition with nothing to read (unknown, out of range, caught
    up, a leader epoch other than ours), or None when there is data to read."""
    if p is None:
        return Read(error("unknown_topic_or_partition"), -1, -1, -1, [])
    if 0 <= sp.leader_epoch != p.leader_epoch:  # KIP-320: the client's view is stale/ahead
        code = "fenced_leader_epoch" if sp.leader_epoch < p.leader_epoch else \
            "unknown_leader_epoch"
        return Read(error(code), -1, -1, -1, [])
    hw, start = p.high_watermark, p.log_start_offset
    if sp.fetch_offset < start or sp.fetch_offset > hw:
        return Read(error("offset_out_of_range"), hw, p.last_stable_offset, start, [])
    lso = p.last_stable_offset
    if sp.fetch_offset >= (lso if committed else hw):
        return Read(NONE, hw, lso, start, [])
    return None


async def _read_one(p: Partition, sp: SessionPartition, end: int,
                    aborted: list[tuple[int, int]] | None) -> Read:
    """Read one partition up to `end` (read_committed: the last stable offset, with the
    aborted transactions below it)."""
    hw, lso, start = p.high_watermark, p.last_stable_offset, p.log_start_offset
    try:
        bufs = await p.read(sp.fetch_offset, sp.max_bytes, end)
    except Exception as exc:  # an object read failed: the client retries
        log.warning("fetch %s-%d@%d failed: %r", p.topic, p.index, sp.fetch_offset, exc)
        return Read(error("kafka_storage_error"), hw, lso, start, [])
    return Read(NONE, hw, lso, start, bufs, aborted=aborted)


APIS = [Api(FETCH, 4, 16, handle_fetch)]
