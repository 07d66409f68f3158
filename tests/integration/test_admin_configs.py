"""Topic and broker configs through real admin clients (confluent-kafka, kafka-python):
create with configs, describe with sources and synonyms, alter (legacy, incremental,
validate_only), INVALID_CONFIG, dynamic broker defaults; and the produce-side configs:
LogAppendTime, max.message.bytes, timestamp bounds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    ResourceType,
)
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import NewTopic as KpNewTopic

from tests.integration.broker import BrokerProcess

STATIC = {"log.retention.hours": "24", "log.cleaner.delete.retention.ms": "1000"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(Path(tmp_path_factory.mktemp("admin-configs")), STATIC).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def admin(broker: BrokerProcess) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def topic_configs(admin: AdminClient, name: str) -> dict[str, Any]:
    res = ConfigResource(ResourceType.TOPIC, name)
    return admin.describe_configs([res])[res].result(10)  # type: ignore[no-any-return]


def broker_configs(admin: AdminClient, name: str = "0") -> dict[str, Any]:
    res = ConfigResource(ResourceType.BROKER, name)
    return admin.describe_configs([res])[res].result(10)  # type: ignore[no-any-return]


def error_of(future: Any) -> KafkaError:
    with pytest.raises(KafkaException) as exc:
        future.result(10)
    return exc.value.args[0]  # type: ignore[no-any-return]


def test_create_with_configs_and_describe_sources(admin: AdminClient) -> None:
    fs = admin.create_topics([NewTopic("cfg-a", 2, 1, config={
        "cleanup.policy": "compact,delete", "retention.bytes": "1048576"})])
    fs["cfg-a"].result(10)
    got = topic_configs(admin, "cfg-a")
    assert got["cleanup.policy"].value == "compact,delete"
    assert got["cleanup.policy"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert got["retention.bytes"].value == "1048576"
    # not set on the topic: the broker's static log.retention.hours=24, as milliseconds
    assert got["retention.ms"].value == str(24 * 3_600_000)
    assert got["retention.ms"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    # (confluent keys synonyms by name: the static and default log.retention.hours merge)
    assert "log.retention.hours" in got["retention.ms"].synonyms
    assert got["delete.retention.ms"].value == "1000"
    # plain Kafka defaults, and this broker's own default for message.max.bytes
    assert got["min.cleanable.dirty.ratio"].value == "0.5"
    assert got["min.cleanable.dirty.ratio"].source == ConfigSource.DEFAULT_CONFIG.value
    assert got["message.timestamp.type"].value == "CreateTime"
    assert got["max.message.bytes"].value == str(8 << 20)
    assert not got["retention.ms"].is_read_only


def test_invalid_configs_are_refused_with_a_message(admin: AdminClient) -> None:
    fs = admin.create_topics([
        NewTopic("cfg-bad1", 1, 1, config={"retention.ms": "tomorrow"}),
        NewTopic("cfg-bad2", 1, 1, config={"retention.millis": "1"}),
        NewTopic("cfg-bad3", 1, 1, config={"cleanup.policy": "shred"})])
    for name, words in (("cfg-bad1", "retention.ms"), ("cfg-bad2", "Unknown topic config"),
                        ("cfg-bad3", "cleanup.policy")):
        err = error_of(fs[name])
        assert err.code() == KafkaError.INVALID_CONFIG, err
        assert words in err.str()
    assert "cfg-bad1" not in admin.list_topics(timeout=10).topics
    # validate_only checks a good topic without creating it
    ok = admin.create_topics([NewTopic("cfg-dry", 1, 1, config={"retention.ms": "5"})],
                             validate_only=True)
    ok["cfg-dry"].result(10)
    assert "cfg-dry" not in admin.list_topics(timeout=10).topics


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_incremental_and_legacy_alter(admin: AdminClient) -> None:
    admin.create_topics([NewTopic("cfg-b", 1, 1)])["cfg-b"].result(10)

    def incremental(ops: list[ConfigEntry], validate_only: bool = False) -> Any:
        res = ConfigResource(ResourceType.TOPIC, "cfg-b", incremental_configs=ops)
        return admin.incremental_alter_configs([res], validate_only=validate_only)[res]

    set_ = AlterConfigOpType.SET
    incremental([ConfigEntry("retention.ms", "60000", incremental_operation=set_)],
                validate_only=True).result(10)
    assert topic_configs(admin, "cfg-b")["retention.ms"].value == str(24 * 3_600_000)
    incremental([ConfigEntry("retention.ms", "60000", incremental_operation=set_),
                 ConfigEntry("cleanup.policy", "compact",
                             incremental_operation=AlterConfigOpType.APPEND)]).result(10)
    got = topic_configs(admin, "cfg-b")
    assert got["retention.ms"].value == "60000"
    assert got["cleanup.policy"].value == "delete,compact"
    incremental([ConfigEntry("cleanup.policy", "delete",
                             incremental_operation=AlterConfigOpType.SUBTRACT)]).result(10)
    assert topic_configs(admin, "cfg-b")["cleanup.policy"].value == "compact"
    err = error_of(incremental([ConfigEntry("retention.ms", "-9", incremental_operation=set_)]))
    assert err.code() == KafkaError.INVALID_CONFIG and "retention.ms" in err.str()
    err = error_of(incremental([ConfigEntry("retention.ms", "1",
                                            incremental_operation=AlterConfigOpType.APPEND)]))
    assert err.code() == KafkaError.INVALID_CONFIG
    incremental([ConfigEntry("retention.ms", None,
                             incremental_operation=AlterConfigOpType.DELETE)]).result(10)
    assert topic_configs(admin, "cfg-b")["retention.ms"].source == \
        ConfigSource.STATIC_BROKER_CONFIG.value

    # legacy AlterConfigs replaces the whole set of overrides
    res = ConfigResource(ResourceType.TOPIC, "cfg-b", set_config={"segment.ms": "3600000"})
    admin.alter_configs([res])[res].result(10)
    got = topic_configs(admin, "cfg-b")
    assert got["segment.ms"].value == "3600000"
    assert got["cleanup.policy"].value == "delete"  # the compact override is gone
    missing = ConfigResource(ResourceType.TOPIC, "cfg-nope", set_config={"retention.ms": "1"})
    err = error_of(admin.alter_configs([missing])[missing])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_broker_configs_describe_and_dynamic_defaults(admin: AdminClient) -> None:
    got = broker_configs(admin)
    assert got["log.retention.hours"].value == "24"
    assert got["log.retention.hours"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert got["num.partitions"].source == ConfigSource.DEFAULT_CONFIG.value
    assert got["wal.uri"].is_read_only and not got["log.retention.ms"].is_read_only
    assert got["log.retention.ms"].value is None  # Kafka's: unset unless configured
    assert "log.retention.check.interval.ms" in got

    admin.create_topics([NewTopic("cfg-c", 1, 1)])["cfg-c"].result(10)
    res = ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
        ConfigEntry("log.retention.ms", "120000",
                    incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(10)
    try:
        assert broker_configs(admin)["log.retention.ms"].source == \
            ConfigSource.DYNAMIC_BROKER_CONFIG.value
        t = topic_configs(admin, "cfg-c")["retention.ms"]
        assert (t.value, t.source) == ("120000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
        fixed = ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
            ConfigEntry("wal.capacity", "1", incremental_operation=AlterConfigOpType.SET)])
        err = error_of(admin.incremental_alter_configs([fixed])[fixed])
        assert err.code() == KafkaError.INVALID_REQUEST and "dynamically" in err.str()
    finally:
        clear = ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
            ConfigEntry("log.retention.ms", None,
                        incremental_operation=AlterConfigOpType.DELETE)])
        admin.incremental_alter_configs([clear])[clear].result(10)
    assert topic_configs(admin, "cfg-c")["retention.ms"].value == str(24 * 3_600_000)


def test_kafka_python_admin_round_trip(broker: BrokerProcess) -> None:
    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        kp.create_topics([KpNewTopic("cfg-kp", 1, 1, topic_configs={"retention.ms": "1000"})])
        described = kp.describe_configs([KpConfigResource("TOPIC", "cfg-kp")],
                                        include_synonyms=True)
        modified = described["topic"]["cfg-kp"]
        assert modified["retention.ms"]["value"] == "1000"
        assert modified["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        assert "cleanup.policy" not in modified  # a default: not "modified"
        kp.alter_configs([KpConfigResource("TOPIC", "cfg-kp", {"retention.bytes": "4096"})])
        everything = kp.describe_configs([KpConfigResource("TOPIC", "cfg-kp")],
                                         config_filter="all")["topic"]["cfg-kp"]
        assert everything["retention.bytes"]["value"] == "4096"
        assert everything["cleanup.policy"]["config_type"] == "LIST"
        result = kp.alter_configs([KpConfigResource("TOPIC", "cfg-kp",
                                                    {"retention.bytes": "lots"})],
                                  raise_on_unknown=False)
        assert "InvalidConfigurationError" in result["topic"]["cfg-kp"]
        assert "retention.bytes" in result["topic"]["cfg-kp"]
    finally:
        kp.close()


# ---- configs the produce path enforces ----------------------------------------------------


def _deliver(bootstrap: str, topic: str, values: list[bytes],
             timestamp: int = 0) -> list[Message]:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0,
                  "message.max.bytes": 10 << 20, "retries": 0})
    out: list[Message] = []
    for v in values:
        p.produce(topic, v, partition=0, timestamp=timestamp,
                  on_delivery=lambda err, msg: out.append(msg))
    p.flush(30)
    return out


def _code(msg: Message) -> int | None:
    err = msg.error()
    return None if err is None else err.code()


def test_log_append_time_topic(broker: BrokerProcess, admin: AdminClient) -> None:
    admin.create_topics([NewTopic("cfg-lat", 1, 1, config={
        "message.timestamp.type": "LogAppendTime"})])["cfg-lat"].result(10)
    before = int(time.time() * 1000)
    delivered = _deliver(broker.bootstrap, "cfg-lat", [b"a", b"b", b"c"], timestamp=1_000)
    after = int(time.time() * 1000)
    for m in delivered:
        assert m.error() is None
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME and before <= ts <= after
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "cfg-lat",
                  "auto.offset.reset": "earliest"})
    c.subscribe(["cfg-lat"])
    got: list[Message] = []
    deadline = time.monotonic() + 30
    while len(got) < 3 and time.monotonic() < deadline:
        polled = c.poll(1)
        if polled is not None and polled.error() is None:
            got.append(polled)
    c.close()
    assert [m.value() for m in got] == [b"a", b"b", b"c"]
    for m in got:
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME and before <= ts <= after


def test_max_message_bytes_and_timestamp_bounds(broker: BrokerProcess,
                                                admin: AdminClient) -> None:
    admin.create_topics([NewTopic("cfg-small", 1, 1, config={
        "max.message.bytes": "2000", "message.timestamp.before.max.ms": "3600000"})]
    )["cfg-small"].result(10)
    [big] = _deliver(broker.bootstrap, "cfg-small", [b"x" * 5000])
    assert _code(big) == KafkaError.MSG_SIZE_TOO_LARGE
    [old] = _deliver(broker.bootstrap, "cfg-small", [b"x"], timestamp=1_000_000)
    assert _code(old) == KafkaError.INVALID_TIMESTAMP
    [ok] = _deliver(broker.bootstrap, "cfg-small", [b"y" * 1000])
    assert ok.error() is None and ok.offset() == 0
