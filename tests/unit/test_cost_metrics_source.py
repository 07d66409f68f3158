"""--from-metrics: exposition text -> counter deltas -> a priced month, by hand."""

from __future__ import annotations

import pytest

from tidelog.tools.cost.measured import price_run, workload_of
from tidelog.tools.cost.metrics_source import (
    RunUsage,
    measure,
    metrics_url,
    parse_exposition,
    usage_between,
)
from tidelog.tools.cost.prices import Assumptions, CostInputError, Prices
from tidelog.tools.cost.sizing import Workload

MIB = 2**20


def exposition(bytes_in: float, puts: float, zone_ab: float, stored: float = 0.0) -> str:
    """A broker's /metrics with the contract's names, as prometheus-client writes them."""
    return f"""\
# HELP kafka_server_brokertopicmetrics_bytesin Record-batch bytes received by Produce.
# TYPE kafka_server_brokertopicmetrics_bytesin counter
kafka_server_brokertopicmetrics_bytesin_total{{topic="a"}} {bytes_in}
kafka_server_brokertopicmetrics_bytesin_total{{topic="b"}} {bytes_in / 2}
kafka_server_brokertopicmetrics_bytesin_created{{topic="a"}} 1.7e9
# TYPE kafka_server_brokertopicmetrics_bytesout counter
kafka_server_brokertopicmetrics_bytesout_total{{topic="a"}} {bytes_in * 3}
# TYPE kafka_server_brokertopicmetrics_messagesin counter
kafka_server_brokertopicmetrics_messagesin_total{{topic="a"}} {bytes_in / 1000}
# TYPE tidelog_objectstore_requests counter
tidelog_objectstore_requests_total{{operation="PUT"}} {puts}
tidelog_objectstore_requests_total{{operation="LIST"}} 1.0
tidelog_objectstore_requests_total{{operation="GET"}} {puts * 2}
tidelog_objectstore_requests_total{{operation="RANGE_GET"}} 3.0
tidelog_objectstore_requests_total{{operation="HEAD"}} 1.0
tidelog_objectstore_requests_total{{operation="DELETE"}} 7.0
# TYPE tidelog_objectstore_bytes counter
tidelog_objectstore_bytes_total{{operation="PUT"}} {bytes_in * 1.5}
# TYPE tidelog_wal_bytes_written counter
tidelog_wal_bytes_written_total {bytes_in * 1.1}
# TYPE tidelog_zone_bytes counter
tidelog_zone_bytes_total{{destination_zone="b",kind="data",source_zone="a",traffic="client"}} \
{zone_ab}
tidelog_zone_bytes_total{{destination_zone="a",kind="data",source_zone="a",traffic="client"}} \
{bytes_in}
tidelog_zone_bytes_total{{destination_zone="b",kind="control",source_zone="a",traffic="broker"}} \
{zone_ab / 4}
# TYPE tidelog_topic_zone_bytes counter
tidelog_topic_zone_bytes_total{{destination_zone="b",source_zone="a",topic="a"}} {zone_ab}
tidelog_topic_zone_bytes_total{{destination_zone="a",source_zone="a",topic="a"}} {bytes_in}
tidelog_topic_zone_bytes_total{{destination_zone="a",source_zone="a",topic="b"}} {bytes_in / 2}
# TYPE tidelog_objectstore_stored_bytes gauge
tidelog_objectstore_stored_bytes {stored}
# TYPE tidelog_request_seconds histogram
tidelog_request_seconds_bucket{{le="+Inf"}} 4.0
tidelog_request_seconds_count 4.0
tidelog_request_seconds_sum 0.5
"""


def test_parse_and_deltas() -> None:
    before = parse_exposition(exposition(1000, 2, 100))
    after = parse_exposition(exposition(1000 + 10 * MIB, 6, 100 + 1 * MIB, stored=5 * MIB))
    u = usage_between([before], [after], 10.0)
    assert u.bytes_in == pytest.approx(10 * MIB * 1.5)  # topics a and b
    assert u.bytes_out == pytest.approx(30 * MIB)
    assert u.messages_in == pytest.approx(10 * MIB / 1000)
    # unchanged counters give 0; PUT and LIST bill as PUTs, GET/RANGE_GET/HEAD as GETs
    assert u.requests["PUT"] == 4 and u.requests["GET"] == 8 and u.requests["DELETE"] == 0
    assert (u.puts, u.gets) == (4, 8)
    assert u.wal_bytes == pytest.approx(11 * MIB)
    assert u.cross_zone_bytes() == pytest.approx({"data": MIB, "control": MIB / 4})
    by_topic = u.cross_zone_by_topic()
    assert by_topic["a"] == pytest.approx((MIB, MIB + 10 * MIB))
    assert by_topic["b"] == pytest.approx((0.0, 5 * MIB))
    assert u.stored_bytes == 5 * MIB
    assert u.missing == ()


def test_reset_counter_counts_from_zero_and_brokers_add_up() -> None:
    high, low = parse_exposition(exposition(5000, 9, 0)), parse_exposition(exposition(800, 2, 0))
    u = usage_between([high, low], [low, high], 1.0)
    # broker 1 restarted (5,000 -> 800: 800 new bytes in a), broker 2 grew by 4,200
    assert u.bytes_in == pytest.approx((800 + 4200) * 1.5)
    assert u.requests["PUT"] == 2 + 7 and u.brokers == 2


def test_missing_metrics_are_named() -> None:
    u = usage_between([{}], [parse_exposition("# TYPE x counter\nx_total 1\n")], 1.0)
    assert u.bytes_in == 0 and "tidelog_zone_bytes_total" in u.missing
    with pytest.raises(CostInputError):
        parse_exposition("this is { not metrics")


def test_measure_scrapes_twice_around_the_interval() -> None:
    pages = iter([exposition(0, 0, 0), exposition(0, 0, 0),
                  exposition(MIB, 3, 0), exposition(2 * MIB, 5, 0)])
    now = [100.0]
    seen: list[str] = []

    def sleep(s: float) -> None:
        seen.append("sleep")
        now[0] += s

    u = measure(["h1:9464", "http://h2:9464/"], 5, fetch=lambda url: next(pages), sleep=sleep,
                clock=lambda: now[0], on_first=lambda: seen.append("first"))
    assert seen == ["first", "sleep"]
    assert u.seconds == 5 and u.brokers == 2
    assert u.bytes_in == pytest.approx(3 * MIB * 1.5) and u.requests["PUT"] == 8
    assert metrics_url("h1:9464") == "http://h1:9464/metrics"
    assert metrics_url("http://h2:9464/") == "http://h2:9464/metrics"
    assert metrics_url("https://h/prom/metrics") == "https://h/prom/metrics"


def test_price_run_by_hand() -> None:
    u = RunUsage(seconds=10, brokers=1, bytes_in=10 * MIB, bytes_out=20 * MIB,
                 messages_in=10_240,
                 requests={"PUT": 4, "LIST": 1, "GET": 2, "RANGE_GET": 3, "HEAD": 1,
                           "DELETE": 5},
                 wal_bytes=11 * MIB,
                 zone_bytes={("a", "b", "data", "client"): MIB,
                             ("a", "a", "data", "client"): 5 * MIB,
                             ("a", "b", "control", "broker"): MIB / 2})
    w = Workload(write_mibps=1, retention_hours=24)
    e = price_run(u, w, "fsx", Prices(), Assumptions())
    scale = 2_628_000 / 10  # a 730 h month over the 10 s run
    assert e.lines["compute"] == pytest.approx(0.6528 * 730)
    # 1.1 MiB/s of WAL writes: one 384 MBps file system with the 1,024 GiB minimum
    assert e.lines["block_file_storage"] == pytest.approx(384 * 2.40 + 1024 * 0.25 + 928 * 0.034)
    # 1 MiB/s kept 24 h: 84.375 GiB
    assert e.lines["object_storage"] == pytest.approx(86_400 / 1024 * 0.023)
    # 5 PUT-class and 6 GET-class requests; DELETE is free
    assert e.lines["requests"] == pytest.approx((5 * 0.005 + 6 * 0.0004) / 1000 * scale)
    # 1.5 MiB crossed zones (same-zone bytes are free), paid on both sides
    assert e.lines["cross_az"] == pytest.approx(1.5 / 1024 * scale * 0.02)
    assert e.sizing["aku"] == 1
    s3 = price_run(u, w, "s3", Prices(), Assumptions())
    assert s3.lines["block_file_storage"] == 0 and s3.lines["requests"] == e.lines["requests"]
    assert workload_of(u, w) == Workload(write_mibps=1, read_fanout=2, retention_hours=24,
                                         message_bytes=1024)
    assert workload_of(RunUsage(seconds=1, brokers=1), w) is None


def test_the_report_names_the_topics_whose_bytes_cross_zones() -> None:
    from tidelog.tools.cost.report import format_report

    before = parse_exposition(exposition(1000, 2, 100))
    after = parse_exposition(exposition(1000 + 10 * MIB, 6, 100 + 1 * MIB))
    u = usage_between([before], [after], 10.0)
    e = price_run(u, Workload(write_mibps=1, retention_hours=24), "s3", Prices(), Assumptions())
    text = format_report(None, [e], None, Prices(), Assumptions(), u)
    assert "client record bytes crossing zones, by topic: a 0.1000 MiB/s (9%)" in text
    assert " b " not in text.split("by topic:")[1].splitlines()[0]
