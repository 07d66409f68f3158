"""Turns: requests that arrive in order keep it across their awaits (a proxy's WAL write
then its forward; an owner's WAL read then its append), as Kafka keeps a producer's
pipelined batches in order per connection."""

from __future__ import annotations

import asyncio
import contextlib


class Turns:
    def __init__(self) -> None:
        self._next = 0
        self._done: dict[int, asyncio.Future[None]] = {}

    def take(self) -> int:
        """A place in line: call it before the first await, in arrival order."""
        ticket = self._next
        self._next += 1
        self._done[ticket] = asyncio.get_running_loop().create_future()
        return ticket

    async def wait(self, ticket: int) -> None:
        """Until every earlier ticket is done."""
        before = self._done.get(ticket - 1)
        if before is not None:
            await asyncio.shield(before)

    def done(self, ticket: int) -> None:
        """This ticket's ordered step is taken (or abandoned): the next one may go, once
        every earlier one went too."""
        fut = self._done.get(ticket)
        if fut is None or fut.done():
            return
        before = self._done.get(ticket - 1)
        if before is None or before.done():
            self._finish(ticket)
        else:
            before.add_done_callback(lambda _f: self._finish(ticket))

    def _finish(self, ticket: int) -> None:
        fut = self._done.get(ticket)
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._done.pop(ticket - 1, None)
        with contextlib.suppress(KeyError):
            if ticket == self._next - 1:
                del self._done[ticket]
