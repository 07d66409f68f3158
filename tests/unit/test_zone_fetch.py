"""Fetch through a same-zone broker, both ends over a real engine and a real ring WAL
file: the owner's TailIndex answer (positions, not bytes) and the reader that turns it
into the records, from the WAL file or, once the owner uploaded them, from objects."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from tests.unit.harness import open_topics
from tidelog.api.base import BrokerInfo, Context
from tidelog.api.dispatch import Dispatcher, ProtocolViolation
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.partition import Partition
from tidelog.partition.topics import TopicManager
from tidelog.protocol import records
from tidelog.protocol.codec import encode_private_request
from tidelog.stream.engine import StreamEngine
from tidelog.stream.wal.file_wal import FileWAL
from tidelog.zone.connection import ClientConnection
from tidelog.zone.remote_fetch import RemoteFetch
from tidelog.zone.tail_wire import (
    TAIL_INDEX,
    TailAnswer,
    TailPart,
    TailRequest,
    decode_answers,
    decode_request,
    encode_answers,
    encode_request,
)
from tidelog.zone.wire import WireError


def batch(i: int) -> bytes:
    return records.build_batch([(b"k%d" % i, b"v%d-%d" % (i, j) * 20) for j in range(3)],
                               timestamp=1000 + i)


def test_the_wire_format_round_trips_and_refuses_garbage() -> None:
    req = TailRequest(250, True, [TailPart("orders", 3, 42, 7, 1 << 20),
                                  TailPart("é", 0, 0)])
    assert decode_request(encode_request(req)) == req
    answers = [TailAnswer(0, 10, 9, 0, 5, [(1000, 6)], [(5, 7, 4096, 120), (8, 9, 4300, 80)]),
               TailAnswer(6)]
    assert decode_answers(encode_answers(answers)) == answers
    for junk in (b"", b"\x00\x00\x00\x01", encode_request(req)[:-3],
                 b"\x00\x00\x00\x00\x00\xff\xff\xff\xff"):
        with pytest.raises(WireError):
            decode_request(junk)
    with pytest.raises(WireError):
        decode_answers(encode_answers(answers)[:-1])


class Owner:
    """A broker (node 1) owning topic `t`, and a peer's connection to it."""

    def __init__(self, engine: StreamEngine, topics: TopicManager, wal_path: str) -> None:
        self.engine, self.topics, self.wal_path = engine, topics, wal_path
        self.dispatcher = Dispatcher(Context(BrokerInfo(1, "localhost", 9092), topics,
                                             cast(Any, None)))
        self.conn = ClientConnection()
        self.after_answer: list[Any] = []

    @property
    def partition(self) -> Partition:
        p = self.topics.partition("t", 0)
        assert p is not None
        return p

    @property
    def stream_id(self) -> int:
        t = self.topics.get("t")
        assert t is not None
        return t.streams[0]

    async def call(self, node: int, api_key: int, version: int, body: bytes,
                   timeout: float | None = None, long_poll: bool = False,
                   client_id: str = "tidelog-broker-2") -> memoryview:
        assert node == 1
        frame = encode_private_request(api_key, version, 9, client_id, body)
        out = await self.dispatcher(frame[4:], self.conn)
        assert isinstance(out, bytes)
        for hook in self.after_answer:
            await hook()
        return memoryview(out)[8:]  # size, correlation id

    def reader(self, wal_path: str | None = None) -> RemoteFetch:
        return RemoteFetch(self.engine, self.call, lambda _n: wal_path or self.wal_path,
                           own_wal_path=None, index_wait=1.0)

    async def everything(self) -> bytes:
        out, offset = b"", 0
        while offset < self.partition.high_watermark:
            bufs, offset = await self.partition.stream.fetch(offset, 1 << 20)
            out += b"".join(bytes(b) for b in bufs)
        return out


@pytest.fixture
async def owner(tmp_path: Path) -> Any:
    path = str(tmp_path / "broker-1.wal")
    engine, topics = await open_topics(tmp_path, FileWAL(path, capacity=8 << 20),
                                       open_object_store("memory://"), 1)
    await topics.create("t", 1)
    yield Owner(engine, topics, path)
    await topics.stop()
    await engine.close(flush=False)
    await engine.meta.close()


async def test_records_not_yet_uploaded_are_read_from_the_owners_wal(owner: Owner) -> None:
    for i in range(5):
        await owner.partition.append(batch(i))
    reader = owner.reader()
    [got] = await reader.fetch(1, [(owner.stream_id, TailPart("t", 0, 0))], 0, False)
    assert got.error == 0 and got.high_watermark == 15 and got.log_start_offset == 0
    assert b"".join(bytes(b) for b in got.bufs) == await owner.everything()
    assert reader.stats.wal_bytes == len(await owner.everything())
    assert reader.stats.object_bytes == 0
    [mid] = await reader.fetch(1, [(owner.stream_id, TailPart("t", 0, 7, max_bytes=1))], 0,
                               False)
    assert len(mid.bufs) == 1 and records.iter_headers(bytes(mid.bufs[0]))[0].base_offset == 6
    reader.close()


async def test_a_long_poll_is_answered_at_the_next_append(owner: Owner) -> None:
    await owner.partition.append(batch(0))
    reader = owner.reader()
    task = asyncio.ensure_future(
        reader.fetch(1, [(owner.stream_id, TailPart("t", 0, 3))], 10.0, False))
    while not owner.partition.stream._waiters:  # the owner is waiting for data
        await asyncio.sleep(0)
    assert not task.done()
    await owner.partition.append(batch(1))
    [got] = await asyncio.wait_for(task, 5)
    assert [records.iter_headers(bytes(b))[0].base_offset for b in got.bufs] == [3]
    reader.close()


async def test_uploaded_records_and_trimmed_ones_come_from_objects(
        owner: Owner, tmp_path: Path) -> None:
    for i in range(4):
        await owner.partition.append(batch(i))
    await owner.engine.upload()  # the log cache is empty: the owner points to objects
    reader = owner.reader()
    [got] = await reader.fetch(1, [(owner.stream_id, TailPart("t", 0, 0))], 0, False)
    assert b"".join(bytes(b) for b in got.bufs) == await owner.everything()
    assert reader.stats.object_bytes > 0 and reader.stats.wal_bytes == 0
    reader.close()

    # an answer naming WAL records the reader no longer finds where it was told (here: a
    # WAL file holding other records) falls back to objects, once the upload is there
    for i in range(4, 6):
        await owner.partition.append(batch(i))
    other = FileWAL(str(tmp_path / "other.wal"), capacity=1 << 20)
    await other.open(1)
    for i in range(6):
        await other.append(owner.stream_id, 1, i, i + 2, b"x" * 300)
    await other.close()
    owner.after_answer.append(owner.engine.upload)
    misled = owner.reader(str(tmp_path / "other.wal"))
    [got] = await misled.fetch(1, [(owner.stream_id, TailPart("t", 0, 12))], 0, False)
    assert [records.iter_headers(bytes(b))[0].base_offset for b in got.bufs] == [12, 15]
    assert misled.stats.wal_misses == 1 and misled.stats.wal_bytes == 0
    misled.close()


async def test_errors_are_the_owners(owner: Owner) -> None:
    reader = owner.reader()
    got = await reader.fetch(1, [(0, TailPart("nope", 0, 0)),
                                 (owner.stream_id, TailPart("t", 0, 99)),
                                 (owner.stream_id, TailPart("t", 0, 0, leader_epoch=99))],
                             0, False)
    assert [g.error for g in got] == [3, 1, 75]  # unknown, out of range, unknown epoch
    reader.close()


async def test_only_another_broker_may_ask(owner: Owner) -> None:
    body = encode_request(TailRequest(0, False, [TailPart("t", 0, 0)]))
    with pytest.raises(ProtocolViolation, match="not a broker"):
        await owner.call(1, TAIL_INDEX, 0, body, 1.0, client_id="rdkafka")
    owner.conn = ClientConnection()
    with pytest.raises(ProtocolViolation):
        await owner.call(1, TAIL_INDEX, 0, b"\x01", 1.0)
