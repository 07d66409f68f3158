"""`tidelog groups list|describe` shows members, committed offsets, end offsets and lag."""

from __future__ import annotations

import subprocess
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import BrokerProcess


def cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "tidelog.cli", *args], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def test_describe_shows_lag(broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory({"group.initial.rebalance.delay.ms": "0"}).start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("lagged", 2, 1)])["lagged"].result(10)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        p.produce("lagged", f"v{i}".encode(), partition=i % 2)
    assert p.flush(10) == 0

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "laggy",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "client.id": "lag-client"})
    c.subscribe(["lagged"])
    got = 0
    deadline = time.monotonic() + 30
    while got < 5 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None and m.partition() == 0:
            got += 1
            if got == 3:
                c.commit(message=m, asynchronous=False)  # committed offset 3 on partition 0
    try:
        out = cli("groups", "describe", "laggy", "--bootstrap-server", broker.bootstrap)
        rows = {tuple(line.split()[1:3]): line.split() for line in out.splitlines()[2:]}
        p0 = rows[("lagged", "0")]
        assert p0[3:6] == ["3", "5", "2"]  # current, log end, lag
        assert "lag-client" in p0 and "/127.0.0.1" in p0  # client id and host
        assert "laggy" in cli("groups", "list", "--bootstrap-server", broker.bootstrap)
    finally:
        c.close()
