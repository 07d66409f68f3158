"""Client settings for librdkafka from the Java names the original tool's users pass.

The original runs the Java client; we run librdkafka (confluent-kafka). Most Java names mean
the same in librdkafka; the ones below differ in name or meaning and are translated, and
Java-only ones with no librdkafka meaning are dropped with a note. Producer defaults are
librdkafka's own (linger.ms=5, batch.size=1000000): librdkafka sends one partition per
produce request and, by default, does not cap requests in flight, so Java's defaults
(linger.ms=0, batch.size=16384) would mean many tiny requests and measure the request rate a
broker sustains rather than its throughput. Pass them with -P to get them anyway.
Consumers start at the latest offset (`auto.offset.reset=latest`) as the original's do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PRODUCER_DEFAULTS = {"acks": "all"}
CONSUMER_DEFAULTS = {"auto.offset.reset": "latest", "enable.auto.commit": "true"}
BATCH_SIZE_DEFAULT = 1_000_000  # librdkafka's
STICKY_LINGER_MS_DEFAULT = 10  # librdkafka's sticky.partitioning.linger.ms

_RENAMED = {
    "fetch.max.wait.ms": "fetch.wait.max.ms",
    "max.request.size": "message.max.bytes",
    "receive.buffer.bytes": "socket.receive.buffer.bytes",
    "send.buffer.bytes": "socket.send.buffer.bytes",
}
# Java-only settings: no librdkafka equivalent, or the tool sets them itself
_DROPPED = {
    "key.serializer", "value.serializer", "key.deserializer", "value.deserializer",
    "partitioner.ignore.keys", "partitioner.class", "max.block.ms", "default.api.timeout.ms",
    "interceptor.classes", "metric.reporters", "max.poll.records", "client.dns.lookup",
    "ssl.truststore.location", "ssl.truststore.password", "ssl.truststore.type",
    "ssl.keystore.type", "sasl.jaas.config", "sasl.login.callback.handler.class",
    "security.providers", "allow.auto.create.topics", "exclude.internal.topics",
    "check.crcs", "internal.leave.group.on.close",
}
_ASSIGNORS = {
    "org.apache.kafka.clients.consumer.RangeAssignor": "range",
    "org.apache.kafka.clients.consumer.RoundRobinAssignor": "roundrobin",
    "org.apache.kafka.clients.consumer.CooperativeStickyAssignor": "cooperative-sticky",
    "org.apache.kafka.clients.consumer.StickyAssignor": "cooperative-sticky",
}
_JAAS_FIELD = re.compile(r'(username|password)\s*=\s*"([^"]*)"')


def translate(java: Mapping[str, str], notes: list[str] | None = None) -> dict[str, str]:
    """Java client settings -> librdkafka settings. `notes` collects what was changed."""
    out: dict[str, str] = {}
    say = notes.append if notes is not None else (lambda _msg: None)
    for key, value in java.items():
        if key == "sasl.jaas.config":
            fields = dict(_JAAS_FIELD.findall(value))
            if "username" in fields:
                out["sasl.username"] = fields["username"]
                out["sasl.password"] = fields.get("password", "")
                say("sasl.jaas.config -> sasl.username/sasl.password")
            continue
        if key in _DROPPED:
            say(f"{key} has no librdkafka equivalent: ignored")
            continue
        if key == "batch.size" and value.strip() == "0":
            # Java: no batching. librdkafka's batch.size must be >= 1: one record a batch.
            out["batch.num.messages"] = "1"
            say("batch.size=0 -> batch.num.messages=1")
            continue
        if key == "buffer.memory":
            out["queue.buffering.max.kbytes"] = str(max(1, int(value) // 1024))
            continue
        if key == "partition.assignment.strategy":
            names = [_ASSIGNORS.get(v.strip(), v.strip()) for v in value.split(",") if v.strip()]
            out[key] = ",".join(names)
            continue
        out[_RENAMED.get(key, key)] = value
    return out


def producer_settings(bootstrap: str, common: Mapping[str, str], producer: Mapping[str, str],
                      notes: list[str] | None = None) -> dict[str, str]:
    merged = {**PRODUCER_DEFAULTS, **translate(common, notes), **translate(producer, notes)}
    merged["bootstrap.servers"] = bootstrap
    return merged


def consumer_settings(bootstrap: str, common: Mapping[str, str], consumer: Mapping[str, str],
                      group_id: str, notes: list[str] | None = None) -> dict[str, str]:
    merged = {**CONSUMER_DEFAULTS, **translate(common, notes), **translate(consumer, notes)}
    merged["bootstrap.servers"] = bootstrap
    merged["group.id"] = group_id
    return merged


def admin_settings(bootstrap: str, common: Mapping[str, str]) -> dict[str, str]:
    return {**translate(common), "bootstrap.servers": bootstrap}


def sticky_batch_bytes(producer: Mapping[str, str], common: Mapping[str, str]) -> int:
    """Bytes the sticky partitioner puts on a partition before moving on: batch.size
    (0 as in Java: a new partition for every record)."""
    return _int_setting("batch.size", producer, common, BATCH_SIZE_DEFAULT, 0)


def sticky_linger_ms(producer: Mapping[str, str], common: Mapping[str, str]) -> int:
    """How long the sticky partitioner stays on a partition at most."""
    return _int_setting("sticky.partitioning.linger.ms", producer, common,
                        STICKY_LINGER_MS_DEFAULT, 0)


def _int_setting(key: str, first: Mapping[str, str], second: Mapping[str, str], default: int,
                 lowest: int) -> int:
    raw = first.get(key, second.get(key))
    if raw is None:
        return default
    try:
        return max(lowest, int(raw))
    except ValueError:
        return default


def max_poll_records(consumer: Mapping[str, str], common: Mapping[str, str]) -> int:
    """Records taken per consume() call: Java's max.poll.records (default 500)."""
    return _int_setting("max.poll.records", consumer, common, 500, 1)
