"""The balancer: on the controller, asks for partition moves (`/moves/`, carried out by
the owners) so every live broker owns about as many partitions, then takes about as many
produce bytes per second. It runs when a broker joins (a moment later, so the joiner is
serving) and every `leader.imbalance.check.interval.seconds`;
`auto.leader.rebalance.enable=false` turns it off (docs/design/0002-failover.md, scaling).

Every broker reports its partitions' produce rates over the last interval in
`/loads/<node>` (under its lease: a dead broker's report goes with it); the controller
reads them when it balances. A round after one that moved anything leaves bytes alone, so
the moved partitions' new owners have reported them first."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from tidelog.controller.balance import plan_moves, plan_swaps
from tidelog.controller.membership import Membership
from tidelog.metadata.base import MetadataError
from tidelog.partition.topics import TopicManager

LOADS = "/loads/"

log = logging.getLogger(__name__)

MOVES_PER_ROUND = 100


class Balancer:
    def __init__(self, topics: TopicManager, membership: Membership,
                 is_controller: Callable[[], bool], interval: float = 300.0,
                 settle: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.topics = topics
        self.membership = membership
        self._is_controller = is_controller
        self.interval = interval
        self.settle = settle
        self._poke = asyncio.Event()
        self._known: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._clock = clock
        self._counted: dict[int, tuple[object, int, float]] = {}
        """Stream id -> (the stream, its appended bytes, when) at the last report."""
        self._reported = clock()
        self._moved = False
        self.moves_asked = 0
        self.swaps_asked = 0

    def start(self) -> None:
        self._known = set(self.membership.live)
        self.membership.listeners.append(self._changed)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="balancer")
        self._reporter = loop.create_task(self._report_loop(), name="load-reports")

    async def stop(self) -> None:
        if self._changed in self.membership.listeners:
            self.membership.listeners.remove(self._changed)
        for task in (self._task, self._reporter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reporter = None

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
        """Ask for the moves that even out partition counts, or else produce bytes/s;
        returns how many."""
        live = sorted(self.membership.live)
        owners = {sid: owner for sid, (owner, _epoch) in self.topics.streams.items()
                  if owner in self.membership.live and self.topics.named(sid)}
        pending = dict(self.topics.moves)
        plan = plan_moves(owners, live, pending, MOVES_PER_ROUND,
                          {sid: self.topics.topic_of(sid) for sid in owners})
        what = "partitions"
        rates: dict[int, float] = {}
        if not plan and not self._moved:
            rates = await self.rates()
            plan = plan_swaps(owners, live, rates, pending, MOVES_PER_ROUND)
            what = "produce bytes/s"
            self.swaps_asked += len(plan)
        for sid, target in plan:
            await self.topics.request_stream_move(sid, target)
        self._moved = bool(plan)
        if plan:
            self.moves_asked += len(plan)
            counts = {b: 0.0 for b in live}
            for sid, owner in owners.items():
                counts[owner] += 1 if what == "partitions" else rates.get(sid, 0.0)
            log.info("balancing %s per broker %s: %d moves asked for", what,
                     {b: round(v) for b, v in counts.items()}, len(plan))
        return len(plan)

    async def rates(self) -> dict[int, float]:
        """Stream id -> produce bytes/s, from the live brokers' reports."""
        out: dict[int, float] = {}
        for e in await self.topics.meta.list_all(LOADS):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                for sid, rate in json.loads(e.value)["rates"].items():
                    out[int(sid)] = float(rate)
        return out

    async def report(self) -> None:
        """Write this broker's partitions' produce bytes/s since the last report."""
        now = self._clock()
        counted: dict[int, tuple[object, int, float]] = {}
        rates: dict[str, float] = {}
        for sid, stream in list(self.topics.engine.streams.items()):
            last = self._counted.get(sid)
            if last is None or last[0] is not stream:  # opened since: count all it took
                last = (stream, 0, self._reported)
            if now > last[2]:
                rate = (stream.appended_bytes - last[1]) / (now - last[2])
                if rate > 0:
                    rates[str(sid)] = round(rate, 1)
            counted[sid] = (stream, stream.appended_bytes, now)
        self._counted, self._reported = counted, now
        lease = self.membership.lease
        if lease:
            await self.topics.meta.put(f"{LOADS}{self.membership.node_id}",
                                       json.dumps({"rates": rates}).encode(), lease=lease)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.report()
            except MetadataError as exc:
                log.warning("reporting produce rates failed (next interval retries): %s",
                            exc)
