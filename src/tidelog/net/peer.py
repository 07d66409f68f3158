"""The inter-broker client: Kafka requests from this broker to another one (transaction
markers to a partition's owner), over Kafka's own protocol, one connection per peer with
requests pipelined and matched by correlation id."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import Callable
from typing import Any

from tidelog.protocol.codec import (
    decode_response,
    encode_private_request,
    encode_request,
    response_correlation,
)

log = logging.getLogger(__name__)

Address = Callable[[int], tuple[str, int] | None]
"""node id -> (host, port) of a live broker, or None."""


MAX_POLL_CONNECTIONS = 16
"""Per peer: long polls given up on (their fetch was answered from elsewhere) keep a
connection busy until the peer answers them; beyond this many, polls share."""


class PeerUnavailable(Exception):
    """The peer is not live, or the connection to it failed (the caller retries)."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.outstanding = 0
        """Requests sent and not answered yet, given up on or not: the peer answers in
        order, so a connection with one is no idle one for a long poll."""
        self.task = asyncio.get_running_loop().create_task(self._read(), name="peer-reader")

    async def _read(self) -> None:
        try:
            while True:
                (size,) = struct.unpack(">i", await self.reader.readexactly(4))
                frame = await self.reader.readexactly(size)
                self.outstanding -= 1
                fut = self.pending.pop(response_correlation(frame), None)
                if fut is not None and not fut.done():
                    fut.set_result(frame)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(ConnectionError("closed"))
            raise

    def _fail(self, exc: BaseException) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(PeerUnavailable(str(exc) or type(exc).__name__))
        self.pending.clear()

    @property
    def closed(self) -> bool:
        return self.task.done()

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class PeerClient:
    def __init__(self, node_id: int, address: Address, timeout: float = 30.0) -> None:
        self._client_id = f"tidelog-broker-{node_id}"
        self._address = address
        self._timeout = timeout
        self._conns: dict[int, _Connection] = {}
        self._polls: dict[int, list[_Connection]] = {}
        """Connections for long polls, one request at a time each: a broker answers a
        connection's requests in order, so a parked poll would hold every answer after
        it (a produce forward's, another fetch's)."""
        self._locks: dict[int, asyncio.Lock] = {}
        self._corr = itertools.count(1)

    async def request(self, node: int, body: Any) -> Any:
        """Send `body` (a kio request) to broker `node`; its decoded response."""
        frame = await self._exchange(
            node, lambda corr: encode_request(body, corr, self._client_id), self._timeout)
        return decode_response(body.__api_key__, body.__version__, frame)

    async def call(self, node: int, api_key: int, version: int, body: bytes,
                   timeout: float | None = None, long_poll: bool = False) -> memoryview:
        """A Tidelog private request (`codec.PRIVATE_API_KEYS`) to broker `node`; the
        body of its response. `timeout` (default the client's) covers a long poll;
        `long_poll` sends it on a connection of its own (see `_polls`)."""
        frame = await self._exchange(
            node, lambda corr: encode_private_request(api_key, version, corr,
                                                      self._client_id, body),
            self._timeout if timeout is None else timeout, long_poll)
        return memoryview(frame)[4:]

    async def _exchange(self, node: int, encode: Callable[[int], bytes],
                        timeout: float, long_poll: bool = False) -> bytes:
        conn = await (self._idle(node) if long_poll else self._connection(node))
        conn.outstanding += 1
        corr = next(self._corr) & 0x7FFFFFFF
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        conn.pending[corr] = fut
        conn.writer.write(encode(corr))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise PeerUnavailable(f"broker {node} did not answer in {timeout}s") from None
        finally:  # answered, timed out or cancelled: a late answer is dropped
            conn.pending.pop(corr, None)

    async def _idle(self, node: int) -> _Connection:
        """A poll connection to `node` with nothing outstanding (a new one if none)."""
        pool = self._polls.setdefault(node, [])
        pool[:] = [c for c in pool if not c.closed]
        for conn in pool:
            if conn.outstanding == 0:
                return conn
        if len(pool) >= MAX_POLL_CONNECTIONS:  # bounded: wait behind the least busy one
            return min(pool, key=lambda c: c.outstanding)
        conn = await self._open(node)
        pool.append(conn)
        return conn

    async def _open(self, node: int) -> _Connection:
        where = self._address(node)
        if where is None:
            raise PeerUnavailable(f"broker {node} is not live")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*where),
                                                    self._timeout)
        except (OSError, TimeoutError) as exc:
            raise PeerUnavailable(f"broker {node} at {where[0]}:{where[1]}: {exc}") from None
        return _Connection(reader, writer)

    async def _connection(self, node: int) -> _Connection:
        conn = self._conns.get(node)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(node, asyncio.Lock())
        async with lock:
            conn = self._conns.get(node)
            if conn is not None and not conn.closed:
                return conn
            conn = self._conns[node] = await self._open(node)
            return conn

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for pool in self._polls.values():
            conns += pool
        self._polls = {}
        for conn in conns:
            await conn.close()
