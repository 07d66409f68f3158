"""Committed offsets: OffsetStore over a real state log with a fake clock (commit, fetch,
delete, retention, restore), and the OffsetCommit/OffsetFetch/OffsetDelete handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType

from tests.unit.harness import open_topics
from tidelog.api.base import BrokerInfo, Context
from tidelog.api.offsets import handle_offset_commit, handle_offset_delete, handle_offset_fetch
from tidelog.coordinator.coordinator import CoordinatorConfig, GroupCoordinator
from tidelog.objectstore.uri import open_object_store
from tidelog.protocol.codec import RequestHeader
from tidelog.stream.engine import StreamEngine
from tidelog.stream.wal.memory_wal import MemoryWAL, MemoryWALStore

RETENTION = 60_000
WALL_BASE = 1_700_000_000.0


@dataclass
class Clock:
    mono: float = 100.0  # seconds, the coordinator's clock
    wall_offset: float = WALL_BASE  # wall = mono + offset

    def __call__(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.mono + self.wall_offset

    def at_ms(self, ms: int) -> int:
        self.mono = ms / 1000
        return ms


@dataclass
class Env:
    """A broker's storage and a coordinator; `restart` crashes it (no flush) and restores
    from the state log alone. `active`/`subscribed` stand in for the group protocols."""

    tmp: Path
    clock: Clock = field(default_factory=Clock)
    wal_store: MemoryWALStore = field(default_factory=MemoryWALStore)
    objects: Any = field(default_factory=lambda: open_object_store("memory://"))
    active: dict[str, str] = field(default_factory=dict)  # group -> "classic" | "consumer"
    subscribed: dict[str, set[str]] = field(default_factory=dict)
    epoch: int = 0
    engine: StreamEngine | None = None
    coord: GroupCoordinator | None = None

    async def start(self) -> GroupCoordinator:
        self.epoch += 1
        self.engine, topics = await open_topics(
            self.tmp, MemoryWAL(capacity=64 << 20, store=self.wal_store), self.objects,
            self.epoch)
        if topics.get("t") is None:
            await topics.create("t", 3)
            await topics.create("u", 1)
        coord = GroupCoordinator(topics, CoordinatorConfig(offsets_retention_ms=RETENTION),
                                 clock=self.clock)
        coord.offsets.wall_clock = self.clock.wall
        coord.offsets.check_interval_ms = 0
        coord.classic.has = lambda g: self.active.get(g) == "classic"  # type: ignore[method-assign]
        coord.consumer.has = lambda g: self.active.get(g) == "consumer"  # type: ignore[method-assign]
        coord.classic.subscribed_topics = self.subscribed.get  # type: ignore[method-assign]
        coord.consumer.subscribed_topics = self.subscribed.get  # type: ignore[method-assign]
        coord.offsets.restore(await coord.log.load())
        self.coord = coord
        return coord

    async def restart(self) -> GroupCoordinator:
        await self.stop(flush=False)
        return await self.start()

    async def stop(self, flush: bool = True) -> None:
        assert self.engine is not None
        await self.engine.close(flush=flush)
        await self.engine.meta.close()


@pytest.fixture
async def env(tmp_path: Path) -> Any:
    e = Env(tmp_path)
    await e.start()
    yield e
    await e.stop()


async def test_commit_fetch_overwrite(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    await store.commit("g", [("t", 0, 10, 3, "meta"), ("t", 1, 20, -1, None)])
    assert store.fetch("g", "t", 0) == (10, 3, "meta")
    assert store.fetch("g", "t", 1) == (20, -1, "")
    assert store.fetch("g", "t", 2) is None
    assert store.fetch("other", "t", 0) is None
    await store.commit("g", [("t", 0, 15, 4, "")])
    assert store.fetch("g", "t", 0) == (15, 4, "")
    assert store.partitions("g") == [("t", 0), ("t", 1)]
    assert store.groups() == {"g"}
    await store.commit("g", [])
    store = (await env.restart()).offsets
    assert store.fetch("g", "t", 0) == (15, 4, "")
    assert store.fetch("g", "t", 1) == (20, -1, "")


async def test_slashes_in_names_stay_distinct(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    await store.commit("a/b", [("c", 0, 1, -1, None)])
    await store.commit("a", [("b/c", 0, 2, -1, None)])
    await store.commit("a", [("b", 0, 3, -1, None)])
    store = (await env.restart()).offsets
    assert store.fetch("a/b", "c", 0) == (1, -1, "")
    assert store.fetch("a", "b/c", 0) == (2, -1, "")
    assert store.partitions("a") == [("b", 0), ("b/c", 0)]


async def test_delete_and_delete_group(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    await store.commit("g", [("t", 0, 1, -1, None), ("t", 1, 2, -1, None), ("u", 0, 3, -1, None)])
    await store.commit("h", [("t", 0, 4, -1, None)])
    await store.delete("g", [("t", 1), ("t", 2), ("nope", 0)])
    assert store.partitions("g") == [("t", 0), ("u", 0)]
    await store.delete_group("h")
    await store.delete_group("never-existed")
    assert store.groups() == {"g"}
    store = (await env.restart()).offsets
    assert store.partitions("g") == [("t", 0), ("u", 0)]
    assert store.groups() == {"g"}
    await store.delete("g", [("t", 0), ("u", 0)])
    assert store.groups() == set()
    assert (await env.restart()).offsets.groups() == set()


async def test_concurrent_commits_keep_the_last(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    await asyncio.gather(*(store.commit("g", [("t", 0, i, -1, None)]) for i in range(50)),
                         *(store.commit(f"g{i}", [("t", 1, i, -1, None)]) for i in range(20)))
    assert store.fetch("g", "t", 0) == (49, -1, "")
    store = (await env.restart()).offsets
    assert store.fetch("g", "t", 0) == (49, -1, "")
    assert len(store.groups()) == 21


async def test_simple_group_expires_per_partition(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    clock = env.clock
    clock.at_ms(0)
    await store.commit("g", [("t", 0, 1, -1, None)])
    clock.at_ms(30_000)
    await store.commit("g", [("t", 1, 2, -1, None)])
    await store.tick(RETENTION - 1)
    assert store.partitions("g") == [("t", 0), ("t", 1)]
    await store.tick(RETENTION)  # t-0 committed 60 s ago
    assert store.partitions("g") == [("t", 1)]
    await store.tick(30_000 + RETENTION)
    assert store.groups() == set()
    assert (await env.restart()).offsets.groups() == set()


async def test_active_group_keeps_offsets(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    clock = env.clock
    env.active["g"] = "classic"
    clock.at_ms(0)
    await store.commit("g", [("t", 0, 1, -1, None), ("u", 0, 2, -1, None)])
    await store.commit("simple", [("t", 0, 1, -1, None)])
    await store.tick(10 * RETENTION)  # members, subscription unknown: nothing expires
    assert store.partitions("g") == [("t", 0), ("u", 0)]
    assert store.groups() == {"g"}
    # the group empties at 700 s: retention counts from there, not from the commit
    del env.active["g"]
    await store.tick(clock.at_ms(700_000))
    await store.tick(700_000 + RETENTION - 1)
    assert store.partitions("g") == [("t", 0), ("u", 0)]
    await store.tick(700_000 + RETENTION)
    assert store.groups() == set()


async def test_commit_after_empty_counts_from_commit(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    env.active["g"] = "consumer"
    await store.commit("g", [("t", 0, 1, -1, None)])
    del env.active["g"]
    await store.tick(env.clock.at_ms(200_000))  # seen empty
    await store.commit("g", [("t", 1, 5, -1, None)])  # e.g. an admin tool, later
    env.clock.at_ms(250_000)
    await store.commit("g", [("t", 2, 5, -1, None)])
    await store.tick(200_000 + RETENTION)
    assert store.partitions("g") == [("t", 2)]


async def test_active_group_loses_unsubscribed_topics(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    env.active["g"] = "consumer"
    env.subscribed["g"] = {"t"}
    env.clock.at_ms(0)
    await store.commit("g", [("t", 0, 1, -1, None), ("u", 0, 2, -1, None)])
    await store.tick(RETENTION - 1)
    assert store.partitions("g") == [("t", 0), ("u", 0)]
    await store.tick(RETENTION)
    assert store.partitions("g") == [("t", 0)]
    await store.tick(100 * RETENTION)
    assert store.partitions("g") == [("t", 0)]


async def test_explicit_retention_time(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    env.clock.at_ms(0)
    await store.commit("g", [("t", 0, 1, -1, None)], retention_ms=5_000)
    await store.commit("g", [("t", 1, 1, -1, None)], retention_ms=-1)  # -1: the default
    await store.tick(4_999)
    assert store.partitions("g") == [("t", 0), ("t", 1)]
    await store.tick(5_000)
    assert store.partitions("g") == [("t", 1)]


async def test_empty_since_survives_restart(env: Env) -> None:
    clock = env.clock
    store = env.coord.offsets  # type: ignore[union-attr]
    env.active["g"] = "classic"
    clock.at_ms(0)
    await store.commit("g", [("t", 0, 1, -1, None)])
    del env.active["g"]
    await store.tick(clock.at_ms(100_000))  # seen empty at 100 s (wall time stored)
    # restart 30 s later on a fresh monotonic clock (it starts at 5 s again)
    clock.wall_offset += 130_000 / 1000 - 5
    clock.at_ms(5_000)
    store = (await env.restart()).offsets
    await store.tick(5_000 + RETENTION - 30_000 - 1)
    assert store.partitions("g") == [("t", 0)]
    await store.tick(5_000 + RETENTION - 30_000)
    assert store.groups() == set()


async def test_active_at_crash_counts_from_restart(env: Env) -> None:
    clock = env.clock
    store = env.coord.offsets  # type: ignore[union-attr]
    env.active["g"] = "classic"
    clock.at_ms(0)
    await store.commit("g", [("t", 0, 1, -1, None)])
    await store.commit("simple", [("t", 0, 1, -1, None)])
    # crash while the group has members, 10 min later; after the restart it has none
    clock.wall_offset += 600
    del env.active["g"]
    store = (await env.restart()).offsets
    await store.tick(clock.at_ms(1_000))
    assert store.groups() == {"g"}  # "simple" had no members: its commit is 10 min old
    await store.tick(1_000 + RETENTION - 1)
    assert store.groups() == {"g"}
    await store.tick(1_000 + RETENTION)
    assert store.groups() == set()


async def test_tick_checks_at_its_interval(env: Env) -> None:
    store = env.coord.offsets  # type: ignore[union-attr]
    store.check_interval_ms = 10_000
    env.clock.at_ms(0)
    await store.commit("g", [("t", 0, 1, -1, None)])
    await store.tick(RETENTION - 5_000)  # checks now, next check at +10 s
    await store.tick(RETENTION)
    assert store.groups() == {"g"}
    await store.tick(RETENTION + 5_000)
    assert store.groups() == set()


# -- the API handlers -------------------------------------------------------------------


def ctx_of(env: Env) -> Context:
    assert env.coord is not None
    return Context(BrokerInfo(1, "localhost", 9092), env.coord.topics, env.coord)


REQUESTS = {8: "OffsetCommitRequest", 9: "OffsetFetchRequest", 47: "OffsetDeleteRequest"}


def request(api_key: int, version: int, **kwargs: Any) -> tuple[RequestHeader, Any]:
    mod = load_payload_module(api_key, version, EntityType.request)
    return RequestHeader(api_key, version, 1, "test"), getattr(mod, REQUESTS[api_key])(**kwargs)


def commit_req(version: int, group: str, generation: int, member: str,
               parts: list[tuple[str, int, int, str | None]]) -> tuple[RequestHeader, Any]:
    mod = load_payload_module(8, version, EntityType.request)
    topics: dict[str, list[Any]] = {}
    for t, p, off, meta in parts:
        topics.setdefault(t, []).append(mod.OffsetCommitRequestPartition(
            partition_index=p, committed_offset=off, committed_metadata=meta))
    return request(8, version, group_id=group, generation_id_or_member_epoch=generation,
                   member_id=member, topics=tuple(
                       mod.OffsetCommitRequestTopic(name=t, partitions=tuple(ps))
                       for t, ps in topics.items()))


def codes(resp: Any) -> dict[tuple[str, int], ErrorCode]:
    return {(t.name, p.partition_index): p.error_code for t in resp.topics for p in t.partitions}


async def test_offset_commit_errors(env: Env) -> None:
    ctx = ctx_of(env)
    resp = await handle_offset_commit(ctx, *commit_req(
        8, "g", -1, "", [("t", 0, 5, "m"), ("t", 9, 1, None), ("nope", 0, 1, None),
                         ("t", 1, 1, "x" * 4097)]))
    assert codes(resp) == {("t", 0): ErrorCode.none,
                           ("t", 9): ErrorCode.unknown_topic_or_partition,
                           ("nope", 0): ErrorCode.unknown_topic_or_partition,
                           ("t", 1): ErrorCode.offset_metadata_too_large}
    assert env.coord.offsets.fetch("g", "t", 0) == (5, -1, "m")  # type: ignore[union-attr]
    # a generation without a group: Kafka's errors by version
    resp = await handle_offset_commit(ctx, *commit_req(8, "g", 3, "m-1", [("t", 0, 6, None)]))
    assert codes(resp) == {("t", 0): ErrorCode.illegal_generation}
    resp = await handle_offset_commit(ctx, *commit_req(9, "g", 3, "m-1", [("t", 0, 6, None)]))
    assert codes(resp) == {("t", 0): ErrorCode.group_id_not_found}
    resp = await handle_offset_commit(ctx, *commit_req(2, "", -1, "", [("t", 0, 6, None)]))
    assert codes(resp) == {("t", 0): ErrorCode.invalid_group_id}
    assert env.coord.offsets.fetch("g", "t", 0) == (5, -1, "m")  # type: ignore[union-attr]


async def test_offset_commit_asks_the_group_protocol(env: Env) -> None:
    ctx = ctx_of(env)
    coord = env.coord
    assert coord is not None
    seen: list[tuple[Any, ...]] = []

    def classic(*args: Any) -> str | None:
        seen.append(("classic", *args))
        return None if args[2] == 7 else "ILLEGAL_GENERATION"

    def consumer(*args: Any) -> str | None:
        seen.append(("consumer", *args))
        return "stale_member_epoch"

    coord.classic.validate_commit = classic  # type: ignore[method-assign]
    coord.consumer.validate_commit = consumer  # type: ignore[method-assign]
    env.active.update({"c": "classic", "k": "consumer"})
    resp = await handle_offset_commit(ctx, *commit_req(7, "c", 7, "m", [("t", 0, 1, None)]))
    assert codes(resp) == {("t", 0): ErrorCode.none}
    resp = await handle_offset_commit(ctx, *commit_req(7, "c", 6, "m", [("t", 0, 2, None)]))
    assert codes(resp) == {("t", 0): ErrorCode.illegal_generation}
    resp = await handle_offset_commit(ctx, *commit_req(9, "k", 4, "m2", [("t", 0, 2, None)]))
    assert codes(resp) == {("t", 0): ErrorCode.stale_member_epoch}
    assert seen == [("classic", "c", "m", 7, None), ("classic", "c", "m", 6, None),
                    ("consumer", "k", "m2", 4)]
    assert coord.offsets.fetch("c", "t", 0) == (1, -1, "")


async def test_offset_fetch_versions(env: Env) -> None:
    ctx = ctx_of(env)
    await env.coord.offsets.commit("g", [("t", 0, 5, 2, "m"), ("u", 0, 7, -1, None)])  # type: ignore[union-attr]
    v1 = load_payload_module(9, 1, EntityType.request)
    resp = await handle_offset_fetch(ctx, *request(9, 1, group_id="g", topics=(
        v1.OffsetFetchRequestTopic(name="t", partition_indexes=(0, 1)),)))
    assert [(p.partition_index, p.committed_offset, p.metadata, p.error_code)
            for p in resp.topics[0].partitions] == [(0, 5, "m", ErrorCode.none),
                                                    (1, -1, "", ErrorCode.none)]
    resp = await handle_offset_fetch(ctx, *request(9, 7, group_id="g", topics=None,
                                                   require_stable=True))
    assert resp.error_code == ErrorCode.none
    assert {(t.name, p.partition_index, p.committed_offset, p.committed_leader_epoch)
            for t in resp.topics for p in t.partitions} == {("t", 0, 5, 2), ("u", 0, 7, -1)}
    v8 = load_payload_module(9, 8, EntityType.request)
    resp = await handle_offset_fetch(ctx, *request(9, 8, groups=(
        v8.OffsetFetchRequestGroup(group_id="g", topics=(
            v8.OffsetFetchRequestTopics(name="t", partition_indexes=(0,)),)),
        v8.OffsetFetchRequestGroup(group_id="empty", topics=None),
        v8.OffsetFetchRequestGroup(group_id="", topics=None))))
    assert [(g.group_id, g.error_code, [(t.name, [p.committed_offset for p in t.partitions])
                                        for t in g.topics]) for g in resp.groups] == [
        ("g", ErrorCode.none, [("t", [5])]), ("empty", ErrorCode.none, []),
        ("", ErrorCode.invalid_group_id, [])]


async def test_offset_fetch_checks_kip848_member(env: Env) -> None:
    ctx = ctx_of(env)
    coord = env.coord
    assert coord is not None
    coord.consumer.validate_commit = (  # type: ignore[method-assign]
        lambda g, m, e: None if (m, e) == ("m", 3) else "stale_member_epoch")
    env.active["k"] = "consumer"
    await coord.offsets.commit("k", [("t", 0, 9, -1, None)])
    v9 = load_payload_module(9, 9, EntityType.request)

    async def fetch(member: str | None, epoch: int) -> Any:
        resp = await handle_offset_fetch(ctx, *request(9, 9, groups=(v9.OffsetFetchRequestGroup(
            group_id="k", member_id=member, member_epoch=epoch, topics=None),)))
        return resp.groups[0]

    assert (await fetch("m", 3)).topics[0].partitions[0].committed_offset == 9
    assert (await fetch(None, -1)).error_code == ErrorCode.none  # admin clients
    assert (await fetch("m", 2)).error_code == ErrorCode.stale_member_epoch


async def test_offset_delete(env: Env) -> None:
    ctx = ctx_of(env)
    coord = env.coord
    assert coord is not None
    mod = load_payload_module(47, 0, EntityType.request)

    def delete_req(group: str, *topics: tuple[str, tuple[int, ...]]) -> tuple[RequestHeader, Any]:
        return request(47, 0, group_id=group, topics=tuple(mod.OffsetDeleteRequestTopic(
            name=t, partitions=tuple(mod.OffsetDeleteRequestPartition(partition_index=p)
                                     for p in ps)) for t, ps in topics))

    resp = await handle_offset_delete(ctx, *delete_req("none", ("t", (0,))))
    assert resp.error_code == ErrorCode.group_id_not_found
    await coord.offsets.commit("g", [("t", 0, 1, -1, None), ("t", 1, 1, -1, None),
                                     ("u", 0, 1, -1, None)])
    env.active["g"] = "classic"
    env.subscribed["g"] = {"u"}
    resp = await handle_offset_delete(ctx, *delete_req("g", ("t", (0, 2)), ("u", (0,)),
                                                       ("nope", (0,))))
    assert resp.error_code == ErrorCode.none
    assert codes(resp) == {("t", 0): ErrorCode.none, ("t", 2): ErrorCode.none,
                           ("u", 0): ErrorCode.group_subscribed_to_topic,
                           ("nope", 0): ErrorCode.unknown_topic_or_partition}
    assert coord.offsets.partitions("g") == [("t", 1), ("u", 0)]
    del env.active["g"]
    resp = await handle_offset_delete(ctx, *delete_req("g", ("u", (0,))))
    assert codes(resp) == {("u", 0): ErrorCode.none}
    assert coord.offsets.partitions("g") == [("t", 1)]


def test_retention_time_field_is_a_timedelta() -> None:
    mod = load_payload_module(8, 2, EntityType.request)
    req = mod.OffsetCommitRequest(group_id="g", member_id="", topics=(),
                                  retention_time=timedelta(milliseconds=1234))
    assert req.retention_time // timedelta(milliseconds=1) == 1234
