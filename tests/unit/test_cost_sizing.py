"""AKU count, FSx choice and WAL capacity, against the seed's own statements."""

from __future__ import annotations

import pytest

from tidelog.tools.cost.prices import Assumptions, CostInputError
from tidelog.tools.cost.sizing import (
    Workload,
    aku_needed,
    diskless_nodes,
    fsx_choice,
    wal_capacity_gib,
)

A = Assumptions()


def test_aku_as_the_seed_defines_it() -> None:
    # 3 AKU = 60 MB/s write, 60 MB/s read, 2,400 requests/s, 3,375 partitions
    w = Workload(write_mibps=60, read_fanout=1, partitions=3375, request_rate=2400)
    assert aku_needed(w, A) == (3, "write")
    assert aku_needed(Workload(write_mibps=60.01, partitions=1), A)[0] == 4
    assert aku_needed(Workload(write_mibps=10, read_fanout=4, partitions=1), A) == (2, "read")
    assert aku_needed(Workload(write_mibps=1, partitions=3376), A) == (4, "partitions")
    assert aku_needed(Workload(write_mibps=1, partitions=1, request_rate=2401), A) == (
        4, "requests")


def test_request_rate_estimate() -> None:
    # one request per 64 KiB of payload, or per message when messages are larger
    w = Workload(write_mibps=10, read_fanout=3, message_bytes=1024)
    assert w.requests_per_s(A) == pytest.approx((160, 480))
    big = Workload(write_mibps=10, read_fanout=1, message_bytes=1 << 20)
    assert big.requests_per_s(A) == pytest.approx((10, 10))
    given = Workload(write_mibps=10, read_fanout=3, request_rate=1000)
    assert given.requests_per_s(A) == pytest.approx((250, 750))


def test_fsx_choice_follows_the_seed_table() -> None:
    # 3 AKU (60 MB/s) needs one 384 MBps file system; 150 -> 384, 300 -> 768, 600 -> 1536
    assert fsx_choice(60, A) == [(384, 150)]
    assert fsx_choice(150, A) == [(384, 150)]
    assert fsx_choice(150.5, A) == [(768, 300)]
    assert fsx_choice(600, A) == [(1536, 600)]
    assert fsx_choice(700, A) == [(1536, 600), (384, 150)]
    # the seed's 1 GiB/s example: 2 x 1,536
    assert fsx_choice(1024, A) == [(1536, 600), (1536, 600)]
    assert fsx_choice(0, A) == [(384, 150)]  # a WAL exists even when idle


def test_wal_capacity_stays_small() -> None:
    # the seed: under 100 GB of WAL for 10 Gbps (1,192 MiB/s) over 50 nodes
    assert wal_capacity_gib(10e9 / 8 / 2**20, A) < 100
    assert wal_capacity_gib(100, A) == pytest.approx(100 * 30 * 2 / 1024)


def test_nodes_spread_over_zones() -> None:
    w = Workload(write_mibps=1, azs=3)
    assert diskless_nodes(1, w, A) == 3
    assert diskless_nodes(52, w, A) == 6  # the seed's 1 GiB/s on 6 x m7g.4xlarge
    assert diskless_nodes(60, w, A) == 9  # 7 rounded up to a multiple of 3


def test_bad_workloads_are_refused() -> None:
    with pytest.raises(CostInputError):
        Workload(write_mibps=0)
    with pytest.raises(CostInputError):
        Workload(write_mibps=1, azs=0)
    with pytest.raises(CostInputError):
        Workload(write_mibps=1, latency_ms=0)
