"""Retention, log compaction and topic deletion through confluent-kafka: offsets move,
consumers reset per their policy, compacted reads hold the latest value per key, and the
object store shrinks."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from tests.integration.broker import BrokerProcess

FAST_CLEANUP = {
    "upload.interval.ms": "200",
    "log.retention.check.interval.ms": "200",
    "log.cleaner.backoff.ms": "200",
    "log.segment.delete.delay.ms": "0",
    "object.compaction.interval.ms": "0",
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path / "b", FAST_CLEANUP).start()
    yield b
    b.stop()


def objects(broker: BrokerProcess) -> list[Path]:
    return [p for p in (broker.data_dir / "objects").rglob("*.obj")]


def create(broker: BrokerProcess, name: str, configs: dict[str, str], parts: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(name, parts, 1, config=configs)])[name].result(30)


def produce(broker: BrokerProcess, topic: str, items: list[tuple[bytes | None, bytes | None]],
            timestamp: int = 0, **conf: object) -> None:
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, **conf})
    for key, value in items:
        while True:
            try:
                p.produce(topic, key=key, value=value, partition=0, timestamp=timestamp)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0


def wait_for(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def watermarks(broker: BrokerProcess, topic: str) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wm"})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), 10)
        return low, high
    finally:
        c.close()


def read_from(broker: BrokerProcess, topic: str, offset: int, reset: str,
              want: int, timeout: float = 30.0) -> list[tuple[int, bytes | None, bytes | None]]:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"g-{reset}",
                  "enable.auto.commit": False, "auto.offset.reset": reset})
    c.assign([TopicPartition(topic, 0, offset)])
    out: list[tuple[int, bytes | None, bytes | None]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is None:
                    out.append((m.offset(), m.key(), m.value()))
                else:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
    finally:
        c.close()
    return out


def test_time_retention_moves_log_start_and_deletes_objects(broker: BrokerProcess) -> None:
    create(broker, "old", {"retention.ms": "-1"})
    hour_ago = int(time.time() * 1000) - 3_600_000
    for i in range(5):  # five uploads, so five objects
        produce(broker, "old", [(None, b"stale-%d" % i)] * 20, timestamp=hour_ago)
        wait_for("an upload", lambda n=i: len(objects(broker)) > n)
    assert watermarks(broker, "old") == (0, 100)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    change = ConfigResource("topic", "old", incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    for f in admin.incremental_alter_configs([change]).values():
        f.result(30)
    wait_for("retention", lambda: watermarks(broker, "old")[0] == 100)
    wait_for("object deletion", lambda: objects(broker) == [])

    produce(broker, "old", [(None, b"fresh-%d" % i) for i in range(3)])
    # positioned below the log start: OFFSET_OUT_OF_RANGE, then each client's reset policy
    earliest = read_from(broker, "old", 0, "earliest", 3)
    assert [(o, v) for o, _k, v in earliest] == [(100 + i, b"fresh-%d" % i) for i in range(3)]
    latest = read_from(broker, "old", 0, "latest", 1, timeout=3)
    assert latest == []  # reset to the end: nothing new arrived
    with pytest.raises(AssertionError, match="Offset out of range|OFFSET_OUT_OF_RANGE"):
        read_from(broker, "old", 0, "error", 1, timeout=10)


def test_size_retention_keeps_the_partition_under_its_bound(broker: BrokerProcess) -> None:
    create(broker, "sized", {"retention.bytes": str(20_000), "retention.ms": "-1"})
    for _ in range(10):  # ~10 KB per upload
        produce(broker, "sized", [(None, b"x" * 1000)] * 10)
        time.sleep(0.25)
    wait_for("size retention", lambda: watermarks(broker, "sized")[0] >= 60)
    low, high = watermarks(broker, "sized")
    assert high == 100 and 60 <= low < 100
    got = read_from(broker, "sized", low, "earliest", high - low)
    assert [o for o, _k, _v in got] == list(range(low, high))
    # the objects below the new log start leave the store: each object holds whole
    # 10-record batches, so no more than one per 10 records kept remains
    kept = -(-(high - low) // 10)
    wait_for("object deletion", lambda: len(objects(broker)) <= kept)
    # positioned below the log start: OFFSET_OUT_OF_RANGE, then each client's reset policy
    earliest = read_from(broker, "sized", 0, "earliest", 1)
    assert earliest[0][0] == low
    with pytest.raises(AssertionError, match="Offset out of range|OFFSET_OUT_OF_RANGE"):
        read_from(broker, "sized", 0, "error", 1, timeout=10)


def test_compaction_keeps_the_latest_value_of_900_keys(broker: BrokerProcess) -> None:
    create(broker, "changelog", {"cleanup.policy": "compact", "delete.retention.ms": "1000",
                                 "min.cleanable.dirty.ratio": "0.01"})
    rng = random.Random(5)
    latest: dict[bytes, bytes | None] = {}
    items: list[tuple[bytes | None, bytes | None]] = []
    for i in range(100_000):
        key = b"key-%04d" % rng.randrange(1000)
        value = b"value-%06d" % i
        items.append((key, value))
        latest[key] = value
    tombstoned = sorted(latest)[:100]
    items += [(k, None) for k in tombstoned]
    for k in tombstoned:
        latest[k] = None
    produce(broker, "changelog", items, **{"compression.type": "lz4",
                                           "batch.num.messages": 5000})
    expected = {k: v for k, v in latest.items() if v is not None}
    assert len(expected) == 900

    def compacted() -> bool:
        low, high = watermarks(broker, "changelog")
        got = read_from(broker, "changelog", 0, "earliest", 10**9, timeout=3)
        return len(got) == 900
    wait_for("compaction and tombstone expiry", compacted, timeout=120)
    got = read_from(broker, "changelog", 0, "earliest", 900)
    assert {k: v for _o, k, v in got} == expected
    assert [o for o, _k, _v in got] == sorted(o for o, _k, _v in got)  # offset order
    assert watermarks(broker, "changelog")[1] == 100_100  # offsets kept, gaps allowed


def test_delete_topics_deletes_its_data(broker: BrokerProcess) -> None:
    create(broker, "doomed", {})
    produce(broker, "doomed", [(None, b"x" * 100)] * 50)
    wait_for("an upload", lambda: len(objects(broker)) > 0)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.delete_topics(["doomed"])["doomed"].result(30)
    wait_for("object deletion", lambda: objects(broker) == [])


def test_compacted_topic_refuses_records_without_a_key(broker: BrokerProcess) -> None:
    create(broker, "keyed", {"cleanup.policy": "compact"})
    outcomes: list[tuple[bytes | None, KafkaError | None]] = []
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0, "retries": 0})
    for key in (b"k1", None, b"k2"):
        p.produce("keyed", key=key, value=b"v", partition=0,
                  on_delivery=lambda err, msg: outcomes.append((msg.key(), err)))
        p.flush(30)
    assert [(k, e.code() if e else None) for k, e in outcomes] == [
        (b"k1", None), (None, KafkaError.INVALID_RECORD), (b"k2", None)]
    got = read_from(broker, "keyed", 0, "earliest", 2)
    assert [k for _o, k, _v in got] == [b"k1", b"k2"]
