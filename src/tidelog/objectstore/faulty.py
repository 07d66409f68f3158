"""A fault-injecting, request-counting `ObjectStore` wrapper.

Tests use it to make the object store slow or failing at chosen moments; its counters
(requests and bytes per kind) double as the raw numbers for request-cost metrics.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Literal

from tidelog.objectstore.base import Buffer, ObjectStore, ObjectStoreError

Kind = Literal["put", "get", "get_range", "head", "delete", "list"]
"""Request kinds; `put_if_absent` is a `put`, `size` is a `head`."""

KINDS: tuple[Kind, ...] = ("put", "get", "get_range", "head", "delete", "list")


class FaultyObjectStore(ObjectStore):
    """Wraps `inner`: adds `latency` seconds to every request and fails armed requests.

    A fault armed with `after=True` lets the request reach `inner` first and then raises:
    the write happened but the caller was told it failed, as after a lost response.
    """

    def __init__(self, inner: ObjectStore, *, latency: float = 0.0) -> None:
        self.inner = inner
        self.latency = latency
        self.requests: Counter[Kind] = Counter()
        self.bytes_put = 0
        self.bytes_got = 0
        self._faults: dict[Kind, deque[_Fault]] = {k: deque() for k in KINDS}

    def fail_next(
        self,
        kinds: Kind | Iterable[Kind],
        count: int = 1,
        *,
        after: bool = False,
        error: Exception | None = None,
    ) -> None:
        """Make the next `count` requests of each of `kinds` raise `error`.

        The default error is a fresh `ObjectStoreError` per failure, as a real store raises.
        """
        for kind in (kinds,) if isinstance(kinds, str) else kinds:
            if kind not in self._faults:
                raise ValueError(f"unknown request kind {kind!r}")
            self._faults[kind].extend(_Fault(kind, after, error) for _ in range(count))

    def clear_faults(self) -> None:
        for queue in self._faults.values():
            queue.clear()

    def pending_faults(self, kind: Kind) -> int:
        return len(self._faults[kind])

    async def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        fault = await self._begin("put")
        await self.inner.put(key, data)
        self.bytes_put += _nbytes(data)
        _finish(fault)

    async def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        fault = await self._begin("put")
        await self.inner.put_if_absent(key, data)
        self.bytes_put += _nbytes(data)
        _finish(fault)

    async def get(self, key: str) -> bytes:
        fault = await self._begin("get")
        data = await self.inner.get(key)
        self.bytes_got += len(data)
        _finish(fault)
        return data

    async def get_range(self, key: str, start: int, end: int) -> bytes | memoryview:
        fault = await self._begin("get_range")
        data = await self.inner.get_range(key, start, end)
        self.bytes_got += len(data)
        _finish(fault)
        return data

    async def size(self, key: str) -> int:
        fault = await self._begin("head")
        size = await self.inner.size(key)
        _finish(fault)
        return size

    async def delete(self, key: str) -> None:
        fault = await self._begin("delete")
        await self.inner.delete(key)
        _finish(fault)

    async def list(self, prefix: str = "") -> list[str]:
        fault = await self._begin("list")
        keys = await self.inner.list(prefix)
        _finish(fault)
        return keys

    async def close(self) -> None:
        await self.inner.close()

    async def _begin(self, kind: Kind) -> _Fault | None:
        """Count the request, wait out the latency, raise a before-fault, return an after-one."""
        self.requests[kind] += 1
        fault = self._faults[kind].popleft() if self._faults[kind] else None
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if fault is not None and not fault.after:
            raise fault.exception()
        return fault


class _Fault:
    __slots__ = ("after", "error", "kind")

    def __init__(self, kind: Kind, after: bool, error: Exception | None) -> None:
        self.kind = kind
        self.after = after
        self.error = error

    def exception(self) -> Exception:
        when = "after" if self.after else "before"
        return self.error or ObjectStoreError(f"injected {self.kind} fault ({when} the request)")


def _finish(fault: _Fault | None) -> None:
    if fault is not None:
        raise fault.exception()


def _nbytes(data: Buffer | Sequence[Buffer]) -> int:
    if isinstance(data, memoryview):
        return data.nbytes
    if isinstance(data, bytes | bytearray):
        return len(data)
    return sum(_nbytes(part) for part in data)
