"""Topics: names, ids, configs and their partitions, persisted under `/topics/<name>`."""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field

from tidelog.metadata.base import Fenced, MetadataStore
from tidelog.partition.partition import PRODUCERS, Partition
from tidelog.stream.engine import StreamEngine
from tidelog.stream.stream import Stream

log = logging.getLogger(__name__)
TOPICS = "/topics/"
LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


class TopicError(Exception):
    """Carries the Kafka error name the API layer maps to a code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Topic:
    name: str
    topic_id: uuid.UUID
    partitions: list[Partition]
    configs: dict[str, str] = field(default_factory=dict)
    internal: bool = False


def validate_name(name: str) -> None:
    if name in (".", "..") or not LEGAL_NAME.match(name):
        raise TopicError("invalid_topic_exception", f"illegal topic name {name!r}")


class TopicManager:
    def __init__(self, engine: StreamEngine, meta: MetadataStore,
                 producer_expiration_ms: int = 86_400_000) -> None:
        self.engine = engine
        self.meta = meta
        self.producer_expiration_ms = producer_expiration_ms
        self.topics: dict[str, Topic] = {}
        self.by_id: dict[uuid.UUID, Topic] = {}

    async def load(self) -> None:
        for e in await self.meta.list(TOPICS):
            rec = json.loads(e.value)
            name = e.key[len(TOPICS):]
            parts = []
            for i, sid in enumerate(rec["streams"]):
                stream = self.engine.streams.get(sid)
                if stream is None:
                    log.error("topic %s partition %d: stream %d is missing", name, i, sid)
                    break
                parts.append(self._partition(name, i, stream))
            else:
                self._add(Topic(name, uuid.UUID(rec["id"]), parts, rec.get("configs", {})))
        await self.restore_producers()

    async def restore_producers(self) -> None:
        """Rebuild every partition's producer state (snapshot + header scan)."""
        for topic in self.topics.values():
            for p in topic.partitions:
                await p.restore_producers()

    async def snapshot_producers(self) -> None:
        """Snapshot every partition's producer state (clean shutdown: faster restart)."""
        for topic in self.topics.values():
            for p in topic.partitions:
                await p.snapshot_producers()

    def _partition(self, name: str, index: int, stream: Stream) -> Partition:
        return Partition(name, index, stream, stream.epoch, self.meta,
                         self.producer_expiration_ms)

    def _add(self, topic: Topic) -> None:
        self.topics[topic.name] = topic
        self.by_id[topic.topic_id] = topic

    def get(self, name: str) -> Topic | None:
        return self.topics.get(name)

    def partition(self, name: str, index: int) -> Partition | None:
        t = self.topics.get(name)
        if t is None or not 0 <= index < len(t.partitions):
            return None
        return t.partitions[index]

    async def create(
        self, name: str, num_partitions: int, configs: dict[str, str] | None = None,
        validate_only: bool = False,
    ) -> Topic:
        validate_name(name)
        if name in self.topics:
            raise TopicError("topic_already_exists", f"topic {name!r} already exists")
        if num_partitions <= 0 or num_partitions > 100_000:
            raise TopicError("invalid_partitions", f"invalid partition count {num_partitions}")
        topic_id = uuid.uuid4()
        if validate_only:
            return Topic(name, topic_id, [], dict(configs or {}))
        streams = [await self.engine.create_stream() for _ in range(num_partitions)]
        cfg = dict(configs or {})
        rec = {"id": str(topic_id), "streams": [s.stream_id for s in streams], "configs": cfg}
        try:
            await self.meta.put_if(TOPICS + name, json.dumps(rec).encode(), 0)
        except Fenced:
            for s in streams:
                await self.engine.delete_stream(s.stream_id)
            raise TopicError("topic_already_exists", f"topic {name!r} already exists") from None
        topic = Topic(name, topic_id, [self._partition(name, i, s)
                                       for i, s in enumerate(streams)], cfg)
        self._add(topic)
        log.info("created topic %s with %d partitions", name, num_partitions)
        return topic

    async def delete(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise TopicError("unknown_topic_or_partition", f"topic {name!r} does not exist")
        await self.meta.delete(TOPICS + name)
        del self.topics[name]
        self.by_id.pop(topic.topic_id, None)
        for p in topic.partitions:
            await self.engine.delete_stream(p.stream.stream_id)
            await self.meta.delete(f"{PRODUCERS}{p.stream.stream_id}")
        log.info("deleted topic %s", name)
        return topic
