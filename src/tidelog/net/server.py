"""Kafka listeners: one `asyncio.Protocol` per connection.

Requests on a connection are handled concurrently (a producer pipelines up to five), and
answered strictly in the order they arrived. Reading pauses while too many requests are in
flight or the socket's send buffer is full, so a fast client cannot grow our memory.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter

from tidelog.protocol.codec import FrameError, FrameReader
from tidelog.zone.connection import ClientConnection, ZoneRules

log = logging.getLogger(__name__)

# (frame bytes, the connection it came on) -> response frame (bytes, or buffers to write
# in one go), or None when no response is due (acks=0)
Response = bytes | list[bytes | bytearray | memoryview] | None
Dispatch = Callable[[bytes, ClientConnection], Awaitable[Response]]
NO_RULES = ZoneRules()

MAX_IN_FLIGHT = 64
_API = struct.Struct(">hh")  # request header: api key, api version


@dataclass(slots=True)
class RequestTiming:
    """One request's life in `perf_counter` seconds, handed to the listener's observer
    once its response is written (Kafka's request metrics are derived from it)."""

    api_key: int
    api_version: int
    received: float
    """The whole frame was read."""
    started: float = 0.0
    """The handler began (the gap is time queued on the event loop)."""
    finished: float = 0.0
    """The handler returned its response."""
    sending: float = 0.0
    """Earlier responses on the connection were out: this one is written now."""
    sent: float = 0.0
    """Handed to the transport."""


RequestObserver = Callable[[RequestTiming], None]


class KafkaConnection(asyncio.Protocol):
    def __init__(self, dispatch: Dispatch, max_frame: int, on_close: Callable[
            [KafkaConnection], None], observer: RequestObserver | None = None,
                 listener: str = "PLAINTEXT", zones: ZoneRules = NO_RULES) -> None:
        self._dispatch = dispatch
        self._reader = FrameReader(max_frame)
        self._pending: deque[asyncio.Task[Response]] = deque()
        self._observer = observer
        self._timings: deque[RequestTiming] = deque()  # beside _pending, with an observer
        self._transport: asyncio.Transport | None = None
        self._paused_reading = False
        self._write_paused = False
        self._on_close = on_close
        self.peer = "?"
        self._listener = listener
        self._zones = zones
        self.info = ClientConnection(listener)

    @property
    def peer_host(self) -> str:
        return self.info.peer_host

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peername = transport.get_extra_info("peername")
        self.peer = str(peername)
        address = str(peername[0]) if isinstance(peername, tuple) and peername else ""
        self.info = self._zones.connection(self._listener, address)

    def data_received(self, data: bytes) -> None:
        self._reader.receive_data(data)
        try:
            while (frame := self._reader.next_frame()) is not None:
                if self._observer is None:
                    task = asyncio.ensure_future(self._dispatch(frame, self.info))
                else:
                    api_key, api_version = _API.unpack_from(frame, 0)
                    timing = RequestTiming(api_key, api_version, perf_counter())
                    self._timings.append(timing)
                    task = asyncio.ensure_future(self._timed(frame, timing))
                task.add_done_callback(self._request_done)
                self._pending.append(task)
        except FrameError as exc:
            self.abort(f"bad framing: {exc}")
            return
        self._update_reading()

    async def _timed(self, frame: bytes, timing: RequestTiming) -> Response:
        timing.started = perf_counter()
        try:
            return await self._dispatch(frame, self.info)
        finally:
            timing.finished = perf_counter()

    def _request_done(self, _task: asyncio.Task[Response]) -> None:
        while self._pending and self._pending[0].done():
            task = self._pending.popleft()
            timing = self._timings.popleft() if self._timings else None
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                self.abort(str(exc) if not isinstance(exc, Exception) or str(exc)
                           else repr(exc), exc)
                return
            out = task.result()
            if timing is not None:
                timing.sending = perf_counter()
            if out is not None and self._transport is not None:
                if isinstance(out, bytes):
                    self._transport.write(out)
                else:
                    self._transport.writelines(out)
            if timing is not None and self._observer is not None:
                timing.sent = perf_counter()
                self._observer(timing)
        self._update_reading()

    def abort(self, why: str, exc: BaseException | None = None) -> None:
        if exc is not None and type(exc).__name__ != "ProtocolViolation":
            log.error("closing connection from %s: %s", self.peer, why, exc_info=exc)
        else:
            log.warning("closing connection from %s: %s", self.peer, why)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        # In-flight requests run to completion (a produce already in the WAL must finish);
        # their responses are dropped.
        self._pending.clear()
        self._timings.clear()

    def _update_reading(self) -> None:
        if self._transport is None:
            return
        busy = len(self._pending) >= MAX_IN_FLIGHT or self._write_paused
        if busy and not self._paused_reading:
            self._transport.pause_reading()
            self._paused_reading = True
        elif not busy and self._paused_reading:
            self._transport.resume_reading()
            self._paused_reading = False

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pending.clear()
        self._timings.clear()
        self._on_close(self)


class KafkaListener:
    def __init__(self, dispatch: Dispatch, host: str, port: int,
                 max_frame: int = 100 << 20, observer: RequestObserver | None = None,
                 name: str = "PLAINTEXT", zones: ZoneRules = NO_RULES) -> None:
        self._dispatch = dispatch
        self._observer = observer
        self.host = host
        self.port = port
        self.name = name
        self._zones = zones
        self._max_frame = max_frame
        self._server: asyncio.Server | None = None
        self.connections: set[KafkaConnection] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> KafkaConnection:
            conn = KafkaConnection(self._dispatch, self._max_frame, self.connections.discard,
                                   self._observer, self.name, self._zones)
            self.connections.add(conn)
            return conn

        self._server = await loop.create_server(factory, self.host, self.port,
                                                reuse_address=True, backlog=1024)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("listening on %s:%d (%s)", self.host, self.port, self.name)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for c in list(self.connections):
                c.abort("broker shutting down")
            await self._server.wait_closed()
            self._server = None
