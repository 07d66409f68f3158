"""kafka-python against a real broker process: admin-created topics, keyed messages with
headers and timestamps through every codec, auto-creation on and off."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import OffsetSpec
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
    placed_by_consumer,
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
    # small fetch sizes: many fetches per partition, so incremental fetch sessions are used
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=16 << 10, fetch_max_bytes=64 << 10)
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


def test_big_records_small_fetches_and_out_of_range(broker: BrokerProcess,
                                                     admin: KafkaAdminClient) -> None:
    """Records larger than the fetch sizes still arrive, one per fetch (KIP-74); a fetch
    position past the end is answered OFFSET_OUT_OF_RANGE and the consumer resets."""
    create_topic(admin, "kp-big", 1)
    sent = [Msg(b"k", bytes([65 + i]) * 100_000, (("i", str(i).encode()),), 1000 + i)
            for i in range(6)]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=1 << 20,
                             **NO_IDEMPOTENCE)
    offsets = [producer.send("kp-big", m.value, key=m.key, headers=list(m.headers),
                             timestamp_ms=m.timestamp).get(30).offset for m in sent]
    producer.close(5)
    assert offsets == list(range(6))
    tp = TopicPartition("kp-big", 0)
    for seek in (None, 3, 1000):
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 max_partition_fetch_bytes=1024, fetch_max_bytes=2048)
        try:
            consumer.assign([tp])
            if seek is not None:
                consumer.seek(tp, seek)
            first = 3 if seek == 3 else 0
            got: list[tuple[int, Msg]] = []
            deadline = time.monotonic() + 20
            while len(got) < 6 - first and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    got += [(r.offset, Msg(r.key, r.value, tuple(r.headers), r.timestamp))
                            for r in records]
            assert got == list(enumerate(sent))[first:], seek
        finally:
            consumer.close()


def test_admin_offsets_cluster_and_topic_ids(broker: BrokerProcess,
                                             admin: KafkaAdminClient) -> None:
    """ListOffsets (earliest, latest, max timestamp), DescribeCluster, and Metadata /
    DeleteTopics addressed by topic id (KIP-516)."""
    create_topic(admin, "kp-ids", 2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0, **NO_IDEMPOTENCE)
    stamps = [1000, 1010, 5000, 1020, 1030]  # the largest is not the last
    for ts in stamps:  # one message per batch: exact answers
        producer.send("kp-ids", b"v", partition=0, timestamp_ms=ts).get(30)
    producer.close(5)
    tps = [TopicPartition("kp-ids", 0), TopicPartition("kp-ids", 1)]

    def offsets(spec: int) -> list[tuple[int, int]]:
        got = admin.list_partition_offsets(dict.fromkeys(tps, spec))
        return [(got[tp].offset, got[tp].timestamp) for tp in tps]

    assert offsets(OffsetSpec.EARLIEST) == [(0, -1), (0, -1)]
    assert offsets(OffsetSpec.LATEST) == [(5, -1), (0, -1)]
    assert offsets(OffsetSpec.MAX_TIMESTAMP) == [(2, 5000), (-1, -1)]

    cluster = admin.describe_cluster()
    assert cluster["cluster_id"] == "tidelog-cluster"
    assert [(x["host"], x["port"]) for x in cluster["brokers"]] == [("127.0.0.1", broker.port)]
    assert cluster["controller_id"] == cluster["brokers"][0]["broker_id"]

    (desc,) = admin.describe_topics(["kp-ids"])
    topic_id = uuid.UUID(desc["topic_id"])
    (by_id,) = admin.describe_topics([topic_id])
    assert (by_id["name"], by_id["error_code"], len(by_id["partitions"])) == ("kp-ids", 0, 2)
    resp = admin.delete_topics([topic_id])
    assert [(t["name"], t["error_code"]) for t in resp["topics"]] == [("kp-ids", 0)]
    assert "kp-ids" not in admin.list_topics()
    (gone,) = admin.describe_topics([topic_id])
    assert gone["error_code"] == 100  # UNKNOWN_TOPIC_ID


def test_acks_zero(broker: BrokerProcess, admin: KafkaAdminClient) -> None:
    """acks=0: the broker sends no response, and still stores every batch in order."""
    create_topic(admin, "kp-acks0")
    sent = messages(1000)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=0, linger_ms=5,
                             **NO_IDEMPOTENCE)
    try:
        for m in sent:
            producer.send("kp-acks0", value=m.value, key=m.key, headers=list(m.headers),
                          timestamp_ms=m.timestamp)
        producer.flush(30)
    finally:
        producer.close(10)
    got = consume(broker.bootstrap, "kp-acks0", len(sent))
    check(sent, placed_by_consumer(sent, got), got)


def test_default_idempotent_producer(broker: BrokerProcess, admin: KafkaAdminClient) -> None:
    create_topic(admin, "kp-idem", 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        md = producer.send("kp-idem", b"v", key=b"k").get(timeout=10)
    finally:
        producer.close(5)
    assert md.offset == 0
