"""The listener's request timing: one observation per answered request, in arrival
order, with its phases in sequence; nothing for a request that closes the connection."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from tidelog.net.server import KafkaConnection, RequestTiming


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.written.append(b"".join(data))

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1)


def frame(api_key: int, version: int, correlation: int) -> bytes:
    body = struct.pack(">hhih", api_key, version, correlation, 0)
    return struct.pack(">i", len(body)) + body


async def test_observations_follow_arrival_order_with_phases_in_sequence() -> None:
    release = {1: asyncio.Event(), 2: asyncio.Event()}

    async def dispatch(data: bytes, _host: str) -> bytes:
        correlation = struct.unpack_from(">i", data, 4)[0]
        if correlation in release:
            await release[correlation].wait()
        return b"r%d" % correlation

    seen: list[RequestTiming] = []
    conn = KafkaConnection(dispatch, 1 << 20, lambda _c: None, seen.append)
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(frame(0, 9, 1) + frame(3, 12, 2) + frame(18, 3, 3))
    await asyncio.sleep(0.01)
    assert seen == [] and transport.written == []  # request 1 holds the others back
    release[2].set()
    await asyncio.sleep(0.01)
    release[1].set()
    await asyncio.sleep(0.01)
    assert transport.written == [b"r1", b"r2", b"r3"]
    assert [(t.api_key, t.api_version) for t in seen] == [(0, 9), (3, 12), (18, 3)]
    for t in seen:
        assert t.received <= t.started <= t.finished <= t.sending <= t.sent
    # the third finished first but waited in the response queue until the first was out
    assert seen[2].finished < seen[1].finished < seen[0].finished <= seen[2].sending


async def test_a_failed_request_is_not_observed() -> None:
    async def dispatch(data: bytes, _host: str) -> bytes:
        if struct.unpack_from(">h", data, 0)[0] == 99:
            raise ValueError("bad request")
        return b"ok"

    seen: list[RequestTiming] = []
    conn = KafkaConnection(dispatch, 1 << 20, lambda _c: None, seen.append)
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(frame(0, 9, 1))
    await asyncio.sleep(0.01)
    conn.data_received(frame(99, 0, 2) + frame(0, 9, 3))
    await asyncio.sleep(0.01)
    assert transport.closed and transport.written == [b"ok"]
    assert [t.api_key for t in seen] == [0]
