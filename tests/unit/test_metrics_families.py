"""Scrape-time building blocks: histograms, request timings, traffic counters, the
listener setting, and a scrape that races the event loop."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from tidelog.api.traffic import Traffic, frame_bytes, record_count
from tidelog.config import DEFAULTS, ConfigError
from tidelog.metrics.collector import read_section
from tidelog.metrics.endpoint import parse_metrics_listener
from tidelog.metrics.families import histogram
from tidelog.metrics.requests import RequestMetrics, request_name
from tidelog.net.server import RequestTiming
from tidelog.protocol import records
from tidelog.stream.wal.base import Histogram


def exposition(*families: object) -> dict[str, float]:
    class Fixed(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return iter(families)

    registry = CollectorRegistry()
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    return {s.name + str(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_histogram_buckets_are_cumulative_and_count_is_inf() -> None:
    h = Histogram((1.0, 2.0, 5.0))
    for v in (0.5, 1.0, 1.5, 3.0, 7.0, 9.0):
        h.observe(v)
    m = exposition(histogram("x_seconds", "doc", ["op"], [(["PUT"], h)]))
    buckets = {le: m[f"x_seconds_bucket[('le', '{le}'), ('op', 'PUT')]"]
               for le in ("1.0", "2.0", "5.0", "+Inf")}
    assert buckets == {"1.0": 2, "2.0": 3, "5.0": 4, "+Inf": 6}
    assert m["x_seconds_count[('op', 'PUT')]"] == 6
    assert m["x_seconds_sum[('op', 'PUT')]"] == 22.0


def test_request_metrics_name_apis_like_kafka_and_split_phases() -> None:
    assert [request_name(k) for k in (0, 1, 3, 18, 23)] == [
        "Produce", "FetchConsumer", "Metadata", "ApiVersions", "OffsetForLeaderEpoch"]
    rm = RequestMetrics()
    rm.observe(RequestTiming(0, 9, received=1.0, started=1.001, finished=1.011,
                             sending=1.012, sent=1.0125))
    rm.observe(RequestTiming(0, 10, received=2.0, started=2.0, finished=2.002,
                             sending=2.002, sent=2.002))
    m = exposition(*rm.families())
    assert m["kafka_network_requestmetrics_requests_total[('request', 'Produce'), "
             "('version', '9')]"] == 1
    assert m["kafka_network_requestmetrics_requests_total[('request', 'Produce'), "
             "('version', '10')]"] == 1
    key = "[('request', 'Produce')]"
    assert m["kafka_network_requestmetrics_totaltimems_sum" + key] == pytest.approx(14.5)
    assert m["kafka_network_requestmetrics_requestqueuetimems_sum" + key] == pytest.approx(1)
    assert m["kafka_network_requestmetrics_localtimems_sum" + key] == pytest.approx(12)
    assert m["kafka_network_requestmetrics_responsequeuetimems_sum" + key] == pytest.approx(1)
    assert m["kafka_network_requestmetrics_responsesendtimems_sum" + key] == pytest.approx(0.5)
    assert m["kafka_network_requestmetrics_totaltimems_bucket[('le', '25.0'), "
             "('request', 'Produce')]"] == 2


def test_record_count_sums_batch_headers() -> None:
    one = records.build_batch([(None, b"a"), (None, b"b")])
    two = records.build_batch([(b"k", b"c")] * 3)
    assert record_count(one) == 2
    assert record_count(one + two) == 5
    t = Traffic("az1")
    t.produced("t", one + two)
    t.produced("t", one)
    assert (t.topics["t"].bytes_in, t.topics["t"].messages_in) == (2 * len(one) + len(two), 7)


def test_zone_bytes_split_data_from_control() -> None:
    t = Traffic("az1")
    t.from_client("az1", 1000, 900)
    t.to_client("az2", 300, 250)
    t.to_client("az2", 40, 0)
    assert t.zones == {
        ("az1", "az1", "data", "client"): 900, ("az1", "az1", "control", "client"): 100,
        ("az1", "az2", "data", "client"): 250, ("az1", "az2", "control", "client"): 90}
    assert frame_bytes([b"\x00\x00\x00\x0a" + b"x" * 6, b"y" * 4]) == 14


def test_metrics_listener_setting() -> None:
    assert DEFAULTS["metrics.enabled"] == "true"
    assert parse_metrics_listener(DEFAULTS["metrics.listener"]) == ("0.0.0.0", 9464)
    assert parse_metrics_listener("http://[::1]:0/metrics") == ("::1", 0)
    assert parse_metrics_listener("http://:9100") == ("0.0.0.0", 9100)
    for bad in ("9464", "https://h:1", "http://h", "http://h:1/other", "http://h:x"):
        with pytest.raises(ConfigError):
            parse_metrics_listener(bad)


def test_a_scrape_racing_the_event_loop_is_read_again() -> None:
    calls = []

    def flaky() -> list[object]:
        calls.append(1)
        if len(calls) < 2:
            raise RuntimeError("dictionary changed size during iteration")
        return ["family"]

    assert read_section(flaky) == ["family"]
    assert read_section(lambda: (_ for _ in ()).throw(RuntimeError("again"))) == []
    assert read_section(lambda: [1 / 0]) == []
