"""Forward, the owner's side: batches a same-zone proxy wrote into its WAL for
partitions owned here (`zone/forward_wire.py`, docs/design/0003-zones.md). Each is read
from the proxy's WAL file by position (checked: the stream, the length, the CRC) and
appended as a Produce would append it; the answers are Produce's."""

from __future__ import annotations

import asyncio

from tidelog.api.base import Context, error
from tidelog.api.produce import Outcome, append_outcome
from tidelog.protocol.codec import RequestHeader
from tidelog.zone.forward_wire import ForwardAnswer, decode_request, encode_answers
from tidelog.zone.turns import Turns


def _turns(ctx: Context, proxy: int) -> Turns:
    by_proxy: dict[int, Turns] = ctx.extras.setdefault("forward_turns", {})
    return by_proxy.setdefault(proxy, Turns())


async def handle_forward(ctx: Context, header: RequestHeader, body: memoryview) -> bytes:
    req = decode_request(body)
    turns = _turns(ctx, req.proxy)
    ticket = turns.take()  # before any await: the order the proxy sent them in
    timeout = max(req.timeout_ms / 1000, 0.001)
    try:
        datas = await asyncio.gather(*(_read(ctx, req.proxy, part.topic, part.partition,
                                             part.position, part.length)
                                       for part in req.parts))
        await turns.wait(ticket)
        jobs = [asyncio.ensure_future(append_outcome(ctx, part.topic, part.partition, data,
                                                     timeout, None, count=False))
                if isinstance(data, bytes) else data
                for part, data in zip(req.parts, datas, strict=True)]
    finally:
        turns.done(ticket)  # the appends are queued in order: the next forward may go
    outcomes: list[Outcome | ForwardAnswer] = [
        await j if isinstance(j, asyncio.Future) else j for j in jobs]
    return encode_answers([o if isinstance(o, ForwardAnswer) else
                           ForwardAnswer(o[0].value, o[1], o[2], o[4], o[3])
                           for o in outcomes])


async def _read(ctx: Context, proxy: int, topic: str, index: int, position: int,
                length: int) -> bytes | ForwardAnswer:
    """The batch, or the answer when it cannot be appended here."""
    t = ctx.topics.get(topic)
    p = ctx.topics.partition(topic, index)
    if t is None or p is None:
        return ForwardAnswer(error(ctx.topics.missing(topic, index)).value)
    if ctx.remote_fetch is None:
        return ForwardAnswer(error("not_leader_or_follower").value, message="this broker "
                             "cannot read other brokers' WALs")
    data = await ctx.remote_fetch.read_foreign(proxy, position, t.streams[index], length)
    if data is None:  # gone: the proxy gave up on it; its client's retry decides
        return ForwardAnswer(error("request_timed_out").value, message=f"the batch is no "
                             f"longer at position {position} of broker {proxy}'s WAL")
    return data
