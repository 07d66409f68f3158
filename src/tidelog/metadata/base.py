"""The cluster-state contract: a versioned key-value store with compare-and-set,
atomic multi-key transactions, watches and leases.

Every value carries a `version` (a store-wide revision at which it was last written, > 0).
Version 0 in a comparison means "the key must not exist". Two backends implement it and
pass one suite (`tests/unit/test_metadata_contract.py`): `embedded` (one node, a SQLite
file) and `postgresql` (cluster mode; leases on the database's clock, watches replayed
from a change table). `docs/design/0001-cluster.md` says why.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

_log = logging.getLogger(__name__)

MAX_TXN_OPS = 10_000
"""Compares + puts + deletes in one transaction: callers split larger work (a commit over
the limit is a caller bug and raises ValueError before reaching the store)."""
MAX_TXN_BYTES = 64 << 20
"""Keys and values written by one transaction, in bytes."""
MAX_CHAR = 0x10FFFF


class MetadataError(Exception):
    pass


class LeaseLost(MetadataError):
    """The lease is unknown or expired (its keys are gone)."""


class Fenced(MetadataError):
    """A compare failed: somebody else wrote the key (stale version / epoch)."""

    def __init__(self, message: str, keys: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.keys: tuple[str, ...] = tuple(keys)
        """Every compared key whose version was not the expected one."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    key: str
    value: bytes | None
    """None when the key was deleted."""
    version: int
    resync: bool = False
    """The events since the watch's start revision are no longer kept: the watcher must
    list again (at `version` or later) and replace what it knows; events after `version`
    follow as usual. `key` is the watched prefix."""


class Listing(list[Entry]):
    """A list of entries that also says the revision it was read at, so a watch started
    from `revision` misses nothing written after the read."""

    def __init__(self, entries: Iterable[Entry], revision: int, more: bool = False) -> None:
        super().__init__(entries)
        self.revision = revision
        self.more = more
        """A `limit` cut the listing short: list again with `start_after` the last key."""


@dataclass(slots=True)
class Txn:
    """Compare versions, then apply puts and deletes atomically (all or nothing)."""

    compares: list[tuple[str, int]] = field(default_factory=list)
    puts: list[tuple[str, bytes]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    lease: int = 0
    """Lease attached to every put in this txn (0: none)."""

    @property
    def ops(self) -> int:
        return len(self.compares) + len(self.puts) + len(self.deletes)


class MetadataStore(ABC):
    @abstractmethod
    async def get(self, key: str) -> Entry | None: ...

    @abstractmethod
    async def list(self, prefix: str, *, start_after: str | None = None,
                   limit: int | None = None) -> Listing:
        """Entries whose key starts with `prefix` (and sorts after `start_after`), sorted by
        key, at most `limit` of them, all read at one revision (`Listing.revision`)."""

    async def list_all(self, prefix: str, page: int = 1000) -> Listing:
        """Every entry under `prefix`, read in pages of `page` (each page is consistent;
        the revision is the first page's, so a watch from it replays whatever changed
        between pages)."""
        first = await self.list(prefix, limit=page)
        out, revision = list(first), first.revision
        more = first.more
        while more:
            nxt = await self.list(prefix, start_after=out[-1].key, limit=page)
            out.extend(nxt)
            more = nxt.more
        return Listing(out, revision)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Unconditional write; returns the new version."""
        return await self.commit(Txn(puts=[(key, value)], lease=lease))

    async def put_if(self, key: str, value: bytes, version: int, lease: int = 0) -> int:
        """Write only if the key's current version is `version` (0: absent); else `Fenced`."""
        return await self.commit(Txn(compares=[(key, version)], puts=[(key, value)],
                                     lease=lease))

    async def delete(self, key: str) -> None:
        await self.commit(Txn(deletes=[key]))

    @abstractmethod
    async def commit(self, txn: Txn) -> int:
        """Apply `txn` atomically; returns the new revision; raises `Fenced` (naming every
        failed key) on a failed compare. At most `MAX_TXN_OPS` operations."""

    @abstractmethod
    def watch(self, prefix: str, from_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        """Changes to keys under `prefix` in revision order: those after `from_revision`
        (a `Listing.revision`), else those after the call. A start too old for the store's
        change history gives one `resync` event first."""

    @abstractmethod
    async def grant_lease(self, ttl_seconds: float) -> int: ...

    @abstractmethod
    async def keep_alive(self, lease: int) -> None:
        """Renew `lease`; raises `LeaseLost` if it already expired (or was revoked)."""

    @abstractmethod
    async def revoke_lease(self, lease: int) -> None:
        """Drop the lease and delete every key attached to it."""

    async def next_id(self, name: str) -> int:
        """A durable counter: 1, 2, 3, ... per `name`, never reused."""
        return (await self.next_ids(name, 1)).start

    @abstractmethod
    async def next_ids(self, name: str, count: int) -> range:
        """A block of `count` consecutive ids of the same counter as `next_id` (one round
        trip for many ids: brokers hand out producer ids and object ids from blocks)."""

    @abstractmethod
    async def close(self) -> None: ...


def prefix_end(prefix: str) -> str | None:
    """Smallest string greater than every string starting with `prefix` (None: no bound).

    Both backends compare keys as UTF-8 bytes (code point order), so a range scan
    [prefix, end) uses the key index instead of scanning the table.
    """
    stripped = prefix.rstrip(chr(MAX_CHAR))
    if not stripped:
        return None
    nxt = ord(stripped[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be encoded; skip past them
        nxt = 0xE000
    return stripped[:-1] + chr(nxt)


def validate_txn(txn: Txn) -> None:
    """Reject malformed transactions before they reach a store (a caller bug, not a race)."""
    for key, version in txn.compares:
        if version < 0:
            raise ValueError(f"compare version for {key!r} must be >= 0, got {version}")
    written = [k for k, _ in txn.puts] + list(txn.deletes)
    if any("\x00" in k for k in written):
        raise ValueError("a metadata key holds a NUL character")
    if len(set(written)) != len(written):
        raise ValueError(f"a key is written more than once in one txn: {sorted(written)}")
    if txn.lease < 0:
        raise ValueError(f"lease id must be >= 0, got {txn.lease}")
    if txn.ops > MAX_TXN_OPS:
        raise ValueError(f"a txn of {txn.ops} operations is over the limit of {MAX_TXN_OPS}")
    size = sum(len(k.encode()) + len(v) for k, v in txn.puts)
    if size > MAX_TXN_BYTES:
        raise ValueError(f"a txn writing {size} bytes is over the limit of {MAX_TXN_BYTES}")


async def close_watch(events: AsyncIterator[WatchEvent]) -> None:
    """Stop a watch (its reader task and queue) that the caller no longer reads."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


Apply = Callable[[WatchEvent], Awaitable[None]]
Resync = Callable[[Listing], Awaitable[None]]


async def follow(meta: MetadataStore, prefix: str, revision: int, apply: Apply, *,
                 what: str, resync: Resync | None = None,
                 known: Callable[[], Iterable[str]] | None = None,
                 retry: float = 1.0) -> None:
    """Apply every change under `prefix` after `revision`, in order, until the store
    closes (the caller cancels the task to stop earlier).

    A failed watch is resumed after `retry` seconds from just before the last change
    applied: a transaction's changes share one revision, so one cut short is replayed
    whole and `apply` must be idempotent. A change `apply` fails on is logged and passed
    over. When the watch fell behind the history the store keeps, the state is rebuilt
    from a listing: by `resync`, or else by applying a deletion for each `known()` key
    the listing lacks and then every listed entry."""
    if resync is None:
        if known is None:
            raise ValueError("follow() needs `resync` or `known`")
        resync = functools.partial(_replay_listing, apply, known)
    while True:
        events = meta.watch(prefix, revision)
        try:
            async for event in events:
                if event.resync:
                    listing = await meta.list_all(prefix)
                    await resync(listing)
                    revision = max(revision, listing.revision)
                    continue
                try:
                    await apply(event)
                except Exception:
                    _log.exception("%s: applying the change of %s failed", what, event.key)
                revision = max(revision, event.version - 1)
            return  # the store closed
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.warning("%s: watch failed, resuming in %.1fs: %r", what, retry, exc)
        finally:
            await close_watch(events)
        await asyncio.sleep(retry)


async def _replay_listing(apply: Apply, known: Callable[[], Iterable[str]],
                          listing: Listing) -> None:
    listed = {e.key for e in listing}
    for key in [k for k in known() if k not in listed]:
        await apply(WatchEvent(key, None, listing.revision))
    for e in listing:
        await apply(WatchEvent(e.key, e.value, e.version))
