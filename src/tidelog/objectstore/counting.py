"""An `ObjectStore` wrapper that counts what the broker asks of object storage.

Object storage bills per request and per byte, so these counters are the raw input of the
request-cost metrics (`tidelog_objectstore_*`) and of `tidelog cost`. Every store a broker
opens (the data store, and object stores a WAL writes to) is wrapped with the same
`ObjectStoreStats`, so the figures cover every request the broker makes:

    stats = ObjectStoreStats()
    store = CountingObjectStore(open_object_store(uri), stats)

Operations are S3's: PUT (`put`, `put_if_absent`), GET, RANGE_GET (`get_range`), HEAD
(`size`), DELETE, LIST. One call is one request: retries made inside the wrapped store are
not seen here. Bytes are the bodies sent (PUT) or received (GET, RANGE_GET). A request
that raises counts as a request and an error; its latency is recorded either way.
Counting is O(1) per request; the metrics endpoint reads the counters at scrape time.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from tidelog.objectstore.base import Buffer, ObjectStore

OPERATIONS: tuple[str, ...] = ("PUT", "GET", "RANGE_GET", "HEAD", "DELETE", "LIST")

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
"""Upper bounds (seconds) of the request latency histogram; the last bucket is +Inf."""


@dataclass(slots=True)
class LatencyHistogram:
    """Fixed buckets, cumulated only when read (the metrics endpoint does that)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


@dataclass(slots=True)
class OperationStats:
    requests: int = 0
    bytes: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class ObjectStoreStats:
    """Per-operation counters, shared by every `CountingObjectStore` of one broker."""

    def __init__(self) -> None:
        self.operations: dict[str, OperationStats] = {op: OperationStats() for op in OPERATIONS}

    def __getitem__(self, operation: str) -> OperationStats:
        return self.operations[operation]


class CountingObjectStore(ObjectStore):
    """Wraps `inner`, counting into `stats` (a fresh `ObjectStoreStats` if none is given)."""

    def __init__(self, inner: ObjectStore, stats: ObjectStoreStats | None = None) -> None:
        self.inner = inner
        self.stats = stats if stats is not None else ObjectStoreStats()
        ops = self.stats.operations
        self._put, self._get, self._range = ops["PUT"], ops["GET"], ops["RANGE_GET"]
        self._head, self._delete, self._list = ops["HEAD"], ops["DELETE"], ops["LIST"]

    def __repr__(self) -> str:
        return f"CountingObjectStore({self.inner!r})"

    async def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        op, started = self._put, _begin(self._put)
        try:
            await self.inner.put(key, data)
        except Exception:
            op.errors += 1
            raise
        finally:
            op.latency.observe(time.perf_counter() - started)
        op.bytes += _nbytes(data)

    async def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        op, started = self._put, _begin(self._put)
        try:
            await self.inner.put_if_absent(key, data)
        except Exception:
            op.errors += 1
            raise
        finally:
            op.latency.observe(time.perf_counter() - started)
        op.bytes += _nbytes(data)

    async def get(self, key: str) -> bytes:
        op, started = self._get, _begin(self._get)
        try:
            data = await self.inner.get(key)
        except Exception:
            op.errors += 1
            raise
        finally:
            op.latency.observe(time.perf_counter() - started)
        op.bytes += len(data)
        return data

    async def get_range(self, key: str, start: int, end: int) -> bytes | memoryview:
        op, started = self._range, _begin(self._range)
        try:
            data = await self.inner.get_range(key, start, end)
        except Exception:
            op.errors += 1
            raise
        finally:
            op.latency.observe(time.perf_counter() - started)
        op.bytes += _nbytes(data)
        return data

    async def size(self, key: str) -> int:
        op, started = self._head, _begin(self._head)
        try:
            return await self.inner.size(key)
        except Exception:
            op.errors += 1
            raise
        finally:
            op.latency.observe(time.perf_counter() - started)

    async def delete(self, key: str) -> None:
        op, started = self._delete, _begin(self._delete)
        try:
            await self.inner.delete(key)
        except Exception:
            op.errors += 1
            raise
        finally:
            op.latency.observe(time.perf_counter() - started)

    async def list(self, prefix: str = "") -> list[str]:
        op, started = self._list, _begin(self._list)
        try:
            return await self.inner.list(prefix)
        except Exception:
            op.errors += 1
            raise
        finally:
            op.latency.observe(time.perf_counter() - started)

    async def close(self) -> None:
        await self.inner.close()


def _begin(op: OperationStats) -> float:
    op.requests += 1
    return time.perf_counter()


def _nbytes(data: Buffer | Sequence[Buffer]) -> int:
    if isinstance(data, memoryview):
        return data.nbytes
    if isinstance(data, bytes | bytearray):
        return len(data)
    return sum(_nbytes(part) for part in data)
