"""ListOffsets by timestamp and max timestamp answer at record precision, inside
compressed multi-record batches."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from tests.integration.broker import BrokerProcess

BASE = 1_700_000_000_000


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_record_precise_lookups(broker: BrokerProcess, codec: str) -> None:
    topic = f"ts-{codec}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    # one batch of 100 records; timestamps go up by 10 ms, except a spike at offset 80
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 200,
                  "compression.type": codec})
    stamps = [BASE + 10 * i for i in range(100)]
    stamps[80] = BASE + 50_000
    for i, ts in enumerate(stamps):
        p.produce(topic, f"v{i}".encode() * 20, partition=0, timestamp=ts)
    assert p.flush(10) == 0

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused"})
    # the first offset whose timestamp is >= the target, as Kafka answers
    for target, expected in [(BASE + 505, 51), (BASE, 0), (BASE + 365, 37),
                             (BASE + 990, 80), (BASE + 60_000, -1)]:
        [tp] = c.offsets_for_times([TopicPartition(topic, 0, target)], timeout=10)
        assert tp.offset == expected, (target, tp.offset)
    c.close()

    res = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.max_timestamp()})
    info = res[TopicPartition(topic, 0)].result(10)
    assert (info.offset, info.timestamp) == (80, BASE + 50_000)
