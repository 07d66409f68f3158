"""The object-store contract: immutable objects addressed by key, read by range."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

Buffer = bytes | bytearray | memoryview


class ObjectStoreError(Exception):
    """A request to the object store failed after retries."""


class ObjectNotFoundError(ObjectStoreError):
    pass


class ObjectExistsError(ObjectStoreError):
    """A create-only put found the key already present."""


class ObjectStore(ABC):
    @abstractmethod
    async def put(
        self, key: str, data: Buffer | Sequence[Buffer]
    ) -> None:
        """Store `data` (one buffer, or several concatenated) under `key`."""

    @abstractmethod
    async def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        """Create-only put; raises `ObjectExistsError` when `key` exists."""

    @abstractmethod
    async def get(self, key: str) -> bytes: ...

    @abstractmethod
    async def get_range(self, key: str, start: int, end: int) -> bytes | memoryview:
        """Bytes [start, end) of the object (a view where the store allows: no copy)."""

    @abstractmethod
    async def size(self, key: str) -> int: ...

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Delete `key`; deleting a missing key is not an error."""

    @abstractmethod
    async def list(self, prefix: str = "") -> list[str]: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
