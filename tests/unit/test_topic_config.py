"""The topic config model (names, defaults, synonyms, validation, describe sources) and
what the topic manager and partitions do with it: produce limits, LogAppendTime stamping,
DeleteRecords, CreatePartitions, config changes that survive a restart."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.partition import PartitionError, describe
from tidelog.partition.topic_config import (
    LONG_MAX,
    BrokerLayers,
    ConfigSource,
    InvalidConfig,
    ReadOnlyConfig,
    describe_topic,
    resolve,
    validate,
    validate_broker,
)
from tidelog.partition.topics import TOPICS, TopicError, TopicManager
from tidelog.protocol import records
from tidelog.stream.engine import EngineConfig, StreamEngine
from tidelog.stream.wal.memory_wal import MemoryWAL, MemoryWALStore

WEEK_MS = 7 * 24 * 3600 * 1000


# ---- the model ----------------------------------------------------------------------------


def test_kafka_defaults_without_any_broker_config() -> None:
    cfg = resolve({}, {})
    assert cfg.retention_ms == WEEK_MS
    assert cfg.retention_bytes == -1
    assert cfg.cleanup_policy == frozenset({"delete"})
    assert cfg.delete_retention_ms == 86_400_000
    assert cfg.min_compaction_lag_ms == 0
    assert cfg.max_compaction_lag_ms == LONG_MAX
    assert cfg.min_cleanable_dirty_ratio == 0.5
    assert cfg.segment_bytes == 1 << 30
    assert cfg.segment_ms == WEEK_MS
    assert cfg.max_message_bytes == 1048588
    assert cfg.message_timestamp_type == "CreateTime"
    assert cfg.file_delete_delay_ms == 60_000
    assert not cfg.checks_timestamps and not cfg.log_append_time


def test_broker_synonyms_in_priority_order_with_unit_conversion() -> None:
    assert resolve({}, {"log.retention.hours": "2"}).retention_ms == 2 * 3_600_000
    assert resolve({}, {"log.retention.hours": "2",
                        "log.retention.minutes": "3"}).retention_ms == 180_000
    assert resolve({}, {"log.retention.hours": "2", "log.retention.minutes": "3",
                        "log.retention.ms": "1234"}).retention_ms == 1234
    assert resolve({}, {"log.retention.hours": "-5"}).retention_ms == -1  # Kafka: forever
    assert resolve({}, {"log.roll.hours": "1"}).segment_ms == 3_600_000
    assert resolve({}, {"message.max.bytes": "777"}).max_message_bytes == 777
    assert resolve({}, {"log.cleanup.policy": "compact"}).cleanup_policy == {"compact"}
    assert resolve({}, {"log.cleaner.delete.retention.ms": "5"}).delete_retention_ms == 5
    assert resolve({}, {"log.cleaner.min.cleanable.ratio": "0.1"}).min_cleanable_dirty_ratio \
        == 0.1
    # the topic's override wins over every broker synonym
    assert resolve({"retention.ms": "99"}, {"log.retention.ms": "1"}).retention_ms == 99


def test_cleanup_policy_lists_and_deprecated_timestamp_difference() -> None:
    assert resolve({"cleanup.policy": "compact, delete"}, {}).cleanup_policy == {
        "compact", "delete"}
    cfg = resolve({"message.timestamp.difference.max.ms": "1000"}, {})
    assert cfg.message_timestamp_before_max_ms == cfg.message_timestamp_after_max_ms == 1000
    cfg = resolve({"message.timestamp.difference.max.ms": "1000",
                   "message.timestamp.after.max.ms": "5"}, {})
    assert (cfg.message_timestamp_before_max_ms, cfg.message_timestamp_after_max_ms) == (
        1000, 5)
    assert cfg.checks_timestamps
    assert not resolve({"message.timestamp.type": "LogAppendTime",
                        "message.timestamp.after.max.ms": "5"}, {}).checks_timestamps


@pytest.mark.parametrize(("configs", "message"), [
    ({"retention.msx": "1"}, "Unknown topic config name: retention.msx"),
    ({"retention.ms": "soon"}, "Not a number of type LONG"),
    ({"retention.ms": "-2"}, "at least -1"),
    ({"max.message.bytes": str(1 << 40)}, "Not a number of type INT"),
    ({"cleanup.policy": "compact,forever"}, "Valid values"),
    ({"cleanup.policy": ""}, "at least one"),
    ({"message.timestamp.type": "logappendtime"}, "one of"),
    ({"min.cleanable.dirty.ratio": "1.5"}, "between 0 and 1"),
    ({"unclean.leader.election.enable": "yes"}, "true or false"),
    ({"segment.bytes": "10"}, "at least"),
    ({"min.compaction.lag.ms": "10", "max.compaction.lag.ms": "5"}, "conflict"),
])
def test_invalid_topic_configs_say_why(configs: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        validate(configs, {})


def test_broker_values_are_checked_too() -> None:
    with pytest.raises(InvalidConfig, match="log.retention.hours"):
        resolve({}, {"log.retention.hours": "a week"})
    with pytest.raises(ReadOnlyConfig, match="dynamically"):
        validate_broker({"wal.uri": "file:///x"}, {"wal.uri": "file:///y"})
    # a name the broker lacks is a custom config, as in Kafka (plugins read them)
    validate_broker({"sasl.kerberos.min.time.before.relogin": "58000"}, {})
    with pytest.raises(ReadOnlyConfig, match="dynamically"):  # the broker's own setting
        validate_broker({"wal.uri": "file:///x"}, {"wal.uri": "file:///y", "custom": "1"},
                        static={"wal.uri"})
    validate_broker({"custom": "2"}, {"custom": "1"}, static={"wal.uri"})
    with pytest.raises(InvalidConfig, match="log.retention.ms"):
        validate_broker({"log.retention.ms": "-7"}, {})
    validate_broker({"log.retention.ms": "1000", "log.cleanup.policy": "compact"}, {})


def test_describe_reports_value_source_and_synonyms() -> None:
    layers = BrokerLayers(dynamic_node={"log.retention.minutes": "10"}, dynamic_default={},
                          static={"log.cleanup.policy": "compact"},
                          defaults={"log.retention.hours": "168",
                                    "log.cleanup.policy": "delete",
                                    "compression.type": "producer"})
    got = {d.name: d for d in describe_topic({"segment.ms": "1000"}, layers)}
    assert got["segment.ms"].value == "1000"
    assert got["segment.ms"].source == ConfigSource.TOPIC_CONFIG
    assert got["retention.ms"].value == "600000"
    assert got["retention.ms"].source == ConfigSource.DYNAMIC_BROKER_CONFIG
    assert got["retention.ms"].synonyms == (
        ("log.retention.minutes", "10", ConfigSource.DYNAMIC_BROKER_CONFIG),
        ("log.retention.hours", "168", ConfigSource.DEFAULT_CONFIG))
    assert got["cleanup.policy"].value == "compact"
    assert got["cleanup.policy"].source == ConfigSource.STATIC_BROKER_CONFIG
    # a broker key with the topic config's own name is not a topic override
    assert got["compression.type"].source == ConfigSource.DEFAULT_CONFIG
    assert got["max.message.bytes"].value == "1048588"
    assert got["max.message.bytes"].source == ConfigSource.DEFAULT_CONFIG
    assert all(d.doc for d in got.values())


def test_log_append_time_stamps_batches_and_keeps_them_valid() -> None:
    batch = records.build_batch([(b"k", b"v"), (None, b"w")], timestamp=1_000)
    two = bytearray(batch + batch)
    infos = records.validate(two)
    records.set_log_append_time(two, infos, 1_700_000_000_123)
    for b in records.validate(two):  # CRCs hold after the rewrite
        assert b.attributes & records.TIMESTAMP_TYPE_BIT
        assert b.max_timestamp == 1_700_000_000_123
        assert b.base_timestamp == 1_000
        assert b.record_count == 2


# ---- the topic manager and partitions -----------------------------------------------------


class Broker:
    """A storage engine and topic manager over memory, restartable from its metadata."""

    def __init__(self, tmp: Path, settings: dict[str, str]) -> None:
        self.tmp, self.settings = tmp, settings
        self.wal_store = MemoryWALStore()
        self.objects = open_object_store("memory://")
        self.epoch = 0
        self.engine: StreamEngine | None = None
        self.running = False

    async def start(self) -> TopicManager:
        self.epoch += 1
        self.meta = EmbeddedMetadataStore(str(self.tmp / "meta.db"))
        self.engine = StreamEngine(MemoryWAL(capacity=16 << 20, store=self.wal_store),
                                   self.objects, self.meta, EngineConfig(), describe=describe)
        await self.engine.start(self.epoch)
        topics = TopicManager(self.engine, self.meta, broker_configs=self.settings)
        await topics.load()
        self.running = True
        return topics

    async def stop(self) -> None:
        assert self.engine is not None
        self.running = False
        await self.engine.close(flush=True)
        await self.meta.close()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    b = Broker(tmp_path, {"node.id": "0", "message.max.bytes": "4096", "wal.capacity": "1"})
    yield b
    if b.running:
        await b.stop()


def _batch(n: int, value: bytes = b"v", ts: int | None = None) -> bytes:
    return records.build_batch([(None, value)] * n,
                               timestamp=int(time.time() * 1000) if ts is None else ts)


async def test_create_validates_and_applies_configs(broker: Broker) -> None:
    topics = await broker.start()
    with pytest.raises(TopicError) as bad:
        await topics.create("t", 1, {"retention.ms": "x"})
    assert bad.value.code == "invalid_config"
    assert topics.get("t") is None
    checked = await topics.create("v", 1, {"cleanup.policy": "compact"}, validate_only=True)
    assert checked.resolved.cleanup_policy == {"compact"} and topics.get("v") is None
    t = await topics.create("t", 2, {"max.message.bytes": "200"})
    assert topics.topic_config(t).max_message_bytes == 200
    assert all(p.config.max_message_bytes == 200 for p in t.owned.values())


async def test_produce_limits_follow_the_topic_config(broker: Broker) -> None:
    topics = await broker.start()
    t = await topics.create("t", 1)
    p = t.owned[0]
    with pytest.raises(PartitionError) as big:  # broker default: message.max.bytes 4096
        await p.append(_batch(1, b"x" * 5000))
    assert big.value.code == "message_too_large"
    await p.append(_batch(1, b"x" * 3000))
    await topics.alter_configs("t", {"max.message.bytes": "100"})
    with pytest.raises(PartitionError):
        await p.append(_batch(1, b"x" * 200))
    # each batch counts on its own: two small batches in one produce pass
    await p.append(_batch(1, b"y" * 10) + _batch(1, b"y" * 10))
    await topics.alter_configs("t", {"message.timestamp.before.max.ms": "60000"})
    with pytest.raises(PartitionError) as old:
        await p.append(_batch(1, ts=int(time.time() * 1000) - 3_600_000))
    assert old.value.code == "invalid_timestamp"
    await p.append(_batch(1))
    assert p.high_watermark == 4


async def test_log_append_time_topic(broker: Broker) -> None:
    topics = await broker.start()
    t = await topics.create("t", 1, {"message.timestamp.type": "LogAppendTime"})
    p = t.owned[0]
    before = int(time.time() * 1000)
    res = await p.append(_batch(3, ts=1_000))
    after = int(time.time() * 1000)
    assert before <= res.log_append_time <= after
    [buf] = await p.read(0, 1 << 20)
    [b] = records.validate(buf)
    assert b.attributes & records.TIMESTAMP_TYPE_BIT
    assert b.max_timestamp == res.log_append_time
    assert await p.offset_for_timestamp(before) == (0, res.log_append_time)
    plain = await (await topics.create("c", 1)).owned[0].append(_batch(1, ts=1_000))
    assert plain.log_append_time == -1


async def test_delete_records(broker: Broker) -> None:
    topics = await broker.start()
    t = await topics.create("t", 1)
    p = t.owned[0]
    for _ in range(5):
        await p.append(_batch(2))
    assert await p.delete_records(3) == 3
    assert p.log_start_offset == 3
    assert await p.delete_records(1) == 3  # never moves back
    with pytest.raises(PartitionError) as beyond:
        await p.delete_records(11)
    assert beyond.value.code == "offset_out_of_range"
    assert await p.delete_records(-1) == 10
    compacted = (await topics.create("c", 1, {"cleanup.policy": "compact"})).owned[0]
    with pytest.raises(PartitionError) as policy:
        await compacted.delete_records(0)
    assert policy.value.code == "policy_violation"


async def test_add_partitions_and_alter_configs_survive_restart(broker: Broker) -> None:
    topics = await broker.start()
    await topics.create("t", 2, {"retention.ms": "1000"})
    for total, code in ((2, "invalid_partitions"), (1, "invalid_partitions")):
        with pytest.raises(TopicError) as exc:
            await topics.add_partitions("t", total)
        assert exc.value.code == code
    with pytest.raises(TopicError) as missing:
        await topics.add_partitions("nope", 3)
    assert missing.value.code == "unknown_topic_or_partition"
    await topics.add_partitions("t", 5, validate_only=True)
    assert topics.get("t").count == 2  # type: ignore[union-attr]
    await topics.add_partitions("t", 4)
    new = topics.partition("t", 3)
    assert new is not None and new.config.retention_ms == 1000
    assert (await new.append(_batch(1))).base_offset == 0
    with pytest.raises(TopicError) as bad:
        await topics.alter_configs("t", {"retention.ms": "1000", "segment.ms": "0"})
    assert bad.value.code == "invalid_config"
    await topics.alter_configs("t", {"cleanup.policy": "compact"}, validate_only=True)
    await topics.alter_configs("t", {"retention.bytes": "1024"})
    await topics.alter_broker_configs("0", {"log.retention.minutes": "5"})
    with pytest.raises(TopicError) as fixed:
        await topics.alter_broker_configs("", {"wal.capacity": "1"})
    assert fixed.value.code == "invalid_request"
    with pytest.raises(TopicError) as other:
        await topics.alter_broker_configs("7", {"log.retention.ms": "1"})
    assert other.value.code == "invalid_request"
    await broker.stop()

    topics = await broker.start()
    t: Any = topics.get("t")
    assert t.count == 4
    assert t.configs == {"retention.bytes": "1024"}
    cfg = topics.topic_config(t)
    assert (cfg.retention_bytes, cfg.retention_ms) == (1024, 300_000)  # broker's dynamic
    assert topics.partition("t", 3).high_watermark == 1  # type: ignore[union-attr]


async def test_streams_of_a_create_or_delete_cut_short_are_deleted_on_load(
        broker: Broker) -> None:
    """kill -9 between a topic's streams and its record (create), or between its record
    and its streams (delete): the next load deletes the streams no topic names, and their
    objects become garbage; the topics that exist keep their data."""
    topics = await broker.start()
    await topics.create("kept", 1)
    await topics.create("doomed", 2)
    for name in ("kept", "doomed"):
        await topics.partition(name, 0).append(_batch(3))  # type: ignore[union-attr]
    assert broker.engine is not None
    orphan = await broker.engine.create_stream()  # a create cut short before its record
    doomed = [p.stream.stream_id for p in topics.get("doomed").owned.values()]  # type: ignore[union-attr]
    await topics.meta.delete(TOPICS + "doomed")  # a delete cut short after its record
    await broker.stop()

    topics = await broker.start()
    assert broker.engine is not None
    assert set(topics.topics) == {"kept"}
    kept = topics.partition("kept", 0)
    assert kept is not None and set(broker.engine.streams) == {kept.stream.stream_id}
    assert orphan.stream_id not in broker.engine.streams
    assert (await kept.stream.fetch(0, 1 << 20))[0]  # still readable
    await broker.engine.upload()
    await broker.engine._collect_garbage()
    for sid in (orphan.stream_id, *doomed):
        assert not broker.engine.index.blocks(sid)
    await broker.stop()
    topics = await broker.start()  # and it stays that way
    assert set(topics.topics) == {"kept"} and len(broker.engine.streams) == 1


def test_the_zone_switches_may_change_at_run_time() -> None:
    from tidelog.config import DEFAULTS
    from tidelog.partition.topic_config import InvalidConfig, validate_broker

    validate_broker({"zone.routing.enable": "true", "zone.fetch.enable": "false"},
                    DEFAULTS, DEFAULTS)
    with pytest.raises(InvalidConfig, match="either true or false"):
        validate_broker({"zone.routing.enable": "maybe"}, DEFAULTS, DEFAULTS)
    with pytest.raises(InvalidConfig, match="dynamically"):
        validate_broker({"wal.uri": "file:///elsewhere"}, DEFAULTS, DEFAULTS)
