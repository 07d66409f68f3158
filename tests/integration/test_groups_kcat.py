"""`kcat -G` (librdkafka's balanced consumer) joins a classic group, consumes, commits; a
second run of the same group starts from the committed offsets."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.broker import BrokerProcess

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
PARTITIONS = 3


def kcat_group(bootstrap: str, group: str, topic: str, count: int) -> list[tuple[int, int, int]]:
    """(partition, offset, number) of `count` messages read by `kcat -G`."""
    r = subprocess.run(
        ["kcat", "-b", bootstrap, "-G", group, topic, "-c", str(count), "-q",
         "-f", "%p %o %s\n", "-X", "auto.offset.reset=earliest",
         "-X", "session.timeout.ms=6000", "-X", "auto.commit.interval.ms=100"],
        capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    rows = [tuple(int(x) for x in line.split()) for line in r.stdout.decode().splitlines()
            if line.strip()]
    return rows  # type: ignore[return-value]


def test_kcat_joins_a_group(broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory({"group.initial.rebalance.delay.ms": "0",
                             "num.partitions": str(PARTITIONS)}).start()
    topic = "kcat-group"
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for n in range(60):
        p.produce(topic, str(n).encode(), partition=n % PARTITIONS)
    assert p.flush(30) == 0

    first = kcat_group(broker.bootstrap, "kc", topic, 30)
    assert len(first) == 30
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "kc"})
    committed = {tp.partition: tp.offset for tp in c.committed(
        [TopicPartition(topic, i) for i in range(PARTITIONS)], 10)}
    c.close()
    read = {part: max(o for pp, o, _ in first if pp == part) + 1
            for part in {pp for pp, _, _ in first}}
    # kcat stores what it printed and commits it when it leaves the group
    assert {k: v for k, v in committed.items() if v >= 0} == read

    second = kcat_group(broker.bootstrap, "kc", topic, 30)
    assert sorted(n for *_, n in first + second) == list(range(60))
