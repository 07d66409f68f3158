"""The cluster-state contract: a versioned key-value store with compare-and-set,
atomic multi-key transactions, watches and leases.

Every value carries a `version` (a store-wide revision at which it was last written, > 0).
Version 0 in a comparison means "the key must not exist". The embedded SQLite backend
serves one node; the etcd backend (cluster mode) implements the same contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


class MetadataError(Exception):
    pass


class Fenced(MetadataError):
    """A compare failed: somebody else wrote the key (stale version / epoch)."""


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


@dataclass(slots=True)
class Txn:
    """Compare versions, then apply puts and deletes atomically (all or nothing)."""

    compares: list[tuple[str, int]] = field(default_factory=list)
    puts: list[tuple[str, bytes]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    lease: int = 0
    """Lease attached to every put in this txn (0: none)."""


class MetadataStore(ABC):
    @abstractmethod
    async def get(self, key: str) -> Entry | None: ...

    @abstractmethod
    async def list(self, prefix: str) -> list[Entry]:
        """All entries whose key starts with `prefix`, sorted by key."""

    @abstractmethod
    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Unconditional write; returns the new version."""

    @abstractmethod
    async def put_if(self, key: str, value: bytes, version: int, lease: int = 0) -> int:
        """Write only if the key's current version is `version` (0: absent); else `Fenced`."""

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    @abstractmethod
    async def commit(self, txn: Txn) -> int:
        """Apply `txn` atomically; returns the new revision; raises `Fenced` on a failed compare."""

    @abstractmethod
    def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        """Changes to keys under `prefix` after the call, in revision order."""

    @abstractmethod
    async def grant_lease(self, ttl_seconds: float) -> int: ...

    @abstractmethod
    async def keep_alive(self, lease: int) -> None:
        """Renew `lease`; raises `MetadataError` if it already expired."""

    @abstractmethod
    async def revoke_lease(self, lease: int) -> None:
        """Drop the lease and delete every key attached to it."""

    @abstractmethod
    async def next_id(self, name: str) -> int:
        """A durable counter: 1, 2, 3, ... per `name`, never reused."""

    @abstractmethod
    async def close(self) -> None: ...


