"""kafka-python against a real broker process: admin-created topics, keyed messages with
headers and timestamps through every codec, auto-creation on and off."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
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


@pytest.fixture
def admin(broker: BrokerProcess) -> Iterator[KafkaAdminClient]:
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    yield a
    a.close()


def create_topic(admin: KafkaAdminClient, name: str, partitions: int = N_PARTITIONS) -> None:
    resp = admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1}})
    assert [(t["name"], t["error_code"]) for t in resp["topics"]] == [(name, 0)], resp
    (desc,) = admin.describe_topics([name])
    assert desc["error_code"] == 0, desc
    assert sorted(p["partition_index"] for p in desc["partitions"]) == list(range(partitions))


# kafka-python 3 enables idempotence by default and aborts every batch when the broker has
# no InitProducerId; the broker does not serve it until producer state exists.
NO_IDEMPOTENCE = {"enable_idempotence": False}


def produce(bootstrap: str, topic: str, sent: list[Msg], **conf: object) -> list[tuple[int, int]]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **NO_IDEMPOTENCE, **conf)
    try:
        futures = [producer.send(topic, value=m.value, key=m.key, headers=list(m.headers),
                                 timestamp_ms=m.timestamp) for m in sent]
        producer.flush(60)
        metas = [f.get(timeout=60) for f in futures]
    finally:
        producer.close(10)
    for m, md in zip(sent, metas, strict=True):
        assert md.timestamp == m.timestamp  # CreateTime: the broker kept ours
    return [(md.partition, md.offset) for md in metas]


def consume(bootstrap: str, topic: str, expected: int, partitions: int = N_PARTITIONS,
            timeout: float = 60) -> dict[int, list[tuple[int, Msg]]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    got: dict[int, list[tuple[int, Msg]]] = {}
    count = 0
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while count < expected and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=1000, max_records=5000).items():
                for r in records:
                    assert r.timestamp_type == 0  # CreateTime
                    got.setdefault(tp.partition, []).append((r.offset, Msg(
                        r.key, r.value, tuple((k, bytes(v)) for k, v in r.headers),
                        r.timestamp)))
                    count += 1
        extra = consumer.poll(timeout_ms=300)
        assert not any(extra.values()), extra
        # the consumer's idea of the end agrees with what it read
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        assert {tp.partition: o for tp, o in ends.items()} == {
            p: len(got.get(p, [])) for p in range(partitions)}
    finally:
        consumer.close()
    return got


@pytest.mark.parametrize("codec", [None, *CODECS])
def test_roundtrip(broker: BrokerProcess, admin: KafkaAdminClient, codec: str | None) -> None:
    topic = f"kp-{codec or 'none'}"
    create_topic(admin, topic)
    sent = messages(N_MESSAGES if codec is None else N_CODEC_MESSAGES)
    placed = produce(broker.bootstrap, topic, sent, compression_type=codec)
    got = consume(broker.bootstrap, topic, len(sent))
    check(sent, placed, got)


def test_admin_create_existing_and_delete(broker: BrokerProcess,
                                         admin: KafkaAdminClient) -> None:
    create_topic(admin, "kp-dup", 2)
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics({"kp-dup": {"num_partitions": 3, "replication_factor": 1}})
    (desc,) = admin.describe_topics(["kp-dup"])
    assert len(desc["partitions"]) == 2
    resp = admin.delete_topics(["kp-dup"])
    assert [(t["name"], t["error_code"]) for t in resp["topics"]] == [("kp-dup", 0)]
    assert "kp-dup" not in admin.list_topics()
    with pytest.raises(UnknownTopicOrPartitionError):
        admin.delete_topics(["kp-dup"])


def test_auto_create_off(broker_factory: type[BrokerProcess],
                         caplog: pytest.LogCaptureFixture) -> None:
    b = broker_factory({"auto.create.topics.enable": "false"}).start()
    producer = KafkaProducer(bootstrap_servers=b.bootstrap, max_block_ms=3000,
                             **NO_IDEMPOTENCE)
    try:
        # like the Java producer, kafka-python keeps asking for metadata until max_block_ms
        # and then times out; what the broker answered it logs (only for error code 3)
        with caplog.at_level(logging.ERROR, logger="kafka.cluster"), \
                pytest.raises(KafkaTimeoutError):
            producer.send("kp-missing", b"v", key=b"k")
        assert "Topic kp-missing not found in cluster metadata" in caplog.text
    finally:
        producer.close(5)
    a = KafkaAdminClient(bootstrap_servers=b.bootstrap)
    try:
        assert "kp-missing" not in a.list_topics()
        create_topic(a, "kp-present", 2)
    finally:
        a.close()
    sent = messages(50)
    placed = produce(b.bootstrap, "kp-present", sent)
    check(sent, placed, consume(b.bootstrap, "kp-present", 50, partitions=2), partitions=2)


def test_auto_create_on(broker_factory: type[BrokerProcess]) -> None:
    b = broker_factory({"auto.create.topics.enable": "true", "num.partitions": "3"}).start()
    producer = KafkaProducer(bootstrap_servers=b.bootstrap, **NO_IDEMPOTENCE)
    try:
        md = producer.send("kp-auto", b"v", key=b"k", timestamp_ms=1234).get(timeout=30)
        assert md.offset == 0 and md.topic == "kp-auto"
        assert producer.partitions_for("kp-auto") == {0, 1, 2}
    finally:
        producer.close(5)
    a = KafkaAdminClient(bootstrap_servers=b.bootstrap)
    try:
        assert "kp-auto" in a.list_topics()
    finally:
        a.close()
    got = consume(b.bootstrap, "kp-auto", 1, partitions=3)
    assert [(o, m.key, m.value, m.timestamp) for msgs in got.values() for o, m in msgs] == [
        (0, b"k", b"v", 1234)]
