"""`tidelog perf` flags: AutoMQ's perf tool's names, short forms, defaults and units, plus a
few of our own (`--output`, `--processes`, `--monitor-pid`).

Where we differ on purpose: durations accept fractions (`-w 0.1` is six seconds);
`--backlog-duration` accepts any value, not only 300 s or more (the original needed five
minutes because it relied on consumers timing out of their group to pick up reset offsets;
our consumers seek by timestamp themselves); `--values-file` sends each line of the file as
one raw value (the original only read it with an Avro `--value-schema`, not offered here).
"""

from __future__ import annotations

import argparse
import random
import string
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_CONSUME_RATE = 1_000_000_000
TOPIC_COMMON_PREFIX = "__automq_perf_"


class PerfConfigError(ValueError):
    pass


@dataclass(frozen=True)
class PerfConfig:
    bootstrap_server: str = "localhost:9092"
    common_configs: dict[str, str] = field(default_factory=dict)
    topic_configs: dict[str, str] = field(default_factory=dict)
    producer_configs: dict[str, str] = field(default_factory=dict)
    consumer_configs: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    topic_prefix: str = ""
    topics: int = 1
    partitions_per_topic: int = 1
    producers_per_topic: int = 1
    groups_per_topic: int = 1
    consumers_per_group: int = 1
    await_topic_ready: bool = True
    record_size: int = 1024
    random_ratio: float = 0.0
    random_pool_size: int = 1000
    send_rate: int = 1000
    send_throughput: float | None = None
    send_rate_during_catchup: int = 1000
    max_consume_record_rate: int = MAX_CONSUME_RATE
    consumers_during_catchup: int = 100
    backlog_duration_s: float = 0.0
    group_start_delay_s: float = 0.0
    warmup_duration_min: float = 1.0
    test_duration_min: float = 5.0
    reporting_interval_s: float = 1.0
    reuse_topics: bool = False
    catchup_topic_prefix: str | None = None
    values_file: str | None = None
    output: str | None = None
    processes: int = 0
    monitor_pids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["monitor_pids"] = list(self.monitor_pids)
        return out


def _int(lo: int | None = None, hi: int | None = None, what: str = "an integer"
         ) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


def _float(lo: float, strict: bool, what: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value < lo or (strict and value == lo) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "yes", "1", "on"):
        return True
    if low in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_POSITIVE = _int(1, None, "a positive integer")
_NON_NEGATIVE = _int(0, None, "a non-negative integer")


def build_parser(prog: str = "tidelog perf") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Load test any Kafka-compatible broker: producers and consumers at a "
                    "fixed total send rate, latency histograms, a JSON report and an HTML chart.")
    c = p.add_argument_group("connection")
    c.add_argument("-B", "--bootstrap-server", default="localhost:9092", metavar="HOST:PORT")
    c.add_argument("-F", "--common-config-file", metavar="FILE",
                   help="properties file for the admin, producer and consumer clients")
    pairs: dict[str, Any] = {"nargs": "*", "action": "extend", "default": [], "metavar": "K=V"}
    c.add_argument("-T", "--topic-configs", **pairs)
    c.add_argument("-P", "--producer-configs", **pairs,
                   help="Java or librdkafka names (fetch.max.wait.ms, batch.size=0, ...)")
    c.add_argument("-C", "--consumer-configs", **pairs)
    c.add_argument("--reset", action="store_true",
                   help=f"delete every topic named {TOPIC_COMMON_PREFIX}* before the run")
    c.add_argument("--reuse-topics", action="store_true",
                   help="reuse existing topics with the topic prefix instead of creating them")
    c.add_argument("--catchup-topic-prefix", metavar="PREFIX",
                   help="read existing topics with this prefix: no warm-up, straight to catch-up")
    t = p.add_argument_group("topics")
    t.add_argument("-X", "--topic-prefix", metavar="PREFIX",
                   help="default: topic_<epoch ms>_<4 random characters>")
    t.add_argument("-t", "--topics", type=_POSITIVE, default=1)
    t.add_argument("-n", "--partitions-per-topic", type=_POSITIVE, default=1)
    g = p.add_argument_group("consumers")
    g.add_argument("-g", "--groups-per-topic", type=_NON_NEGATIVE, default=1)
    g.add_argument("-c", "--consumers-per-group", type=_POSITIVE, default=1)
    g.add_argument("--await-topic-ready", type=_bool, default=True, metavar="BOOL",
                   help="probe every partition and wait until the consumers see it")
    g.add_argument("-m", "--max-consume-record-rate", type=_int(1, MAX_CONSUME_RATE,
                   f"an integer between 1 and {MAX_CONSUME_RATE}"), default=MAX_CONSUME_RATE,
                   metavar="MSG/S", help="records per second, all consumers together")
    g.add_argument("--consumers-during-catchup", type=_int(0, 100, "a percentage (0-100)"),
                   default=100, metavar="PERCENT",
                   help="percentage of topics whose consumers read during catch-up")
    w = p.add_argument_group("producers")
    w.add_argument("-p", "--producers-per-topic", type=_POSITIVE, default=1)
    w.add_argument("-s", "--record-size", type=_POSITIVE, default=1024, metavar="BYTES")
    w.add_argument("-R", "--random-ratio", type=_float(0.0, False, "a ratio in [0, 1]"),
                   default=0.0, help="fraction of each value that is random bytes")
    w.add_argument("-S", "--random-pool-size", type=_POSITIVE, default=1000,
                   help="distinct random values (when --random-ratio > 0)")
    w.add_argument("-r", "--send-rate", type=_POSITIVE, default=1000, metavar="MSG/S",
                   help="messages per second, all producers together")
    w.add_argument("-f", "--send-throughput", type=_float(0.0, True, "a positive number"),
                   metavar="MIB/S", help="MiB per second; overrides --send-rate")
    w.add_argument("-a", "--send-rate-during-catchup", type=_POSITIVE, metavar="MSG/S",
                   help="send rate during catch-up (default: --send-rate)")
    w.add_argument("--values-file", metavar="FILE",
                   help="send the lines of this file (one value each) instead of random bytes")
    r = p.add_argument_group("run")
    r.add_argument("-b", "--backlog-duration", type=_float(0.0, False, "seconds (>= 0)"),
                   default=0.0, metavar="SECONDS",
                   help="pause consumers this long, then measure catch-up; 0: no catch-up")
    r.add_argument("-G", "--group-start-delay", type=_float(0.0, False, "seconds (>= 0)"),
                   default=0.0, metavar="SECONDS",
                   help="group i starts catch-up from i * this later than group 0")
    r.add_argument("-w", "--warmup-duration", type=_float(0.0, False, "minutes (>= 0)"),
                   default=1.0, metavar="MINUTES", help="ramp to the send rate over half of it")
    r.add_argument("-d", "--test-duration", type=_float(0.0, True, "minutes (> 0)"),
                   default=5.0, metavar="MINUTES")
    r.add_argument("-i", "--reporting-interval", type=_float(0.0, True, "seconds (> 0)"),
                   default=1.0, metavar="SECONDS")
    r.add_argument("--output", metavar="PATH",
                   help="JSON report path (default perf-<timestamp>.json); the chart is "
                        "written beside it with .html")
    r.add_argument("--processes", type=_NON_NEGATIVE, default=0,
                   help="worker processes for producers and consumers (0: one per CPU)")
    r.add_argument("--monitor-pid", type=_POSITIVE, action="append", default=[], metavar="PID",
                   help="also report this local process's CPU use (e.g. the broker); repeatable")
    return p


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PerfConfigError(f"invalid {what} config {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def load_properties(path: str) -> dict[str, str]:
    """A Java properties file: `k=v` or `k: v` lines, `#`/`!` comments, `\\` continuations."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PerfConfigError(f"cannot read {path}: {exc}") from exc
    out: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        if not line or line.startswith(("#", "!")):
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            out[line] = ""
        else:
            out[line[:cut].strip()] = line[cut + 1:].strip()
    if pending:
        out.setdefault(pending.strip(), "")
    return out


def random_topic_prefix(rng: random.Random | None = None, now_ms: int | None = None) -> str:
    r = rng or random.Random()
    chars = string.ascii_letters + string.digits
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"topic_{ms}_{''.join(r.choice(chars) for _ in range(4))}"


def parse_args(argv: list[str], prog: str = "tidelog perf") -> PerfConfig:
    """Flags -> PerfConfig. Raises SystemExit on bad flags (argparse) and PerfConfigError
    on bad combinations."""
    ns = build_parser(prog).parse_args(argv)
    record_size: int = ns.record_size
    send_rate: int = ns.send_rate
    if ns.send_throughput is not None:
        send_rate = int(ns.send_throughput * 1024 * 1024 / record_size)
        if send_rate < 1:
            raise PerfConfigError(
                f"--send-throughput {ns.send_throughput} MiB/s is below one record of "
                f"{record_size} bytes a second")
    if ns.random_ratio > 1.0:
        raise PerfConfigError(f"--random-ratio must be in [0, 1], got {ns.random_ratio}")
    if ns.backlog_duration < ns.groups_per_topic * ns.group_start_delay:
        raise PerfConfigError(
            f"BACKLOG_DURATION_SECONDS({ns.backlog_duration:g}) should not be less than "
            f"GROUPS_PER_TOPIC({ns.groups_per_topic}) * "
            f"GROUP_START_DELAY_SECONDS({ns.group_start_delay:g})")
    common = load_properties(ns.common_config_file) if ns.common_config_file else {}
    return PerfConfig(
        bootstrap_server=ns.bootstrap_server,
        common_configs=common,
        topic_configs=parse_pairs(ns.topic_configs, "topic"),
        producer_configs=parse_pairs(ns.producer_configs, "producer"),
        consumer_configs=parse_pairs(ns.consumer_configs, "consumer"),
        reset=ns.reset,
        topic_prefix=ns.topic_prefix if ns.topic_prefix is not None else random_topic_prefix(),
        topics=ns.topics,
        partitions_per_topic=ns.partitions_per_topic,
        producers_per_topic=ns.producers_per_topic,
        groups_per_topic=ns.groups_per_topic,
        consumers_per_group=ns.consumers_per_group,
        await_topic_ready=ns.await_topic_ready,
        record_size=record_size,
        random_ratio=ns.random_ratio,
        random_pool_size=ns.random_pool_size,
        send_rate=send_rate,
        send_throughput=ns.send_throughput,
        send_rate_during_catchup=(ns.send_rate_during_catchup
                                  if ns.send_rate_during_catchup is not None else send_rate),
        max_consume_record_rate=ns.max_consume_record_rate,
        consumers_during_catchup=ns.consumers_during_catchup,
        backlog_duration_s=ns.backlog_duration,
        group_start_delay_s=ns.group_start_delay,
        warmup_duration_min=ns.warmup_duration,
        test_duration_min=ns.test_duration,
        reporting_interval_s=ns.reporting_interval,
        reuse_topics=ns.reuse_topics,
        catchup_topic_prefix=ns.catchup_topic_prefix or None,
        values_file=ns.values_file,
        output=ns.output,
        processes=ns.processes,
        monitor_pids=tuple(ns.monitor_pid),
    )
