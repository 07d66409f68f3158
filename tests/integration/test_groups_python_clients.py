"""Classic consumer groups with aiokafka and kafka-python against a real broker process:
two members share a topic's partitions, one leaves, the other takes them all and resumes
from the committed offsets."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer

from tests.integration.broker import BrokerProcess

PARTITIONS = 4
SETTINGS = {"group.initial.rebalance.delay.ms": "0", "group.min.session.timeout.ms": "1000",
            "num.partitions": str(PARTITIONS)}
GROUP_TIMEOUTS = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 300}


async def test_aiokafka_group(broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory(SETTINGS).start()
    topic = "aio-group"
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for n in range(200):
            await producer.send(topic, str(n).encode(), partition=n % PARTITIONS)
        await producer.flush()
    finally:
        await producer.stop()

    def member() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id="aio",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                **GROUP_TIMEOUTS)

    a, b = member(), member()
    await a.start()
    await b.start()
    got: list[int] = []

    async def drain(c: AIOKafkaConsumer) -> None:
        batches = await c.getmany(timeout_ms=100)
        for msgs in batches.values():
            got.extend(int(m.value) for m in msgs)
        if batches:
            await c.commit()

    try:
        deadline = time.monotonic() + 60
        while not (a.assignment() and b.assignment()
                   and len(a.assignment() | b.assignment()) == PARTITIONS):
            assert time.monotonic() < deadline, "members did not share the topic"
            await asyncio.gather(drain(a), drain(b))
        assert not a.assignment() & b.assignment()
        while len(got) < 100:
            assert time.monotonic() < deadline, "nothing consumed"
            await asyncio.gather(drain(a), drain(b))
        await a.stop()  # commits nothing more and leaves the group
        while len(b.assignment()) < PARTITIONS or len(set(got)) < 200:
            assert time.monotonic() < deadline, "b did not take a's partitions"
            await drain(b)
        assert sorted(set(got)) == list(range(200))
        assert len(got) == 200, "resumed before the committed offsets"
    finally:
        await b.stop()


def test_kafka_python_group(broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory(SETTINGS).start()
    topic = "kp-group"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap,
                             enable_idempotence=False)  # InitProducerId: not served yet
    for n in range(200):
        producer.send(topic, str(n).encode(), partition=n % PARTITIONS)
    producer.flush()
    producer.close()

    def member() -> KafkaConsumer:
        c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="kp",
                          auto_offset_reset="earliest", enable_auto_commit=False,
                          **GROUP_TIMEOUTS)
        c.subscribe([topic])
        return c

    got: list[int] = []

    def drain(c: KafkaConsumer) -> None:
        batches = c.poll(timeout_ms=50)
        for msgs in batches.values():
            got.extend(int(m.value) for m in msgs)
        if batches:
            c.commit()

    a, b = member(), member()
    try:
        deadline = time.monotonic() + 60
        while not (a.assignment() and b.assignment()
                   and len(a.assignment() | b.assignment()) == PARTITIONS):
            assert time.monotonic() < deadline, "members did not share the topic"
            drain(a)
            drain(b)
        assert not a.assignment() & b.assignment()
        while len(got) < 100:
            assert time.monotonic() < deadline, "nothing consumed"
            drain(a)
            drain(b)
        a.close()  # commits and leaves the group
        while len(b.assignment()) < PARTITIONS or len(set(got)) < 200:
            assert time.monotonic() < deadline, "b did not take a's partitions"
            drain(b)
        assert sorted(set(got)) == list(range(200))
        assert len(got) == 200, "resumed before the committed offsets"
    finally:
        b.close()
