"""Partition administration through real clients: CreatePartitions then produce to the new
partitions, DeleteRecords then consumers reset per auto.offset.reset, DescribeLogDirs sizes,
OffsetForLeaderEpoch across a restart, DescribeProducers after an idempotent produce,
ElectLeaders."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic, OffsetSpec
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition
from kafka.errors import InvalidPartitionsError, OffsetOutOfRangeError
from kio.schema.errors import ErrorCode
from kio.schema.offset_for_leader_epoch.v4 import request as ofle
from kio.schema.types import TopicName
from kio.static.primitive import i32

from tests.integration.broker import BrokerProcess
from tests.integration.rawclient import RawClient


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(Path(tmp_path_factory.mktemp("admin-partitions"))).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def admin(broker: BrokerProcess) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


@pytest.fixture
def kp(broker: BrokerProcess) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    yield client
    client.close()


def create(admin: AdminClient, name: str, partitions: int = 1) -> None:
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(10)


def produce(bootstrap: str, topic: str, partition: int, n: int,
            extra: dict[str, Any] | None = None) -> list[int]:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, **(extra or {})})
    offsets: list[int] = []

    def cb(err: KafkaError | None, msg: Any) -> None:
        assert err is None, err
        offsets.append(msg.offset())

    for i in range(n):
        p.produce(topic, f"m{i}".encode(), partition=partition, on_delivery=cb)
        p.poll(0)
    assert p.flush(30) == 0
    return sorted(offsets)


def test_create_partitions_then_produce_to_them(broker: BrokerProcess, admin: AdminClient,
                                                kp: KafkaAdminClient) -> None:
    create(admin, "grow")
    admin.create_partitions([NewPartitions("grow", 3)])["grow"].result(10)
    assert len(admin.list_topics("grow", timeout=10).topics["grow"].partitions) == 3
    assert produce(broker.bootstrap, "grow", 2, 3) == [0, 1, 2]
    # fewer or as many partitions: INVALID_PARTITIONS
    with pytest.raises(KafkaException) as exc:
        admin.create_partitions([NewPartitions("grow", 2)])["grow"].result(10)
    assert exc.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    # validate_only changes nothing; kafka-python grows it for real
    admin.create_partitions([NewPartitions("grow", 9)], validate_only=True)["grow"].result(10)
    assert len(admin.list_topics("grow", timeout=10).topics["grow"].partitions) == 3
    kp.create_partitions({"grow": 5})
    assert len(admin.list_topics("grow", timeout=10).topics["grow"].partitions) == 5
    with pytest.raises(InvalidPartitionsError):
        kp.create_partitions({"grow": 5})
    assert produce(broker.bootstrap, "grow", 4, 1) == [0]


def _first_offset(bootstrap: str, topic: str, start: int, reset: str) -> int:
    """The offset of the first message a consumer assigned at `start` gets."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reset-{reset}",
                  "auto.offset.reset": reset, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, start)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                return m.offset()  # type: ignore[return-value]
            if m is None and reset == "latest":
                produce(bootstrap, topic, 0, 1)  # latest: only what comes after the reset
        raise AssertionError("no message")
    finally:
        c.close()


def test_delete_records_moves_the_start_and_consumers_reset(
        broker: BrokerProcess, admin: AdminClient, kp: KafkaAdminClient) -> None:
    create(admin, "trim")
    produce(broker.bootstrap, "trim", 0, 10)
    tp = TopicPartition("trim", 0)
    done = admin.delete_records([TopicPartition("trim", 0, 5)])[tp].result(10)
    assert done.low_watermark == 5
    earliest = admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(10)
    assert earliest.offset == 5
    assert _first_offset(broker.bootstrap, "trim", 2, "earliest") == 5
    assert _first_offset(broker.bootstrap, "trim", 2, "latest") >= 10
    # beyond the high watermark: OFFSET_OUT_OF_RANGE; -1 means the high watermark
    with pytest.raises(KafkaException) as exc:
        admin.delete_records([TopicPartition("trim", 0, 1000)])[tp].result(10)
    assert exc.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE
    with pytest.raises(OffsetOutOfRangeError):
        kp.delete_records({KpTopicPartition("trim", 0): 1000})
    end = admin.list_offsets({tp: OffsetSpec.latest()})[tp].result(10).offset
    kp.delete_records({KpTopicPartition("trim", 0): -1})
    assert admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(10).offset == end


def test_describe_log_dirs_sizes_grow(broker: BrokerProcess, admin: AdminClient,
                                      kp: KafkaAdminClient) -> None:
    create(admin, "dirs", 2)

    def sizes() -> dict[int, int]:
        [entry] = kp.describe_log_dirs({"dirs": [0, 1]})
        [d] = entry["log_dirs"]
        assert d["error_code"] == 0 and d["log_dir"].endswith("/objects")
        [t] = [t for t in d["topics"] if t["name"] == "dirs"]
        return {p["partition_index"]: p["partition_size"] for p in t["partitions"]}

    assert sizes() == {0: 0, 1: 0}
    produce(broker.bootstrap, "dirs", 1, 50)
    grown = sizes()
    assert grown[0] == 0 and grown[1] > 50 * 3


def _epoch_end(broker: BrokerProcess, topic: str, epoch: int,
               current: int = -1) -> tuple[ErrorCode, int, int]:
    raw = RawClient("127.0.0.1", broker.port)
    try:
        resp = raw.request(ofle.OffsetForLeaderEpochRequest(topics=(ofle.OffsetForLeaderTopic(
            topic=TopicName(topic), partitions=(ofle.OffsetForLeaderPartition(
                partition=i32(0), current_leader_epoch=i32(current),
                leader_epoch=i32(epoch)),)),)))
    finally:
        raw.close()
    p = resp.topics[0].partitions[0]
    return p.error_code, p.leader_epoch, p.end_offset


def _leader_epoch(admin: AdminClient, topic: str) -> int:
    """The partition's current leader epoch, as ListOffsets reports it."""
    tp = TopicPartition(topic, 0)
    return admin.list_offsets({tp: OffsetSpec.latest()})[tp].result(10).leader_epoch  # type: ignore[no-any-return]


def test_offset_for_leader_epoch_across_a_restart(tmp_path: Path) -> None:
    b = BrokerProcess(tmp_path / "epochs").start()
    try:
        a = AdminClient({"bootstrap.servers": b.bootstrap})
        create(a, "epochs")
        produce(b.bootstrap, "epochs", 0, 5)
        first = _leader_epoch(a, "epochs")
        assert _epoch_end(b, "epochs", first) == (ErrorCode.none, first, 5)
        b.restart()  # a new leader epoch
        a = AdminClient({"bootstrap.servers": b.bootstrap})
        produce(b.bootstrap, "epochs", 0, 3)
        second = _leader_epoch(a, "epochs")
        assert second > first
        assert _epoch_end(b, "epochs", second) == (ErrorCode.none, second, 8)
        # the old epoch ends where the new one's data starts
        assert _epoch_end(b, "epochs", first) == (ErrorCode.none, first, 5)
        assert _epoch_end(b, "epochs", second + 1) == (ErrorCode.none, -1, -1)
        assert _epoch_end(b, "epochs", first, current=first)[0] == \
            ErrorCode.fenced_leader_epoch
        assert _epoch_end(b, "epochs", first, current=second + 1)[0] == \
            ErrorCode.unknown_leader_epoch
        assert _epoch_end(b, "nope", first)[0] == ErrorCode.unknown_topic_or_partition
    finally:
        b.stop()


def test_describe_producers_after_idempotent_produce(broker: BrokerProcess,
                                                     admin: AdminClient,
                                                     kp: KafkaAdminClient) -> None:
    create(admin, "idem")
    produce(broker.bootstrap, "idem", 0, 4, {"enable.idempotence": True})
    states = kp.describe_producers([KpTopicPartition("idem", 0)])
    [state] = states[KpTopicPartition("idem", 0)].active_producers
    assert state.producer_id >= 0 and state.producer_epoch >= 0
    assert state.last_sequence == 3
    assert state.current_transaction_start_offset == -1
    assert state.last_timestamp > 0


def test_elect_leaders_is_never_needed(broker: BrokerProcess, admin: AdminClient,
                                       kp: KafkaAdminClient) -> None:
    from confluent_kafka import ElectionType

    create(admin, "elect", 2)
    result = admin.elect_leaders(ElectionType.PREFERRED,
                                 [TopicPartition("elect", 0), TopicPartition("elect", 1)]
                                 ).result(10)
    assert len(result) == 2
    for err in result.values():
        assert err is not None and err.code() == KafkaError.ELECTION_NOT_NEEDED
    # kafka-python treats ELECTION_NOT_NEEDED as success
    kp.elect_leaders(0, {"elect": [0, 1]})
    assert admin.elect_leaders(ElectionType.PREFERRED, None).result(10) == {}
