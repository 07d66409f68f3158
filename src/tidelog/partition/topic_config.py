"""Topic configuration: Kafka's topic config names, defaults, types and validation, and the
broker keys whose values serve as a topic's defaults.

Vocabulary:
- override: a config set on the topic itself (stored with the topic, `/topics/<name>`);
- synonym: a broker key that supplies a topic config's value when the topic has no
  override, in priority order (`log.retention.ms`, then `log.retention.minutes`, then
  `log.retention.hours`), some with a unit conversion (hours -> ms);
- layer: where a broker value comes from, highest first: dynamic for this broker, dynamic
  cluster default, static (server.properties, environment, --set), built-in default;
- source: the layer (or the topic) a described value came from, as DescribeConfigs says.

Every Kafka topic config is accepted so tools that copy configs between clusters work;
those without a meaning here (replication, flushing, indexes, tiered storage) are stored
and described but change nothing. `resolve` gives the typed view the broker acts on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

LONG_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
CREATE_TIME, LOG_APPEND_TIME = "CreateTime", "LogAppendTime"


class ConfigType(IntEnum):
    """DescribeConfigs' config_type codes."""

    UNKNOWN = 0
    BOOLEAN = 1
    STRING = 2
    INT = 3
    SHORT = 4
    LONG = 5
    DOUBLE = 6
    LIST = 7
    CLASS = 8
    PASSWORD = 9


class ConfigSource(IntEnum):
    """DescribeConfigs' config_source codes."""

    UNKNOWN = 0
    TOPIC_CONFIG = 1
    DYNAMIC_BROKER_CONFIG = 2
    DYNAMIC_DEFAULT_BROKER_CONFIG = 3
    STATIC_BROKER_CONFIG = 4
    DEFAULT_CONFIG = 5


class InvalidConfig(ValueError):
    """An unknown name or a value its config refuses (INVALID_CONFIG, with this message)."""


class ReadOnlyConfig(InvalidConfig):
    """A broker config that cannot change while the broker runs (INVALID_REQUEST, as
    Kafka)."""


Check = Callable[[Any], str | None]
"""Returns why a parsed value is refused, or None."""


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"Value must be at least {low}"


def between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"Value must be between {low} and {high}"


def one_of(*allowed: str) -> Check:
    return lambda v: None if v in allowed else f"String must be one of: {', '.join(allowed)}"


def each_of(*allowed: str) -> Check:
    def check(v: list[str]) -> str | None:
        if not v:
            return f"List must hold at least one of: {', '.join(allowed)}"
        bad = [x for x in v if x not in allowed]
        return f"Valid values are {list(allowed)}, not {bad}" if bad else None
    return check


@dataclass(frozen=True, slots=True)
class Synonym:
    """A broker key giving a topic config's default."""

    name: str
    type: ConfigType
    default: str | None = None
    """Kafka's default for the broker key (None: unset unless configured)."""
    factor: int = 1
    """Multiplier to the topic config's unit (hours -> ms: 3,600,000)."""


@dataclass(frozen=True, slots=True)
class ConfigKey:
    name: str
    type: ConfigType
    default: str
    doc: str
    check: Check | None = None
    synonyms: tuple[Synonym, ...] = ()


def _k(name: str, type_: ConfigType, default: str, doc: str, check: Check | None = None,
       *synonyms: Synonym) -> ConfigKey:
    return ConfigKey(name, type_, default, doc, check, synonyms)


L, INT, S, B, D, LST = (ConfigType.LONG, ConfigType.INT, ConfigType.STRING, ConfigType.BOOLEAN,
                        ConfigType.DOUBLE, ConfigType.LIST)
_MAX = str(LONG_MAX)
_WEEK = str(7 * 24 * HOUR_MS)
_CODECS = ("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer")

KEYS: dict[str, ConfigKey] = {k.name: k for k in (
    _k("cleanup.policy", LST, "delete",
       "delete: drop data older than retention.ms or beyond retention.bytes; compact: keep "
       "the latest record per key; both: compact, then apply retention.",
       each_of("compact", "delete"), Synonym("log.cleanup.policy", LST, "delete")),
    _k("compression.type", S, "producer",
       "Codec of stored batches; 'producer' keeps the producer's (the only value honoured: "
       "batches are stored as sent).", one_of(*_CODECS),
       Synonym("compression.type", S, "producer")),
    _k("compression.gzip.level", INT, "-1", "gzip level when the broker compresses (unused).",
       lambda v: None if v == -1 or 1 <= v <= 9 else "Value must be -1 or between 1 and 9",
       Synonym("compression.gzip.level", INT, "-1")),
    _k("compression.lz4.level", INT, "9", "lz4 level when the broker compresses (unused).",
       between(1, 17), Synonym("compression.lz4.level", INT, "9")),
    _k("compression.zstd.level", INT, "3", "zstd level when the broker compresses (unused).",
       between(-131072, 22), Synonym("compression.zstd.level", INT, "3")),
    _k("delete.retention.ms", L, "86400000",
       "How long a tombstone stays readable in a compacted topic after compaction reaches "
       "it (a consumer reading from the start within this time sees the delete).",
       at_least(0), Synonym("log.cleaner.delete.retention.ms", L, "86400000")),
    _k("file.delete.delay.ms", L, "60000",
       "Grace period before an object no longer referenced is deleted from object storage "
       "(a reader mid-fetch finishes first). The broker's log.segment.delete.delay.ms "
       "applies to every topic: one object holds several topics' data.",
       at_least(0), Synonym("log.segment.delete.delay.ms", L, "60000")),
    _k("flush.messages", L, _MAX, "Kafka's fsync interval in records (unused: every "
       "acknowledged batch is fsynced in the WAL).", at_least(1),
       Synonym("log.flush.interval.messages", L, _MAX)),
    _k("flush.ms", L, _MAX, "Kafka's fsync interval in time (unused: every acknowledged "
       "batch is fsynced in the WAL).", at_least(0),
       Synonym("log.flush.interval.ms", L), Synonym("log.flush.scheduler.interval.ms", L, _MAX)),
    _k("follower.replication.throttled.replicas", LST, "",
       "Replication throttling (unused: one copy per partition)."),
    _k("index.interval.bytes", INT, "4096", "Kafka's offset index density (unused).",
       at_least(0), Synonym("log.index.interval.bytes", INT, "4096")),
    _k("leader.replication.throttled.replicas", LST, "",
       "Replication throttling (unused: one copy per partition)."),
    _k("local.retention.bytes", L, "-2", "Tiered storage's local retention (unused: all data "
       "is in object storage); -2 follows retention.bytes.", at_least(-2),
       Synonym("log.local.retention.bytes", L, "-2")),
    _k("local.retention.ms", L, "-2", "Tiered storage's local retention (unused: all data "
       "is in object storage); -2 follows retention.ms.", at_least(-2),
       Synonym("log.local.retention.ms", L, "-2")),
    _k("max.compaction.lag.ms", L, _MAX,
       "Longest time a record may stay uncompacted in a compacted topic.", at_least(1),
       Synonym("log.cleaner.max.compaction.lag.ms", L, _MAX)),
    _k("max.message.bytes", INT, "1048588",
       "Largest record batch (after compression) a produce may append; larger ones get "
       "MESSAGE_TOO_LARGE.", at_least(0), Synonym("message.max.bytes", INT, "1048588")),
    _k("message.timestamp.after.max.ms", L, _MAX,
       "With CreateTime, refuse batches whose timestamps are this far ahead of the broker's "
       "clock (INVALID_TIMESTAMP).", at_least(0),
       Synonym("log.message.timestamp.after.max.ms", L, _MAX)),
    _k("message.timestamp.before.max.ms", L, _MAX,
       "With CreateTime, refuse batches whose timestamps are this far behind the broker's "
       "clock (INVALID_TIMESTAMP).", at_least(0),
       Synonym("log.message.timestamp.before.max.ms", L, _MAX)),
    _k("message.timestamp.difference.max.ms", L, _MAX,
       "Deprecated (Kafka 3.x): the default of message.timestamp.before.max.ms and "
       "message.timestamp.after.max.ms.", at_least(0),
       Synonym("log.message.timestamp.difference.max.ms", L, _MAX)),
    _k("message.timestamp.type", S, CREATE_TIME,
       "CreateTime keeps the producer's timestamps; LogAppendTime stamps every batch with "
       "the broker's time when it is appended.", one_of(CREATE_TIME, LOG_APPEND_TIME),
       Synonym("log.message.timestamp.type", S, CREATE_TIME)),
    _k("min.cleanable.dirty.ratio", D, "0.5",
       "Compact a partition once this share of its data has not been compacted yet.",
       between(0, 1), Synonym("log.cleaner.min.cleanable.ratio", D, "0.5")),
    _k("min.compaction.lag.ms", L, "0",
       "Records younger than this are never compacted.", at_least(0),
       Synonym("log.cleaner.min.compaction.lag.ms", L, "0")),
    _k("min.insync.replicas", INT, "1", "Accepted for compatibility; one copy in shared "
       "storage always satisfies it.", at_least(1), Synonym("min.insync.replicas", INT, "1")),
    _k("preallocate", B, "false", "Kafka's segment preallocation (unused).", None,
       Synonym("log.preallocate", B, "false")),
    _k("remote.log.copy.disable", B, "false", "Tiered storage (unused)."),
    _k("remote.log.delete.on.disable", B, "false", "Tiered storage (unused)."),
    _k("remote.storage.enable", B, "false", "Tiered storage (unused: all data is in object "
       "storage)."),
    _k("retention.bytes", L, "-1",
       "Per partition: delete the oldest data while the partition holds more than this "
       "(-1: no size limit). Needs cleanup.policy delete.", None,
       Synonym("log.retention.bytes", L, "-1")),
    _k("retention.ms", L, _WEEK,
       "Delete data older than this (-1: keep forever). Needs cleanup.policy delete.",
       at_least(-1), Synonym("log.retention.ms", L),
       Synonym("log.retention.minutes", INT, None, MINUTE_MS),
       Synonym("log.retention.hours", INT, "168", HOUR_MS)),
    _k("segment.bytes", INT, str(1 << 30), "Kafka's segment size; here the most bytes one "
       "produce may append to a partition (RECORD_LIST_TOO_LARGE). The minimum is Kafka "
       "3's (14), not Kafka 4's 1 MiB: with no segment files, small values cost nothing and "
       "tools written for Kafka 3 keep working.", at_least(14),
       Synonym("log.segment.bytes", INT, str(1 << 30))),
    _k("segment.index.bytes", INT, str(10 << 20), "Kafka's index size (unused).", at_least(4),
       Synonym("log.index.size.max.bytes", INT, str(10 << 20))),
    _k("segment.jitter.ms", L, "0", "Kafka's segment roll jitter (unused).", at_least(0),
       Synonym("log.roll.jitter.ms", L), Synonym("log.roll.jitter.hours", INT, "0", HOUR_MS)),
    _k("segment.ms", L, _WEEK, "Kafka's segment roll time; here, on compacted topics, the "
       "age at which data not yet uploaded is uploaded so it can be compacted.", at_least(1),
       Synonym("log.roll.ms", L),
       Synonym("log.roll.hours", INT, "168", HOUR_MS)),
    _k("unclean.leader.election.enable", B, "false", "Accepted for compatibility (one copy: "
       "no election can lose data).", None, Synonym("unclean.leader.election.enable", B,
                                                      "false")),
)}

SYNONYMS: dict[str, tuple[ConfigKey, Synonym]] = {
    s.name: (k, s) for k in KEYS.values() for s in k.synonyms}
"""Broker key -> (the topic config it serves, its synonym entry)."""

BROKER_DEFAULTS: dict[str, str] = {
    s.name: s.default for _, s in SYNONYMS.values() if s.default is not None}
"""Kafka's defaults of the broker keys that serve topic configs."""


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """The typed view of a topic's configuration the broker acts on."""

    retention_ms: int
    """-1 = forever."""
    retention_bytes: int
    """-1 = unlimited (per partition, as Kafka)."""
    cleanup_policy: frozenset[str]
    """{"delete"}, {"compact"} or both."""
    delete_retention_ms: int
    min_compaction_lag_ms: int
    max_compaction_lag_ms: int
    min_cleanable_dirty_ratio: float
    segment_bytes: int
    segment_ms: int
    max_message_bytes: int
    message_timestamp_type: str
    """"CreateTime" | "LogAppendTime"."""
    file_delete_delay_ms: int
    message_timestamp_before_max_ms: int = LONG_MAX
    message_timestamp_after_max_ms: int = LONG_MAX

    @property
    def log_append_time(self) -> bool:
        return self.message_timestamp_type == LOG_APPEND_TIME

    @property
    def checks_timestamps(self) -> bool:
        """Whether produce must compare batch timestamps with the broker's clock."""
        return not self.log_append_time and (
            self.message_timestamp_before_max_ms < LONG_MAX
            or self.message_timestamp_after_max_ms < LONG_MAX)


def parse(type_: ConfigType, raw: str) -> Any:
    """A config string as its type; raises ValueError with Kafka's kind of message."""
    text = raw.strip()
    if type_ is ConfigType.BOOLEAN:
        if text.lower() not in ("true", "false"):
            raise ValueError("Expected value to be either true or false")
        return text.lower() == "true"
    if type_ in (ConfigType.INT, ConfigType.LONG, ConfigType.SHORT):
        limit = {ConfigType.INT: 31, ConfigType.LONG: 63, ConfigType.SHORT: 15}[type_]
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"Not a number of type {type_.name}") from None
        if not -(1 << limit) <= value < (1 << limit):
            raise ValueError(f"Not a number of type {type_.name}")
        return value
    if type_ is ConfigType.DOUBLE:
        try:
            return float(text)
        except ValueError:
            raise ValueError("Not a number of type DOUBLE") from None
    if type_ is ConfigType.LIST:
        return [] if not text else [x.strip() for x in text.split(",")]
    return text


def to_string(type_: ConfigType, value: Any) -> str:
    """The value as DescribeConfigs reports it (Kafka's ConfigDef.convertToString)."""
    if type_ is ConfigType.BOOLEAN:
        return "true" if value else "false"
    if type_ is ConfigType.LIST:
        return ",".join(value)
    return str(value)


def _value(key: ConfigKey, raw: str, name: str | None = None) -> Any:
    """Parse and check one value of `key` (given under `name`, a synonym or the key)."""
    try:
        value = parse(key.type, raw)
    except ValueError as exc:
        raise InvalidConfig(f"Invalid value {raw} for configuration {name or key.name}: "
                            f"{exc}") from None
    problem = key.check(value) if key.check else None
    if problem:
        raise InvalidConfig(f"Invalid value {raw} for configuration {name or key.name}: "
                            f"{problem}")
    return value


def _from_broker(key: ConfigKey, broker: Mapping[str, str]) -> tuple[Any, str | None]:
    """(value, broker key it came from) for a topic config without an override."""
    for syn in key.synonyms:
        raw = broker.get(syn.name)
        if raw is None or raw.strip() == "":
            continue
        if syn.factor == 1 and syn.type == key.type:
            return _value(key, raw, syn.name), syn.name
        try:
            n = parse(syn.type, raw) * syn.factor
        except ValueError as exc:
            raise InvalidConfig(f"Invalid value {raw} for configuration {syn.name}: "
                                f"{exc}") from None
        if key.name == "retention.ms" and n < 0:
            n = -1  # Kafka: any negative broker retention means forever
        return _value(key, str(n), syn.name), syn.name
    return parse(key.type, key.default), None


def effective(name: str, topic_configs: Mapping[str, str],
              broker: Mapping[str, str]) -> tuple[Any, str | None]:
    """(value, where from: the topic config name if overridden, else a broker key (which
    may have the same name, e.g. compression.type), or None for the default)."""
    key = KEYS[name]
    raw = topic_configs.get(name)
    if raw is not None:
        return _value(key, raw), name
    return _from_broker(key, broker)


def resolve(topic_configs: Mapping[str, str], broker: Mapping[str, str]) -> TopicConfig:
    """The typed config of a topic: its overrides, else the broker's synonyms, else Kafka's
    defaults. Raises `InvalidConfig` for a value its config refuses."""

    def get(name: str) -> Any:
        return effective(name, topic_configs, broker)[0]

    before, after = get("message.timestamp.before.max.ms"), get("message.timestamp.after.max.ms")
    difference = get("message.timestamp.difference.max.ms")
    return TopicConfig(
        retention_ms=get("retention.ms"),
        retention_bytes=get("retention.bytes"),
        cleanup_policy=frozenset(get("cleanup.policy")),
        delete_retention_ms=get("delete.retention.ms"),
        min_compaction_lag_ms=get("min.compaction.lag.ms"),
        max_compaction_lag_ms=get("max.compaction.lag.ms"),
        min_cleanable_dirty_ratio=get("min.cleanable.dirty.ratio"),
        segment_bytes=get("segment.bytes"),
        segment_ms=get("segment.ms"),
        max_message_bytes=get("max.message.bytes"),
        message_timestamp_type=get("message.timestamp.type"),
        file_delete_delay_ms=get("file.delete.delay.ms"),
        # Kafka 3.x: the deprecated difference bound applies where the new ones are unset
        message_timestamp_before_max_ms=before if before < LONG_MAX else difference,
        message_timestamp_after_max_ms=after if after < LONG_MAX else difference,
    )


def validate(topic_configs: Mapping[str, str], broker: Mapping[str, str]) -> TopicConfig:
    """Check a topic's overrides as CreateTopics and AlterConfigs must: every name known,
    every value valid, and the combination consistent. Returns the resolved config."""
    for name, raw in topic_configs.items():
        if name not in KEYS:
            raise InvalidConfig(f"Unknown topic config name: {name}")
        _value(KEYS[name], raw)
    cfg = resolve(topic_configs, broker)
    if cfg.min_compaction_lag_ms > cfg.max_compaction_lag_ms:
        raise InvalidConfig(
            f"conflict topic config setting min.compaction.lag.ms "
            f"({cfg.min_compaction_lag_ms}) > max.compaction.lag.ms "
            f"({cfg.max_compaction_lag_ms})")
    return cfg


RUNTIME_BROKER_FLAGS = ("zone.fetch.enable", "zone.routing.enable")
"""Broker switches (true/false) that may also change at run time, cluster-wide or per
broker, as Kafka's dynamic broker configs (docs/design/0003-zones.md)."""


def runtime_flag(configs: Mapping[str, str], name: str) -> bool:
    return configs.get(name, "false").strip().lower() in ("true", "1", "yes")


def validate_broker(dynamic: Mapping[str, str], broker: Mapping[str, str],
                    static: Collection[str] | None = None) -> None:
    """Check dynamic broker configs: of the broker's own settings (`static`: the names
    configured at start, default `broker`'s), only the keys that serve topic defaults may
    change at run time (Kafka's dynamic log configs), with valid values. A name the broker
    does not have is a custom config, kept and reported as Kafka keeps one (plugins and
    tools read them); Tidelog itself does not act on it. `broker` is the current
    configuration the change must stay consistent with."""
    fixed_names = broker if static is None else static
    fixed = sorted(k for k in dynamic if k not in SYNONYMS and k in fixed_names
                   and k not in RUNTIME_BROKER_FLAGS)
    if fixed:
        raise ReadOnlyConfig(f"Cannot update these configs dynamically: {fixed}")
    for name in RUNTIME_BROKER_FLAGS:
        if name in dynamic and dynamic[name].strip().lower() not in (
                "true", "false", "1", "0", "yes", "no"):
            raise InvalidConfig(f"Invalid value {dynamic[name]} for configuration {name}: "
                                f"Expected value to be either true or false")
    merged = {**broker, **dynamic}
    for name in dynamic:
        if name in SYNONYMS:
            key, _ = SYNONYMS[name]
            _from_broker(key, {name: merged[name]})
    validate({}, merged)


# ---- describing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerLayers:
    """A broker's config values by layer, highest priority first."""

    dynamic_node: Mapping[str, str]
    dynamic_default: Mapping[str, str]
    static: Mapping[str, str]
    defaults: Mapping[str, str]

    def merged(self) -> dict[str, str]:
        return {**self.defaults, **self.static, **self.dynamic_default, **self.dynamic_node}

    def layers(self) -> tuple[tuple[Mapping[str, str], ConfigSource], ...]:
        return ((self.dynamic_node, ConfigSource.DYNAMIC_BROKER_CONFIG),
                (self.dynamic_default, ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG),
                (self.static, ConfigSource.STATIC_BROKER_CONFIG),
                (self.defaults, ConfigSource.DEFAULT_CONFIG))

    def source(self, name: str) -> ConfigSource:
        for layer, src in self.layers():
            if name in layer:
                return src
        return ConfigSource.DEFAULT_CONFIG


@dataclass(frozen=True, slots=True)
class Described:
    """One config as DescribeConfigs reports it."""

    name: str
    value: str | None
    source: ConfigSource
    type: ConfigType
    doc: str
    synonyms: tuple[tuple[str, str | None, ConfigSource], ...]
    read_only: bool = False
    sensitive: bool = False


def describe_topic(overrides: Mapping[str, str], broker: BrokerLayers) -> list[Described]:
    """Every topic config, sorted by name: value, where it came from, and its synonyms
    (the override, then each broker layer's synonyms, Kafka's order)."""
    merged = broker.merged()
    out = []
    for name in sorted(KEYS):
        key = KEYS[name]
        synonyms: list[tuple[str, str | None, ConfigSource]] = []
        if name in overrides:
            synonyms.append((name, overrides[name], ConfigSource.TOPIC_CONFIG))
        for layer, src in broker.layers():
            synonyms.extend((s.name, layer[s.name], src) for s in key.synonyms
                            if s.name in layer)
        try:
            value, origin = effective(name, overrides, merged)
        except InvalidConfig:  # stored before validation existed: show it, act on default
            value, origin = parse(key.type, key.default), None
        if name in overrides and origin == name:
            source = ConfigSource.TOPIC_CONFIG
        elif origin is not None:
            source = broker.source(origin)
        else:
            source = ConfigSource.DEFAULT_CONFIG
        out.append(Described(name, to_string(key.type, value), source, key.type, key.doc,
                             tuple(synonyms)))
    return out


def describe_broker_key(name: str, broker: BrokerLayers, type_: ConfigType, doc: str,
                        read_only: bool, sensitive: bool = False) -> Described:
    """One broker config: its value in the highest layer that has it, and the layers
    (and lower-priority synonyms) below."""
    names = [name]
    if name in SYNONYMS:
        key, _ = SYNONYMS[name]
        names += [s.name for s in key.synonyms[key.synonyms.index(SYNONYMS[name][1]) + 1:]]
    synonyms = [(n, None if sensitive else layer[n], src)
                for layer, src in broker.layers() for n in names if n in layer]
    value = broker.merged().get(name)
    return Described(name, None if sensitive else value, broker.source(name), type_, doc,
                     tuple(synonyms), read_only, sensitive)
