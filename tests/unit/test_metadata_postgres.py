"""PostgreSQL-only behaviour of the metadata store: leases on the database clock, watches
that survive dropped connections, retried commits applied once, a server restart under
load, and the one-line errors of a bad `metadata.uri`. The shared contract is in
`test_metadata_contract.py`."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from tidelog.metadata.base import MetadataError, Txn, WatchEvent
from tidelog.metadata.postgres import PostgresMetadataStore, redact
from tidelog.tools import local_postgres
from tidelog.tools.local_postgres import LocalPostgres


async def take(events: object, n: int, timeout: float = 10) -> list[WatchEvent]:
    async with asyncio.timeout(timeout):
        return [await anext(events) for _ in range(n)]  # type: ignore[call-overload]


async def test_lease_runs_on_the_database_clock(pg_database: str) -> None:
    """Two brokers' stores, no fake time: the lease one granted expires by the database's
    clock and the other sees the delete (nobody renews; nobody else calls)."""
    owner = PostgresMetadataStore(pg_database, sweep_interval=0.05)
    other = PostgresMetadataStore(pg_database, sweep_interval=0.05)
    try:
        lease = await owner.grant_lease(0.5)
        await owner.put("brokers/1", b"alive", lease=lease)
        listing = await other.list("brokers/")
        assert [e.key for e in listing] == ["brokers/1"]
        events = other.watch("brokers/", from_revision=listing.revision)
        (gone,) = await take(events, 1)
        assert (gone.key, gone.value) == ("brokers/1", None)
        with pytest.raises(MetadataError, match="expired"):
            await owner.keep_alive(lease)
        conn = await asyncpg.connect(pg_database)
        try:  # the deadline the row holds is the server's now() + ttl
            row = await conn.fetchrow("SELECT count(*) FROM tidelog_leases")
            assert row[0] == 0
        finally:
            await conn.close()
    finally:
        await owner.close()
        await other.close()


async def test_watch_resumes_after_its_connections_are_dropped(pg_database: str) -> None:
    watcher = PostgresMetadataStore(pg_database, poll_interval=0.2)
    writer = PostgresMetadataStore(pg_database)
    admin = await asyncpg.connect(pg_database)
    try:
        start = await watcher.list("w/")
        events = watcher.watch("w/", from_revision=start.revision)
        await writer.put("w/1", b"before")
        assert [e.key for e in await take(events, 1)] == ["w/1"]
        dropped = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert dropped >= 2  # the watcher's LISTEN and pooled connections, the writer's
        # written while the watcher reconnects: NOTIFY is lost, the change table is not
        await writer.put("w/2", b"during")
        await writer.commit(Txn(puts=[("w/3", b"a"), ("w/4", b"b")], deletes=["w/1"]))
        got = await take(events, 4)
        assert [(e.key, e.value) for e in got] == [
            ("w/2", b"during"), ("w/3", b"a"), ("w/4", b"b"), ("w/1", None)]
        assert [e.version for e in got] == sorted(e.version for e in got)
    finally:
        await admin.close()
        await watcher.close()
        await writer.close()


async def test_watch_too_old_resyncs(pg_database: str) -> None:
    store = PostgresMetadataStore(pg_database)
    admin = await asyncpg.connect(pg_database)
    try:
        old = await store.put("r/a", b"1")
        await store.put("r/b", b"2")
        await admin.execute("SELECT 1")  # schema exists: prune all but the last revision
        from tidelog.metadata import postgres_schema as sql
        await admin.execute(sql.PRUNE, 1)
        listing = await store.list("r/")
        events = store.watch("r/", from_revision=old - 1)
        (first,) = await take(events, 1)
        assert first.resync and first.key == "r/" and first.version >= listing.revision
        v = await store.put("r/c", b"3")
        (nxt,) = await take(events, 1)
        assert (nxt.key, nxt.version, nxt.resync) == ("r/c", v, False)
    finally:
        await admin.close()
        await store.close()


async def test_a_retried_commit_is_applied_once(pg_database: str) -> None:
    """The same transaction id twice (a retry after a lost answer) answers the first
    result: no second write, no Fenced from its own compare."""
    store = PostgresMetadataStore(pg_database)
    await store.put("k", b"0")  # creates the schema
    entry = await store.get("k")
    assert entry is not None
    conn = await asyncpg.connect(pg_database)
    try:
        txid = uuid.uuid4()
        call = "SELECT * FROM tidelog_commit($1, $2, $3, $4, $5, $6, $7, $8)"
        args = (txid, ["k"], [entry.version], ["k"], [b"1"], [], 0, 0.0)
        first = await conn.fetchrow(call, *args)
        again = await conn.fetchrow(call, *args)
        assert tuple(first) == tuple(again) and list(first[1]) == []
        after = await store.get("k")
        assert after is not None and (after.value, after.version) == (b"1", first[0])
        changes = await conn.fetchval("SELECT count(*) FROM tidelog_changes WHERE key = 'k'")
        assert changes == 2  # the first put and the txn, not the retry
    finally:
        await conn.close()
        await store.close()


async def test_concurrent_stores_serialise_compare_and_set(pg_database: str) -> None:
    stores = [PostgresMetadataStore(pg_database) for _ in range(4)]
    try:
        await stores[0].put("n", b"0")

        async def bump(store: PostgresMetadataStore) -> None:
            for _ in range(10):
                while True:
                    e = await store.get("n")
                    assert e is not None
                    try:
                        await store.put_if("n", str(int(e.value) + 1).encode(), e.version)
                        break
                    except MetadataError:
                        continue

        await asyncio.gather(*(bump(s) for s in stores))
        e = await stores[1].get("n")
        assert e is not None and e.value == b"40"
    finally:
        for s in stores:
            await s.close()


async def test_server_restart_under_load_loses_no_commit(tmp_path: Path) -> None:
    """Writes go on while PostgreSQL restarts: calls wait and retry; every write that
    returned is there afterwards, and writing resumes."""
    pg = local_postgres.start(tmp_path / "pg")
    store = PostgresMetadataStore(pg.dsn, retry_seconds=60)
    try:
        acked: list[str] = []
        stop = asyncio.Event()

        async def write() -> None:
            i = 0
            while not stop.is_set():
                key = f"load/{i:06d}"
                await store.put_if(key, b"x", 0)
                acked.append(key)
                i += 1

        writer = asyncio.create_task(write())
        while len(acked) < 50:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(local_postgres.stop, tmp_path / "pg")
        during = len(acked)
        await asyncio.to_thread(local_postgres.start, tmp_path / "pg", port=pg.port)
        while len(acked) < during + 50:  # writing resumes on its own
            assert not writer.done(), writer
            await asyncio.sleep(0.01)
        stop.set()
        await writer
        stored = {e.key for e in await store.list_all("load/")}
        assert set(acked) <= stored
    finally:
        await store.close()
        local_postgres.stop(tmp_path / "pg")


# -- a bad metadata.uri: one clear line --------------------------------------------------


async def test_unreachable_server_is_one_line(postgres: LocalPostgres) -> None:
    store = PostgresMetadataStore("postgresql://tidelog:secret@127.0.0.1:1/tidelog",
                                  connect_timeout=2)
    with pytest.raises(MetadataError) as err:
        await store.get("k")
    message = str(err.value)
    assert "cannot connect" in message and "\n" not in message and "secret" not in message
    await store.close()


async def test_wrong_password_is_one_line(postgres: LocalPostgres) -> None:
    dsn = f"postgresql://{postgres.user}:s3cr3t@127.0.0.1:{postgres.port}/{postgres.database}"
    store = PostgresMetadataStore(dsn)
    with pytest.raises(MetadataError, match="authentication failed") as err:
        await store.get("k")
    assert "s3cr3t" not in str(err.value)  # the password is redacted
    await store.close()


async def test_missing_database_is_one_line(postgres: LocalPostgres) -> None:
    store = PostgresMetadataStore(postgres.dsn_for("no_such_db"))
    with pytest.raises(MetadataError, match="does not exist"):
        await store.get("k")
    await store.close()


async def test_newer_schema_is_refused(pg_database: str) -> None:
    store = PostgresMetadataStore(pg_database)
    await store.put("k", b"v")
    await store.close()
    conn = await asyncpg.connect(pg_database)
    await conn.execute("UPDATE tidelog_schema SET version = 99")
    await conn.close()
    store = PostgresMetadataStore(pg_database)
    with pytest.raises(MetadataError, match="schema version 99 was written by a newer"):
        await store.get("k")
    await store.close()


def test_redact() -> None:
    assert redact("postgresql://u:pw@h:1/d") == "postgresql://u:***@h:1/d"
    assert redact("postgresql://u@h/d") == "postgresql://u@h/d"
