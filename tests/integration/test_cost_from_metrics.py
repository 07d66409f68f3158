"""`tidelog cost --from-metrics` against a real broker: produce and consume with
confluent-kafka, force uploads with a small upload.bytes / upload.interval.ms, and check
that the counters the cost tool reads are non-zero and agree with one another and with
what the clients did."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from tests.integration.broker import BrokerProcess
from tidelog.config import DEFAULTS
from tidelog.tools.cost.measured import price_run
from tidelog.tools.cost.metrics_source import (
    BYTES_IN,
    BYTES_OUT,
    MESSAGES_IN,
    OBJECT_BYTES,
    OBJECT_REQUESTS,
    Scrape,
    fetch_text,
    parse_exposition,
    usage_between,
)
from tidelog.tools.cost.prices import Assumptions, Prices
from tidelog.tools.cost.sizing import Workload

COUNT = 300
PAYLOAD = 2000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics_settings(port: int) -> dict[str, str]:
    """The endpoint on `port`, whichever of the two configuration forms this build has."""
    if "metrics.listener" in DEFAULTS:
        return {"metrics.enabled": "true", "metrics.listener": f"http://127.0.0.1:{port}"}
    return {"metrics.port": str(port)}


def start_broker(factory: type[BrokerProcess]) -> tuple[BrokerProcess, str]:
    port = free_port()
    broker = factory({**metrics_settings(port), "upload.bytes": str(64 << 10),
                      "upload.interval.ms": "200"}).start()
    return broker, f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> Scrape:
    return parse_exposition(fetch_text(url))


def topic_value(s: Scrape, name: str, topic: str) -> float:
    return s.get(name, {}).get((("topic", topic),), 0.0)


def op_value(s: Scrape, name: str, op: str) -> float:
    return s.get(name, {}).get((("operation", op),), 0.0)


def produce_and_consume(bootstrap: str, topic: str) -> None:
    """COUNT records of PAYLOAD bytes, then read them all back once (assigned, no group, no
    commits: the only records in the run are the test's)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(COUNT):
        p.produce(topic, bytes([i % 251]) * PAYLOAD)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cost-reader",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = 0
    deadline = time.monotonic() + 60
    while got < COUNT and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            got += 1
    c.close()
    assert got == COUNT


def wait_uploaded(url: str, before: Scrape, topic: str) -> Scrape:
    """Scrape until the object store took at least the topic's produced bytes (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        s = scrape(url)
        produced = topic_value(s, BYTES_IN, topic) - topic_value(before, BYTES_IN, topic)
        put = op_value(s, OBJECT_BYTES, "PUT") - op_value(before, OBJECT_BYTES, "PUT")
        if (produced > 0 and put >= produced) or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def test_counters_of_a_real_run_price_consistently(
        broker_factory: type[BrokerProcess]) -> None:
    broker, url = start_broker(broker_factory)
    topic = "costed"
    before = scrape(url)
    started = time.monotonic()
    produce_and_consume(broker.bootstrap, topic)
    after = wait_uploaded(url, before, topic)
    usage = usage_between([before], [after], time.monotonic() - started)
    assert usage.missing == (), f"the broker does not export {usage.missing}"

    produced = topic_value(after, BYTES_IN, topic) - topic_value(before, BYTES_IN, topic)
    fetched = topic_value(after, BYTES_OUT, topic) - topic_value(before, BYTES_OUT, topic)
    messages = topic_value(after, MESSAGES_IN, topic) - topic_value(before, MESSAGES_IN, topic)
    assert messages == COUNT
    assert produced > COUNT * PAYLOAD  # batch headers on top of the payloads
    assert fetched >= produced  # every batch was read once
    assert usage.bytes_in >= produced and usage.bytes_out >= fetched
    assert usage.wal_bytes >= produced  # every batch went through the WAL
    puts = op_value(after, OBJECT_REQUESTS, "PUT") - op_value(before, OBJECT_REQUESTS, "PUT")
    put_bytes = op_value(after, OBJECT_BYTES, "PUT") - op_value(before, OBJECT_BYTES, "PUT")
    assert puts >= 1 and usage.requests["PUT"] == puts
    assert put_bytes >= produced  # everything produced was uploaded (small uploads forced)
    assert usage.object_bytes["PUT"] == put_bytes
    # one broker with no rack: its zone is "default", no byte crosses zones
    zones = {(s, d) for s, d, _, _ in usage.zone_bytes}
    assert zones == {("default", "default")}
    assert sum(v for (_, _, kind, _), v in usage.zone_bytes.items() if kind == "data") > 0
    assert usage.cross_zone_bytes() == {}
    assert usage.stored_bytes > 0

    est = price_run(usage, Workload(write_mibps=1, retention_hours=24), "fsx", Prices(),
                    Assumptions())
    scale = Prices().month_hours * 3600 / usage.seconds
    assert est.lines["requests"] > 0
    assert est.lines["requests"] == pytest.approx(
        (usage.puts * 0.005 + usage.gets * 0.0004) / 1000 * scale)
    assert est.lines["object_storage"] == pytest.approx(
        usage.bytes_in / usage.seconds / 2**20 * 24 * 3600 / 1024 * 0.023)
    assert est.lines["cross_az"] == 0
    assert est.lines["compute"] > 0 and est.lines["block_file_storage"] > 0


def test_cli_prices_a_run_it_watched(broker_factory: type[BrokerProcess]) -> None:
    """The command scrapes, waits, scrapes: the run happens in between. If the work outlasts
    the window (a very slow machine), the window is widened and the run repeated."""
    broker, url = start_broker(broker_factory)
    for attempt, interval in enumerate((8, 20, 45)):
        topic = f"watched{attempt}"
        cmd = [sys.executable, "-m", "tidelog.cli", "cost", "--from-metrics", url,
               "--interval", str(interval), "--json", "--partitions", "1"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "scraped 1 endpoint" in first, first + proc.stderr.read()
        before = scrape(url)
        produce_and_consume(broker.bootstrap, topic)
        wait_uploaded(url, before, topic)
        in_window = proc.poll() is None
        out, err = proc.communicate(timeout=interval + 60)
        assert proc.returncode == 0, err
        if in_window:
            break
    else:
        pytest.fail("the run never fitted in the scrape window")
    doc = json.loads(out)
    run = doc["run"]
    assert run["messages_in"] >= COUNT
    assert run["bytes_in"] > COUNT * PAYLOAD and run["bytes_out"] >= run["bytes_in"] * 0.99
    assert run["object_requests"]["PUT"] >= 1 and run["wal_bytes"] >= run["bytes_in"]
    keys = [a["key"] for a in doc["architectures"]]
    assert keys == ["measured", "kafka", "s3_wal", "fsx_wal"]
    measured = doc["architectures"][0]
    assert measured["lines"]["requests"] > 0 and measured["lines"]["object_storage"] > 0
    assert measured["sizing"]["brokers"] == 1
