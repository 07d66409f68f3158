"""The balancer: on the controller, asks for partition moves (`/moves/`, carried out by
the owners) so every live broker owns about as many partitions. It runs when a broker
joins (a moment later, so the joiner is serving) and every
`leader.imbalance.check.interval.seconds`; `auto.leader.rebalance.enable=false` turns it
off (docs/design/0002-failover.md, scaling)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tidelog.controller.balance import plan_moves
from tidelog.controller.membership import Membership
from tidelog.metadata.base import MetadataError
from tidelog.partition.topics import TopicManager

log = logging.getLogger(__name__)

MOVES_PER_ROUND = 100


class Balancer:
    def __init__(self, topics: TopicManager, membership: Membership,
                 is_controller: Callable[[], bool], interval: float = 300.0,
                 settle: float = 1.0) -> None:
        self.topics = topics
        self.membership = membership
        self._is_controller = is_controller
        self.interval = interval
        self.settle = settle
        self._poke = asyncio.Event()
        self._known: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self.moves_asked = 0

    def start(self) -> None:
        self._known = set(self.membership.live)
        self.membership.listeners.append(self._changed)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="balancer")

    async def stop(self) -> None:
        if self._changed in self.membership.listeners:
            self.membership.listeners.remove(self._changed)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        self._poke.set()

    def _changed(self) -> None:
        live = set(self.membership.live)
        if live - self._known:  # a broker joined: give it its share
            self._poke.set()
        self._known = live

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.interval)
            self._poke.clear()
            await asyncio.sleep(self.settle)  # let a joiner finish starting
            if not self._is_controller():
                continue
            try:
                await self.balance()
            except MetadataError as exc:
                log.warning("balancing failed (next round retries): %s", exc)

    async def balance(self) -> int:
        """Ask for the moves that even out partition counts; returns how many."""
        live = sorted(self.membership.live)
        owners = {sid: owner for sid, (owner, _epoch) in self.topics.streams.items()
                  if owner in self.membership.live and self.topics.named(sid)}
        plan = plan_moves(owners, live, dict(self.topics.moves), MOVES_PER_ROUND,
                          {sid: self.topics.topic_of(sid) for sid in owners})
        for sid, target in plan:
            await self.topics.request_stream_move(sid, target)
        if plan:
            self.moves_asked += len(plan)
            counts = {b: 0 for b in live}
            for owner in owners.values():
                counts[owner] += 1
            log.info("balancing %s partitions per broker: %d moves asked for", counts,
                     len(plan))
        return len(plan)
