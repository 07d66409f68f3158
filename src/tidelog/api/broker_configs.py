"""What DescribeConfigs says about a broker's own settings: type, documentation, whether
the value is secret, and which layer it came from. Keys serving topic defaults are typed
by `partition.topic_config`; the rest (ours and Kafka's) are listed here."""

from __future__ import annotations

from tidelog.config import DEFAULTS
from tidelog.partition.topic_config import (
    BROKER_DEFAULTS,
    SYNONYMS,
    BrokerLayers,
    ConfigType,
    Described,
    describe_broker_key,
)
from tidelog.partition.topics import DEFAULT_SCOPE, TopicManager

B, INT, L, S, LST = (ConfigType.BOOLEAN, ConfigType.INT, ConfigType.LONG, ConfigType.STRING,
                     ConfigType.LIST)

CATALOGUE: dict[str, tuple[ConfigType, str]] = {
    "node.id": (INT, "This broker's id."),
    "listeners": (S, "Where the broker listens (PLAINTEXT://host:port)."),
    "advertised.listeners": (S, "The address clients are told (default: listeners)."),
    "broker.rack": (S, "The broker's zone (rack-aware reads, zone routing)."),
    "cluster.id": (S, "The cluster id Metadata and DescribeCluster report."),
    "data.dir": (S, "Directory for local files of the embedded defaults."),
    "wal.uri": (S, "Write-ahead log location: a directory on local disk, EBS, NFS or FSx."),
    "wal.capacity": (L, "Size of the WAL ring file; when full, produce waits for uploads."),
    "objectstore.uri": (S, "Object storage: file://, memory://, s3://, gs://, az://."),
    "metadata.uri": (S, "Cluster state store (embedded SQLite)."),
    "upload.bytes": (L, "Upload to object storage once this much data waits."),
    "upload.interval.ms": (L, "Upload at least this often."),
    "stream.object.split.bytes": (L, "A partition with this much data in one upload gets "
                                     "its own object."),
    "log.cache.bytes": (L, "Bound on not yet uploaded data held in memory."),
    "block.cache.bytes": (L, "Bound on the read cache of object blocks."),
    "append.timeout.ms": (L, "How long a produce waits on a full WAL before "
                             "REQUEST_TIMED_OUT."),
    "auto.create.topics.enable": (B, "Create a topic on its first Metadata request."),
    "num.partitions": (INT, "Partitions of auto-created topics."),
    "allow.everyone.if.no.acl.found": (B, "A resource no ACL names is open to every "
                                          "client; false: only ALLOW bindings grant access."),
    "super.users": (LST, "Principals the authorizer always allows (User:a;User:b)."),
    "socket.request.max.bytes": (INT, "Largest request frame accepted."),
    "offsets.retention.minutes": (INT, "Committed offsets of an empty group expire after "
                                       "this."),
    "producer.id.expiration.ms": (INT, "Forget an idle idempotent producer after this."),
    "group.min.session.timeout.ms": (INT, "Shortest classic group session timeout allowed."),
    "group.max.session.timeout.ms": (INT, "Longest classic group session timeout allowed."),
    "group.initial.rebalance.delay.ms": (INT, "Wait for more members before the first "
                                              "rebalance."),
    "group.consumer.session.timeout.ms": (INT, "KIP-848 member session timeout."),
    "group.consumer.heartbeat.interval.ms": (INT, "KIP-848 heartbeat interval."),
    "group.consumer.assignors": (LST, "KIP-848 server assignors; the first is the default."),
    "transaction.max.timeout.ms": (INT, "Longest transaction timeout a producer may ask for."),
    "transactional.id.expiration.ms": (INT, "Forget an idle transactional id after this."),
    "log.level": (S, "Logging level of the broker process."),
    "log.retention.check.interval.ms": (L, "How often retention is applied."),
    "log.cleaner.enable": (B, "Run the log compactor for compacted topics."),
    "log.cleaner.threads": (INT, "Compactor concurrency."),
    "log.cleaner.backoff.ms": (L, "Compactor pause when nothing is cleanable."),
    "log.cleaner.dedupe.buffer.size": (L, "Memory bound of the compactor's key map."),
    "message.max.bytes": (INT, "Largest record batch a produce may append (default of the "
                               "topic config max.message.bytes)."),
}


def _guess(value: str) -> ConfigType:
    """Type of a key nobody described yet: from its default's shape."""
    v = value.strip().lower()
    if v in ("true", "false"):
        return B
    if v.lstrip("-").isdigit():
        return L
    return S


def sensitive(name: str, value: str | None) -> bool:
    """Never report secrets: passwords, and URIs carrying credentials."""
    return "password" in name or "secret" in name or (
        value is not None and ("secret" in value.lower() or "password" in value.lower()))


def layers(topics: TopicManager) -> BrokerLayers:
    """The broker's values by layer. Static values equal to the built-in default count as
    defaults (the configuration does not say whether they were set explicitly)."""
    defaults = {**BROKER_DEFAULTS, **DEFAULTS}
    static = {k: v for k, v in topics.static_configs.items() if defaults.get(k) != v}
    return BrokerLayers(topics.dynamic_configs[topics.node_id],
                        topics.dynamic_configs[DEFAULT_SCOPE], static, defaults)


def describe(name: str, broker: BrokerLayers) -> Described:
    if name in SYNONYMS:
        key, syn = SYNONYMS[name]
        type_, doc, read_only = syn.type, f"Default of the topic config {key.name}: " \
            f"{key.doc}", False
    else:
        value = broker.merged().get(name, "")
        type_, doc = CATALOGUE.get(name, (_guess(value), ""))
        read_only = True
    return describe_broker_key(name, broker, type_, doc, read_only,
                               sensitive(name, broker.merged().get(name)))


def describe_all(broker: BrokerLayers) -> list[Described]:
    """Every broker config: ours, Kafka's topic-default keys (set or not), and whatever
    else was configured."""
    names = set(DEFAULTS) | set(SYNONYMS) | set(broker.merged())
    return [describe(n, broker) for n in sorted(names)]


def describe_default(broker: BrokerLayers) -> list[Described]:
    """The cluster-wide dynamic defaults (the BROKER resource named "")."""
    return [describe(n, broker) for n in sorted(broker.dynamic_default)]
