"""The coordinators' durable state: a key-value log in an internal topic
(`__consumer_offsets` for groups, `__transaction_state` for transactions), on the same
stream engine as user data (WAL, then objects).

Vocabulary:
- *entry*: `(key, value)`; a `None` value is a tombstone that deletes the key.
- *load*: replaying the partition from its start gives the latest value of every key.
- *compaction*: when the log holds many more records than live keys, the live entries are
  written again as fresh records and the stream is trimmed to where that rewrite starts,
  so the log stays proportional to the live state (Kafka's compacted topic, done by
  snapshot-and-trim since a stream is append-only).

Keys and values are the coordinators' own bytes (JSON); nothing outside the broker reads
them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from tidelog.partition.partition import Partition
from tidelog.partition.topics import TopicError, TopicManager
from tidelog.protocol.record_reader import read_records
from tidelog.protocol.records import build_batch, iter_headers

log = logging.getLogger(__name__)

TOPIC = "__consumer_offsets"
MAX_BATCH_RECORDS = 1000


class StateLog:
    def __init__(self, topics: TopicManager, compact_ratio: float = 4.0,
                 compact_min_records: int = 10_000, topic: str = TOPIC) -> None:
        self._topics = topics
        self.topic = topic
        self._partition: Partition | None = None
        self._live: dict[bytes, bytes] = {}
        self._records = 0  # records since the start of the stream
        self._compact_ratio = compact_ratio
        self._compact_min = compact_min_records
        # Writes run concurrently (they share WAL group commits); a compaction waits for
        # writes in flight and holds new ones back, so its snapshot is the latest state.
        self._compacting = False
        self._writers = 0
        self._changed = asyncio.Condition()

    @property
    def partition(self) -> Partition:
        assert self._partition is not None, "StateLog.load() first"
        return self._partition

    async def load(self) -> dict[bytes, bytes]:
        """Create the internal topic if needed and replay it: the latest value per key."""
        topic = self._topics.get(self.topic)
        if topic is None:
            try:
                topic = await self._topics.create(self.topic, 1, {"cleanup.policy": "compact"})
            except TopicError:
                topic = self._topics.get(self.topic)
            assert topic is not None
        topic.internal = True
        self._partition = topic.partitions[0]
        p = self._partition
        offset = p.log_start_offset
        while offset < p.high_watermark:
            bufs, offset = await p.stream.fetch(offset, 4 << 20)
            if not bufs:
                break
            for buf in bufs:
                for info in iter_headers(buf):
                    for _off, _ts, key, value in read_records(buf, info):
                        if key is None:
                            continue
                        self._records += 1
                        if value is None:
                            self._live.pop(key, None)
                        else:
                            self._live[key] = value
        log.info("%s: %d live keys from %d records", self.topic, len(self._live),
                 self._records)
        return dict(self._live)

    async def write(self, entries: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Make `entries` durable (returns once they are in the WAL), in order."""
        if not entries:
            return
        async with self._changed:
            await self._changed.wait_for(lambda: not self._compacting)
            self._writers += 1
        try:
            for i in range(0, len(entries), MAX_BATCH_RECORDS):
                chunk = list(entries[i : i + MAX_BATCH_RECORDS])
                await self.partition.append(build_batch(chunk, timestamp=_now_ms()))
                for key, value in chunk:
                    if value is None:
                        self._live.pop(key, None)
                    else:
                        self._live[key] = value
                self._records += len(chunk)
        finally:
            async with self._changed:
                self._writers -= 1
                self._changed.notify_all()
        if (not self._compacting and self._records > self._compact_min
                and self._records > self._compact_ratio * max(len(self._live), 1)):
            await self.compact()

    async def compact(self) -> None:
        """Rewrite the live entries, then trim everything before the rewrite."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._compacting and not self._writers)
            self._compacting = True
        try:
            p = self.partition
            start = p.high_watermark
            live = list(self._live.items())
            for i in range(0, len(live), MAX_BATCH_RECORDS):
                await p.append(build_batch(live[i : i + MAX_BATCH_RECORDS],
                                           timestamp=_now_ms()))
            await p.stream.trim(start)
            self._records = len(live)
            log.info("%s compacted to %d live keys", self.topic, len(live))
        finally:
            async with self._changed:
                self._compacting = False
                self._changed.notify_all()


def _now_ms() -> int:
    return int(time.time() * 1000)
