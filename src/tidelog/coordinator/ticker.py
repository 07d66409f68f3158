"""A background task that calls `tick()` at a fixed interval: the coordinators' timers
(session expiry, rebalance and transaction timeouts, retention) all hang off one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Ticker:
    def __init__(self, name: str, tick: Callable[[], Awaitable[None]], interval: float) -> None:
        self._name = name
        self._tick = tick
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._tick()
            except Exception:  # one bad group or id must not stop every timer
                log.exception("%s tick failed", self._name)
