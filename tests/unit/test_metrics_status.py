"""`tidelog status`: parses the exposition text and summarises it, rates over an interval."""

from __future__ import annotations

import math

import pytest

from tidelog.tools.status import Scrape, View, human_bytes, quantile, summarise


def exposition(bytes_in: float, puts: float, le_001: float, le_01: float, total: float) -> str:
    return f"""\
# TYPE tidelog_broker_info gauge
tidelog_broker_info{{node_id="3",zone="az1"}} 1.0
# TYPE tidelog_storage_failed gauge
tidelog_storage_failed 0.0
# TYPE kafka_server_replicamanager_partitioncount gauge
kafka_server_replicamanager_partitioncount 12.0
# TYPE kafka_server_brokertopicmetrics_bytesin counter
kafka_server_brokertopicmetrics_bytesin_total{{topic="orders"}} {bytes_in}
kafka_server_brokertopicmetrics_bytesin_total{{topic="audit"}} 10.0
# TYPE tidelog_objectstore_requests counter
tidelog_objectstore_requests_total{{operation="PUT"}} {puts}
tidelog_objectstore_requests_total{{operation="GET"}} 0.0
# TYPE tidelog_wal_sync_seconds histogram
tidelog_wal_sync_seconds_bucket{{le="0.001"}} {le_001}
tidelog_wal_sync_seconds_bucket{{le="0.01"}} {le_01}
tidelog_wal_sync_seconds_bucket{{le="+Inf"}} {total}
tidelog_wal_sync_seconds_count {total}
tidelog_wal_sync_seconds_sum 0.5
# TYPE kafka_consumergroup_lag_sum gauge
kafka_consumergroup_lag_sum{{consumergroup="billing",topic="orders"}} 42.0
"""


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = [(1.0, 10.0), (2.0, 30.0), (math.inf, 40.0)]
    assert quantile(0.25, buckets) == 1.0
    assert quantile(0.5, buckets) == 1.5
    assert quantile(0.99, buckets) == 2.0  # in +Inf: the highest finite bound
    assert math.isnan(quantile(0.5, []))


def test_totals_since_start() -> None:
    s = Scrape.parse(exposition(1024.0, 7.0, 90.0, 99.0, 100.0))
    assert s.value("kafka_server_brokertopicmetrics_bytesin_total") == 1034.0
    assert s.value("kafka_server_brokertopicmetrics_bytesin_total", topic="orders") == 1024.0
    v = View(s)
    assert v.quantile(0.5, "tidelog_wal_sync_seconds") == pytest.approx(0.001 * 50 / 90)
    text = "\n".join(summarise(v))
    assert "Broker 3 (zone az1): storage OK" in text and "12 partitions" in text
    assert "since start" in text
    assert "orders" in text and "1.0 KiB" in text
    assert "billing" in text and "42" in text
    assert "/s" not in text  # no rates without an interval


def test_rates_and_percentiles_over_an_interval() -> None:
    before = Scrape.parse(exposition(1024.0, 7.0, 90.0, 99.0, 100.0), at=10.0)
    after = Scrape.parse(exposition(1024.0 + 4 * 2048, 11.0, 90.0, 199.0, 200.0), at=12.0)
    v = View(after, before)
    assert v.rate("kafka_server_brokertopicmetrics_bytesin_total") == 4096.0
    assert v.rate("tidelog_objectstore_requests_total", operation="PUT") == 2.0
    # the interval's 100 syncs all took 1-10 ms: the percentile ignores the older ones
    assert 0.001 < v.quantile(0.5, "tidelog_wal_sync_seconds") < 0.01
    text = "\n".join(summarise(v))
    assert "last 2.0 s" in text and "4.0 KiB/s" in text
    put = next(line for line in text.splitlines() if line.strip().startswith("PUT"))
    assert put.split()[1:3] == ["4", "2/s"]


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 << 30)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 GiB"]
