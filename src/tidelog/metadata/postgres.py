"""Cluster metadata on PostgreSQL (`metadata.uri=postgresql://user:pass@host:port/db`).

Every contract call is one statement (a function of `postgres_schema.py` for writes), so a
compare-and-set costs one round trip. Leases run on the database's clock (`now()`), never
a broker's. Watches read `tidelog_changes`, written in the same transaction as the change;
LISTEN/NOTIFY only wakes them, so a watcher that lost its connection replays from its last
revision when it is back (NOTIFY alone loses what was sent meanwhile).

Connection loss: calls are retried on a fresh connection for up to `retry_seconds`.
A commit carries a transaction id, so a retry of a commit whose answer was lost returns
the first answer instead of applying twice (or failing its own compare).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tidelog.metadata import postgres_schema as sql
from tidelog.metadata.base import (
    Entry,
    Fenced,
    LeaseLost,
    Listing,
    MetadataError,
    MetadataStore,
    Txn,
    WatchEvent,
    prefix_end,
    validate_txn,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")
CHANNEL = "tidelog_changes"
CHANGES_PAGE = 1000
KEEP_REVISIONS = 100_000
"""Change history kept for watchers resuming after a disconnect (older: a resync)."""
KEEP_APPLIED_SECONDS = 600.0
"""How long a commit's answer is kept for its retries."""

# what a lost or refused connection raises: retried (the server restarts, a proxy drops)
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ConnectionFailureError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,  # a connection left mid-protocol by a lost peer
    asyncio.TimeoutError,
)


def redact(dsn: str) -> str:
    """A DSN for logs and errors: the password never leaves the process."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresMetadataStore(MetadataStore):
    def __init__(
        self,
        dsn: str,
        *,
        clock_skew: Callable[[], float] = lambda: 0.0,
        sweep_interval: float = 0.5,
        poll_interval: float = 2.0,
        retry_seconds: float = 30.0,
        connect_timeout: float = 5.0,
        pool_size: int = 8,
    ) -> None:
        """Connects on first use; an unreachable server, a wrong password or a schema from
        a newer version surface as one-line `MetadataError`s from that first call.

        `clock_skew` is added to the database clock (tests make lease time pass without
        sleeping; production leaves it at 0)."""
        self._dsn = dsn
        self._name = redact(dsn)
        self._skew = clock_skew
        self._sweep_interval = sweep_interval
        self._poll_interval = poll_interval
        self._retry_seconds = retry_seconds
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: set[_Watcher] = set()
        self._known_revision = 0
        self._closed = False

    # -- contract ----------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        row = await self._run(lambda c: c.fetchrow(sql.GET, key, self._skew()))
        return Entry(key, bytes(row[0]), row[1], row[2]) if row else None

    async def list(self, prefix: str, *, start_after: str | None = None,
                   limit: int | None = None) -> Listing:
        if limit is not None and limit < 1:
            raise ValueError(f"list limit must be positive, got {limit}")
        rows = await self._run(lambda c: c.fetch(
            sql.LIST, prefix, self._skew(), prefix_end(prefix), start_after,
            None if limit is None else limit + 1))
        revision = int(rows[0]["revision"])
        self._saw(revision)
        entries = [Entry(r["key"], bytes(r["value"]), r["version"], r["lease"])
                   for r in rows if r["key"] is not None]
        more = limit is not None and len(entries) > limit
        return Listing(entries[:limit], revision, more)

    async def commit(self, txn: Txn) -> int:
        validate_txn(txn)
        txid = uuid.uuid4()
        args = ([k for k, _ in txn.compares], [v for _, v in txn.compares],
                [k for k, _ in txn.puts], [bytes(v) for _, v in txn.puts], list(txn.deletes),
                txn.lease)
        try:
            row = await self._run(lambda c: c.fetchrow(
                "SELECT * FROM tidelog_commit($1, $2, $3, $4, $5, $6, $7, $8)",
                txid, *args, self._skew()))
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", None) == "TL001":
                raise LeaseLost(f"lease {txn.lease} is unknown or expired") from None
            raise
        revision, failed = int(row[0]), list(row[1])
        self._saw(revision)
        if failed:
            expected = dict(txn.compares)
            raise Fenced("; ".join(f"{k!r}: expected version {expected[k]}" for k in failed),
                         failed)
        return revision

    def watch(self, prefix: str, from_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        """Without `from_revision`, starts after the newest revision this store has seen
        (a commit, a listing), so everything it wrote after the call is delivered."""
        start = from_revision if from_revision is not None else (self._known_revision or None)
        watcher = _Watcher(self, prefix, start)
        if self._closed:
            watcher.end()
        else:
            self._watchers.add(watcher)
            watcher.task = asyncio.get_running_loop().create_task(
                watcher.run(), name=f"tidelog-metadata-watch {prefix!r}")
        return watcher

    async def grant_lease(self, ttl_seconds: float) -> int:
        if not ttl_seconds > 0:
            raise ValueError(f"lease ttl must be positive, got {ttl_seconds}")
        lease = await self._run(lambda c: c.fetchval(sql.GRANT, float(ttl_seconds),
                                                     self._skew()))
        return int(lease)

    async def keep_alive(self, lease: int) -> None:
        status = await self._run(lambda c: c.execute(sql.KEEP_ALIVE, lease, self._skew()))
        if status != "UPDATE 1":
            raise LeaseLost(f"lease {lease} is unknown or expired")

    async def revoke_lease(self, lease: int) -> None:
        """Revoking an unknown or already expired lease is a no-op (its keys are gone)."""
        revision = await self._run(lambda c: c.fetchval("SELECT tidelog_revoke($1)", lease))
        self._saw(int(revision))

    async def next_ids(self, name: str, count: int) -> range:
        if count < 1:
            raise ValueError(f"id block size must be positive, got {count}")
        # a retry after a lost answer skips a block: harmless, ids are never reused
        last = int(await self._run(
            lambda c: c.fetchval("SELECT tidelog_next_ids($1, $2)", name, count)))
        return range(last - count + 1, last + 1)

    async def close(self) -> None:
        """Stop the background tasks, end every watch, close the connections."""
        if self._closed:
            return
        self._closed = True
        for watcher in list(self._watchers):
            watcher.end()
        self._watchers.clear()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)
            self._pool = None

    # -- machinery ---------------------------------------------------------------------

    def _saw(self, revision: int) -> None:
        self._known_revision = max(self._known_revision, revision)

    async def _run(self, call: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """One statement on a pooled connection, retried across connection loss."""
        pool = await self._open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_seconds
        backoff = 0.05
        while True:
            if self._closed:
                raise MetadataError("metadata store is closed")
            try:
                return await self._on_connection(pool, call)
            except _TRANSIENT as exc:
                if loop.time() + backoff > deadline:
                    raise MetadataError(f"metadata {self._name}: {_describe(exc)}") from exc
                log.warning("metadata %s: %s; retrying", self._name, _describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _on_connection(
        self, pool: asyncpg.Pool, call: Callable[[asyncpg.Connection], Awaitable[_T]]
    ) -> _T:
        conn = await pool.acquire(timeout=self._connect_timeout)
        try:
            return await call(conn)
        except _TRANSIENT:
            conn.terminate()  # half-used after a lost connection: never back into the pool
            raise
        finally:
            with contextlib.suppress(Exception):
                await pool.release(conn)

    async def _open(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise MetadataError("metadata store is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                conn = await self._connect()
                try:
                    await _install_schema(conn, self._name)
                finally:
                    await conn.close()
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._pool_size,
                    timeout=self._connect_timeout, command_timeout=self._retry_seconds)
                loop = asyncio.get_running_loop()
                self._tasks.append(loop.create_task(self._listen(), name="tidelog-metadata-listen"))
                self._tasks.append(loop.create_task(self._sweep(), name="tidelog-metadata-leases"))
        assert self._pool is not None
        return self._pool

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
            raise MetadataError(f"metadata {self._name}: authentication failed "
                                f"(wrong user or password)") from None
        except asyncpg.InvalidCatalogNameError:
            raise MetadataError(f"metadata {self._name}: the database does not exist") from None
        except (*_TRANSIENT, asyncpg.PostgresError) as exc:
            raise MetadataError(f"metadata {self._name}: cannot connect: "
                                f"{_describe(exc)}") from None

    async def _listen(self) -> None:
        """Hold a LISTEN connection; wake every watcher on a notification and after each
        reconnect (what was sent while disconnected is in the change table)."""
        backoff = 0.05
        while not self._closed:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda *_: self._wake_all())
                self._wake_all()
                backoff = 0.05
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self._poll_interval)
                    if not lost.is_set():  # a dead TCP peer shows only when we talk
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), self._connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("metadata %s: watch connection lost: %s", self._name,
                            _describe(exc))
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 1)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    def _wake_all(self) -> None:
        for watcher in self._watchers:
            watcher.wake.set()

    async def _sweep(self) -> None:
        """Expire leases on time even when nobody calls; prune old change history."""
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while not self._closed:
            try:
                await self._run(lambda c: c.fetchval("SELECT tidelog_expire($1)", self._skew()))
                if loop.time() >= next_prune:
                    next_prune = loop.time() + 30
                    await self._run(lambda c: c.execute(sql.PRUNE, KEEP_REVISIONS))
                    await self._run(lambda c: c.execute(sql.PRUNE_APPLIED, KEEP_APPLIED_SECONDS))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                log.warning("metadata %s: lease sweep failed: %s", self._name, _describe(exc))
            await asyncio.sleep(self._sweep_interval)

    async def _changes(self, after: tuple[int, int], prefix: str) -> Sequence[Any]:
        return await self._run(lambda c: c.fetch(
            sql.CHANGES, after[0], after[1], prefix, prefix_end(prefix), CHANGES_PAGE))


class _Watcher(AsyncIterator[WatchEvent]):
    """One watch: a task reads the change table from its last (revision, seq) whenever
    woken (NOTIFY, reconnect) or every poll interval, into a queue; None ends it."""

    def __init__(self, store: PostgresMetadataStore, prefix: str, start: int | None) -> None:
        self.prefix = prefix
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._store = store
        self._start = start
        self._queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self._done = False

    def __aiter__(self) -> _Watcher:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._done = True
            raise StopAsyncIteration
        return event

    def end(self) -> None:
        self._queue.put_nowait(None)
        if self.task is not None:
            self.task.cancel()

    async def aclose(self) -> None:
        """Stop watching; events not yet read are dropped."""
        self._store._watchers.discard(self)
        self._done = True
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        store = self._store
        after: tuple[int, int] | None = None if self._start is None else (self._start, 1 << 30)
        while True:
            try:
                if after is None:  # no revision known yet: start at the current one
                    rows = await store._run(lambda c: c.fetchval(
                        "SELECT value FROM tidelog_revision WHERE id = 1"))
                    after = (int(rows), 1 << 30)
                while True:
                    rows = await store._changes(after, self.prefix)
                    current, compacted = int(rows[0]["current"]), int(rows[0]["compacted"])
                    if after[0] < compacted:
                        self._queue.put_nowait(WatchEvent(self.prefix, None, current,
                                                          resync=True))
                        after = (current, 1 << 30)
                        continue
                    changes = [r for r in rows if r["revision"] is not None]
                    for r in changes:
                        value = None if r["value"] is None else bytes(r["value"])
                        self._queue.put_nowait(WatchEvent(r["key"], value, r["revision"]))
                    if len(changes) < CHANGES_PAGE:
                        after = max(after, (current, 1 << 30))
                        break
                    after = (changes[-1]["revision"], changes[-1]["seq"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store retries connections; keep watching
                log.warning("metadata watch %r: %s", self.prefix, _describe(exc))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), store._poll_interval)


async def _install_schema(conn: asyncpg.Connection, name: str) -> None:
    """Create the schema once (an advisory lock keeps two brokers from racing); refuse a
    database written by a newer version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tidelog_schema'))")
        exists = await conn.fetchval("SELECT to_regclass('tidelog_schema') IS NOT NULL")
        if exists:
            version = await conn.fetchval("SELECT version FROM tidelog_schema WHERE id = 1")
            if version is not None and version > sql.SCHEMA_VERSION:
                raise MetadataError(
                    f"metadata {name}: schema version {version} was written by a newer "
                    f"tidelog (this one knows {sql.SCHEMA_VERSION}); upgrade this broker")
            if version == sql.SCHEMA_VERSION:
                return
        await conn.execute(sql.TABLES)
        await conn.execute(sql.FUNCTIONS)
        await conn.execute("INSERT INTO tidelog_schema VALUES (1, $1)", sql.SCHEMA_VERSION)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
