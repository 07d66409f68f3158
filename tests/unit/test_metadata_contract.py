"""Conformance suite for `MetadataStore`: every backend must pass the same tests.

A backend plugs in through `Backend` (open the same store again, make lease time pass);
add it to `BACKENDS`. Embedded-only behaviour (URIs, file locking, kill -9) is at the end;
PostgreSQL-only behaviour (the database clock, reconnects, bad URIs) is in
`test_metadata_postgres.py`.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tidelog.metadata.base import (
    MAX_TXN_OPS,
    Fenced,
    MetadataError,
    MetadataStore,
    Txn,
    WatchEvent,
)
from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.metadata.postgres import PostgresMetadataStore
from tidelog.metadata.uri import open_metadata

TTL = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Skew:
    """Seconds added to PostgreSQL's clock: lease time passes without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """How the suite drives one implementation: open stores on the same data, pass time."""

    def __init__(self, factory: Callable[[], MetadataStore], clock: FakeClock | Skew) -> None:
        self._factory = factory
        self._clock = clock
        self._open: list[MetadataStore] = []

    def open(self) -> MetadataStore:
        store = self._factory()
        self._open.append(store)
        return store

    async def reopen(self, store: MetadataStore) -> MetadataStore:
        await store.close()
        return self.open()

    async def advance(self, seconds: float) -> None:
        """Make `seconds` of lease time pass (a fake clock, or a skew of the database's)."""
        self._clock.now += seconds

    async def close_all(self) -> None:
        for store in self._open:
            await store.close()


def embedded(tmp_path: Path) -> Backend:
    clock = FakeClock()
    path = str(tmp_path / "metadata.db")
    return Backend(lambda: EmbeddedMetadataStore(path, clock, sweep_interval=0.01), clock)


def postgresql(dsn: str) -> Backend:
    skew = Skew()
    return Backend(lambda: PostgresMetadataStore(dsn, clock_skew=skew, sweep_interval=0.01,
                                                 poll_interval=0.5), skew)


BACKENDS = ["embedded", "postgresql"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "embedded":
        b = embedded(tmp_path)
    else:
        b = postgresql(request.getfixturevalue("pg_database"))
    yield b
    await b.close_all()


@pytest.fixture
def store(backend: Backend) -> MetadataStore:
    return backend.open()


async def take(events: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    async with asyncio.timeout(5):
        return [await anext(events) for _ in range(n)]


# -- get / put / versions ----------------------------------------------------------------


async def test_get_missing(store: MetadataStore) -> None:
    assert await store.get("nope") is None


async def test_put_get_and_versions_increase(store: MetadataStore) -> None:
    v1 = await store.put("a", b"1")
    v2 = await store.put("a", b"2")
    v3 = await store.put("b", b"x")
    assert 0 < v1 < v2 < v3  # one store-wide revision
    a = await store.get("a")
    assert a is not None and (a.key, a.value, a.version, a.lease) == ("a", b"2", v2, 0)
    b = await store.get("b")
    assert b is not None and b.version == v3


async def test_empty_value_and_unicode_key(store: MetadataStore) -> None:
    await store.put("topics/é✓", b"")
    e = await store.get("topics/é✓")
    assert e is not None and e.value == b""


async def test_put_if_create_only(store: MetadataStore) -> None:
    v = await store.put_if("k", b"first", 0)
    with pytest.raises(Fenced):
        await store.put_if("k", b"second", 0)
    e = await store.get("k")
    assert e is not None and (e.value, e.version) == (b"first", v)


async def test_put_if_compare_and_stale_version(store: MetadataStore) -> None:
    v1 = await store.put("k", b"1")
    v2 = await store.put_if("k", b"2", v1)
    assert v2 > v1
    with pytest.raises(Fenced):
        await store.put_if("k", b"stale", v1)
    with pytest.raises(Fenced):
        await store.put_if("absent", b"x", v2)
    assert await store.get("absent") is None
    e = await store.get("k")
    assert e is not None and (e.value, e.version) == (b"2", v2)
    with pytest.raises(ValueError):
        await store.put_if("k", b"x", -1)


async def test_delete(store: MetadataStore) -> None:
    v = await store.put("k", b"1")
    await store.delete("k")
    assert await store.get("k") is None
    await store.delete("k")  # absent: not an error
    assert await store.put_if("k", b"again", 0) > v  # recreated, never an old version


async def test_list_by_prefix_sorted(store: MetadataStore) -> None:
    for key in ["topics/b", "brokers/1", "topics/a", "topicsX", "topics/é", "topics/a/0", "top"]:
        await store.put(key, key.encode())
    keys = [e.key for e in await store.list("topics/")]
    assert keys == ["topics/a", "topics/a/0", "topics/b", "topics/é"]
    assert [e.value for e in await store.list("topics/a")] == [b"topics/a", b"topics/a/0"]
    assert len(await store.list("")) == 7
    assert await store.list("zzz") == []


# -- transactions ------------------------------------------------------------------------


async def test_commit_applies_everything_at_one_revision(store: MetadataStore) -> None:
    va = await store.put("a", b"1")
    await store.put("gone", b"x")
    rev = await store.commit(
        Txn(compares=[("a", va), ("new", 0)], puts=[("a", b"2"), ("new", b"n")], deletes=["gone"])
    )
    a, new = await store.get("a"), await store.get("new")
    assert a is not None and new is not None
    assert (a.value, a.version, new.value, new.version) == (b"2", rev, b"n", rev)
    assert await store.get("gone") is None
    assert await store.commit(Txn(compares=[("a", rev)])) >= rev  # compare-only txn is fine


async def test_failing_compare_changes_nothing(store: MetadataStore) -> None:
    va = await store.put("a", b"1")
    vb = await store.put("b", b"1")
    events = store.watch("")
    with pytest.raises(Fenced):
        await store.commit(
            Txn(
                compares=[("a", va), ("b", vb - 1)],
                puts=[("a", b"2"), ("c", b"3")],
                deletes=["b"],
            )
        )
    assert [(e.key, e.value, e.version) for e in await store.list("")] == [
        ("a", b"1", va),
        ("b", b"1", vb),
    ]
    marker = await store.put("marker", b"")
    # the failed txn published nothing: the first event seen is the marker
    assert [(e.key, e.version) for e in await take(events, 1)] == [("marker", marker)]


async def test_txn_writing_a_key_twice_is_rejected(store: MetadataStore) -> None:
    with pytest.raises(ValueError):
        await store.commit(Txn(puts=[("k", b"1")], deletes=["k"]))
    assert await store.get("k") is None


async def test_concurrent_put_if_exactly_one_winner(store: MetadataStore) -> None:
    results = await asyncio.gather(
        *(store.put_if("leader", str(i).encode(), 0) for i in range(50)), return_exceptions=True
    )
    winners = [i for i, r in enumerate(results) if isinstance(r, int)]
    assert len(winners) == 1
    assert all(isinstance(r, Fenced) for r in results if not isinstance(r, int))
    e = await store.get("leader")
    assert e is not None and e.value == str(winners[0]).encode()


async def test_concurrent_cas_increments_lose_nothing(store: MetadataStore) -> None:
    await store.put("n", b"0")

    async def increment() -> None:
        while True:
            e = await store.get("n")
            assert e is not None
            try:
                await store.put_if("n", str(int(e.value) + 1).encode(), e.version)
                return
            except Fenced:
                continue

    await asyncio.gather(*(increment() for _ in range(20)))
    e = await store.get("n")
    assert e is not None and e.value == b"20"


# -- watch -------------------------------------------------------------------------------


async def test_watch_sees_puts_and_deletes_in_order(store: MetadataStore) -> None:
    await store.put("p/before", b"not seen")
    events = store.watch("p/")
    other = store.watch("")
    v1 = await store.put("p/a", b"1")
    await store.put("q/ignored", b"x")
    v2 = await store.put("p/b", b"2")
    await store.delete("p/a")
    v4 = await store.commit(Txn(puts=[("p/c", b"3")], deletes=["p/b"]))
    got = [(e.key, e.value) for e in await take(events, 5)]
    assert got[:3] == [("p/a", b"1"), ("p/b", b"2"), ("p/a", None)]
    assert sorted(got[3:], key=str) == sorted([("p/c", b"3"), ("p/b", None)], key=str)
    seen = await take(other, 6)
    versions = [e.version for e in seen]
    assert versions == sorted(versions) and versions[0] == v1 and versions[-1] == v4
    assert (seen[2].key, seen[2].version) == ("p/b", v2)


async def test_watch_ends_when_store_closes(backend: Backend) -> None:
    store = backend.open()
    events = store.watch("")
    await store.close()
    async with asyncio.timeout(5):
        assert [e async for e in events] == []
    with pytest.raises(MetadataError):
        await store.get("k")


# -- leases ------------------------------------------------------------------------------


async def test_lease_expiry_deletes_its_keys(backend: Backend, store: MetadataStore) -> None:
    lease = await store.grant_lease(TTL)
    v = await store.put("brokers/1", b"alive", lease=lease)
    await store.put("brokers/static", b"stays")
    e = await store.get("brokers/1")
    assert e is not None and (e.lease, e.version) == (lease, v)
    await backend.advance(TTL * 0.5)
    assert await store.get("brokers/1") is not None
    await backend.advance(TTL * 0.6)
    assert await store.get("brokers/1") is None
    assert [e.key for e in await store.list("brokers/")] == ["brokers/static"]
    with pytest.raises(MetadataError):
        await store.keep_alive(lease)
    with pytest.raises(MetadataError):
        await store.put("brokers/1", b"late", lease=lease)
    assert await store.get("brokers/1") is None


async def test_lease_expiry_notifies_watchers_unprompted(
    backend: Backend, store: MetadataStore
) -> None:
    lease = await store.grant_lease(TTL)
    await store.commit(Txn(puts=[("b/1", b"x"), ("b/2", b"y")], lease=lease))
    events = store.watch("b/")
    await backend.advance(TTL * 1.1)
    got = await take(events, 2)  # nobody calls the store: the expiry must still happen
    assert sorted(e.key for e in got) == ["b/1", "b/2"]
    assert all(e.value is None for e in got)


async def test_keep_alive_extends(backend: Backend, store: MetadataStore) -> None:
    lease = await store.grant_lease(TTL)
    await store.put("k", b"v", lease=lease)
    for _ in range(3):
        await backend.advance(TTL * 0.6)
        await store.keep_alive(lease)
    assert await store.get("k") is not None
    await backend.advance(TTL * 1.1)
    assert await store.get("k") is None


async def test_revoke_deletes_keys(store: MetadataStore) -> None:
    lease = await store.grant_lease(TTL)
    await store.put("r/1", b"x", lease=lease)
    events = store.watch("r/")
    await store.revoke_lease(lease)
    assert await store.get("r/1") is None
    (event,) = await take(events, 1)
    assert (event.key, event.value) == ("r/1", None)
    with pytest.raises(MetadataError):
        await store.keep_alive(lease)
    await store.revoke_lease(lease)  # idempotent


async def test_unknown_lease_rejected(store: MetadataStore) -> None:
    with pytest.raises(MetadataError):
        await store.keep_alive(987654321)
    with pytest.raises(MetadataError):
        await store.commit(Txn(puts=[("k", b"v"), ("k2", b"v")], lease=987654321))
    assert await store.list("") == []


async def test_put_without_lease_detaches_key(backend: Backend, store: MetadataStore) -> None:
    lease = await store.grant_lease(TTL)
    await store.put("k", b"leased", lease=lease)
    await store.put("k", b"plain")
    await backend.advance(TTL * 2)
    e = await store.get("k")
    assert e is not None and (e.value, e.lease) == (b"plain", 0)


async def test_lease_survives_reopen(backend: Backend, store: MetadataStore) -> None:
    lease = await store.grant_lease(TTL)
    await store.put("k", b"v", lease=lease)
    store = await backend.reopen(store)
    assert await store.get("k") is not None
    await store.keep_alive(lease)
    await backend.advance(TTL * 1.1)
    assert await store.get("k") is None


# -- ids and durability ------------------------------------------------------------------


async def test_next_id_counts_per_name_and_survives_reopen(
    backend: Backend, store: MetadataStore
) -> None:
    assert [await store.next_id("stream") for _ in range(3)] == [1, 2, 3]
    assert await store.next_id("object") == 1
    store = await backend.reopen(store)
    assert await store.next_id("stream") == 4
    assert await store.next_id("object") == 2


async def test_data_survives_reopen(backend: Backend, store: MetadataStore) -> None:
    va = await store.put("a", b"1")
    vb = await store.put("b", b"2")
    store = await backend.reopen(store)
    assert [(e.key, e.value, e.version) for e in await store.list("")] == [
        ("a", b"1", va),
        ("b", b"2", vb),
    ]
    assert await store.put_if("a", b"3", va) > vb  # the revision keeps increasing


# -- cluster-mode additions: listing revisions, paging, named fences, limits, id blocks ---


async def test_watch_from_a_listing_misses_nothing(store: MetadataStore) -> None:
    await store.put("t/a", b"1")
    listing = await store.list("t/")
    assert [e.key for e in listing] == ["t/a"] and listing.revision >= listing[0].version
    v2 = await store.put("t/b", b"2")  # written after the read, before the watch
    await store.put("u/x", b"other prefix")
    events = store.watch("t/", from_revision=listing.revision)
    v3 = await store.put("t/c", b"3")
    got = await take(events, 2)
    assert [(e.key, e.version, e.resync) for e in got] == [("t/b", v2, False), ("t/c", v3, False)]


async def test_list_pages(store: MetadataStore) -> None:
    keys = [f"p/{i:03d}" for i in range(25)]
    await store.commit(Txn(puts=[(k, k.encode()) for k in keys]))
    await store.put("q/outside", b"")
    first = await store.list("p/", limit=10)
    assert [e.key for e in first] == keys[:10] and first.more
    last = await store.list("p/", start_after="p/019", limit=10)
    assert [e.key for e in last] == keys[20:] and not last.more
    exact = await store.list("p/", start_after="p/014", limit=10)
    assert [e.key for e in exact] == keys[15:25] and not exact.more
    everything = await store.list_all("p/", page=7)
    assert [e.key for e in everything] == keys and everything.revision == first.revision
    with pytest.raises(ValueError):
        await store.list("p/", limit=0)


async def test_fenced_names_every_failed_key(store: MetadataStore) -> None:
    va = await store.put("a", b"1")
    vb = await store.put("b", b"1")
    await store.put("c", b"1")
    with pytest.raises(Fenced) as err:
        await store.commit(Txn(compares=[("a", va), ("b", vb + 100), ("c", 0), ("d", 0)],
                               puts=[("a", b"2")]))
    assert sorted(err.value.keys) == ["b", "c"]
    e = await store.get("a")
    assert e is not None and e.value == b"1"


async def test_txn_at_the_size_limit(store: MetadataStore) -> None:
    puts = [(f"big/{i:05d}", b"v") for i in range(MAX_TXN_OPS)]
    rev = await store.commit(Txn(puts=puts))
    listing = await store.list_all("big/")
    assert len(listing) == MAX_TXN_OPS and {e.version for e in listing} == {rev}
    with pytest.raises(ValueError, match="over the limit"):
        await store.commit(Txn(puts=puts, deletes=["big/extra"]))
    with pytest.raises(ValueError, match="NUL"):
        await store.put("bad\x00key", b"")


async def test_next_ids_hands_out_blocks(backend: Backend, store: MetadataStore) -> None:
    assert await store.next_id("pid") == 1
    block = await store.next_ids("pid", 1000)
    assert block == range(2, 1002)
    assert await store.next_id("pid") == 1002
    blocks = await asyncio.gather(*(store.next_ids("pid", 10) for _ in range(20)))
    ids = [i for b in blocks for i in b]
    assert len(set(ids)) == 200 and min(ids) == 1003 and max(ids) == 1202
    store = await backend.reopen(store)
    assert (await store.next_ids("pid", 5)).start == 1203
    with pytest.raises(ValueError):
        await store.next_ids("pid", 0)


# -- embedded only -----------------------------------------------------------------------


async def test_open_metadata_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stores = [
        open_metadata("embedded://./rel/data"),
        open_metadata(f"embedded://{tmp_path}/abs"),
        open_metadata(str(tmp_path / "plain")),
    ]
    for s in stores:
        await s.put("k", b"v")
        await s.close()
    for d in ["rel/data", "abs", "plain"]:
        assert (tmp_path / d / "metadata.db").is_file()
    assert isinstance(open_metadata("postgresql://u:p@127.0.0.1:1/db"), PostgresMetadataStore)
    with pytest.raises(ValueError, match="unknown scheme 'zk'"):
        open_metadata("zk://host/x")


async def test_embedded_file_is_wal_and_locked(tmp_path: Path) -> None:
    path = str(tmp_path / "metadata.db")
    first = EmbeddedMetadataStore(path)
    await first.put("k", b"v")
    second = EmbeddedMetadataStore(path)
    with pytest.raises(MetadataError):
        await second.get("k")
    await second.close()
    await first.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_embedded_commit_survives_kill_9(tmp_path: Path) -> None:
    path = str(tmp_path / "metadata.db")
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from tidelog.metadata.embedded import EmbeddedMetadataStore

        async def main():
            s = EmbeddedMetadataStore({path!r})
            await s.put("k", b"durable")
            await s.next_id("ids")
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await proc.wait() == -signal.SIGKILL
    store = EmbeddedMetadataStore(path)
    try:
        e = await store.get("k")
        assert e is not None and e.value == b"durable"
        assert await store.next_id("ids") == 2
    finally:
        await store.close()


async def test_embedded_watch_from_before_the_open_resyncs(tmp_path: Path) -> None:
    path = str(tmp_path / "metadata.db")
    store = EmbeddedMetadataStore(path)
    old = await store.put("w/a", b"1")
    await store.put("w/b", b"2")
    await store.close()
    store = EmbeddedMetadataStore(path)
    try:
        listing = await store.list("w/")
        events = store.watch("w/", from_revision=old)  # history before the open is gone
        (first,) = await take(events, 1)
        assert first.resync and first.key == "w/" and first.version == listing.revision
        v = await store.put("w/c", b"3")
        (nxt,) = await take(events, 1)
        assert (nxt.key, nxt.version, nxt.resync) == ("w/c", v, False)
    finally:
        await store.close()
