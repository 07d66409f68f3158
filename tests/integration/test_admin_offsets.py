"""ListOffsets (earliest, latest, by timestamp, max timestamp), consuming from the end and
from a timestamp, and the topic admin APIs, through confluent-kafka."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
from kafka import KafkaAdminClient

from tests.integration.broker import BrokerProcess

BASE_TS = 1_700_000_000_000
STEP = 10


@pytest.fixture
def admin(broker: BrokerProcess) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


@pytest.fixture
def consumer(broker: BrokerProcess) -> Iterator[Consumer]:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused-assign-only",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    yield c
    c.close()


def create(admin: AdminClient, name: str, partitions: int = 1) -> None:
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def produce_one_per_batch(bootstrap: str, topic: str, stamps: list[int], partition: int = 0,
                          prefix: str = "m") -> list[int]:
    """One message per batch (each flushed before the next), so batch-granular timestamp
    lookups are exact; returns the acknowledged offsets."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    offsets: list[int] = []

    def cb(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        offsets.append(msg.offset())  # type: ignore[arg-type]

    for i, ts in enumerate(stamps):
        p.produce(topic, value=f"{prefix}-{i}".encode(), key=b"k", partition=partition,
                  timestamp=ts, on_delivery=cb)
        assert p.flush(30) == 0
    return offsets


def consume_n(c: Consumer, n: int, timeout: float = 30) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for m in c.consume(n - len(out), 0.5):
            if m.error():
                raise KafkaException(m.error())
            out.append(m)
    return out


def test_watermarks_earliest_latest(broker: BrokerProcess, admin: AdminClient,
                                    consumer: Consumer) -> None:
    create(admin, "lo-wm", 3)
    assert [consumer.get_watermark_offsets(TopicPartition("lo-wm", i), 10) for i in range(3)] \
        == [(0, 0)] * 3
    produce_one_per_batch(broker.bootstrap, "lo-wm", [BASE_TS] * 5, partition=1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    for i in range(100):
        p.produce("lo-wm", value=b"x", partition=2, timestamp=BASE_TS + i)
    assert p.flush(30) == 0
    assert [consumer.get_watermark_offsets(TopicPartition("lo-wm", i), 10) for i in range(3)] \
        == [(0, 0), (0, 5), (0, 100)]
    futs = admin.list_offsets({TopicPartition("lo-wm", i): spec for i in range(3)
                               for spec in [OffsetSpec.latest()]})
    assert sorted((tp.partition, f.result(10).offset) for tp, f in futs.items()) == [
        (0, 0), (1, 5), (2, 100)]
    futs = admin.list_offsets({TopicPartition("lo-wm", 2): OffsetSpec.earliest()})
    assert [f.result(10).offset for f in futs.values()] == [0]
    # an unknown partition is an error, not an answer (librdkafka finds no leader for it)
    bad = admin.list_offsets({TopicPartition("lo-wm", 7): OffsetSpec.latest()})
    with pytest.raises(KafkaException):
        next(iter(bad.values())).result(10)


def test_offsets_for_times(broker: BrokerProcess, admin: AdminClient,
                           consumer: Consumer) -> None:
    create(admin, "lo-ts", 2)
    stamps = [BASE_TS + STEP * i for i in range(20)]
    assert produce_one_per_batch(broker.bootstrap, "lo-ts", stamps) == list(range(20))

    def lookup(ts: int, partition: int = 0) -> int:
        (tp,) = consumer.offsets_for_times([TopicPartition("lo-ts", partition, ts)], 10)
        assert tp.error is None, tp.error
        return int(tp.offset)

    assert lookup(0) == 0  # before everything: the first offset
    assert lookup(BASE_TS) == 0
    for i in (1, 7, 19):
        assert lookup(stamps[i]) == i  # exact timestamp
        assert lookup(stamps[i] - 1) == i  # between two: the later one
        assert lookup(stamps[i] - STEP + 1) == i
    assert lookup(stamps[5] + 1) == 6
    assert lookup(stamps[-1] + 1) == OFFSET_END  # after the last: -1 (end)
    assert lookup(BASE_TS, partition=1) == OFFSET_END  # an empty partition has none

    # the same through the admin API, with the timestamp that was found
    futs = admin.list_offsets({TopicPartition("lo-ts", 0): OffsetSpec.for_timestamp(stamps[3])})
    (info,) = [f.result(10) for f in futs.values()]
    assert (info.offset, info.timestamp) == (3, stamps[3])


def test_max_timestamp(broker: BrokerProcess, admin: AdminClient) -> None:
    create(admin, "lo-max", 2)
    stamps = [BASE_TS + STEP * i for i in range(10)]
    stamps[6] = BASE_TS + 1_000_000  # the largest timestamp is not the last message
    produce_one_per_batch(broker.bootstrap, "lo-max", stamps)
    futs = admin.list_offsets({TopicPartition("lo-max", 0): OffsetSpec.max_timestamp(),
                               TopicPartition("lo-max", 1): OffsetSpec.max_timestamp()})
    got = {tp.partition: f.result(10) for tp, f in futs.items()}
    assert (got[0].offset, got[0].timestamp) == (6, BASE_TS + 1_000_000)
    assert got[1].offset == -1  # empty partition


def test_consume_from_end(broker: BrokerProcess, admin: AdminClient,
                          consumer: Consumer) -> None:
    create(admin, "lo-end", 2)
    produce_one_per_batch(broker.bootstrap, "lo-end", [BASE_TS] * 5, prefix="old")
    tps = [TopicPartition("lo-end", p, OFFSET_END) for p in range(2)]
    consumer.assign(tps)
    # wait until both partitions are being fetched (the cached high watermarks come from
    # fetch responses, and fetching starts only once OFFSET_END is resolved)
    deadline = time.monotonic() + 20
    while True:
        assert not consumer.consume(10, 0.1)
        marks = [consumer.get_watermark_offsets(TopicPartition("lo-end", p), cached=True)[1]
                 for p in range(2)]
        if marks == [5, 0]:
            break
        assert time.monotonic() < deadline, marks
    produce_one_per_batch(broker.bootstrap, "lo-end", [BASE_TS + 1] * 3, prefix="new")
    produce_one_per_batch(broker.bootstrap, "lo-end", [BASE_TS + 2] * 2, partition=1,
                          prefix="new1")
    got = consume_n(consumer, 5)
    assert sorted((m.partition(), m.offset(), m.value()) for m in got) == [
        (0, 5, b"new-0"), (0, 6, b"new-1"), (0, 7, b"new-2"),
        (1, 0, b"new1-0"), (1, 1, b"new1-1")]
    assert not consumer.consume(10, 0.5)  # and nothing else


def test_consume_from_timestamp(broker: BrokerProcess, admin: AdminClient,
                                consumer: Consumer) -> None:
    create(admin, "lo-from-ts", 1)
    stamps = [BASE_TS + STEP * i for i in range(30)]
    produce_one_per_batch(broker.bootstrap, "lo-from-ts", stamps)
    start = consumer.offsets_for_times([TopicPartition("lo-from-ts", 0, stamps[12] - 3)], 10)
    assert [tp.offset for tp in start] == [12]
    consumer.assign(start)
    got = consume_n(consumer, 18)
    assert [(m.offset(), m.value(), m.timestamp()[1]) for m in got] == [
        (i, f"m-{i}".encode(), stamps[i]) for i in range(12, 30)]
    assert not consumer.consume(10, 0.3)


def test_delete_topic_and_recreate(broker: BrokerProcess, admin: AdminClient,
                                   consumer: Consumer) -> None:
    create(admin, "lo-del", 3)
    produce_one_per_batch(broker.bootstrap, "lo-del", [BASE_TS] * 4, partition=2)
    assert "lo-del" in admin.list_topics(timeout=10).topics
    admin.delete_topics(["lo-del"])["lo-del"].result(30)
    assert "lo-del" not in admin.list_topics(timeout=10).topics
    with pytest.raises(KafkaException) as info:
        admin.delete_topics(["lo-del"])["lo-del"].result(30)
    assert info.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    # recreate with another partition count: a new, empty topic
    create(admin, "lo-del", 2)
    meta = admin.list_topics("lo-del", timeout=10).topics["lo-del"]
    assert meta.error is None and sorted(meta.partitions) == [0, 1]
    assert consumer.get_watermark_offsets(TopicPartition("lo-del", 0), 10) == (0, 0)
    assert produce_one_per_batch(broker.bootstrap, "lo-del", [BASE_TS], prefix="again") == [0]
    consumer.assign([TopicPartition("lo-del", 0, 0)])
    assert [m.value() for m in consume_n(consumer, 1)] == [b"again-0"]


def create_error(admin: AdminClient, topic: NewTopic) -> int:
    with pytest.raises(KafkaException) as info:
        admin.create_topics([topic])[topic.topic].result(30)
    code = info.value.args[0].code()
    assert isinstance(code, int)
    return code


def test_create_topics_errors(broker: BrokerProcess, admin: AdminClient) -> None:
    create(admin, "lo-exists", 2)
    assert create_error(admin, NewTopic("lo-exists", 4, 1)) == KafkaError.TOPIC_ALREADY_EXISTS
    assert len(admin.list_topics("lo-exists", timeout=10).topics["lo-exists"].partitions) == 2
    assert create_error(admin, NewTopic("lo-zero", 0, 1)) == KafkaError.INVALID_PARTITIONS
    # librdkafka refuses a count below -1 itself; kafka-python sends it as asked
    kp_admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        resp = kp_admin.create_topics({"lo-neg": {"num_partitions": -2, "replication_factor": 1}},
                                      raise_errors=False)
        assert [(t["name"], t["error_code"]) for t in resp["topics"]] == [
            ("lo-neg", KafkaError.INVALID_PARTITIONS)]
    finally:
        kp_admin.close()
    assert create_error(admin, NewTopic("lo-bad-rf", 1, 0)) == \
        KafkaError.INVALID_REPLICATION_FACTOR
    for name in ("bad name!", "x" * 250, "..", "a/b"):
        assert create_error(admin, NewTopic(name, 1, 1)) == KafkaError.TOPIC_EXCEPTION, name
    topics = admin.list_topics(timeout=10).topics
    assert not {"lo-zero", "lo-neg", "lo-bad-rf", "bad name!", ".."} & set(topics)
    # -1 partitions / replication factor: the broker's defaults (num.partitions=1)
    admin.create_topics([NewTopic("lo-default", -1, -1)])["lo-default"].result(30)
    assert len(admin.list_topics("lo-default", timeout=10).topics["lo-default"].partitions) == 1
    # validate_only checks without creating
    admin.create_topics([NewTopic("lo-validate", 3, 1)],
                        validate_only=True)["lo-validate"].result(30)
    assert "lo-validate" not in admin.list_topics(timeout=10).topics


def test_create_topics_default_partitions(broker_factory: type[BrokerProcess]) -> None:
    b = broker_factory({"num.partitions": "5"}).start()
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic("lo-default5")])["lo-default5"].result(30)
    meta = admin.list_topics("lo-default5", timeout=10).topics["lo-default5"]
    assert sorted(meta.partitions) == list(range(5))


def test_describe_cluster(broker: BrokerProcess, admin: AdminClient) -> None:
    desc = admin.describe_cluster(request_timeout=10).result(10)
    assert desc.cluster_id == "tidelog-cluster"
    assert [(n.host, n.port) for n in desc.nodes] == [("127.0.0.1", broker.port)]
    assert desc.controller is not None and desc.controller.id == desc.nodes[0].id


def test_invalid_topic_name_in_metadata_and_produce(broker: BrokerProcess) -> None:
    """Auto-creation refuses an illegal name with INVALID_TOPIC_EXCEPTION."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 5000})
    errors: list[KafkaError] = []
    p.produce("bad$name", value=b"v",
              on_delivery=lambda err, _msg: errors.append(err))
    p.flush(15)
    assert [e.code() for e in errors] == [KafkaError.TOPIC_EXCEPTION], errors
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert "bad$name" not in admin.list_topics(timeout=10).topics
