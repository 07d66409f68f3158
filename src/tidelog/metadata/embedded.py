"""Single-node metadata store on one SQLite file.

Durability: WAL journal with synchronous=FULL, so a write whose call returned survives
kill -9 and power loss. The file is locked exclusively while open, so two processes can
never both believe they own the cluster state.

Threading: one dedicated worker thread owns the connection; every call is a job on it,
so calls are serialised in submission order and the event loop never blocks on disk.
Watch events are handed from that thread to the loop with `call_soon_threadsafe`, which
keeps them in revision order.

Leases: deadlines are kept on the injected monotonic clock, which means nothing across a
restart, so on open every surviving lease gets a fresh full TTL (as etcd does when a new
leader takes over). Expiry is checked before every call and by a periodic sweep, so keys
vanish (with delete events) even when nobody else calls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

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
_Events = list[WatchEvent]
_Op = Callable[[sqlite3.Connection, float], tuple[_T, _Events]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv(lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    ttl REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases(expires_at);
INSERT OR IGNORE INTO meta(name, value) VALUES ('revision', 0), ('lease_seq', 0);
"""

RECENT_EVENTS = 10_000
"""Events kept in memory so a watch can start from a listing's revision."""


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE so the write lock is taken up front; all or nothing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _bump_revision(conn: sqlite3.Connection) -> int:
    conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
    return _revision(conn)


def _revision(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
    return int(row[0])


def _drop_lease(conn: sqlite3.Connection, lease: int) -> _Events:
    """Delete `lease` and its keys (one revision for all of them); call inside a txn."""
    keys = [
        str(r[0]) for r in conn.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))
    ]
    conn.execute("DELETE FROM leases WHERE id = ?", (lease,))
    if not keys:
        return []
    rev = _bump_revision(conn)
    conn.execute("DELETE FROM kv WHERE lease = ?", (lease,))
    return [WatchEvent(key, None, rev) for key in keys]


class _Watcher(AsyncIterator[WatchEvent]):
    """One watch: events arrive on a queue; None marks the end (store closed)."""

    def __init__(self, store: EmbeddedMetadataStore, prefix: str) -> None:
        self.prefix = prefix
        self._store = store
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

    def deliver(self, event: WatchEvent) -> None:
        self._queue.put_nowait(event)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def aclose(self) -> None:
        """Stop watching; events not yet read are dropped."""
        self._store._watchers.discard(self)
        self._done = True


class EmbeddedMetadataStore(MetadataStore):
    def __init__(
        self,
        path: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        sweep_interval: float = 0.25,
    ) -> None:
        """Open (or create) the store at `path`; the file is opened on the worker thread.

        An open failure (bad path, file locked by another process) surfaces as
        `MetadataError` on the first call, because opening must not block the caller's loop.
        """
        self._path = path
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidelog-metadata")
        self._conn: sqlite3.Connection | None = None
        self._recent: collections.deque[WatchEvent] = collections.deque(maxlen=RECENT_EVENTS)
        self._recent_floor = 1 << 62
        """Events after this revision are in `_recent` (set once the file is open)."""
        self._published = 0
        self._opened: Future[None] = self._executor.submit(self._open, clock())
        self._watchers: set[_Watcher] = set()
        self._timer: asyncio.Task[None] | None = None
        self._closed = False

    # -- contract ----------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        def op(conn: sqlite3.Connection, now: float) -> tuple[Entry | None, _Events]:
            row = conn.execute(
                "SELECT value, version, lease FROM kv WHERE key = ?", (key,)
            ).fetchone()
            return (Entry(key, bytes(row[0]), row[1], row[2]) if row else None), []

        return await self._call(op)

    async def list(self, prefix: str, *, start_after: str | None = None,
                   limit: int | None = None) -> Listing:
        if limit is not None and limit < 1:
            raise ValueError(f"list limit must be positive, got {limit}")
        end = prefix_end(prefix)

        def op(conn: sqlite3.Connection, now: float) -> tuple[Listing, _Events]:
            sql = "SELECT key, value, version, lease FROM kv WHERE key >= ?"
            args: tuple[str | int, ...] = (prefix,)
            if end is not None:
                sql += " AND key < ?"
                args += (end,)
            if start_after is not None:
                sql += " AND key > ?"
                args += (start_after,)
            sql += " ORDER BY key"
            if limit is not None:
                sql += " LIMIT ?"
                args += (limit + 1,)
            rows = conn.execute(sql, args).fetchall()
            more = limit is not None and len(rows) > limit
            entries = [Entry(k, bytes(v), ver, lease) for k, v, ver, lease in rows[:limit]]
            return Listing(entries, _revision(conn), more), []

        return await self._call(op)

    async def commit(self, txn: Txn) -> int:
        validate_txn(txn)
        compares = tuple(txn.compares)
        puts = tuple((k, bytes(v)) for k, v in txn.puts)
        deletes = tuple(txn.deletes)
        lease = txn.lease

        def op(conn: sqlite3.Connection, now: float) -> tuple[int, _Events]:
            with _transaction(conn):
                failed = []
                for key, expected in compares:
                    row = conn.execute("SELECT version FROM kv WHERE key = ?", (key,)).fetchone()
                    actual = row[0] if row else 0
                    if actual != expected:
                        failed.append((key, expected, actual))
                if failed:
                    raise Fenced("; ".join(f"{k!r}: expected version {e}, found {a}"
                                           for k, e, a in failed), [k for k, _, _ in failed])
                if lease and puts and not _lease_alive(conn, lease):
                    raise LeaseLost(f"lease {lease} is unknown or expired")
                gone = [k for k in deletes if _exists(conn, k)]
                if not puts and not gone:
                    return _revision(conn), []
                rev = _bump_revision(conn)
                conn.executemany(
                    "INSERT INTO kv(key, value, version, lease) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                    "version = excluded.version, lease = excluded.lease",
                    [(k, v, rev, lease) for k, v in puts],
                )
                conn.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in gone])
            events = [WatchEvent(k, v, rev) for k, v in puts]
            events += [WatchEvent(k, None, rev) for k in gone]
            return rev, events

        return await self._call(op)

    def watch(self, prefix: str, from_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        """Registered now (not on first iteration), so no write after this call is missed;
        from a revision, the recent events after it are replayed first (events reach the
        loop in revision order, so replayed and live events join without a gap)."""
        watcher = _Watcher(self, prefix)
        if from_revision is not None:
            if from_revision < self._recent_floor:
                watcher.deliver(WatchEvent(prefix, None, self._published, resync=True))
            else:
                for event in self._recent:
                    if event.version > from_revision and event.key.startswith(prefix):
                        watcher.deliver(event)
        if self._closed:
            watcher.end()
        else:
            self._watchers.add(watcher)
        return watcher

    async def grant_lease(self, ttl_seconds: float) -> int:
        if not ttl_seconds > 0:
            raise ValueError(f"lease ttl must be positive, got {ttl_seconds}")

        def op(conn: sqlite3.Connection, now: float) -> tuple[int, _Events]:
            with _transaction(conn):
                conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'lease_seq'")
                lease = int(
                    conn.execute("SELECT value FROM meta WHERE name = 'lease_seq'").fetchone()[0]
                )
                conn.execute(
                    "INSERT INTO leases(id, ttl, expires_at) VALUES (?, ?, ?)",
                    (lease, ttl_seconds, now + ttl_seconds),
                )
            return lease, []

        return await self._call(op)

    async def keep_alive(self, lease: int) -> None:
        def op(conn: sqlite3.Connection, now: float) -> tuple[None, _Events]:
            with _transaction(conn):
                cur = conn.execute(
                    "UPDATE leases SET expires_at = ? + ttl WHERE id = ? AND expires_at > ?",
                    (now, lease, now),
                )
                if cur.rowcount != 1:
                    raise LeaseLost(f"lease {lease} is unknown or expired")
            return None, []

        await self._call(op)

    async def revoke_lease(self, lease: int) -> None:
        """Revoking an unknown or already expired lease is a no-op (its keys are gone)."""

        def op(conn: sqlite3.Connection, now: float) -> tuple[None, _Events]:
            with _transaction(conn):
                return None, _drop_lease(conn, lease)

        await self._call(op)

    async def next_ids(self, name: str, count: int) -> range:
        if count < 1:
            raise ValueError(f"id block size must be positive, got {count}")

        def op(conn: sqlite3.Connection, now: float) -> tuple[range, _Events]:
            with _transaction(conn):
                conn.execute(
                    "INSERT INTO counters(name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (name, count),
                )
                row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            last = int(row[0])
            return range(last - count + 1, last + 1), []

        return await self._call(op)

    async def close(self) -> None:
        """Stop the sweep, finish queued calls, close the file and end every watch."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_db)
        self._executor.shutdown(wait=False)
        for watcher in self._watchers:
            watcher.end()
        self._watchers.clear()

    # -- machinery ---------------------------------------------------------------------

    async def _call(self, op: _Op[_T]) -> _T:
        if self._closed:
            raise MetadataError("metadata store is closed")
        loop = asyncio.get_running_loop()
        if self._timer is None:
            self._timer = loop.create_task(self._sweep(), name="tidelog-metadata-leases")
        return await loop.run_in_executor(self._executor, self._job, loop, self._clock(), op)

    def _job(self, loop: asyncio.AbstractEventLoop, now: float, op: _Op[_T]) -> _T:
        """Worker thread: expire due leases, then run `op`; events go to the loop in order."""
        try:
            self._opened.result()
            conn = self._conn
            if conn is None:
                raise MetadataError("metadata store is closed")
            expired = self._expire(conn, now)
            if expired:
                self._post(loop, expired)
            result, events = op(conn, now)
        except sqlite3.Error as e:
            hint = " (another process has it open)" if "locked" in str(e) else ""
            raise MetadataError(f"embedded metadata {self._path}: {e}{hint}") from e
        if events:
            self._post(loop, events)
        return result

    def _open(self, now: float) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
        try:
            # The write lock is then held until close, so a second process opening the same
            # file fails fast; it also keeps the WAL index in memory (no -shm file).
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise MetadataError(f"{self._path}: cannot use WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            with _transaction(conn):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("UPDATE leases SET expires_at = ? + ttl", (now,))
                self._recent_floor = self._published = _revision(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_db(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @staticmethod
    def _expire(conn: sqlite3.Connection, now: float) -> _Events:
        due = conn.execute("SELECT id FROM leases WHERE expires_at <= ?", (now,)).fetchall()
        events: _Events = []
        for (lease,) in due:
            with _transaction(conn):
                events += _drop_lease(conn, lease)
        return events

    def _post(self, loop: asyncio.AbstractEventLoop, events: _Events) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody listens
            loop.call_soon_threadsafe(self._publish, events)

    def _publish(self, events: _Events) -> None:
        for event in events:
            if len(self._recent) == self._recent.maxlen:
                self._recent_floor = self._recent[0].version
            self._recent.append(event)
            self._published = max(self._published, event.version)
        for watcher in self._watchers:
            for event in events:
                if event.key.startswith(watcher.prefix):
                    watcher.deliver(event)

    async def _sweep(self) -> None:
        """Expire leases on time even when no other call arrives to do it lazily."""
        while not self._closed:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self._call(_noop)
            except Exception:
                if self._closed:
                    return
                log.exception("lease sweep failed")


def _noop(conn: sqlite3.Connection, now: float) -> tuple[None, _Events]:
    return None, []


def _exists(conn: sqlite3.Connection, key: str) -> bool:
    return conn.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None


def _lease_alive(conn: sqlite3.Connection, lease: int) -> bool:
    """Expired leases were dropped before the op ran, so existing means alive."""
    return conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is not None
