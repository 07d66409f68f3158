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
them. On a cluster the topic has many partitions (`offsets.topic.num.partitions`), each
owned by one broker: `StateLogs` keeps one `StateLog` per partition owned here and sends
each entry to the partition of the id its key names (a group or transactional id, by
Kafka's rule), so FindCoordinator can answer that partition's owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence

from tidelog.partition.partition import Partition
from tidelog.partition.topics import Topic, TopicError, TopicManager
from tidelog.protocol.record_reader import read_records
from tidelog.protocol.records import build_batch, iter_headers

log = logging.getLogger(__name__)

TOPIC = "__consumer_offsets"
MAX_BATCH_RECORDS = 1000


class NotCoordinator(Exception):
    """The id's state-log partition is not owned (or not loaded yet) on this broker."""


def java_hash(s: str) -> int:
    """Java's `String.hashCode` (over UTF-16 code units, 32-bit wrap-around): Kafka maps a
    group or transactional id to its coordinator partition with it."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def partition_for(key_id: str, partitions: int) -> int:
    """Kafka's `Utils.abs(id.hashCode()) % partitions`."""
    h = java_hash(key_id)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def key_id(key: bytes) -> str:
    """The group or transactional id a state-log key belongs to: `o/["group", ...]`
    (offsets) and `p/["group", pid]` (staged offsets), otherwise `<kind>/<id>`."""
    body = key[2:]
    if key.startswith((b"o/", b"p/")):
        return str(json.loads(body)[0])
    return body.decode(errors="replace")


async def ensure_internal_topic(topics: TopicManager, name: str, partitions: int) -> Topic:
    """The internal topic, created (compacted) when absent; a concurrent create by another
    broker is waited for through the catalog."""
    topic = topics.get(name)
    if topic is None:
        try:
            topic = await topics.create(name, partitions, {"cleanup.policy": "compact"})
        except TopicError as exc:
            if exc.code != "topic_already_exists":
                raise
            topic = await topics.wait_topic(name)
    topic.internal = True
    return topic


class StateLog:
    def __init__(self, topics: TopicManager, compact_ratio: float = 4.0,
                 compact_min_records: int = 10_000, topic: str = TOPIC,
                 index: int = 0) -> None:
        self._topics = topics
        self.topic = topic
        self.index = index
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
        topic = await ensure_internal_topic(self._topics, self.topic, self.index + 1)
        p = topic.owned.get(self.index)
        if p is None:
            raise NotCoordinator(f"{self.topic}-{self.index} is not owned by this broker")
        self._partition = p
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
        log.log(logging.INFO if self._records else logging.DEBUG,
                "%s-%d: %d live keys from %d records", self.topic, self.index,
                len(self._live), self._records)
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


class StateLogs:
    """The state logs of the internal topic's partitions owned here, as one log: a write
    goes to the partition of each entry's id; reads of state are the coordinators' own."""

    def __init__(self, topics: TopicManager, topic: str = TOPIC, partitions: int = 1,
                 key_of: Callable[[bytes], str] = key_id, **log_options: float) -> None:
        self._topics = topics
        self.topic = topic
        self._create_partitions = partitions
        self._key_of = key_of
        self._options = log_options
        self.logs: dict[int, StateLog] = {}
        self._loading: set[int] = set()
        self._creating: asyncio.Task[Topic] | None = None

    @property
    def count(self) -> int:
        """Partitions of the topic (the configured count until it exists)."""
        topic = self._topics.get(self.topic)
        return topic.count if topic is not None else self._create_partitions

    async def load(self, create: bool = True) -> dict[bytes, bytes]:
        """Replay every partition owned here, creating the topic first if `create` (a
        cluster creates it on the first FindCoordinator instead, as Kafka does, so its
        partitions spread over the brokers up by then)."""
        topic = self._topics.get(self.topic)
        if topic is None:
            if not create:
                return {}
            topic = await self.ensure()
        state: dict[bytes, bytes] = {}
        for index in sorted(topic.owned):
            state.update(await self.load_partition(index))
        log.info("%s: %d of %d partitions coordinated here, %d live keys", self.topic,
                 len(self.logs), topic.count, len(state))
        return state

    async def ensure(self) -> Topic:
        """The topic, created if absent (one creation at a time on this broker)."""
        topic = self._topics.get(self.topic)
        if topic is not None:
            return topic
        if self._creating is None or self._creating.done():
            self._creating = asyncio.ensure_future(ensure_internal_topic(
                self._topics, self.topic, self._create_partitions))
        return await asyncio.shield(self._creating)

    async def load_partition(self, index: int) -> dict[bytes, bytes]:
        """Replay one partition (at start, or when it is opened here later). Once: a second
        call while the first replays gets nothing to restore (restoring the same groups
        twice would orphan the requests parked on the first copy)."""
        if index in self.logs or index in self._loading:
            return {}
        self._loading.add(index)
        try:
            one = StateLog(self._topics, topic=self.topic, index=index,
                           **self._options)  # type: ignore[arg-type]
            state = await one.load()
        finally:
            self._loading.discard(index)
        self.logs[index] = one
        return state

    def unload_partition(self, index: int) -> bool:
        """Forget a partition that is no longer served here (writes for its ids now fail
        with NotCoordinator); False when it was not loaded."""
        return self.logs.pop(index, None) is not None

    def partition_for(self, key_id_: str) -> int:
        return partition_for(key_id_, self.count)

    def owns(self, key_id_: str) -> bool:
        return self.partition_for(key_id_) in self.logs

    def log_for(self, key_id_: str) -> StateLog:
        one = self.logs.get(self.partition_for(key_id_))
        if one is None:
            raise NotCoordinator(f"the coordinator of {key_id_!r} is not on this broker")
        return one

    @property
    def partition(self) -> Partition:
        """The only partition (a single broker's one-partition topic; tests)."""
        return next(iter(self.logs.values())).partition

    async def write(self, entries: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Make `entries` durable, each in its id's partition (in order per partition)."""
        by_log: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for key, value in entries:
            by_log.setdefault(self.partition_for(self._key_of(key)), []).append((key, value))
        missing = [i for i in by_log if i not in self.logs]
        if missing:
            raise NotCoordinator(f"{self.topic} partitions {missing} are not on this broker")
        if len(by_log) == 1:
            (index, part), = by_log.items()
            await self.logs[index].write(part)
            return
        await asyncio.gather(*(self.logs[i].write(part) for i, part in by_log.items()))

    async def compact(self) -> None:
        for one in self.logs.values():
            await one.compact()
