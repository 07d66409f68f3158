"""Topics: names, ids, configs and their partitions, persisted under `/topics/<name>`;
the broker's dynamic configs under `/configs/brokers/<node id | default>`.

Every change of a topic's record (configs, partitions) is a compare-and-set on its
version, so two brokers (or two admin requests) never lose each other's update.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tidelog.metadata.base import Fenced, MetadataStore
from tidelog.partition.partition import DEFAULT_CONFIG, PRODUCERS, Partition
from tidelog.partition.topic_config import (
    InvalidConfig,
    ReadOnlyConfig,
    TopicConfig,
    resolve,
    validate,
    validate_broker,
)
from tidelog.stream.engine import StreamEngine
from tidelog.stream.stream import Stream

log = logging.getLogger(__name__)
TOPICS = "/topics/"
BROKER_CONFIGS = "/configs/brokers/"
DEFAULT_SCOPE = "default"
LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
MAX_PARTITIONS = 100_000


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
    """The topic's overrides, as set (names and strings)."""
    internal: bool = False
    resolved: TopicConfig = DEFAULT_CONFIG
    """The typed view of `configs` over the broker's configs."""


def validate_name(name: str) -> None:
    if name in (".", "..") or not LEGAL_NAME.match(name):
        raise TopicError("invalid_topic_exception", f"illegal topic name {name!r}")


def _lenient(configs: Mapping[str, str], broker: Mapping[str, str]) -> TopicConfig:
    """Resolve stored overrides, ignoring (with a warning) any a current check refuses:
    topics created before configs were validated must still load."""
    try:
        return resolve(configs, broker)
    except InvalidConfig:
        pass
    kept = {}
    for k, v in configs.items():
        try:
            resolve({k: v}, broker)
        except (InvalidConfig, KeyError) as exc:
            log.warning("ignoring topic config %s=%s: %s", k, v, exc)
            continue
        kept[k] = v
    return resolve(kept, broker)


class TopicManager:
    def __init__(self, engine: StreamEngine, meta: MetadataStore,
                 producer_expiration_ms: int = 86_400_000,
                 broker_configs: Mapping[str, str] | None = None) -> None:
        self.engine = engine
        self.meta = meta
        self.producer_expiration_ms = producer_expiration_ms
        self.topics: dict[str, Topic] = {}
        self.by_id: dict[uuid.UUID, Topic] = {}
        self.static_configs: dict[str, str] = dict(broker_configs or {})
        """The broker's configuration (defaults included) as it started."""
        self.node_id = self.static_configs.get("node.id", "0")
        self.dynamic_configs: dict[str, dict[str, str]] = {DEFAULT_SCOPE: {}, self.node_id: {}}
        """Dynamic broker configs by scope: the cluster default and this broker's."""
        self._dynamic_versions: dict[str, int] = {}
        self._admin = asyncio.Lock()
        self.defaults = resolve({}, self.static_configs)  # a bad broker value fails the start

    @property
    def broker_configs(self) -> dict[str, str]:
        """The broker values topic configs default to: static, then dynamic layers."""
        return {**self.static_configs, **self.dynamic_configs[DEFAULT_SCOPE],
                **self.dynamic_configs[self.node_id]}

    def topic_config(self, topic: Topic) -> TopicConfig:
        """The typed config the broker acts on (retention, compaction, produce limits)."""
        return topic.resolved

    def _apply_configs(self, topic: Topic) -> None:
        topic.resolved = _lenient(topic.configs, self.broker_configs)
        for p in topic.partitions:
            p.config = topic.resolved

    async def load(self) -> None:
        for scope in (DEFAULT_SCOPE, self.node_id):
            entry = await self.meta.get(BROKER_CONFIGS + scope)
            if entry is not None:
                self.dynamic_configs[scope] = json.loads(entry.value)["configs"]
                self._dynamic_versions[scope] = entry.version
        self.defaults = _lenient({}, self.broker_configs)
        owned: set[int] = set()
        for e in await self.meta.list(TOPICS):
            rec = json.loads(e.value)
            name = e.key[len(TOPICS):]
            owned.update(rec["streams"])
            parts = []
            for i, sid in enumerate(rec["streams"]):
                stream = self.engine.streams.get(sid)
                if stream is None:
                    log.error("topic %s partition %d: stream %d is missing", name, i, sid)
                    break
                parts.append(self._partition(name, i, stream))
            else:
                self._add(Topic(name, uuid.UUID(rec["id"]), parts, rec.get("configs", {})))
        await self._delete_unowned(owned)
        await self.restore_producers()

    async def _delete_unowned(self, owned: set[int]) -> None:
        """Streams no topic names: a create (streams first, then the topic record) or a
        delete (record first, then the streams) cut short by a crash. Their data goes, as
        the cut-short operation would have done or undone."""
        for sid in sorted(set(self.engine.streams) - owned):
            log.warning("stream %d belongs to no topic (a topic create or delete was cut "
                        "short): deleting it", sid)
            await self.engine.delete_stream(sid)
            await self.meta.delete(f"{PRODUCERS}{sid}")


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
        self._apply_configs(topic)
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
        if num_partitions <= 0 or num_partitions > MAX_PARTITIONS:
            raise TopicError("invalid_partitions", f"invalid partition count {num_partitions}")
        cfg = dict(configs or {})
        resolved = self._validate(cfg)
        topic_id = uuid.uuid4()
        if validate_only:
            return Topic(name, topic_id, [], cfg, resolved=resolved)
        streams = [await self.engine.create_stream() for _ in range(num_partitions)]
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

    # ---- administration ---------------------------------------------------------------

    def _validate(self, configs: Mapping[str, str]) -> TopicConfig:
        try:
            return validate(configs, self.broker_configs)
        except InvalidConfig as exc:
            raise TopicError("invalid_config", str(exc)) from None

    def _existing(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise TopicError("unknown_topic_or_partition", f"topic {name!r} does not exist")
        return topic

    async def _update(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply `change` to the topic's stored record with compare-and-set (re-read and
        re-applied when another writer got there first)."""
        for _ in range(10):
            entry = await self.meta.get(TOPICS + name)
            if entry is None:
                raise TopicError("unknown_topic_or_partition", f"topic {name!r} does not exist")
            rec = json.loads(entry.value)
            change(rec)
            try:
                await self.meta.put_if(TOPICS + name, json.dumps(rec).encode(), entry.version)
                return
            except Fenced:
                continue
        raise TopicError("request_timed_out", f"topic {name!r} keeps changing; retry")

    async def alter_configs(self, name: str, configs: Mapping[str, str],
                            validate_only: bool = False) -> TopicConfig:
        """Replace the topic's overrides with `configs` (INVALID_CONFIG if any is refused);
        returns the resolved config."""
        async with self._admin:
            topic = self._existing(name)
            cfg = dict(configs)
            resolved = self._validate(cfg)
            if validate_only:
                return resolved

            def put(rec: dict[str, Any]) -> None:
                rec["configs"] = cfg

            await self._update(name, put)
            topic.configs = cfg
            self._apply_configs(topic)
            log.info("topic %s configs: %s", name, cfg)
            return topic.resolved

    async def add_partitions(self, name: str, new_total: int,
                             validate_only: bool = False) -> Topic:
        """Grow the topic to `new_total` partitions (CreatePartitions)."""
        async with self._admin:
            topic = self._existing(name)
            current = len(topic.partitions)
            if new_total < current:
                raise TopicError("invalid_partitions", f"topic currently has {current} "
                                 f"partitions, which is higher than the requested {new_total}")
            if new_total == current:
                raise TopicError("invalid_partitions", f"topic already has {current} partitions")
            if new_total > MAX_PARTITIONS:
                raise TopicError("invalid_partitions",
                                 f"{new_total} partitions exceed the limit of {MAX_PARTITIONS}")
            if validate_only:
                return topic
            streams = [await self.engine.create_stream() for _ in range(new_total - current)]

            def grow(rec: dict[str, Any]) -> None:
                if len(rec["streams"]) != current:
                    raise TopicError("invalid_partitions", f"topic {name!r} changed meanwhile")
                rec["streams"] = rec["streams"] + [s.stream_id for s in streams]

            try:
                await self._update(name, grow)
            except BaseException:
                for s in streams:
                    await self.engine.delete_stream(s.stream_id)
                raise
            for i, s in enumerate(streams, start=current):
                p = self._partition(name, i, s)
                p.config = topic.resolved
                topic.partitions.append(p)
            log.info("topic %s: %d -> %d partitions", name, current, new_total)
            return topic

    def dynamic_scope(self, resource_name: str) -> str:
        """The scope of a BROKER config resource: "" is the cluster default, else this
        broker's id; another id is refused (INVALID_REQUEST, as Kafka)."""
        if resource_name == "":
            return DEFAULT_SCOPE
        if resource_name.strip() != self.node_id:
            raise TopicError("invalid_request", f"unexpected broker id, expected "
                             f"{self.node_id} or empty string, but received {resource_name}")
        return self.node_id

    async def alter_broker_configs(self, resource_name: str, configs: Mapping[str, str],
                                   validate_only: bool = False) -> None:
        """Replace the dynamic configs of one scope. Only keys that serve topic defaults
        may change at run time (Kafka's dynamic log configs); every topic follows."""
        async with self._admin:
            scope = self.dynamic_scope(resource_name)
            new = dict(configs)
            other = dict(self.static_configs)
            for s, values in self.dynamic_configs.items():
                if s != scope:
                    other.update(values)
            try:
                validate_broker(new, other, self.static_configs)
            except InvalidConfig as exc:
                code = "invalid_request" if isinstance(exc, ReadOnlyConfig) else "invalid_config"
                raise TopicError(code, str(exc)) from None
            if validate_only:
                return
            value = json.dumps({"configs": new}).encode()
            try:
                self._dynamic_versions[scope] = await self.meta.put_if(
                    BROKER_CONFIGS + scope, value, self._dynamic_versions.get(scope, 0))
            except Fenced:
                entry = await self.meta.get(BROKER_CONFIGS + scope)
                self._dynamic_versions[scope] = entry.version if entry else 0
                raise TopicError("invalid_request", "broker configs changed meanwhile; "
                                 "describe them and retry") from None
            self.dynamic_configs[scope] = new
            self.defaults = _lenient({}, self.broker_configs)
            for topic in self.topics.values():
                self._apply_configs(topic)
            log.info("dynamic broker configs (%s): %s", scope, new)
