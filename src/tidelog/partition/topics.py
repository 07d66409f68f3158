"""Topics: names, ids, configs and their partitions, persisted under `/topics/<name>`;
the broker's dynamic configs under `/configs/brokers/<node id | default>`.

Every change of a topic's record (configs, partitions) is a compare-and-set on its
version, so two brokers (or two admin requests) never lose each other's update.

Two views: the *catalog* (every topic of the cluster: name, id, streams, configs) and the
*owned* partitions (a `Partition` for each stream open on this broker). On one broker they
coincide. In cluster mode the catalog follows `/topics/` and the stream records
(`/streams/`: owner and epoch, Kafka's leader and leader epoch) through watches, and a
stream placed on this broker is opened when its record appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tidelog.metadata.base import (
    MAX_TXN_OPS,
    Fenced,
    MetadataError,
    MetadataStore,
    Txn,
    WatchEvent,
    follow,
)
from tidelog.partition.partition import DEFAULT_CONFIG, PRODUCERS, Partition
from tidelog.partition.topic_config import (
    RUNTIME_BROKER_FLAGS,
    InvalidConfig,
    ReadOnlyConfig,
    TopicConfig,
    resolve,
    runtime_flag,
    validate,
    validate_broker,
)
from tidelog.stream.engine import STREAMS, StreamEngine, decode_stream, encode_stream
from tidelog.stream.objects import meta_key
from tidelog.stream.stream import Stream, StreamError, StreamMeta

log = logging.getLogger(__name__)
TOPICS = "/topics/"
MOVES = "/moves/"
"""`/moves/<stream>` `{target}`: a requested partition move (AlterPartitionReassignments),
done by the stream's owner (docs/design/0002-failover.md, moves)."""
BROKER_CONFIGS = "/configs/brokers/"
DEFAULT_SCOPE = "default"
LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
MAX_PARTITIONS = 100_000
INTERNAL = frozenset({"__consumer_offsets", "__transaction_state"})


class TopicError(Exception):
    """Carries the Kafka error name the API layer maps to a code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


Placer = Callable[[int], Awaitable[list[int]]]
"""Cluster mode: owners (node ids) for that many new partitions."""


@dataclass(slots=True)
class Topic:
    name: str
    topic_id: uuid.UUID
    streams: list[int]
    """Stream id of each partition (the catalog: the same on every broker)."""
    owned: dict[int, Partition] = field(default_factory=dict)
    """The partitions open on this broker, by index (all of them on a single broker)."""
    configs: dict[str, str] = field(default_factory=dict)
    """The topic's overrides, as set (names and strings)."""
    internal: bool = False
    resolved: TopicConfig = DEFAULT_CONFIG
    """The typed view of `configs` over the broker's configs."""

    @property
    def count(self) -> int:
        """Partitions of the topic, wherever they are owned."""
        return len(self.streams)


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
                 broker_configs: Mapping[str, str] | None = None,
                 placer: Placer | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.meta = meta
        self.clock = clock
        self.placer = placer
        """Set in cluster mode: where new partitions go (used by the controller only)."""
        self.is_controller: Callable[[], bool] = lambda: False
        self._placing: asyncio.Task[None] | None = None
        self._place_again = False
        self.cluster = engine.cluster
        self.streams: dict[int, tuple[int, int]] = {}
        """Cluster mode: stream id -> (owner node, epoch), from `/streams/`."""
        self._of_stream: dict[int, tuple[str, int]] = {}
        """stream id -> (topic, partition index)."""
        self._stream_changed = asyncio.Event()
        self._followers: list[asyncio.Task[None]] = []
        self._opening: set[int] = set()
        self.open_listeners: list[Callable[[str, int], Awaitable[None]]] = []
        """Called with (topic, index) when a partition is opened here after the start
        (the coordinators load the state-log partitions they gain)."""
        self.close_listeners: list[Callable[[str, int], Awaitable[None]]] = []
        """Called with (topic, index) when a partition stops being served here (the
        coordinators unload the state-log partitions they lose)."""
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
        self.flags = self._flags()
        """`RUNTIME_BROKER_FLAGS` as they stand now (static, then dynamic layers)."""
        self.orphan_grace = int(self.static_configs.get("orphan.stream.grace.ms",
                                                        "300000")) / 1000
        self._orphans: dict[int, tuple[int, float]] = {}
        """Cluster controller: stream id -> (record version, first seen) of streams no
        topic names, deleted once so for `orphan_grace`."""
        self._untagged: set[int] = set()
        self.orphan_streams_deleted = 0
        self.moves: dict[int, int] = {}
        """Cluster: stream id -> target broker of each requested move."""
        self._moves_seen = 0
        """The newest revision of `/moves/` the watch has delivered."""
        self._moving: dict[int, asyncio.Task[None]] = {}
        self._retries: set[asyncio.Task[None]] = set()
        self._move_failures: dict[int, int] = {}
        self.moves_done = 0
        self.last_move_seconds = 0.0

    def _flags(self) -> dict[str, bool]:
        configs = self.broker_configs
        return {name: runtime_flag(configs, name) for name in RUNTIME_BROKER_FLAGS}

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
        for p in topic.owned.values():
            p.config = topic.resolved

    async def load(self) -> None:
        for scope in (DEFAULT_SCOPE, self.node_id):
            entry = await self.meta.get(BROKER_CONFIGS + scope)
            if entry is not None:
                self.dynamic_configs[scope] = json.loads(entry.value)["configs"]
                self._dynamic_versions[scope] = entry.version
        self.defaults = _lenient({}, self.broker_configs)
        self.flags = self._flags()
        named: set[int] = set()
        topics = await self.meta.list_all(TOPICS)
        if self.cluster:
            streams = await self.meta.list_all(STREAMS)
            for e in streams:
                m = decode_stream(e.key, e.value, e.version)
                self.streams[m.stream_id] = (m.owner, m.epoch)
        for e in topics:
            rec = json.loads(e.value)
            name = e.key[len(TOPICS):]
            named.update(rec["streams"])
            if not self.cluster and any(sid not in self.engine.streams
                                        for sid in rec["streams"]):
                missing = [sid for sid in rec["streams"] if sid not in self.engine.streams]
                log.error("topic %s: streams %s are missing", name, missing)
                continue
            self._add(self._topic(name, rec))
        if not self.cluster:
            await self._delete_unowned(named)
        await self.restore_producers()
        if self.cluster:
            loop = asyncio.get_running_loop()
            self._followers = [
                loop.create_task(follow(
                    self.meta, TOPICS, topics.revision, self._on_topic, what="topic catalog",
                    known=lambda: [TOPICS + name for name in self.topics]),
                    name="topic-catalog"),
                loop.create_task(follow(
                    self.meta, STREAMS, streams.revision, self._on_stream,
                    what="stream owners",
                    known=lambda: [meta_key(STREAMS, sid) for sid in self.streams]),
                    name="stream-owners"),
                loop.create_task(follow(
                    self.meta, BROKER_CONFIGS, topics.revision, self._on_broker_configs,
                    what="broker configs",
                    known=lambda: [BROKER_CONFIGS + scope for scope, version
                                   in self._dynamic_versions.items() if version]),
                    name="broker-configs"),
                loop.create_task(self._sweep_orphans_loop(), name="orphan-streams"),
            ]
            moves = await self.meta.list_all(MOVES)
            for e in moves:
                await self._on_move(WatchEvent(e.key, e.value, e.version))
            self._followers.append(loop.create_task(follow(
                self.meta, MOVES, moves.revision, self._on_move, what="partition moves",
                known=lambda: [meta_key(MOVES, sid) for sid in self.moves]),
                name="partition-moves"))
            for sid, (owner, _epoch) in list(self.streams.items()):
                if owner == self.engine.node_id and sid not in self.engine.streams:
                    await self._open(sid)  # placed here while this broker was down

    def _topic(self, name: str, rec: dict[str, Any]) -> Topic:
        """A catalog entry with a `Partition` for each of its streams open here."""
        topic = Topic(name, uuid.UUID(rec["id"]), list(rec["streams"]),
                      configs=rec.get("configs", {}))
        for i, sid in enumerate(topic.streams):
            self._of_stream[sid] = (name, i)
            stream = self.engine.streams.get(sid)
            if stream is not None:
                topic.owned[i] = self._partition(name, i, stream)
        return topic

    async def stop(self) -> None:
        for task in [*self._moving.values(), *self._retries]:
            task.cancel()
        for task in self._followers:
            task.cancel()
        for task in self._followers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._followers = []

    # ---- cluster mode: following the catalog --------------------------------------------

    async def _on_topic(self, event: WatchEvent) -> None:
        name = event.key[len(TOPICS):]
        old = self.topics.get(name)
        if event.value is None:
            if old is not None:
                self._remove(old)
            return
        rec = json.loads(event.value)
        if old is None or str(old.topic_id) != rec["id"]:
            if old is not None:
                self._remove(old)
            topic = self._topic(name, rec)
            self._add(topic)
            log.info("topic %s (%d partitions) created on another broker", name,
                     len(rec["streams"]))
            self.place_unplaced()  # its streams are named now
            for index, p in sorted(topic.owned.items()):  # opened before the record came
                await p.restore_producers()
                await self._opened(name, index)
            return
        grown = len(rec["streams"]) > old.count
        for i, sid in enumerate(rec["streams"][old.count:], start=old.count):
            old.streams.append(sid)
            self._of_stream[sid] = (name, i)
            stream = self.engine.streams.get(sid)
            if stream is not None and i not in old.owned:
                old.owned[i] = self._partition(name, i, stream)
        if grown:
            self.place_unplaced()  # grown: the new streams are named now
        if rec.get("configs", {}) != old.configs:
            old.configs = rec.get("configs", {})
            self._apply_configs(old)

    def _remove(self, topic: Topic) -> None:
        if self.topics.get(topic.name) is topic:
            del self.topics[topic.name]
        self.by_id.pop(topic.topic_id, None)
        for sid in topic.streams:
            self._of_stream.pop(sid, None)

    async def _on_stream(self, event: WatchEvent) -> None:
        sid = int(event.key[len(STREAMS):])
        if event.value is None:
            self.streams.pop(sid, None)
            self._stream_changed.set()
            if sid in self.engine.streams:
                await self.engine.forget_stream(sid)
                where = self._of_stream.get(sid)
                topic = self.topics.get(where[0]) if where else None
                if topic is not None and where is not None:
                    topic.owned.pop(where[1], None)
            return
        m = decode_stream(event.key, event.value, event.version)
        self.streams[sid] = (m.owner, m.epoch)
        self._stream_changed.set()
        mine = self.engine.streams.get(sid)
        if mine is not None and (m.owner != self.engine.node_id or m.epoch > mine.epoch):
            await self._release(sid, f"now epoch {m.epoch} on broker {m.owner}")
            mine = None
        if m.owner < 0:
            self.place_unplaced()
        elif m.owner == self.engine.node_id and mine is None:
            await self._open(sid)

    async def _release(self, sid: int, why: str) -> None:
        """Stop serving a partition another broker took: its stream closes here, and the
        close listeners (coordinators) unload what they hold for it."""
        await self.engine.release_stream(sid, why)
        where = self._of_stream.get(sid)
        topic = self.topics.get(where[0]) if where else None
        if topic is None or where is None or topic.owned.pop(where[1], None) is None:
            return
        log.info("%s-%d is no longer served here (%s)", topic.name, where[1], why)
        await self._closed(topic.name, where[1])

    # ---- cluster mode: placement, on the controller --------------------------------------

    def place_unplaced(self) -> None:
        """On the controller: give every stream without an owner one (new partitions
        created through any broker, or left unplaced while there was no controller)."""
        if self.placer is None or not self.is_controller():
            return
        if self._placing is not None and not self._placing.done():
            self._place_again = True
            return
        self._placing = asyncio.get_running_loop().create_task(self._place_all(),
                                                               name="placement")

    async def _place_all(self) -> None:
        while True:
            self._place_again = False
            sids = sorted(sid for sid, (owner, _e) in self.streams.items()
                          if owner < 0 and sid in self._of_stream)  # named by a topic
            if sids and self.is_controller():
                try:
                    await self._place(sids)
                except Exception as exc:  # the next stream event (or election) retries
                    log.warning("placing %d partitions failed: %r", len(sids), exc)
            if not self._place_again:
                return

    async def _place(self, sids: list[int]) -> None:
        assert self.placer is not None
        owners = await self.placer(len(sids))
        txn = Txn()
        placed = []
        for sid, owner in zip(sids, owners, strict=True):
            entry = await self.meta.get(meta_key(STREAMS, sid))
            if entry is None:
                continue
            m = decode_stream(entry.key, entry.value, entry.version)
            if m.owner >= 0:
                continue
            if sid in self.moves:  # a move asked for while it had no owner
                owner = self.moves[sid]
                txn.deletes.append(meta_key(MOVES, sid))
            m.owner = owner
            txn.compares.append((entry.key, entry.version))
            txn.puts.append((entry.key, encode_stream(m)))
            placed.append((sid, owner, m.epoch))
        if not placed:
            return
        try:
            await self.meta.commit(txn)
        except Fenced:
            self._place_again = True  # changed meanwhile: read again
            return
        for sid, owner, epoch in placed:
            self.streams[sid] = (owner, epoch)
        self._stream_changed.set()
        log.info("placed %d partitions: %s", len(placed),
                 dict(sorted(Counter(o for _s, o, _e in placed).items())))
        for sid, owner, _epoch in placed:
            if owner == self.engine.node_id:
                await self._open(sid)

    # ---- cluster mode: partition moves ------------------------------------------------

    async def request_move(self, name: str, index: int, target: int | None) -> None:
        """Ask for partition `name`-`index` to move to broker `target` (None: cancel a
        move not done yet). Its owner does it (`_move_out`); the caller checks `target`
        is a live broker."""
        topic = self._existing(name)
        if not 0 <= index < topic.count:
            raise TopicError("unknown_topic_or_partition",
                             f"topic {name!r} has no partition {index}")
        key = meta_key(MOVES, topic.streams[index])
        if target is None:
            if topic.streams[index] not in self.moves:
                raise TopicError("no_reassignment_in_progress",
                                 f"no reassignment of {name}-{index} is in progress")
            await self.meta.delete(key)
            return
        await self.request_stream_move(topic.streams[index], target)

    async def request_stream_move(self, sid: int, target: int) -> None:
        rev = await self.meta.put(meta_key(MOVES, sid), json.dumps({"target": target}).encode())
        if rev > self._moves_seen:  # listed here at once, not when the watch brings it
            self.moves[sid] = target  # (ListPartitionReassignments right after: ongoing)

    def topic_of(self, sid: int) -> str:
        where = self._of_stream.get(sid)
        return where[0] if where else ""

    def named(self, sid: int) -> bool:
        """A topic names the stream (it is a partition, not an orphan)."""
        return sid in self._of_stream

    async def drain(self, targets: Callable[[int], list[int]], timeout: float = 30.0) -> int:
        """Controlled shutdown: hand every partition owned here to the other live brokers
        (`targets(n)`: owners for n partitions), so none waits for a takeover. Returns the
        partitions handed over."""
        sids = sorted(sid for sid in self.engine.streams if sid in self._of_stream)
        if not sids:
            return 0
        owners = targets(len(sids))
        if not owners:
            return 0
        log.info("controlled shutdown: handing %d partitions to brokers %s", len(sids),
                 sorted(set(owners)))
        jobs = [self._move_out(sid, target, None, 0)
                for sid, target in zip(sids, owners, strict=True) if sid not in self._moving]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*jobs), timeout)
        return len(sids) - sum(1 for sid in sids if sid in self.engine.streams)

    async def _on_move(self, event: WatchEvent) -> None:
        sid = int(event.key[len(MOVES):])
        self._moves_seen = max(self._moves_seen, event.version)
        if event.value is None:
            self.moves.pop(sid, None)
            return
        target = int(json.loads(event.value)["target"])
        self.moves[sid] = target
        owner = self.streams.get(sid, (-1, 0))[0]
        if owner < 0:
            self.place_unplaced()  # placement honours the move
        elif sid in self.engine.streams:
            self._start_move(sid, target, event.key, event.version)

    def _start_move(self, sid: int, target: int, key: str, version: int) -> None:
        if sid not in self._moving:
            self._moving[sid] = asyncio.get_running_loop().create_task(
                self._move_out(sid, target, key, version), name=f"move-{sid}")

    async def _move_out(self, sid: int, target: int, key: str | None, version: int) -> None:
        """Hand a partition owned here to `target`: refuse new appends, let those in
        flight finish, snapshot its producer state, upload its tail, and in one commit
        name the target its owner and clear the move (compared on the move too, so a
        cancelled or changed move is not carried out)."""
        started = self.clock()
        try:
            s = self.engine.streams.get(sid)
            where = self._of_stream.get(sid)
            topic = self.topics.get(where[0]) if where else None
            if s is None or where is None or topic is None:
                return
            if target == self.engine.node_id:
                if key is not None:
                    with contextlib.suppress(Fenced):
                        await self.meta.commit(Txn(compares=[(key, version)], deletes=[key]))
                return
            p = topic.owned.get(where[1])
            s.sealed = True
            try:
                try:
                    await s.settle(timeout=30)
                except TimeoutError:
                    raise StreamError(
                        f"stream {sid}: appends in flight did not finish (durable up to "
                        f"{s.confirm_offset}, taken up to {s.next_offset})") from None
                if p is not None:
                    await p.snapshot_producers()

                def clear(txn: Txn) -> None:
                    if key is not None:  # None: a controlled shutdown's, with no request
                        txn.compares.append((key, version))
                        txn.deletes.append(key)

                moved = await self.engine.hand_over(sid, target, clear)
            except BaseException:
                s.sealed = False
                raise
            if not moved:
                log.info("move of %s-%d to broker %d not done: it changed meanwhile",
                         topic.name, where[1], target)
                return
            took = self.clock() - started
            self._move_failures.pop(sid, None)
            self.moves_done += 1
            self.last_move_seconds = took
            log.info("moved %s-%d to broker %d in %.3fs", topic.name, where[1], target, took)
            if topic.owned.pop(where[1], None) is not None:
                await self._closed(topic.name, where[1])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("moving stream %d to broker %d failed (it stays here; retrying "
                        "while the move is asked for): %r", sid, target, exc)
            if key is not None:
                # each attempt refuses appends while it lasts: back off, up to a minute
                tries = self._move_failures[sid] = self._move_failures.get(sid, 0) + 1
                self._retries.add(asyncio.get_running_loop().create_task(
                    self._retry_move(sid, key, min(2.0 ** (tries - 1), 60.0)),
                    name=f"move-retry-{sid}"))
        finally:
            self._moving.pop(sid, None)

    async def _retry_move(self, sid: int, key: str, delay: float) -> None:
        """Try a failed move again while its `/moves/` record asks for it."""
        try:
            await asyncio.sleep(delay)
            entry = await self.meta.get(key)
            if entry is not None and sid in self.engine.streams:
                self._start_move(sid, int(json.loads(entry.value)["target"]), key,
                                 entry.version)
        except MetadataError as exc:
            log.warning("retrying the move of stream %d failed: %s", sid, exc)
        finally:
            self._retries.discard(asyncio.current_task())

    # ---- cluster mode: orphan streams, on the controller ----------------------------------

    async def _sweep_orphans_loop(self) -> None:
        interval = min(max(self.orphan_grace / 4, 0.5), 60.0)
        while True:
            await asyncio.sleep(interval)
            if not self.is_controller():
                self._orphans.clear()  # a new controller starts the grace afresh
                continue
            try:
                await self.sweep_orphans()
            except MetadataError as exc:
                log.warning("orphan stream sweep failed (next round retries): %s", exc)

    async def sweep_orphans(self) -> int:
        """Delete the stream records no topic names (a create or delete cut short by a
        crash), once seen so with an unchanged record for `orphan_grace`. Each delete
        compares the stream's record and its topic's record as listed, so a create or
        grow committing meanwhile wins; a stream without a recorded topic (written before
        streams carried one) is reported, never deleted. Returns the streams deleted."""
        streams = await self.meta.list_all(STREAMS)
        topics = await self.meta.list_all(TOPICS)
        named: set[int] = set()
        topic_versions: dict[str, int] = {}
        for e in topics:
            named.update(json.loads(e.value)["streams"])
            topic_versions[e.key[len(TOPICS):]] = e.version
        now = self.clock()
        seen: dict[int, tuple[int, float]] = {}
        due: list[StreamMeta] = []
        for e in streams:
            m = decode_stream(e.key, e.value, e.version)
            if m.stream_id in named:
                continue
            if m.topic is None:
                if m.stream_id not in self._untagged:
                    self._untagged.add(m.stream_id)
                    log.warning("stream %d belongs to no topic and names none: left alone",
                                m.stream_id)
                continue
            first = self._orphans.get(m.stream_id)
            since = first[1] if first is not None and first[0] == m.version else now
            seen[m.stream_id] = (m.version, since)
            if now - since >= self.orphan_grace:
                due.append(m)
        self._orphans = seen
        deleted = 0
        for i in range(0, len(due), MAX_TXN_OPS // 4):
            txn = Txn()
            part = due[i:i + MAX_TXN_OPS // 4]
            for m in part:
                key = meta_key(STREAMS, m.stream_id)
                assert m.topic is not None
                txn.compares.append((key, m.version))
                txn.compares.append((TOPICS + m.topic, topic_versions.get(m.topic, 0)))
                txn.deletes += [key, f"{PRODUCERS}{m.stream_id}"]
            txn.compares = list(dict.fromkeys(txn.compares))
            try:
                await self.meta.commit(txn)
            except Fenced:
                log.info("orphan streams changed while being deleted: next round")
                continue
            for m in part:
                self._orphans.pop(m.stream_id, None)
            deleted += len(part)
            log.warning("deleted %d streams no topic names (a topic create or delete cut "
                        "short): %s", len(part), sorted(m.stream_id for m in part))
        self.orphan_streams_deleted += deleted
        return deleted

    async def _open(self, sid: int) -> None:
        """Open a stream placed on this broker and serve its partition."""
        if sid in self._opening:
            return
        self._opening.add(sid)
        try:
            stream = await self.engine.open_stream(sid)
        finally:
            self._opening.discard(sid)
        if stream is None:
            return
        self.streams[sid] = (self.engine.node_id, stream.epoch)
        self._stream_changed.set()
        where = self._of_stream.get(sid)
        topic = self.topics.get(where[0]) if where else None
        if topic is not None and where is not None and where[1] not in topic.owned:
            p = self._partition(topic.name, where[1], stream)
            p.config = topic.resolved
            await p.restore_producers()
            topic.owned[where[1]] = p
        log.debug("opened stream %d (epoch %d)%s", sid, stream.epoch,
                 f" for {where[0]}-{where[1]}" if where else "")
        if topic is not None and where is not None:
            await self._opened(topic.name, where[1])
        target = self.moves.get(sid)
        if target is not None and sid not in self._moving:  # asked for while it was away
            key = meta_key(MOVES, sid)
            entry = await self.meta.get(key)
            if entry is not None:
                self._start_move(sid, target, key, entry.version)

    async def _closed(self, name: str, index: int) -> None:
        for listener in self.close_listeners:
            try:
                await listener(name, index)
            except Exception:
                log.exception("unloading %s-%d after its close failed", name, index)

    async def _opened(self, name: str, index: int) -> None:
        for listener in self.open_listeners:
            try:
                await listener(name, index)
            except Exception:
                log.exception("loading %s-%d after its open failed", name, index)

    async def _on_broker_configs(self, event: WatchEvent) -> None:
        scope = event.key[len(BROKER_CONFIGS):]
        if scope not in (DEFAULT_SCOPE, self.node_id):
            return
        configs = {} if event.value is None else json.loads(event.value)["configs"]
        if event.value is not None and self._dynamic_versions.get(scope, 0) >= event.version:
            return
        self.dynamic_configs[scope] = configs
        self._dynamic_versions[scope] = 0 if event.value is None else event.version
        self.defaults = _lenient({}, self.broker_configs)
        self.flags = self._flags()
        for topic in self.topics.values():
            self._apply_configs(topic)

    def leader(self, topic: Topic, index: int) -> tuple[int, int]:
        """(leader node, leader epoch) of a partition; node -1 while it has no open owner."""
        p = topic.owned.get(index)
        if p is not None:
            return self.engine.node_id, p.leader_epoch
        if not self.cluster or index >= topic.count:
            return -1, -1
        owner, epoch = self.streams.get(topic.streams[index], (-1, 0))
        return (owner, epoch) if epoch > 0 else (-1, -1)

    def owned_by(self) -> dict[int, int]:
        """Partitions per owner node (placement balances on it)."""
        out: dict[int, int] = {}
        for owner, _epoch in self.streams.values():
            out[owner] = out.get(owner, 0) + 1
        return out

    async def wait_opened(self, stream_ids: list[int], timeout: float = 10.0) -> bool:
        """Wait until each stream has been opened by its owner (so a client told of the
        new partitions finds their leaders serving); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(self.streams.get(sid, (-1, 0))[1] > 0 for sid in stream_ids):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._stream_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stream_changed.wait(), remaining)
        return True

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
            for p in topic.owned.values():
                await p.restore_producers()

    async def snapshot_producers(self) -> None:
        """Snapshot every partition's producer state (clean shutdown: faster restart)."""
        for topic in self.topics.values():
            for p in topic.owned.values():
                await p.snapshot_producers()

    def _partition(self, name: str, index: int, stream: Stream) -> Partition:
        return Partition(name, index, stream, stream.epoch, self.meta,
                         self.producer_expiration_ms)

    def _add(self, topic: Topic) -> None:
        topic.internal = topic.internal or topic.name in INTERNAL
        self._apply_configs(topic)
        self.topics[topic.name] = topic
        self.by_id[topic.topic_id] = topic
        self._stream_changed.set()

    async def wait_topic(self, name: str, timeout: float = 10.0) -> Topic:
        """A topic another broker is creating, once the catalog has it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (topic := self.topics.get(name)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TopicError("unknown_topic_or_partition",
                                 f"topic {name!r} did not appear within {timeout}s")
            self._stream_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stream_changed.wait(), remaining)
        return topic

    def get(self, name: str) -> Topic | None:
        return self.topics.get(name)

    def partition(self, name: str, index: int) -> Partition | None:
        """The partition if this broker owns it (None: unknown, or owned elsewhere; tell
        them apart with `get` and `Topic.count`)."""
        t = self.topics.get(name)
        return None if t is None else t.owned.get(index)

    def exists(self, name: str, index: int) -> bool:
        """The partition exists in the cluster (owned here or not)."""
        t = self.topics.get(name)
        return t is not None and 0 <= index < t.count

    def missing(self, name: str, index: int) -> str:
        """The error for a request about a partition not owned here: Kafka's
        NOT_LEADER_OR_FOLLOWER when it exists elsewhere (the client refreshes metadata and
        follows its leader), else UNKNOWN_TOPIC_OR_PARTITION."""
        return "not_leader_or_follower" if self.exists(name, index) else \
            "unknown_topic_or_partition"

    def partitions(self) -> list[Partition]:
        """Every partition open on this broker."""
        return [p for t in self.topics.values() for p in t.owned.values()]

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
            return Topic(name, topic_id, [], configs=cfg, resolved=resolved)
        made = await self._new_streams(num_partitions, name)
        sids = [sid for sid, _v in made]
        rec = {"id": str(topic_id), "streams": sids, "configs": cfg}
        txn = Txn(compares=[(TOPICS + name, 0), *self._unchanged(made)],
                  puts=[(TOPICS + name, json.dumps(rec).encode())])
        try:
            await self.meta.commit(txn)
        except Fenced as exc:
            await self._drop_streams(sids)
            if TOPICS + name in exc.keys:
                raise TopicError("topic_already_exists",
                                 f"topic {name!r} already exists") from None
            raise self._swept(name) from None
        topic = self.topics.get(name)
        if topic is None or topic.topic_id != topic_id:  # the watch may have been first
            topic = self._topic(name, rec)
            self._add(topic)
        log.info("created topic %s with %d partitions", name, num_partitions)
        await self._serve_new(sids)
        return topic

    async def _new_streams(self, count: int, topic: str) -> list[tuple[int, int]]:
        """Streams for new partitions, (id, record version) each: opened here on a single
        broker; on a cluster written unplaced, naming `topic`. The controller places them
        once the topic record names them (`_serve_new`, or through its watch), so
        nothing rewrites them between their creation and the topic record's commit,
        which compares them (the orphan sweep cannot delete them under a create)."""
        if self.placer is None:
            return [(s.stream_id, s.meta.version)
                    for s in await self.engine.create_streams(count)]
        made = await self.engine.create_stream_records([-1] * count, topic)
        for sid, _v in made:
            self.streams.setdefault(sid, (-1, 0))
        return made

    def _unchanged(self, made: list[tuple[int, int]]) -> list[tuple[str, int]]:
        """Compares that new stream records are as written (a cluster's; when they fit in
        one commit beside the topic record: beyond, the sweep's grace period covers)."""
        if self.placer is None or len(made) + 2 > MAX_TXN_OPS:
            return []
        return [(meta_key(STREAMS, sid), version) for sid, version in made]

    @staticmethod
    def _swept(name: str) -> TopicError:
        return TopicError("request_timed_out", f"topic {name!r}: its new partitions' streams "
                          "were swept as orphans before the topic record was written; retry")

    async def _serve_new(self, sids: list[int]) -> None:
        if self.placer is None:
            return
        if self.is_controller():
            await self._place(sids)
        for sid in sids:
            if self.streams.get(sid, (-1, 0))[0] == self.engine.node_id:
                await self._open(sid)
        if not await self.wait_opened(sids):
            log.warning("streams %s not opened by their owners yet", sids)

    async def _drop_streams(self, sids: list[int]) -> None:
        for sid in sids:
            if sid in self.engine.streams:
                await self.engine.delete_stream(sid)
            else:
                await self.meta.delete(meta_key(STREAMS, sid))
            self.streams.pop(sid, None)
            await self.meta.delete(f"{PRODUCERS}{sid}")

    async def delete(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise TopicError("unknown_topic_or_partition", f"topic {name!r} does not exist")
        await self.meta.delete(TOPICS + name)
        self._remove(topic)
        await self._drop_streams(topic.streams)
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

    async def _update(self, name: str, change: Callable[[dict[str, Any]], None],
                      compares: list[tuple[str, int]] | None = None) -> None:
        """Apply `change` to the topic's stored record with compare-and-set (re-read and
        re-applied when another writer got there first), with `compares` too."""
        for _ in range(10):
            entry = await self.meta.get(TOPICS + name)
            if entry is None:
                raise TopicError("unknown_topic_or_partition", f"topic {name!r} does not exist")
            rec = json.loads(entry.value)
            change(rec)
            try:
                await self.meta.commit(Txn(
                    compares=[(TOPICS + name, entry.version), *(compares or [])],
                    puts=[(TOPICS + name, json.dumps(rec).encode())]))
                return
            except Fenced as exc:
                if TOPICS + name not in exc.keys:
                    raise self._swept(name) from None
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
            current = topic.count
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
            made = await self._new_streams(new_total - current, name)
            sids = [sid for sid, _v in made]

            def grow(rec: dict[str, Any]) -> None:
                if len(rec["streams"]) != current:
                    raise TopicError("invalid_partitions", f"topic {name!r} changed meanwhile")
                rec["streams"] = rec["streams"] + sids

            try:
                await self._update(name, grow, self._unchanged(made))
            except BaseException:
                await self._drop_streams(sids)
                raise
            for i, sid in enumerate(sids, start=current):
                if topic.count <= i:  # the watch may have added it already
                    topic.streams.append(sid)
                self._of_stream[sid] = (name, i)
                stream = self.engine.streams.get(sid)
                if stream is not None and i not in topic.owned:
                    p = self._partition(name, i, stream)
                    p.config = topic.resolved
                    topic.owned[i] = p
            log.info("topic %s: %d -> %d partitions", name, current, new_total)
            await self._serve_new(sids)
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
            self.flags = self._flags()
            for topic in self.topics.values():
                self._apply_configs(topic)
            log.info("dynamic broker configs (%s): %s", scope, new)
