"""The background task that applies each topic's cleanup policy: retention every
`log.retention.check.interval.ms`, log compaction every `log.cleaner.backoff.ms`.

Internal topics are left alone: their state logs compact themselves (snapshot + trim).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tidelog.partition.log_compactor import CleanerState, compact_partition
from tidelog.partition.retention import enforce_retention
from tidelog.partition.topic_config import TopicConfig
from tidelog.partition.topics import TopicManager

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LogManagerConfig:
    retention_check_interval: float = 300.0
    cleaner_backoff: float = 15.0
    cleaner_enabled: bool = True
    cleaner_max_bytes: int = 256 << 20


class LogManager:
    def __init__(self, topics: TopicManager, config: LogManagerConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.topics = topics
        self.config = config
        self._clock = clock
        self._cleaners: dict[int, CleanerState] = {}
        self._task: asyncio.Task[None] | None = None
        self.offsets_deleted = 0
        self.cleaner_runs = 0
        self.records_cleaned = 0
        self.rolls = 0
        """Uploads the cleaner asked for early (`_segment_due`)."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="log-manager")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        cfg = self.config
        next_retention = next_clean = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_retention:
                    await self.apply_retention()
                    next_retention = now + cfg.retention_check_interval
                if cfg.cleaner_enabled and now >= next_clean:
                    await self.clean()
                    next_clean = now + cfg.cleaner_backoff
            except Exception as exc:  # nothing was changed half-way: try again next time
                log.warning("log cleanup failed: %r", exc)
            wait = min(next_retention, next_clean if cfg.cleaner_enabled else next_retention)
            await asyncio.sleep(max(wait - time.monotonic(), 0.05))

    async def apply_retention(self) -> int:
        """One retention pass over every user topic; returns offsets removed."""
        now_ms = int(self._clock() * 1000)
        removed = 0
        for topic in list(self.topics.topics.values()):
            if topic.internal:
                continue
            cfg = self.topics.topic_config(topic)
            for p in list(topic.owned.values()):
                if p.stream.stream_id in self.topics.engine.streams:
                    removed += await enforce_retention(p, cfg, now_ms)
        self.offsets_deleted += removed
        return removed

    async def clean(self) -> int:
        """One log-compaction pass over every compacted user topic; returns partitions
        cleaned."""
        now_ms = int(self._clock() * 1000)
        engine = self.topics.engine
        live = engine.streams
        compacted = [(p, cfg) for topic in list(self.topics.topics.values())
                     if not topic.internal
                     and "compact" in (cfg := self.topics.topic_config(topic)).cleanup_policy
                     for p in list(topic.owned.values()) if p.stream.stream_id in live]
        if any(_segment_due(engine.unuploaded(p.stream.stream_id), cfg, now_ms)
               for p, cfg in compacted):
            self.rolls += 1
            await engine.upload()
        cleaned = 0
        for p, cfg in compacted:
            sid = p.stream.stream_id
            if sid not in live:
                continue
            state = self._cleaners.setdefault(sid, CleanerState())
            result = await compact_partition(engine, p, cfg, state, now_ms,
                                             self.config.cleaner_max_bytes)
            if result is not None:
                cleaned += 1
                self.cleaner_runs += 1
                self.records_cleaned += result.records_before - result.records_after
        for sid in [s for s in self._cleaners if s not in live]:
            del self._cleaners[sid]
        return cleaned


def _segment_due(unuploaded: tuple[int, int | None], cfg: TopicConfig, now_ms: int) -> bool:
    """Whether a compacted partition's data not yet uploaded should be uploaded now, to
    become cleanable: Kafka rolls its active segment at `segment.bytes`, at `segment.ms`,
    and once it holds data older than `max.compaction.lag.ms`; an upload is our roll."""
    size, oldest = unuploaded
    if oldest is None:
        return False
    return size >= cfg.segment_bytes or \
        now_ms - oldest >= min(cfg.segment_ms, cfg.max_compaction_lag_ms)
