"""confluent-kafka (librdkafka) against a real broker process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import WAL_KINDS, WAL_OPENED, BrokerProcess, wal_settings
from tests.integration.test_metrics import scrape

N_PARTITIONS = 8


def create_topic(bootstrap: str, name: str, partitions: int = N_PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1)])
    futures[name].result(30)


def produce_keyed(bootstrap: str, topic: str, n: int, **conf: object) -> dict[int, list[tuple]]:
    """Produce n keyed messages with headers and timestamps; returns what each partition
    must hold, in order, from the delivery reports."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    delivered: dict[int, list[tuple]] = {}
    errors: list[object] = []

    def cb(err: object, msg: object) -> None:
        if err is not None:
            errors.append(err)
            return
        value = msg.value()  # type: ignore[attr-defined]
        i = value.split(b"-")[1].split(b"v")[0].decode()  # delivery reports carry no headers
        delivered.setdefault(msg.partition(), []).append(  # type: ignore[attr-defined]
            (msg.offset(), msg.key(), value,  # type: ignore[attr-defined]
             [("h", i.encode()), ("empty", b"")], msg.timestamp()[1]))  # type: ignore[attr-defined]

    base_ts = int(time.time() * 1000) - 100_000
    for i in range(n):
        p.produce(topic, key=f"key-{i % 97}".encode(), value=f"value-{i}".encode() * 3,
                  headers=[("h", f"{i}".encode()), ("empty", b"")],
                  timestamp=base_ts + i, on_delivery=cb)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors
    for msgs in delivered.values():
        msgs.sort()
    return delivered


def consume_all(bootstrap: str, topic: str, partitions: int, expected: int,
                timeout: float = 60) -> dict[int, list[tuple]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-assign-only",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, i, 0) for i in range(partitions)])
    got: dict[int, list[tuple]] = {}
    count = 0
    deadline = time.monotonic() + timeout
    while count < expected and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error():
                raise KafkaException(m.error())
            got.setdefault(m.partition(), []).append(
                (m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]))
            count += 1
    c.close()
    return got


@pytest.mark.parametrize("wal_kind", WAL_KINDS)
def test_roundtrip_on_every_wal(
    broker_factory: type[BrokerProcess], request: pytest.FixtureRequest, tmp_path: Path,
    wal_kind: str,
) -> None:
    """The client round trip on each WAL, idempotent producer and a restart included."""
    broker = broker_factory(wal_settings(wal_kind, request, tmp_path)).start()
    assert WAL_OPENED[wal_kind] in broker.log()
    create_topic(broker.bootstrap, "every-wal")
    sent = produce_keyed(broker.bootstrap, "every-wal", 5_000,
                         **{"compression.type": "lz4", "enable.idempotence": True})
    assert consume_all(broker.bootstrap, "every-wal", N_PARTITIONS, 5_000) == sent
    if wal_kind == "s3":  # the S3 WAL's PUTs are in the broker's object-store request count
        m = scrape(broker.metrics_url)
        wal_puts = m["tidelog_wal_syncs_total"]
        assert wal_puts > 0
        assert m['tidelog_objectstore_requests_total{operation="PUT"}'] >= wal_puts
    broker.kill()  # recovered from this WAL kind
    broker.start()
    assert consume_all(broker.bootstrap, "every-wal", N_PARTITIONS, 5_000) == sent


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_roundtrip_keys_headers_timestamps(broker: BrokerProcess, codec: str) -> None:
    topic = f"t-{codec}"
    create_topic(broker.bootstrap, topic)
    n = 10_000 if codec == "none" else 2_000
    sent = produce_keyed(broker.bootstrap, topic, n, **{"compression.type": codec})
    assert sum(len(v) for v in sent.values()) == n
    got = consume_all(broker.bootstrap, topic, N_PARTITIONS, n)
    assert got == sent
    for msgs in got.values():  # offsets dense from 0, in order
        assert [m[0] for m in msgs] == list(range(len(msgs)))
