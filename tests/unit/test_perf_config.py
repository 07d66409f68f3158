"""`tidelog perf` flags: every flag, its short form, default and unit, and the checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidelog.tools.perf import clientconf, topics
from tidelog.tools.perf.config import (
    MAX_CONSUME_RATE,
    PerfConfigError,
    load_properties,
    parse_args,
    random_topic_prefix,
)


def test_defaults_are_the_originals() -> None:
    cfg = parse_args([])
    assert cfg.bootstrap_server == "localhost:9092"
    assert cfg.common_configs == {} and cfg.topic_configs == {}
    assert cfg.producer_configs == {} and cfg.consumer_configs == {}
    assert cfg.reset is False and cfg.reuse_topics is False
    assert cfg.topics == 1 and cfg.partitions_per_topic == 1
    assert cfg.producers_per_topic == 1 and cfg.groups_per_topic == 1
    assert cfg.consumers_per_group == 1
    assert cfg.await_topic_ready is True
    assert cfg.record_size == 1024
    assert cfg.random_ratio == 0.0 and cfg.random_pool_size == 1000
    assert cfg.send_rate == 1000 and cfg.send_throughput is None
    assert cfg.send_rate_during_catchup == 1000  # follows --send-rate
    assert cfg.max_consume_record_rate == MAX_CONSUME_RATE
    assert cfg.consumers_during_catchup == 100
    assert cfg.backlog_duration_s == 0 and cfg.group_start_delay_s == 0
    assert cfg.warmup_duration_min == 1.0 and cfg.test_duration_min == 5.0
    assert cfg.reporting_interval_s == 1.0
    assert cfg.catchup_topic_prefix is None and cfg.values_file is None
    assert cfg.output is None and cfg.processes == 0 and cfg.monitor_pids == ()
    assert cfg.topic_prefix.startswith("topic_")


def test_article_command_parses() -> None:
    command = ("--bootstrap-server localhost:9092 --producer-configs batch.size=0 "
               "--consumer-configs fetch.max.wait.ms=1000 --topics 10 "
               "--partitions-per-topic 128 --producers-per-topic 1 --groups-per-topic 1 "
               "--consumers-per-group 1 --record-size 52224 --send-rate 160 "
               "--warmup-duration 1 --test-duration 5 --reset")
    cfg = parse_args(command.split())
    assert cfg.producer_configs == {"batch.size": "0"}
    assert cfg.consumer_configs == {"fetch.max.wait.ms": "1000"}
    assert (cfg.topics, cfg.partitions_per_topic, cfg.record_size, cfg.send_rate) == (
        10, 128, 52224, 160)
    assert cfg.reset


def test_short_forms(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text("# comment\nclient.id = perf\n! other comment\nsocket.timeout.ms: 5000\n")
    values = tmp_path / "values.txt"
    values.write_text("a\nb\n")
    cfg = parse_args([
        "-B", "h:1", "-F", str(props), "-T", "retention.ms=1000", "-P", "linger.ms=1",
        "acks=1", "-C", "fetch.min.bytes=10", "-X", "pre", "-t", "3", "-n", "7", "-p", "2",
        "-g", "4", "-c", "5", "-s", "100", "-R", "0.5", "-S", "9", "-r", "321", "-a", "77",
        "-m", "500", "-b", "30", "-G", "5", "-w", "0.5", "-d", "0.25", "-i", "2.5",
        "--await-topic-ready", "false", "--consumers-during-catchup", "40", "--reuse-topics",
        "--catchup-topic-prefix", "old", "--values-file", str(values), "--output", "o.json",
        "--processes", "3", "--monitor-pid", "11", "--monitor-pid", "12",
    ])
    assert cfg.bootstrap_server == "h:1"
    assert cfg.common_configs == {"client.id": "perf", "socket.timeout.ms": "5000"}
    assert cfg.topic_configs == {"retention.ms": "1000"}
    assert cfg.producer_configs == {"linger.ms": "1", "acks": "1"}
    assert cfg.consumer_configs == {"fetch.min.bytes": "10"}
    assert cfg.topic_prefix == "pre"
    assert (cfg.topics, cfg.partitions_per_topic, cfg.producers_per_topic) == (3, 7, 2)
    assert (cfg.groups_per_topic, cfg.consumers_per_group) == (4, 5)
    assert (cfg.record_size, cfg.random_ratio, cfg.random_pool_size) == (100, 0.5, 9)
    assert (cfg.send_rate, cfg.send_rate_during_catchup, cfg.max_consume_record_rate) == (
        321, 77, 500)
    assert (cfg.backlog_duration_s, cfg.group_start_delay_s) == (30.0, 5.0)
    # minutes and seconds, fractions accepted
    assert (cfg.warmup_duration_min, cfg.test_duration_min, cfg.reporting_interval_s) == (
        0.5, 0.25, 2.5)
    assert cfg.await_topic_ready is False and cfg.consumers_during_catchup == 40
    assert cfg.reuse_topics and cfg.catchup_topic_prefix == "old"
    assert cfg.values_file == str(values) and cfg.output == "o.json"
    assert cfg.processes == 3 and cfg.monitor_pids == (11, 12)


def test_send_throughput_is_mib_per_second_and_overrides_send_rate() -> None:
    cfg = parse_args(["-f", "20", "-s", "65536", "-r", "5"])
    assert cfg.send_rate == 20 * 1024 * 1024 // 65536 == 320
    assert cfg.send_rate_during_catchup == 320
    assert parse_args(["--send-throughput", "1.5", "-s", "1024"]).send_rate == 1536


def test_repeated_config_flags_accumulate() -> None:
    cfg = parse_args(["-P", "a=1", "-P", "b=2", "--producer-configs", "a=3"])
    assert cfg.producer_configs == {"a": "3", "b": "2"}


@pytest.mark.parametrize("argv", [
    ["-t", "0"], ["-n", "-1"], ["-p", "0"], ["-c", "0"], ["-g", "-1"], ["-s", "0"],
    ["-r", "0"], ["-S", "0"], ["-m", "0"], ["-m", str(MAX_CONSUME_RATE + 1)],
    ["--consumers-during-catchup", "101"], ["-d", "0"], ["-i", "0"], ["-w", "-1"],
    ["-b", "-5"], ["-f", "0"], ["-R", "x"], ["--await-topic-ready", "maybe"], ["-t", "1.5"],
])
def test_bad_values_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_bad_combinations_are_rejected() -> None:
    with pytest.raises(PerfConfigError, match="GROUPS_PER_TOPIC"):
        parse_args(["-b", "10", "-g", "3", "-G", "5"])
    parse_args(["-b", "15", "-g", "3", "-G", "5"])  # 15 >= 3 * 5
    with pytest.raises(PerfConfigError, match="random-ratio"):
        parse_args(["-R", "1.5"])
    with pytest.raises(PerfConfigError, match="KEY=VALUE"):
        parse_args(["-P", "novalue"])
    with pytest.raises(PerfConfigError, match="below one record"):
        parse_args(["-f", "0.0001", "-s", "1048576"])


def test_topic_prefix_default_is_time_and_four_characters() -> None:
    import random

    prefix = random_topic_prefix(random.Random(1), now_ms=1234)
    assert prefix.startswith("topic_1234_") and len(prefix) == len("topic_1234_") + 4


def test_properties_file_continuations(tmp_path: Path) -> None:
    p = tmp_path / "a.properties"
    p.write_text("sasl.jaas.config=org.Plain required \\\n  username=\"u\" password=\"p\";\n"
                 "empty\n")
    props = load_properties(str(p))
    assert props["sasl.jaas.config"] == 'org.Plain required username="u" password="p";'
    assert props["empty"] == ""
    with pytest.raises(PerfConfigError):
        load_properties(str(tmp_path / "missing"))


def test_java_client_names_become_librdkafka_names() -> None:
    notes: list[str] = []
    producer = clientconf.producer_settings(
        "b:1", {"sasl.jaas.config": 'x username="u" password="p";'},
        {"batch.size": "0", "buffer.memory": "33554432", "max.block.ms": "1",
         "max.request.size": "2000000"}, notes)
    assert producer["batch.num.messages"] == "1"
    assert producer["queue.buffering.max.kbytes"] == "32768"
    assert producer["message.max.bytes"] == "2000000"
    assert (producer["sasl.username"], producer["sasl.password"]) == ("u", "p")
    assert "max.block.ms" not in producer and producer["bootstrap.servers"] == "b:1"
    assert any("max.block.ms" in n for n in notes)
    consumer = clientconf.consumer_settings(
        "b:1", {}, {"fetch.max.wait.ms": "1000", "max.poll.records": "10",
                    "partition.assignment.strategy":
                        "org.apache.kafka.clients.consumer.CooperativeStickyAssignor"}, "g")
    assert consumer["fetch.wait.max.ms"] == "1000"
    assert consumer["auto.offset.reset"] == "latest" and consumer["group.id"] == "g"
    assert consumer["partition.assignment.strategy"] == "cooperative-sticky"
    assert "max.poll.records" not in consumer
    assert clientconf.max_poll_records({"max.poll.records": "10"}, {}) == 10
    assert clientconf.sticky_batch_bytes({"batch.size": "0"}, {}) == 0
    assert clientconf.sticky_batch_bytes({}, {}) == clientconf.BATCH_SIZE_DEFAULT
    assert clientconf.sticky_linger_ms({}, {"sticky.partitioning.linger.ms": "3"}) == 3


def test_topic_and_group_names_follow_the_original_scheme() -> None:
    assert topics.topic_name("abc", 128, 3) == "__automq_perf_abc_0128_0000003"
    assert topics.group_id("__automq_perf_abc_0128_0000003", 2) == \
        "sub-__automq_perf_abc_0128_0000003-002"
