"""Produce through a same-zone proxy (docs/design/0003-zones.md): this broker makes a
zoned client's batch for a partition owned in another zone durable in its own WAL, on
the shared volume, as a foreign record, and tells the owner where it is (Forward:
positions, never the bytes); the owner reads it from there, appends it under its epoch
(idempotence, transactions and offsets are its own) and answers; this broker answers
the client. The record stays pinned in this WAL until the owner answered or the forward
was given up: the owner then holds its own copy, or its read finds the record gone or
overwritten and refuses it (the client's retry decides).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tidelog.stream.engine import StreamEngine
from tidelog.zone.forward_wire import (
    FORWARD,
    VERSION,
    ForwardAnswer,
    ForwardPart,
    ForwardRequest,
    decode_answers,
    encode_request,
)
from tidelog.zone.remote_fetch import ANSWER_SLACK, Call
from tidelog.zone.turns import Turns
from tidelog.zone.wire import WireError


@dataclass(slots=True)
class ProxyStats:
    forwards: int = 0
    """Forward requests sent."""
    batches: int = 0
    bytes: int = 0
    """Record-batch bytes written here for other brokers' partitions."""


class ProduceProxy:
    def __init__(self, engine: StreamEngine, call: Call, node_id: int) -> None:
        self._engine = engine
        self._call = call
        self._node_id = node_id
        self._turns: dict[int, Turns] = {}
        self.stats = ProxyStats()

    async def produce(self, owner: int, parts: list[tuple[int, str, int, bytes]], acks: int,
                      timeout: float) -> list[ForwardAnswer]:
        """Write `parts` ((stream id, topic, partition, batch bytes) each, all owned by
        `owner`) here and have the owner append them; its answers, in order. Batches
        through one proxy to one owner are appended in the order they arrived here."""
        turns = self._turns.setdefault(owner, Turns())
        ticket = turns.take()  # before any await: the arrival order
        positions: list[int] = []
        try:
            written = await asyncio.gather(*(
                self._engine.append_foreign(sid, data, timeout) for sid, _t, _p, data in parts),
                return_exceptions=True)
            positions = [at for at in written if isinstance(at, int)]
            for failed in written:
                if isinstance(failed, BaseException):
                    raise failed
            self.stats.batches += len(parts)
            self.stats.bytes += sum(len(d) for *_rest, d in parts)
            body = encode_request(ForwardRequest(
                self._node_id, acks, int(timeout * 1000),
                [ForwardPart(topic, index, at, len(data))
                 for (_sid, topic, index, data), at in zip(parts, positions, strict=True)]))
            await turns.wait(ticket)
            self.stats.forwards += 1
            sent = asyncio.ensure_future(
                self._call(owner, FORWARD, VERSION, body, timeout + ANSWER_SLACK))
            turns.done(ticket)  # the forward is queued: the next one goes after it
            answers = decode_answers(await sent)
            if len(answers) != len(parts):
                raise WireError(f"{len(answers)} answers to {len(parts)} batches")
            return answers
        finally:
            turns.done(ticket)
            for at in positions:
                self._engine.unpin(at)
