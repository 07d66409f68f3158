"""Each cost line of each architecture against a value computed by hand.

The workload: 100 MiB/s written, read twice (fan-out 2), 24 h retention, 3 AZs,
300 partitions, 1 KiB messages; default prices (us-east-1) and assumptions. A month is
730 h = 2,628,000 s, so a steady 1 MiB/s for a month is 2,628,000 / 1024 = 2,566.40625 GiB.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tidelog.tools.cost.model import (
    diskless_fsx_wal,
    diskless_s3_wal,
    estimate_all,
    kafka,
    recommend,
    uploads,
)
from tidelog.tools.cost.prices import Assumptions, Prices
from tidelog.tools.cost.sizing import Workload

P = Prices()
A = Assumptions()
W = Workload(write_mibps=100, read_fanout=2, retention_hours=24, azs=3, partitions=300,
             message_bytes=1024)
GIB_MONTH_PER_MIBPS = 2_628_000 / 1024
HOURS = 730
RETAINED_GIB = 100 * 86_400 / 1024  # 8,437.5 GiB: one copy of a day at 100 MiB/s


def test_kafka_lines() -> None:
    e = kafka(W, P, A)
    # 3 brokers: the zones decide (network needs 1: max(300 in, 400 out) / (960 x 0.5);
    # disk needs 2: 28,476.6 GiB / 16,384)
    assert e.sizing["brokers"] == 3 and e.sizing["brokers_bound_by"] == "zones"
    assert e.lines["compute"] == pytest.approx(3 * 0.6528 * HOURS)  # 1,429.63
    # three replicas, 12.5% free space; 100 MiB/s per broker is under gp3's free 125 MiB/s
    assert e.lines["block_file_storage"] == pytest.approx(RETAINED_GIB * 3 * 1.125 * 0.08)
    assert e.lines["object_storage"] == 0 and e.lines["requests"] == 0
    # producers: 2/3 of 100 MiB/s cross; replication: 2 followers in other zones;
    # consumers read from their own zone's replica; each byte paid leaving and entering
    cross = 100 * 2 / 3 + 100 * 2
    assert e.lines["cross_az"] == pytest.approx(cross * GIB_MONTH_PER_MIBPS * 0.02)  # 13,687.5
    assert e.total == pytest.approx(1429.632 + 2278.125 + 13687.5)


def test_kafka_consumers_cross_zones_without_follower_fetching() -> None:
    with_ff = kafka(W, P, A).lines["cross_az"]
    without = kafka(W, P, replace(A, kafka_follower_fetching=False)).lines["cross_az"]
    # 200 MiB/s read, 2/3 of it from a leader in another zone
    assert without - with_ff == pytest.approx(200 * 2 / 3 * GIB_MONTH_PER_MIBPS * 0.02)


def test_kafka_network_and_disk_bound_brokers_and_gp3_throughput() -> None:
    busy = replace(W, write_mibps=1000, read_fanout=1, retention_hours=1)
    e = kafka(busy, P, A)
    # out: 2,000 replication + 1,000 reads = 3,000 MiB/s over 480 usable per broker: 7 -> 9
    assert (e.sizing["brokers"], e.sizing["brokers_bound_by"]) == (9, "network")
    # 3,000 MiB/s of replica writes over 9 brokers = 333.3 each: 208.3 above gp3's 125
    assert e.sizing["gp3_extra_mibps"] == pytest.approx(9 * (3000 / 9 - 125), abs=0.1)
    ebs = 1000 * 3600 / 1024 * 3 * 1.125 * 0.08 + 9 * (3000 / 9 - 125) * 0.04
    assert e.lines["block_file_storage"] == pytest.approx(ebs)
    deep = replace(W, retention_hours=24 * 30)
    e = kafka(deep, P, A)
    # 30 days x 100 MiB/s x 3 replicas x 1.125 = 854,296.9 GiB over 16 TiB disks: 53 -> 54
    assert (e.sizing["brokers"], e.sizing["brokers_bound_by"]) == (54, "disk")


def test_diskless_shared_lines() -> None:
    for e in (diskless_s3_wal(W, P, A), diskless_fsx_wal(W, P, A)):
        # requests: 100 MiB/s / 64 KiB = 1,600 produce + 3,200 fetch per second: 6 AKU;
        # write needs 5, read (200 MiB/s) needs 10: 10 AKU on 2 instances -> 3 (one per AZ)
        assert (e.sizing["aku"], e.sizing["aku_bound_by"], e.sizing["nodes"]) == (10, "read", 3)
        assert e.lines["compute"] == pytest.approx(3 * 0.6528 * HOURS)
        assert e.lines["object_storage"] == pytest.approx(RETAINED_GIB * 0.023)  # one copy
        # 2/3 of 1,600 produce requests/s land on a proxy in another zone: 128 B each way
        control = 1600 * 2 / 3 * 2 * 128 / 2**20
        assert e.lines["cross_az"] == pytest.approx(control * GIB_MONTH_PER_MIBPS * 0.02)


def test_upload_requests() -> None:
    # 33.3 MiB/s per broker fills 64 MiB every 1.92 s: 3 / 1.92 = 1.5625 PUT/s of 64 MiB,
    # 0.64 MiB per partition (no stream objects), too big for compaction
    up = uploads(W, 3, A)
    assert (up.puts, up.gets, up.object_mib) == pytest.approx((1.5625, 0.0, 64.0))
    fsx = diskless_fsx_wal(W, P, A)
    assert fsx.lines["requests"] == pytest.approx(1.5625 * 0.005 / 1000 * 2_628_000)  # 20.53


def test_upload_requests_with_stream_objects_and_compaction() -> None:
    # 600 MiB/s over 6 brokers, 12 partitions: 64 MiB rounds every 0.64 s hold 32 MiB per
    # partition (>= 8 MiB): one stream object each, 2 per round
    up = uploads(replace(W, write_mibps=600, partitions=12), 6, A)
    assert (up.puts, up.gets, up.object_mib) == pytest.approx((6 / 0.64 * 2, 0.0, 32.0))
    # 1 MiB/s over 3 brokers uploads 10 MiB every 30 s: objects under 16 MiB are read back
    # once (0.1 GET/s) and rewritten 256 MiB at a time, 25.6 MiB per partition: 10 objects
    up = uploads(replace(W, write_mibps=1, partitions=30), 3, A)
    assert up.object_mib == pytest.approx(10.0)
    assert up.gets == pytest.approx(0.1)
    assert up.puts == pytest.approx(0.1 + 1 / 256 * 10)


def test_s3_wal_requests() -> None:
    e = diskless_s3_wal(W, P, A)
    # each broker PUTs max(4/s by the 250 ms batch, 33.3/8 = 4.17/s by the 8 MiB batch);
    # a broker in each of the 2 other zones reads every WAL object once
    assert e.sizing["wal_puts_per_s"] == pytest.approx(12.5)
    assert e.sizing["wal_gets_per_s"] == pytest.approx(25.0)
    assert e.lines["block_file_storage"] == 0
    per_month = (1.5625 + 12.5) * 0.005 / 1000 + 25 * 0.0004 / 1000
    assert e.lines["requests"] == pytest.approx(per_month * 2_628_000)  # 211.06


def test_fsx_wal_line() -> None:
    e = diskless_fsx_wal(W, P, A)
    # 100 MiB/s fits the 384 MBps size (150 MiB/s); the WAL needs 100 x 30 s x 2 = 5.9 GiB,
    # under the 1,024 GiB minimum; 4,000 IOPS less the 3 x 1,024 included
    assert e.sizing["fsx"] == [384] and e.sizing["fsx_ssd_gib"] == 1024
    assert e.sizing["wal_capacity_gib"] == pytest.approx(5.9, abs=0.05)
    assert e.lines["block_file_storage"] == pytest.approx(384 * 2.40 + 1024 * 0.25 + 928 * 0.034)


def test_recommend_picks_the_cheapest_that_meets_the_target() -> None:
    estimates = estimate_all(W, P, A)
    by_key = {e.key: e for e in estimates}
    assert recommend(estimates, None) is by_key["s3_wal"]  # cheapest of all
    assert recommend(estimates, 20) is by_key["fsx_wal"]  # S3 WAL's 900 ms misses 20 ms
    assert recommend(estimates, 10) is by_key["kafka"]  # only Kafka's 10 ms P99 fits
    assert recommend(estimates, 5) is None
    assert by_key["fsx_wal"].meets(20) and by_key["s3_wal"].meets(20) is False


def test_prices_move_their_lines_only() -> None:
    dearer = replace(P, s3_put_per_1000=0.01)
    before, after = diskless_fsx_wal(W, P, A), diskless_fsx_wal(W, dearer, A)
    assert after.lines["requests"] == pytest.approx(2 * before.lines["requests"])
    for line in ("compute", "block_file_storage", "object_storage", "cross_az"):
        assert after.lines[line] == before.lines[line]
