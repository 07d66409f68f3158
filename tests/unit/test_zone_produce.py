"""Produce through a same-zone proxy, the parts below the brokers: the Forward wire
format, the order kept across awaits, and the proxy's WAL pins (a foreign record is not
trimmed away while its owner may still read it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.partition import describe
from tidelog.stream.engine import FOREIGN_BIT, EngineConfig, StreamEngine
from tidelog.stream.wal.file_wal import FileWAL
from tidelog.stream.wal.ring_read import RingRecordReader
from tidelog.zone.forward_wire import (
    ForwardAnswer,
    ForwardPart,
    ForwardRequest,
    decode_answers,
    decode_request,
    encode_answers,
    encode_request,
)
from tidelog.zone.turns import Turns
from tidelog.zone.wire import WireError


def test_the_forward_wire_format_round_trips_and_refuses_garbage() -> None:
    req = ForwardRequest(2, -1, 30000, [ForwardPart("orders", 7, 1 << 40, 16384),
                                        ForwardPart("ö", 0, 0, 1)])
    assert decode_request(encode_request(req)) == req
    answers = [ForwardAnswer(0, 42, 0, -1), ForwardAnswer(6, message="not here")]
    assert decode_answers(encode_answers(answers)) == answers
    for junk in (b"", encode_request(req)[:-2], b"\x00" * 12 + b"\xff\xff\xff\xff"):
        with pytest.raises(WireError):
            decode_request(junk)
    with pytest.raises(WireError):
        decode_answers(encode_answers(answers)[:-3])


async def test_turns_keep_the_arrival_order_across_awaits() -> None:
    turns = Turns()
    order: list[int] = []

    async def step(i: int, delay: float, abandon: bool = False) -> None:
        ticket = turns.take()
        try:
            await asyncio.sleep(delay)  # the slow part (a WAL write, a read)
            if abandon:
                return
            await turns.wait(ticket)
            order.append(i)
        finally:
            turns.done(ticket)

    await asyncio.gather(step(0, 0.03), step(1, 0.0), step(2, 0.01, abandon=True),
                         step(3, 0.0), step(4, 0.02))
    assert order == [0, 1, 3, 4]
    await step(5, 0)  # after everything is done, a new one goes at once
    assert order[-1] == 5


async def test_a_pinned_foreign_record_holds_the_wal_until_unpinned(tmp_path: Path) -> None:
    path = str(tmp_path / "wal")
    meta = EmbeddedMetadataStore(str(tmp_path / "meta.db"))
    engine = StreamEngine(FileWAL(path, capacity=1 << 20), open_object_store("memory://"),
                          meta, EngineConfig(), describe=describe)
    await engine.start(1)
    try:
        own = (await engine.create_streams(1))[0]
        at = await engine.append_foreign(99, b"f" * 1000)
        reader = RingRecordReader(path)
        rec = reader.read(at, (FOREIGN_BIT | 99, 0, 0, 1000))
        assert rec is not None and rec.payload == b"f" * 1000
        assert engine.pinned_bytes > 0
        await own.append(bytearray(b"o" * 500), 1, 0, 1, lambda _base: None)
        await engine.upload()  # the own record is uploaded; the trim stops at the pin
        assert engine.wal.trim_position <= at
        assert reader.read(at, (FOREIGN_BIT | 99, 0, 0, 1000)) is not None
        engine.unpin(at)
        assert engine._trimmer is not None
        await engine._trimmer  # nothing else holds the WAL: trimmed to its end
        assert engine.wal.trim_position == engine.wal.end_position
        assert engine.pinned_bytes == 0
        reader.close()
    finally:
        await engine.close(flush=False)
        await meta.close()
