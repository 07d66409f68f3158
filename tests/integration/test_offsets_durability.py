"""Committed offsets against a real broker process: consumers that assign partitions and
commit without joining a group (Kafka's "simple" group offsets), kill -9 of the broker,
and the admin APIs that list, alter and delete group offsets (confluent-kafka,
kafka-python, aiokafka)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AioTP
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaAdminClient
from kafka import TopicPartition as KTP
from kafka.errors import GroupIdNotFoundError, NoError
from kafka.structs import OffsetAndMetadata

from tests.integration.broker import BrokerProcess

TOPIC = "offsets-durable"
PARTITIONS = 4
PER_PARTITION = 25


@pytest.fixture
def broker(broker_factory: type[BrokerProcess]) -> BrokerProcess:
    b = broker_factory().start()
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(30)
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 5})
    errors: list[KafkaError] = []

    def cb(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for part in range(PARTITIONS):
        for i in range(PER_PARTITION):
            p.produce(TOPIC, value=f"{part}-{i}".encode(), partition=part, on_delivery=cb)
    assert p.flush(30) == 0 and not errors
    return b


def consumer(broker: BrokerProcess, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})


def tps(offsets: dict[int, int] | None = None) -> list[TopicPartition]:
    if offsets is None:
        return [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    return [TopicPartition(TOPIC, p, o) for p, o in sorted(offsets.items())]


def committed(broker: BrokerProcess, group: str, metadata_of: int | None = None
              ) -> dict[int, int | str | None]:
    """Committed offset per partition (OFFSET_INVALID when none), and the metadata of one
    partition under "metadata" (confluent-kafka reads metadata as a C string: only what
    it committed itself reads back cleanly)."""
    c = consumer(broker, group)
    try:
        out: dict[int, int | str | None] = {}
        for tp in c.committed(tps(), timeout=30):
            out[tp.partition] = tp.offset
            if tp.partition == metadata_of:
                out[-1] = tp.metadata
        return out
    finally:
        c.close()


def valid(offsets: dict[int, int | str | None]) -> dict[int, int]:
    return {p: o for p, o in offsets.items() if isinstance(o, int) and p >= 0 and o >= 0}


def consume(c: Consumer, n: int, timeout: float = 30) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for m in c.consume(n - len(out), timeout=1):
            assert m.error() is None, m.error()
            out.append((m.partition(), m.offset(), m.value()))  # type: ignore[arg-type]
    return out


def test_commits_survive_kill9_and_resume(broker: BrokerProcess) -> None:
    c = consumer(broker, "assign-only")
    c.assign(tps({p: 0 for p in range(PARTITIONS)}))
    first = consume(c, 40)
    assert len(first) == 40
    done = c.commit(asynchronous=False)  # the positions after what was consumed
    assert done is not None and all(tp.error is None for tp in done)
    c.commit(offsets=[TopicPartition(TOPIC, 3, 7, metadata="checkpoint-3")], asynchronous=False)
    before = {tp.partition: tp.offset for tp in c.committed(tps(), timeout=30)}
    c.close()
    positions: dict[int, int] = {}
    for part, off, _ in first:
        positions[part] = max(positions.get(part, 0), off + 1)
    positions[3] = 7
    assert {p: o for p, o in before.items() if o >= 0} == positions

    broker.kill()
    broker.start()
    after = committed(broker, "assign-only", metadata_of=3)
    assert valid(after) == positions
    assert after[-1] == "checkpoint-3"

    # a new consumer resumes exactly at the committed offsets: nothing skipped, no repeat
    c2 = consumer(broker, "assign-only")
    c2.assign(tps())
    rest = consume(c2, PARTITIONS * PER_PARTITION - sum(positions.values()))
    c2.close()
    for p in range(PARTITIONS):
        got = sorted(o for part, o, _ in rest if part == p)
        assert got == list(range(positions.get(p, 0), PER_PARTITION)), p


def test_many_groups_acknowledged_before_kill(broker: BrokerProcess) -> None:
    """Every commit acknowledged before a kill -9 is there after it, over two restarts."""
    expected: dict[str, dict[int, int]] = {}
    for round_ in range(2):
        consumers = [consumer(broker, f"group-{g}") for g in range(8)]
        for g, c in enumerate(consumers):
            offsets = {p: 10 * round_ + g + p for p in range(PARTITIONS)}
            res = c.commit(offsets=tps(offsets), asynchronous=False)
            assert res is not None and all(tp.error is None for tp in res)
            expected[f"group-{g}"] = offsets
        for c in consumers:
            c.close()
        broker.kill()
        broker.start()
        for group, offsets in expected.items():
            assert valid(committed(broker, group)) == offsets


def test_confluent_admin_list_and_alter(broker: BrokerProcess) -> None:
    c = consumer(broker, "admin-g")
    c.commit(offsets=tps({0: 5, 1: 6}), asynchronous=False)
    c.close()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})

    def listed(partitions: list[TopicPartition] | None = None) -> dict[int, int]:
        req = ConsumerGroupTopicPartitions("admin-g", partitions)
        res = admin.list_consumer_group_offsets([req])["admin-g"].result(30)
        return {tp.partition: tp.offset for tp in res.topic_partitions
                if tp.topic == TOPIC}

    assert listed() == {0: 5, 1: 6}  # every committed partition (null topics)
    assert listed(tps()) == {0: 5, 1: 6, 2: OFFSET_INVALID, 3: OFFSET_INVALID}
    alter = ConsumerGroupTopicPartitions("admin-g", tps({1: 60, 2: 70}))
    res = admin.alter_consumer_group_offsets([alter])["admin-g"].result(30)
    assert all(tp.error is None for tp in res.topic_partitions)
    assert listed() == {0: 5, 1: 60, 2: 70}
    broker.kill()
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert listed() == {0: 5, 1: 60, 2: 70}


def test_kafka_python_admin_offsets(broker: BrokerProcess) -> None:
    c = consumer(broker, "kp-g")
    c.commit(offsets=[TopicPartition(TOPIC, 0, 3, metadata="m0"), TopicPartition(TOPIC, 2, 9)],
             asynchronous=False)
    c.close()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        got = admin.list_group_offsets("kp-g")["kp-g"]
        # confluent-kafka sends its metadata string with the C terminator ("m0\0"), and the
        # broker keeps the bytes it was given
        assert {tp: (om.offset, om.metadata.rstrip("\0")) for tp, om in got.items()} == {
            KTP(TOPIC, 0): (3, "m0"), KTP(TOPIC, 2): (9, "")}
        two = admin.list_group_offsets({"kp-g": [KTP(TOPIC, 1), KTP(TOPIC, 2)],
                                        "nobody": None})
        assert {tp: om.offset for tp, om in two["kp-g"].items()} == {
            KTP(TOPIC, 1): -1, KTP(TOPIC, 2): 9}
        assert two["nobody"] == {}
        res = admin.alter_group_offsets("kp-g", {KTP(TOPIC, 1): OffsetAndMetadata(11, "m1", -1)})
        assert res == {KTP(TOPIC, 1): NoError}
        assert admin.list_group_offsets({"kp-g": [KTP(TOPIC, 1)]})["kp-g"] == {
            KTP(TOPIC, 1): OffsetAndMetadata(11, "m1", -1)}
        res = admin.delete_group_offsets("kp-g", [KTP(TOPIC, 0), KTP(TOPIC, 3)])
        assert res == {KTP(TOPIC, 0): NoError, KTP(TOPIC, 3): NoError}
        with pytest.raises(GroupIdNotFoundError):
            admin.delete_group_offsets("nobody", [KTP(TOPIC, 0)])
    finally:
        admin.close()
    broker.kill()
    broker.start()
    assert valid(committed(broker, "kp-g")) == {1: 11, 2: 9}


def test_aiokafka_commit_and_fetch(broker: BrokerProcess) -> None:
    """aiokafka speaks OffsetCommit v2 (with a retention time of -1) and OffsetFetch v1-v3."""

    async def run() -> dict[int, int | None]:
        c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="aio-g",
                             enable_auto_commit=False)
        await c.start()
        try:
            parts = [AioTP(TOPIC, p) for p in range(PARTITIONS)]
            c.assign(parts)
            await c.commit({AioTP(TOPIC, 0): 4, AioTP(TOPIC, 3): 8})
            return {tp.partition: await c.committed(tp) for tp in parts}
        finally:
            await c.stop()

    assert asyncio.run(run()) == {0: 4, 1: None, 2: None, 3: 8}
    broker.kill()
    broker.start()
    assert valid(committed(broker, "aio-g")) == {0: 4, 3: 8}

