"""aiokafka against a real broker process: admin-created topics, keyed messages with
headers and timestamps through every codec, auto-creation on and off."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from tests.integration.broker import BrokerProcess
from tests.integration.workload import (
    CODECS,
    N_CODEC_MESSAGES,
    N_MESSAGES,
    N_PARTITIONS,
    Msg,
    check,
    messages,
)


async def create_topic(bootstrap: str, name: str, partitions: int = N_PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(name, partitions, 1)])
        errors = [(t[0], t[1]) for t in resp.topic_errors]
        assert errors == [(name, 0)], errors
        meta = await admin.describe_topics([name])
        assert len(meta) == 1 and meta[0]["error_code"] == 0, meta
        assert sorted(p["partition"] for p in meta[0]["partitions"]) == list(range(partitions))
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, sent: list[Msg],
                  **conf: object) -> list[tuple[int, int]]:
    """Send every message; returns the (partition, offset) each was acknowledged at."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **conf)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=m.value, key=m.key, headers=list(m.headers),
                                       timestamp_ms=m.timestamp)
                   for m in sent]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    # CreateTime: the broker answers log_append_time -1 (aiokafka then reports the first
    # message's timestamp for the whole batch, a client quirk, so only the type is checked)
    assert all(md.timestamp_type == 0 for md in metas)
    return [(md.partition, md.offset) for md in metas]


async def consume(bootstrap: str, topic: str, expected: int, partitions: int = N_PARTITIONS,
                  timeout: float = 60) -> dict[int, list[tuple[int, Msg]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=16 << 10,
                                fetch_max_bytes=64 << 10, fetch_max_wait_ms=100)
    await consumer.start()
    got: dict[int, list[tuple[int, Msg]]] = {}
    count = 0
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while count < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for tp, records in batches.items():
                for r in records:
                    assert r.timestamp_type == 0  # CreateTime
                    got.setdefault(tp.partition, []).append((r.offset, Msg(
                        r.key, r.value, tuple((k, bytes(v)) for k, v in r.headers),
                        r.timestamp)))
                    count += 1
        # nothing beyond what was produced
        extra = await consumer.getmany(timeout_ms=300)
        assert not any(extra.values()), extra
        # ListOffsets as aiokafka asks: earliest, latest, and by timestamp
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        counts = {p: len(got.get(p, [])) for p in range(partitions)}
        assert {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()} == counts
        assert set((await consumer.beginning_offsets(tps)).values()) == {0}
        if got:
            p, msgs = next(iter(got.items()))
            last_ts = max(m.timestamp for _, m in msgs)
            found = await consumer.offsets_for_times({
                TopicPartition(topic, p): msgs[0][1].timestamp})
            assert found[TopicPartition(topic, p)].offset == 0
            after = await consumer.offsets_for_times({TopicPartition(topic, p): last_ts + 1})
            assert list(after.values()) == [None]
    finally:
        await consumer.stop()
    return got


@pytest.mark.parametrize("codec", [None, *CODECS])
async def test_roundtrip(broker: BrokerProcess, codec: str | None) -> None:
    topic = f"aio-{codec or 'none'}"
    await create_topic(broker.bootstrap, topic)
    sent = messages(N_MESSAGES if codec is None else N_CODEC_MESSAGES)
    placed = await produce(broker.bootstrap, topic, sent, compression_type=codec)
    got = await consume(broker.bootstrap, topic, len(sent))
    check(sent, placed, got)


async def test_create_existing_topic_fails(broker: BrokerProcess) -> None:
    await create_topic(broker.bootstrap, "aio-dup", 2)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic("aio-dup", 3, 1)])
        assert [(t[0], t[1]) for t in resp.topic_errors] == [("aio-dup", 36)]
        meta = await admin.describe_topics(["aio-dup"])
        assert len(meta[0]["partitions"]) == 2  # unchanged
    finally:
        await admin.close()


async def test_auto_create_off(broker_factory: type[BrokerProcess],
                               caplog: pytest.LogCaptureFixture) -> None:
    b = broker_factory({"auto.create.topics.enable": "false"}).start()
    producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap, request_timeout_ms=2000)
    await producer.start()
    try:
        with caplog.at_level(logging.ERROR, logger="aiokafka.cluster"), \
                pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait("aio-missing", b"v", key=b"k")
        # aiokafka raises that error when metadata never shows the topic; that the broker
        # answered error code 3 (not another error) it logs with this line
        assert "Topic aio-missing not found in cluster metadata" in caplog.text
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=b.bootstrap)
    await admin.start()
    try:
        assert "aio-missing" not in await admin.list_topics()
        # an explicitly created topic still works
        await create_topic(b.bootstrap, "aio-present", 2)
        assert "aio-present" in await admin.list_topics()
    finally:
        await admin.close()
    sent = messages(50)
    placed = await produce(b.bootstrap, "aio-present", sent)
    got = await consume(b.bootstrap, "aio-present", 50, partitions=2)
    check(sent, placed, got, partitions=2)


async def test_auto_create_on(broker_factory: type[BrokerProcess]) -> None:
    b = broker_factory({"auto.create.topics.enable": "true", "num.partitions": "3"}).start()
    producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap)
    await producer.start()
    try:
        md = await producer.send_and_wait("aio-auto", b"v", key=b"k", timestamp_ms=1234)
        assert md.offset == 0 and md.topic == "aio-auto"
        assert await producer.partitions_for("aio-auto") == {0, 1, 2}
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=b.bootstrap)
    await admin.start()
    try:
        assert "aio-auto" in await admin.list_topics()
    finally:
        await admin.close()
    got = await consume(b.bootstrap, "aio-auto", 1, partitions=3)
    assert [(o, m.key, m.value, m.timestamp) for msgs in got.values() for o, m in msgs] == [
        (0, b"k", b"v", 1234)]


async def test_producer_errors_are_kafka_errors(broker: BrokerProcess) -> None:
    """A message bigger than the broker accepts is refused with a Kafka error, not a hang."""
    await create_topic(broker.bootstrap, "aio-big", 1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap,
                                max_request_size=20 << 20)
    await producer.start()
    try:
        with pytest.raises(KafkaError):
            await producer.send_and_wait("aio-big", b"x" * (9 << 20))
        md = await producer.send_and_wait("aio-big", b"small")
        assert md.offset == 0  # the refused batch took no offsets
    finally:
        await producer.stop()


async def test_read_back_from_objects_after_restart(broker_factory: type[BrokerProcess]) -> None:
    """Small uploads put most of the data in objects; after a restart every record is read
    back (objects plus the WAL tail), with the same offsets."""
    b = broker_factory({"upload.bytes": str(128 << 10), "upload.interval.ms": "200"}).start()
    await create_topic(b.bootstrap, "aio-restart")
    sent = messages(N_CODEC_MESSAGES)
    placed = await produce(b.bootstrap, "aio-restart", sent[:1500], compression_type="lz4")
    await asyncio.sleep(0.5)  # let an interval upload run
    placed += await produce(b.bootstrap, "aio-restart", sent[1500:])
    check(sent, placed, await consume(b.bootstrap, "aio-restart", len(sent)))
    b.restart()
    check(sent, placed, await consume(b.bootstrap, "aio-restart", len(sent)))
    objects = [p for p in (b.data_dir / "objects").rglob("*") if p.is_file()]
    assert objects, "nothing was uploaded"
