"""A full WAL, on every kind of WAL: uploads stall (the object store's directory is replaced
by a file, so every PUT fails), the WAL fills, produce waits and then fails cleanly with
REQUEST_TIMED_OUT; once uploads resume, produce goes on and nothing acknowledged is lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import WAL_KINDS, BrokerProcess, wal_settings
from tests.integration.test_metrics import scrape

TOPIC = "full"


def produce(bootstrap: str, values: list[bytes], **conf: object
            ) -> tuple[dict[int, bytes], list[KafkaError]]:
    """Send `values` to partition 0; returns {offset: value} acknowledged, and the errors."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 65536, "message.timeout.ms": 60000, **conf})
    acked: dict[int, bytes] = {}
    errors: list[KafkaError] = []

    def cb(err: KafkaError | None, msg: object) -> None:
        if err is None:
            acked[msg.offset()] = msg.value()  # type: ignore[attr-defined]
        else:
            errors.append(err)

    for v in values:
        p.produce(TOPIC, value=v, partition=0, on_delivery=cb)
        p.poll(0)
    assert p.flush(90) == 0
    return acked, errors


def read_all(bootstrap: str) -> dict[int, bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(TOPIC, 0, 0)])
    high = c.get_watermark_offsets(TopicPartition(TOPIC, 0), 10)[1]
    stored: dict[int, bytes] = {}
    deadline = time.monotonic() + 60
    while len(stored) < high:
        assert time.monotonic() < deadline, f"read {len(stored)} of {high}"
        for m in c.consume(1000, 1.0):
            assert m.error() is None, m.error()
            stored[m.offset()] = m.value()
    c.close()
    return stored


@pytest.mark.parametrize("wal_kind", WAL_KINDS)
def test_full_wal_times_out_produce_then_recovers(
    broker_factory: type[BrokerProcess], request: pytest.FixtureRequest, tmp_path: Path,
    wal_kind: str,
) -> None:
    broker = broker_factory({
        "wal.capacity": str(1 << 20), "append.timeout.ms": "1000",
        "upload.bytes": str(64 << 10), "upload.interval.ms": "100",
        **wal_settings(wal_kind, request, tmp_path),
    }).start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(30)
    acked, errors = produce(broker.bootstrap, [b"before-%04d" % i for i in range(100)])
    assert len(acked) == 100 and not errors

    objects = broker.data_dir / "objects"
    parked = broker.data_dir / "objects-parked"
    objects.rename(parked)
    objects.write_bytes(b"")  # every upload now fails
    try:
        stalled, errors = produce(broker.bootstrap,
                                  [b"stalled-%04d-" % i + b"x" * 4096 for i in range(250)],
                                  retries=0, **{"enable.idempotence": False,
                                                "request.timeout.ms": 1500})
        # the WAL (1 MiB) took what fit, the rest waited the produce timeout and got a
        # clean Kafka error; the broker is still up
        assert errors, "the WAL never filled"
        assert {e.code() for e in errors} == {KafkaError.REQUEST_TIMED_OUT}, errors[:3]
        assert stalled and len(stalled) + len(errors) == 250
        assert broker.proc is not None and broker.proc.poll() is None
        assert "upload failed" in broker.log()
        # produce slowed first: appends waited for room before any gave up
        m = scrape(broker.metrics_url)
        waits = sum(v for k, v in m.items() if k.startswith("tidelog_backpressure_waits_total"))
        assert waits > 0, m
    finally:
        objects.unlink()
        parked.rename(objects)  # uploads resume at the uploader's next retry
    acked.update(stalled)

    after, errors = produce(broker.bootstrap, [b"after-%04d" % i for i in range(200)],
                            **{"enable.idempotence": True})
    assert len(after) == 200 and not errors
    acked.update(after)

    stored = read_all(broker.bootstrap)
    assert sorted(stored) == list(range(len(stored)))  # dense offsets
    lost = [o for o, v in acked.items() if stored.get(o) != v]
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. offsets {lost[:5]}"
    broker.kill()  # and from the WAL + objects after a crash
    broker.start()
    assert read_all(broker.bootstrap) == stored
