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
from tidelog.partition.partition import Partition
from tidelog.protocol.codec import RequestHeader
from tidelog.protocol.fetch_encoder import PartitionOut, TopicOut, encode_fetch_response

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
    while True:
        results = await _read_all(ctx, wanted, max_bytes, committed, denied)
        total = sum(r.size for r in results.values())
        has_error = any(r.code != NONE for r in results.values())
        remaining = deadline - time.monotonic()
        if total >= min_bytes or has_error or remaining <= 0 or not wanted:
            break
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
                                           r.aborted))
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


async def _read_all(
    ctx: Context, wanted: dict[PartitionKey, SessionPartition], max_bytes: int,
    committed: bool, denied: set[str],
) -> dict[PartitionKey, Read]:
    """Read every partition; the response size limit is applied in order.

    A fetch names every assigned partition (librdkafka has no incremental sessions), most
    with nothing new: those are answered without a coroutine, data in the log cache is
    read inline, and only reads that need object storage run concurrently."""
    keys = list(wanted)
    reads: list[Read] = []
    slow: list[tuple[int, Partition, SessionPartition, int, list[tuple[int, int]] | None]] = []
    for k in keys:
        if k[0] in denied:
            reads.append(Read(error("topic_authorization_failed"), -1, -1, -1, []))
            continue
        p = ctx.topics.partition(*k)
        sp = wanted[k]
        r = (_answer_without_data(p, sp, committed) if p is not None else
             Read(error(ctx.topics.missing(*k)), -1, -1, -1, []))
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
    out: dict[PartitionKey, Read] = {}
    budget = max_bytes
    any_taken = False  # the first batch of a response goes out whatever its size (KIP-74)
    for k, r in zip(keys, reads, strict=True):
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
        out[k] = r
    return out


def _answer_without_data(p: Partition | None, sp: SessionPartition,
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
