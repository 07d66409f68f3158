"""Broker configuration: Kafka-style `server.properties` keys where Kafka has one, our own
for storage; a properties file, then `TIDELOG_*` environment variables, then command-line
`--set key=value` override the defaults. The defaults need no file and no service."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULTS: dict[str, str] = {
    "node.id": "0",
    "listeners": "PLAINTEXT://localhost:9092",
    "advertised.listeners": "",
    "broker.rack": "",
    "listener.zones": "",
    "zone.cidr.blocks": "",
    "zone.fetch.enable": "true",
    "zone.routing.enable": "false",
    "cluster.id": "tidelog-cluster",
    "data.dir": "./data",
    "wal.uri": "file://./data/wal",
    "wal.capacity": str(2 << 30),
    "objectstore.uri": "file://./data/objects",
    "metadata.uri": "embedded://./data",
    "upload.bytes": str(64 << 20),
    "upload.interval.ms": "30000",
    "stream.object.split.bytes": str(8 << 20),
    "log.cache.bytes": str(1 << 30),
    "block.cache.bytes": str(128 << 20),
    "log.segment.delete.delay.ms": "60000",
    "log.retention.check.interval.ms": "300000",
    "log.cleaner.enable": "true",
    "log.cleaner.backoff.ms": "15000",
    "object.compaction.interval.ms": "60000",
    "object.compaction.small.bytes": str(16 << 20),
    "object.compaction.min.objects": "8",
    "object.compaction.max.input.bytes": str(256 << 20),
    "object.orphan.audit.interval.ms": "3600000",
    "append.timeout.ms": "30000",
    "auto.create.topics.enable": "true",
    "allow.everyone.if.no.acl.found": "true",
    "super.users": "",
    "num.partitions": "1",
    "message.max.bytes": str(8 << 20),
    # topic config defaults under Kafka's broker names (partition/topic_config.py maps them)
    "log.retention.hours": "168",
    "log.retention.bytes": "-1",
    "log.cleanup.policy": "delete",
    "log.segment.bytes": str(1 << 30),
    "log.roll.hours": "168",
    "log.message.timestamp.type": "CreateTime",
    "log.message.timestamp.before.max.ms": str((1 << 63) - 1),
    "log.message.timestamp.after.max.ms": str((1 << 63) - 1),
    "log.cleaner.threads": "1",
    "log.cleaner.dedupe.buffer.size": str(128 << 20),
    "log.cleaner.delete.retention.ms": "86400000",
    "log.cleaner.min.compaction.lag.ms": "0",
    "log.cleaner.max.compaction.lag.ms": str((1 << 63) - 1),
    "log.cleaner.min.cleanable.ratio": "0.5",
    "compression.type": "producer",
    "min.insync.replicas": "1",
    "unclean.leader.election.enable": "false",
    "socket.request.max.bytes": str(100 << 20),
    "metrics.enabled": "true",
    "metrics.listener": "http://0.0.0.0:9464",
    "offsets.retention.minutes": "10080",
    "producer.id.expiration.ms": "86400000",
    "group.min.session.timeout.ms": "6000",
    "group.max.session.timeout.ms": "1800000",
    "group.initial.rebalance.delay.ms": "3000",
    "group.consumer.session.timeout.ms": "45000",
    "group.consumer.heartbeat.interval.ms": "5000",
    "group.consumer.assignors": "uniform,range",
    "transaction.max.timeout.ms": "900000",
    "offsets.topic.num.partitions": "50",
    "transaction.state.log.num.partitions": "50",
    "broker.session.timeout.ms": "9000",
    "broker.heartbeat.interval.ms": "2000",
    "orphan.stream.grace.ms": "300000",
    "auto.leader.rebalance.enable": "true",
    "leader.imbalance.check.interval.seconds": "300",
    "transactional.id.expiration.ms": "604800000",
    "log.level": "INFO",
}


class ConfigError(ValueError):
    pass


def parse_properties(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """`TIDELOG_UPLOAD_BYTES=1` -> `upload.bytes=1` (underscores become dots)."""
    out = {}
    for k, v in environ.items():
        if k.startswith("TIDELOG_"):
            out[k[len("TIDELOG_"):].lower().replace("_", ".")] = v
    return out


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    name: str = "PLAINTEXT"


def parse_listener(value: str) -> Listener:
    """The first of a `listeners` list."""
    return parse_listeners(value)[0]


def parse_listeners(value: str) -> list[Listener]:
    """Kafka's form: `NAME://host:port,...` (`host:port` alone is PLAINTEXT); names are
    unique, and the first listener is the one brokers use between themselves."""
    out: list[Listener] = []
    for item in filter(None, (i.strip() for i in value.split(","))):
        name, sep, hostport = item.rpartition("://")
        host, _, port = hostport.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"listener {item!r} needs host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        listener = Listener(host or "0.0.0.0", int(port), (name if sep else "PLAINTEXT").upper())
        if any(x.name == listener.name for x in out):
            raise ConfigError(f"listeners: {listener.name} named twice in {value!r}")
        out.append(listener)
    if not out:
        raise ConfigError(f"listeners: no listener in {value!r}")
    return out


class Config:
    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = {**DEFAULTS, **values}

    @classmethod
    def load(cls, path: str | None = None, overrides: Mapping[str, str] | None = None,
             environ: Mapping[str, str] | None = None) -> Config:
        values: dict[str, str] = {}
        if path:
            with open(path, encoding="utf-8") as f:
                values.update(parse_properties(f.read()))
        values.update(env_overrides(os.environ if environ is None else environ))
        values.update(overrides or {})
        return cls(values)

    def get_str(self, key: str) -> str:
        return self.values[key]

    def get_int(self, key: str) -> int:
        try:
            return int(self.values[key])
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {self.values[key]!r}") from None

    def get_bool(self, key: str) -> bool:
        v = self.values[key].lower()
        if v not in ("true", "false"):
            raise ConfigError(f"{key} must be true or false, got {v!r}")
        return v == "true"
