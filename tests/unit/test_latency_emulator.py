"""The storage-latency emulator: profiles from URI keys, draws, the object-store and WAL
wrappers (delays applied, order kept, errors injected, always labelled as emulation)."""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
from pathlib import Path

import pytest

from tidelog.objectstore import latency as latency_module
from tidelog.objectstore.base import ObjectStoreError
from tidelog.objectstore.faulty import FaultyObjectStore
from tidelog.objectstore.latency import (
    LatencyObjectStore,
    LatencyProfile,
    LatencySampler,
    open_with_emulation,
    parse_duration,
    split_emulation,
)
from tidelog.objectstore.uri import open_object_store
from tidelog.stream.wal.base import WalError
from tidelog.stream.wal.latency import LatencyWAL
from tidelog.stream.wal.memory_wal import MemoryWAL
from tidelog.stream.wal.uri import open_wal


def test_profile_from_uri_keys() -> None:
    plain, profile = split_emulation(
        "s3://b/p?region=us-east-1&emulate.latency=80ms/400ms&emulate.errors=0.01"
        "&emulate.bandwidth=100MiB&emulate.seed=4"
    )
    assert plain == "s3://b/p?region=us-east-1"
    assert profile == LatencyProfile(0.08, 0.4, 100 * (1 << 20), 0.01, 4)
    assert split_emulation("file:///x?capacity=1") == ("file:///x?capacity=1", None)
    _, constant = split_emulation("memory://?emulate.latency=2ms")
    assert constant == LatencyProfile(0.002, 0.002)
    for bad in ("emulate.latency=fast", "emulate.latency=5ms/1ms", "emulate.colour=red",
                "emulate.errors=2"):
        with pytest.raises(ValueError):
            split_emulation(f"memory://?{bad}")
    assert parse_duration("250us") == pytest.approx(250e-6)
    assert parse_duration("1.5s") == 1.5 and parse_duration("20") == 0.02


def test_every_description_says_emulated() -> None:
    assert LatencyProfile(0.1, 0.4).describe() == (
        "EMULATED lognormal latency median 100 ms p99 400 ms"
    )
    assert LatencyProfile(0.005, 0.005, error_rate=0.02).describe() == (
        "EMULATED constant latency 5 ms, 2.00% errors"
    )


def test_lognormal_draws_match_median_and_p99() -> None:
    sampler = LatencySampler(LatencyProfile(0.1, 0.4), random.Random(1))
    draws = sorted(sampler.delay() for _ in range(20_000))
    assert statistics.median(draws) == pytest.approx(0.1, rel=0.05)
    assert draws[int(0.99 * len(draws))] == pytest.approx(0.4, rel=0.1)
    with_bandwidth = LatencySampler(LatencyProfile(0.01, 0.01, bandwidth=1 << 20))
    assert with_bandwidth.delay(1 << 20) == pytest.approx(1.01)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Delays the wrappers ask for, recorded instead of slept (no timing in tests)."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def record(delay: float) -> None:
        asked.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(latency_module.asyncio, "sleep", record)
    return asked


async def test_object_store_requests_wait_and_fail(sleeps: list[float]) -> None:
    inner = FaultyObjectStore(open_object_store("memory://"))
    store = LatencyObjectStore(inner, LatencyProfile(0.05, 0.05, bandwidth=1000))
    await store.put("k", b"x" * 100)
    assert await store.get("k") == b"x" * 100
    assert await store.list() == ["k"]
    assert sleeps == pytest.approx([0.05 + 0.1, 0.05, 0.1, 0.05])  # put, get + transfer, list
    failing = LatencyObjectStore(inner, LatencyProfile(error_rate=1.0))
    before = sum(inner.requests.values())
    for call in (failing.put("k2", b"y"), failing.get("k"), failing.delete("k")):
        with pytest.raises(ObjectStoreError, match="emulated"):
            await call
    assert sum(inner.requests.values()) == before  # a failed request never reached the store
    assert await inner.get("k") == b"x" * 100


async def test_open_with_emulation_wraps_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        store = open_with_emulation("memory://?emulate.latency=1ms/3ms", open_object_store)
    assert isinstance(store, LatencyObjectStore)
    assert any("EMULATED" in r.getMessage() for r in caplog.records)
    plain = open_with_emulation("memory://", open_object_store)
    assert not isinstance(plain, LatencyObjectStore)


async def test_latency_wal_keeps_append_order() -> None:
    """Widely spread delays (really slept: tens of ms in all); appends still return in the
    order they were made."""
    inner = MemoryWAL()
    wal = LatencyWAL(inner, LatencyProfile(0.001, 0.03), random.Random(3))
    await wal.open(1)
    completed: list[int] = []

    async def one(i: int) -> int:
        position = await wal.append(1, 1, i, i, b"r%d" % i)
        completed.append(i)
        return position

    positions = await asyncio.gather(*(one(i) for i in range(200)))
    assert completed == list(range(200)) and positions == sorted(positions)
    assert wal.stats is inner.stats and wal.stats.records == 200
    await wal.close()


async def test_latency_wal_errors_never_reach_the_inner_wal() -> None:
    inner = MemoryWAL()
    wal = LatencyWAL(inner, LatencyProfile(error_rate=1.0))
    await wal.open(1)
    with pytest.raises(WalError, match="emulated"):
        await wal.append(1, 1, 0, 0, b"x")
    assert inner.stats.records == 0 and inner.end_position == 0
    await wal.close()


def test_wal_uri_emulation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        wal = open_wal(f"file://{tmp_path}/wal?emulate.latency=2ms/8ms&capacity=1MiB")
    assert isinstance(wal, LatencyWAL) and wal.capacity == 1 << 20
    assert "EMULATED" in repr(wal)
    assert any("EMULATED" in r.getMessage() for r in caplog.records)
