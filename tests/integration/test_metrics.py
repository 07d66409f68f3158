"""The metrics endpoint shows what the broker did."""

from __future__ import annotations

import socket
import urllib.request

from confluent_kafka import Producer

from tests.integration.broker import BrokerProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_after_produce(broker_factory: type[BrokerProcess]) -> None:
    port = free_port()
    broker = broker_factory({"metrics.port": str(port)}).start()
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(100):
        p.produce("metered", f"v{i}".encode())
    assert p.flush(10) == 0
    m = scrape(port)
    assert m['tidelog_requests_total{api="0"}'] >= 1  # Produce
    assert m['tidelog_requests_total{api="3"}'] >= 1  # Metadata
    assert m["tidelog_wal_records_total"] >= 1
    assert m["tidelog_topics"] == 3  # "metered", __consumer_offsets, __transaction_state
    assert m["tidelog_wal_used_bytes"] > 0
    assert m["tidelog_storage_failed"] == 0
