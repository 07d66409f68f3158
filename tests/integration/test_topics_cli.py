"""`tidelog topics` and `tidelog configs` against a real broker, checked through
confluent-kafka's admin client: what the commands print and what they change."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from tests.integration.broker import BrokerProcess
from tidelog.cli import main
from tidelog.tools.topics import parse_config_pairs


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(Path(tmp_path_factory.mktemp("topics-cli"))).start()
    yield b
    b.stop()


def run(capsys: pytest.CaptureFixture[str], broker: BrokerProcess,
        *args: str) -> tuple[int, str, str]:
    code = main([*args, "--bootstrap-server", broker.bootstrap])
    out, err = capsys.readouterr()
    return code, out, err


def topic_config(broker: BrokerProcess, topic: str, name: str) -> tuple[str, int]:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ResourceType.TOPIC, topic)
    entry = admin.describe_configs([res])[res].result(10)[name]
    return entry.value, entry.source


def test_parse_config_pairs_like_kafka_configs() -> None:
    assert parse_config_pairs("retention.ms=1000,cleanup.policy=[compact,delete]") == {
        "retention.ms": "1000", "cleanup.policy": "compact,delete"}
    assert parse_config_pairs("") == {}
    with pytest.raises(ValueError):
        parse_config_pairs("retention.ms")


def test_topics_lifecycle(capsys: pytest.CaptureFixture[str], broker: BrokerProcess) -> None:
    code, out, _ = run(capsys, broker, "topics", "create", "orders", "--partitions", "2",
                       "--config", "retention.ms=60000", "--config", "cleanup.policy=compact")
    assert (code, out.strip()) == (0, "Created topic orders.")
    assert topic_config(broker, "orders", "retention.ms") == ("60000", 1)

    code, out, _ = run(capsys, broker, "topics", "list")
    assert code == 0 and "orders" in out.split() and "__consumer_offsets" in out.split()
    code, out, _ = run(capsys, broker, "topics", "list", "--exclude-internal")
    assert out.split() == ["orders"]

    code, out, _ = run(capsys, broker, "topics", "describe", "orders")
    lines = out.splitlines()
    assert lines[0].startswith("Topic: orders\tTopicId: ")
    assert "PartitionCount: 2\tReplicationFactor: 1\t" in lines[0]
    assert lines[0].endswith("Configs: cleanup.policy=compact,retention.ms=60000")
    assert lines[1] == "\tTopic: orders\tPartition: 0\tLeader: 0\tReplicas: 0\tIsr: 0"

    code, out, _ = run(capsys, broker, "topics", "alter", "orders", "--partitions", "4")
    assert code == 0
    code, out, _ = run(capsys, broker, "topics", "describe", "orders")
    assert "PartitionCount: 4" in out and "Partition: 3" in out
    code, _, err = run(capsys, broker, "topics", "alter", "orders", "--partitions", "3")
    assert code == 1 and "INVALID_PARTITIONS" in err

    code, _, err = run(capsys, broker, "topics", "create", "bad", "--config", "retention.ms=x")
    assert code == 1 and "INVALID_CONFIG" in err and "retention.ms" in err
    code, _, err = run(capsys, broker, "topics", "create", "orders")
    assert code == 1 and "TOPIC_ALREADY_EXISTS" in err

    code, out, _ = run(capsys, broker, "topics", "delete", "orders")
    assert (code, out.strip()) == (0, "Deleted topic orders.")
    code, out, _ = run(capsys, broker, "topics", "list")
    assert "orders" not in out.split()


def test_configs_describe_and_alter(capsys: pytest.CaptureFixture[str],
                                   broker: BrokerProcess) -> None:
    assert run(capsys, broker, "topics", "create", "cfg", "--partitions", "1")[0] == 0
    code, out, _ = run(capsys, broker, "configs", "alter", "--topic", "cfg", "--add-config",
                       "retention.ms=5000,cleanup.policy=[compact,delete]")
    assert (code, out.strip()) == (0, "Completed updating config for topic cfg.")
    assert topic_config(broker, "cfg", "cleanup.policy") == ("compact,delete", 1)

    code, out, _ = run(capsys, broker, "configs", "describe", "--topic", "cfg")
    lines = out.splitlines()
    assert lines[0] == "Dynamic configs for topic cfg are:"
    assert ("  retention.ms=5000 sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:"
            "retention.ms=5000, DEFAULT_CONFIG:log.retention.hours=168}") in lines
    assert len(lines) == 3  # only the two overrides
    code, out, _ = run(capsys, broker, "configs", "describe", "--topic", "cfg", "--all")
    assert out.startswith("All configs for topic cfg are:")
    assert "  min.cleanable.dirty.ratio=0.5 sensitive=false" in out

    code, out, _ = run(capsys, broker, "configs", "alter", "--topic", "cfg",
                       "--delete-config", "retention.ms")
    assert code == 0 and topic_config(broker, "cfg", "retention.ms")[1] == 5
    code, _, err = run(capsys, broker, "configs", "alter", "--topic", "cfg", "--add-config",
                       "retention.ms=-5")
    assert code == 1 and "INVALID_CONFIG" in err
    code, _, err = run(capsys, broker, "configs", "alter", "--topic", "cfg", "--add-config",
                       "retention.ms=1", "--validate-only")
    assert code == 0 and topic_config(broker, "cfg", "retention.ms")[1] == 5

    # broker configs: the dynamic topic defaults change, static ones are refused
    code, out, _ = run(capsys, broker, "configs", "alter", "--broker", "0", "--add-config",
                       "log.retention.ms=7000")
    assert code == 0
    assert topic_config(broker, "cfg", "retention.ms") == ("7000", 2)
    code, out, _ = run(capsys, broker, "configs", "describe", "--broker", "0")
    assert "  log.retention.ms=7000 sensitive=false synonyms={DYNAMIC_BROKER_CONFIG:" \
        "log.retention.ms=7000, DEFAULT_CONFIG:log.retention.hours=168}" in out.splitlines()
    code, out, _ = run(capsys, broker, "configs", "describe", "--broker", "0", "--all")
    assert "  wal.capacity=" in out
    code, _, err = run(capsys, broker, "configs", "alter", "--broker", "0", "--add-config",
                       "wal.capacity=1")
    assert code == 1 and "INVALID_REQUEST" in err
    code, out, _ = run(capsys, broker, "configs", "alter", "--broker-defaults",
                       "--add-config", "log.cleanup.policy=compact")
    assert code == 0
    code, out, _ = run(capsys, broker, "configs", "describe", "--broker-defaults")
    assert "  log.cleanup.policy=compact sensitive=false" in out
    assert run(capsys, broker, "configs", "alter", "--broker", "0", "--delete-config",
               "log.retention.ms")[0] == 0
    assert topic_config(broker, "cfg", "retention.ms") == (str(168 * 3_600_000), 5)


def test_unreachable_broker_and_entry_point(broker: BrokerProcess) -> None:
    done = subprocess.run([sys.executable, "-m", "tidelog.cli", "topics", "list",
                           "--bootstrap-server", "127.0.0.1:1"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "cannot reach" in done.stderr
    done = subprocess.run([sys.executable, "-m", "tidelog.cli", "topics", "list",
                           "--bootstrap-server", broker.bootstrap], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "__consumer_offsets" in done.stdout
