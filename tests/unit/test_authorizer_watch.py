"""Brokers sharing one metadata store enforce each other's ACLs: every authorizer follows
`acls/` with a watch (resuming after a failed watch, replacing its set on a resync)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tidelog.api.acl_model import (
    AclBinding,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    new_binding,
    new_filter,
)
from tidelog.api.authorizer import ANONYMOUS, Authorizer
from tidelog.metadata.base import MetadataError, MetadataStore, WatchEvent, close_watch
from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.metadata.postgres import PostgresMetadataStore

T = ResourceType.TOPIC
EVERY = new_filter(ResourceType.ANY, None, PatternType.ANY, None, None, Operation.ANY,
                   Permission.ANY)


def only_alice_reads(topic: str) -> AclBinding:
    return new_binding(T, topic, PatternType.LITERAL, "User:alice", "*", Operation.READ,
                       Permission.ALLOW)


def anonymous_reads(a: Authorizer, topic: str) -> bool:
    return a.authorize(ANONYMOUS, "127.0.0.2", Operation.READ, T, topic)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@pytest.fixture(params=["embedded", "postgresql"])
async def two_stores(request: pytest.FixtureRequest,
                     tmp_path: Path) -> AsyncIterator[tuple[MetadataStore, MetadataStore]]:
    """What two brokers see: one embedded store shared, or two PostgreSQL connections."""
    if request.param == "embedded":
        one = EmbeddedMetadataStore(str(tmp_path / "meta.db"))
        yield one, one
        await one.close()
        return
    dsn = request.getfixturevalue("pg_database")
    a, b = PostgresMetadataStore(dsn), PostgresMetadataStore(dsn)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_an_acl_made_on_one_broker_is_enforced_by_another(
        two_stores: tuple[MetadataStore, MetadataStore]) -> None:
    a, b = Authorizer(two_stores[0]), Authorizer(two_stores[1])
    await a.load()
    await b.load()
    assert anonymous_reads(b, "orders")
    await a.create([only_alice_reads("orders")])
    await until(lambda: not anonymous_reads(b, "orders"))
    assert b.authorize("User:alice", "h", Operation.READ, T, "orders")
    await asyncio.sleep(0.05)  # a's own commit comes back through its watch: no duplicate
    assert a.describe(EVERY) == b.describe(EVERY) == [only_alice_reads("orders")]
    await a.delete([EVERY])
    await until(lambda: anonymous_reads(b, "orders"))
    assert b.describe(EVERY) == [] and b.allows_all
    await a.close()
    await b.close()
    await b.close()  # twice is fine


class FailsFirstWatch(EmbeddedMetadataStore):
    """Its first watch breaks at once, as one over a dropped connection may."""

    failed = False

    def watch(self, prefix: str, from_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        if self.failed:
            return super().watch(prefix, from_revision)
        self.failed = True
        return self._broken()

    async def _broken(self) -> AsyncIterator[WatchEvent]:
        raise MetadataError("connection lost")
        yield  # an async generator that raises on its first step


async def test_a_failed_watch_resumes_from_where_it_was(tmp_path: Path) -> None:
    meta = FailsFirstWatch(str(tmp_path / "meta.db"))
    a, b = Authorizer(meta), Authorizer(meta)
    await b.load()  # its watch fails; it resumes after a short wait from its listing
    await a.load()
    await a.create([only_alice_reads("orders")])  # made while b was not watching
    await until(lambda: not anonymous_reads(b, "orders"))
    assert meta.failed
    await meta.close()  # the followers end with the store; nobody closes the authorizers


class LostHistory(EmbeddedMetadataStore):
    """Watches start only when `gate` opens, and then with a resync: what changed before
    is no longer kept, as after a store's change history was pruned."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()

    def watch(self, prefix: str, from_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        return self._after_gate(prefix)

    async def _after_gate(self, prefix: str) -> AsyncIterator[WatchEvent]:
        await self.gate.wait()
        events = super().watch(prefix)
        try:
            revision = (await self.list(prefix)).revision
            yield WatchEvent(prefix, None, revision, resync=True)
            async for event in events:
                yield event
        finally:
            await close_watch(events)


async def test_a_resync_replaces_the_bindings_with_what_is_stored(tmp_path: Path) -> None:
    meta = LostHistory(str(tmp_path / "meta.db"))
    a, b = Authorizer(meta), Authorizer(meta)
    await a.create([only_alice_reads("old")])
    await b.load()
    assert not anonymous_reads(b, "old")
    await a.delete([new_filter(T, "old", PatternType.LITERAL, None, None, Operation.ANY,
                               Permission.ANY)])
    await a.create([only_alice_reads("new")])
    await asyncio.sleep(0.05)
    assert not anonymous_reads(b, "old") and anonymous_reads(b, "new")  # b missed both
    meta.gate.set()
    await until(lambda: anonymous_reads(b, "old") and not anonymous_reads(b, "new"))
    assert b.describe(EVERY) == [only_alice_reads("new")]
    await b.close()
    await meta.close()
