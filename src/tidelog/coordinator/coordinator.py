"""The group coordinator: one object owning every consumer group on this broker.

Three parts, each in its own module, share one durable state log (`state_log.py`, the
internal topic `__consumer_offsets`):
- `offsets.OffsetStore`: committed offsets (OffsetCommit/OffsetFetch/OffsetDelete),
  retention; state-log keys start with `o/`.
- `classic.ClassicGroups`: the classic protocol (JoinGroup/SyncGroup/Heartbeat/LeaveGroup),
  keys start with `g/`.
- `consumer.ConsumerGroups`: the KIP-848 protocol (ConsumerGroupHeartbeat), keys start
  with `c/`.
Time comes from the injected clock; `tick` drives session and rebalance timeouts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tidelog.coordinator.classic import ClassicGroups
from tidelog.coordinator.consumer import ConsumerGroups
from tidelog.coordinator.offsets import OffsetStore
from tidelog.coordinator.state_log import StateLogs
from tidelog.coordinator.ticker import Ticker
from tidelog.partition.topics import TopicManager

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CoordinatorConfig:
    offsets_retention_ms: int = 7 * 24 * 3600 * 1000  # offsets.retention.minutes
    min_session_timeout_ms: int = 6000  # group.min.session.timeout.ms
    max_session_timeout_ms: int = 1_800_000  # group.max.session.timeout.ms
    initial_rebalance_delay_ms: int = 3000  # group.initial.rebalance.delay.ms
    consumer_session_timeout_ms: int = 45_000  # group.consumer.session.timeout.ms
    consumer_heartbeat_interval_ms: int = 5000  # group.consumer.heartbeat.interval.ms
    consumer_assignor: str = "uniform"  # group.consumer.assignors (first is the default)
    tick_interval: float = 0.1
    partitions: int = 1  # offsets.topic.num.partitions (when the topic is created)


class GroupCoordinator:
    def __init__(self, topics: TopicManager, config: CoordinatorConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topics = topics
        self.config = config or CoordinatorConfig()
        self.clock = clock
        self.log = StateLogs(topics, partitions=self.config.partitions)
        self.offsets = OffsetStore(self)
        self.classic = ClassicGroups(self)
        self.consumer = ConsumerGroups(self)
        self._ticker = Ticker("group-coordinator", self.tick, self.config.tick_interval)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def start(self, create: bool = True) -> None:
        self._restore(await self.log.load(create))
        self._ticker.start()

    def _restore(self, state: dict[bytes, bytes]) -> None:
        self.offsets.restore(state)
        self.classic.restore(state)
        self.consumer.restore(state)

    async def opened(self, topic: str, index: int) -> None:
        """A partition of `__consumer_offsets` was opened here after the start: load the
        groups it holds."""
        if topic == self.log.topic:
            self._restore(await self.log.load_partition(index))

    async def closed(self, topic: str, index: int) -> None:
        """A partition of `__consumer_offsets` is no longer served here: its groups are
        unloaded (the new owner loads them; members waiting here are told
        NOT_COORDINATOR and find it)."""
        if topic != self.log.topic or not self.log.unload_partition(index):
            return

        def belongs(group_id: str) -> bool:
            return self.log.partition_for(group_id) == index

        n = self.classic.unload(belongs) + self.consumer.unload(belongs)
        n_offsets = self.offsets.unload(belongs)
        log.info("%s-%d unloaded: %d groups, offsets of %d groups", topic, index, n,
                 n_offsets)

    def owns(self, group_id: str) -> bool:
        """This broker is the group's coordinator (its state-log partition is here)."""
        return self.log.owns(group_id)

    async def stop(self) -> None:
        await self._ticker.stop()

    async def tick(self) -> None:
        """Expire sessions, finish rebalances whose time is up, expire offsets."""
        now = self.now_ms()
        await self.classic.tick(now)
        await self.consumer.tick(now)
        await self.offsets.tick(now)

    def group_kind(self, group_id: str) -> str | None:
        """'classic', 'consumer', or None when no such group is active."""
        if self.classic.has(group_id):
            return "classic"
        if self.consumer.has(group_id):
            return "consumer"
        return None
