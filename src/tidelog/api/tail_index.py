"""TailIndex, the owner's side: where a partition's records are, for a broker of another
zone that serves its fetches there (`zone/tail_wire.py`, docs/design/0003-zones.md).

Answered like a fetch (the same epoch, range and isolation checks, the same long poll on
the partitions asked for) but with positions in this broker's WAL instead of the bytes,
which the asking broker reads from the shared volume itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from tidelog.api.base import NONE, Context, error
from tidelog.api.fetch import answer_without_data
from tidelog.api.fetch_sessions import SessionPartition
from tidelog.protocol.codec import RequestHeader
from tidelog.zone.tail_wire import (
    TailAnswer,
    TailPart,
    decode_request,
    encode_answers,
)


async def handle_tail_index(ctx: Context, header: RequestHeader, body: memoryview) -> bytes:
    req = decode_request(body)
    deadline = time.monotonic() + min(req.max_wait_ms / 1000, ctx.config.fetch_max_wait_cap)
    while True:
        answers = [_answer(ctx, part, req.committed) for part in req.parts]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or any(a.error or a.entries or a.cached_from > p.fetch_offset
                                 for a, p in zip(answers, req.parts, strict=True)):
            return encode_answers(answers)
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for part in req.parts:
            if (p := ctx.topics.partition(part.topic, part.partition)) is not None:
                p.add_waiter(arrived)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived, remaining)


def _answer(ctx: Context, part: TailPart, committed: bool) -> TailAnswer:
    p = ctx.topics.partition(part.topic, part.partition)
    if p is None:
        return TailAnswer(error(ctx.topics.missing(part.topic, part.partition)).value)
    sp = SessionPartition(part.fetch_offset, part.max_bytes, leader_epoch=part.leader_epoch)
    quick = answer_without_data(p, sp, committed)
    if quick is not None:
        return TailAnswer(quick.code.value, quick.hw, quick.lso, quick.start)
    hw, lso, start = p.high_watermark, p.last_stable_offset, p.log_start_offset
    end = lso if committed else hw
    tail = p.stream.tail(part.fetch_offset, end, part.max_bytes)
    if tail is None:  # this broker's WAL cannot be read elsewhere: fetch from here
        return TailAnswer(error("not_leader_or_follower").value, hw, lso, start)
    aborted = p.aborted_transactions(part.fetch_offset, end) if committed else []
    return TailAnswer(NONE.value, hw, lso, start, tail.cached_from, aborted,
                      [(e.base_offset, e.last_offset, e.position, e.length)
                       for e in tail.entries])
