"""The inter-broker client's connections: a long poll never holds another request's
answer (a broker answers each connection's requests in order)."""

from __future__ import annotations

import asyncio
import struct

from tidelog.net.peer import PeerClient
from tidelog.protocol.codec import encode_private_response, private_request


async def test_a_parked_long_poll_holds_no_other_answer() -> None:
    release = asyncio.Event()
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers each connection's requests in order, as a broker does; `slow` ones
        only once released."""
        nonlocal connections
        connections += 1
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                header, body = private_request(await reader.readexactly(size))
                if bytes(body) == b"slow":
                    await release.wait()
                writer.write(encode_private_response(header.correlation_id, b"re:" + body))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peers = PeerClient(1, lambda _n: ("127.0.0.1", port), timeout=5)
    try:
        poll = asyncio.ensure_future(peers.call(2, 32001, 0, b"slow", long_poll=True))
        assert bytes(await peers.call(2, 32000, 0, b"fast")) == b"re:fast"
        assert bytes(await peers.call(2, 32001, 0, b"quick", long_poll=True)) == b"re:quick"
        assert not poll.done() and connections == 3  # the parked poll has its own
        release.set()
        assert bytes(await poll) == b"re:slow"
        assert bytes(await peers.call(2, 32001, 0, b"again", long_poll=True)) == b"re:again"
        assert connections == 3  # idle poll connections are reused
    finally:
        await peers.close()
        server.close()
        await server.wait_closed()
