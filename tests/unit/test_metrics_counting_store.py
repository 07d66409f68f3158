"""CountingObjectStore: one request per call, bytes by direction, errors, latency."""

from __future__ import annotations

import pytest

from tidelog.objectstore.base import ObjectExistsError, ObjectNotFoundError
from tidelog.objectstore.counting import CountingObjectStore, ObjectStoreStats
from tidelog.objectstore.faulty import FaultyObjectStore
from tidelog.objectstore.uri import open_object_store


def figures(stats: ObjectStoreStats) -> dict[str, tuple[int, int, int]]:
    return {op: (s.requests, s.bytes, s.errors) for op, s in stats.operations.items()
            if s.requests}


async def test_counts_every_operation_with_its_bytes() -> None:
    store = CountingObjectStore(open_object_store("memory://"))
    await store.put("a", b"12345")
    await store.put("b", [b"12", memoryview(b"345678")])
    await store.put_if_absent("c", b"xyz")
    assert await store.get("a") == b"12345"
    assert bytes(await store.get_range("b", 2, 6)) == b"3456"
    assert await store.size("b") == 8
    assert await store.list("") == ["a", "b", "c"]
    await store.delete("a")
    assert figures(store.stats) == {
        "PUT": (3, 5 + 8 + 3, 0), "GET": (1, 5, 0), "RANGE_GET": (1, 4, 0),
        "HEAD": (1, 0, 0), "LIST": (1, 0, 0), "DELETE": (1, 0, 0)}
    for s in store.stats.operations.values():
        assert s.latency.count == s.requests == sum(s.latency.counts)


async def test_failures_count_as_requests_and_errors_without_bytes() -> None:
    store = CountingObjectStore(open_object_store("memory://"))
    await store.put_if_absent("k", b"one")
    with pytest.raises(ObjectExistsError):
        await store.put_if_absent("k", b"two")
    with pytest.raises(ObjectNotFoundError):
        await store.get("missing")
    assert figures(store.stats) == {"PUT": (2, 3, 1), "GET": (1, 0, 1)}
    assert store.stats["GET"].latency.count == 1


async def test_wrappers_share_one_stats_and_see_injected_faults() -> None:
    stats = ObjectStoreStats()
    data = CountingObjectStore(open_object_store("memory://"), stats)
    faulty = FaultyObjectStore(open_object_store("memory://"))
    wal = CountingObjectStore(faulty, stats)  # e.g. the store an object WAL writes to
    await data.put("x", b"abc")
    faulty.fail_next("put")
    with pytest.raises(Exception, match="injected"):
        await wal.put("y", b"defg")
    await wal.put("y", b"defg")
    assert figures(stats) == {"PUT": (3, 3 + 4, 1)}
