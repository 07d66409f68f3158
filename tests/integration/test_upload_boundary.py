"""Data crossing the upload boundary: several uploads, restart with an empty log cache,
everything read back from objects (local files and S3 via moto), on every kind of WAL."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.broker import BrokerProcess, wal_settings

PARTITIONS = 4
N = 4000


def produce(bootstrap: str, topic: str) -> dict[tuple[int, int], bytes]:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    acked: dict[tuple[int, int], bytes] = {}

    def cb(err: object, msg: Any) -> None:
        assert err is None, err
        acked[(msg.partition(), msg.offset())] = msg.value()

    for i in range(N):
        p.produce(topic, key=str(i).encode(), value=f"{i:06d}".encode() * 170,
                  partition=i % PARTITIONS, on_delivery=cb)
        p.poll(0)
    assert p.flush(60) == 0
    return acked


def consume(bootstrap: str, topic: str) -> dict[tuple[int, int], bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got: dict[tuple[int, int], bytes] = {}
    deadline = time.monotonic() + 60
    while len(got) < N and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            assert m.error() is None, m.error()
            got[(m.partition(), m.offset())] = m.value()
    c.close()
    return got


def replayed(broker: BrokerProcess) -> list[int]:
    return [int(n) for n in re.findall(r"(\d+) WAL records replayed", broker.log())]


@pytest.mark.parametrize(("backend", "wal_kind"),
                         [("file", "file"), ("s3", "file"), ("file", "direct"), ("s3", "s3")])
def test_reads_come_back_from_objects_after_restart(
    broker_factory: type[BrokerProcess], request: pytest.FixtureRequest, tmp_path: Path,
    backend: str, wal_kind: str,
) -> None:
    settings = {"upload.bytes": str(256 << 10), "upload.interval.ms": "200",
                "num.partitions": str(PARTITIONS), **wal_settings(wal_kind, request, tmp_path)}
    if backend == "s3":
        s3 = request.getfixturevalue("moto_s3")
        settings["objectstore.uri"] = (f"s3://{s3['bucket']}/boundary-{time.time_ns()}?"
                                       + urlencode(s3["options"]))
    broker = broker_factory(settings).start()
    acked = produce(broker.bootstrap, "boundary")
    assert len(acked) == N
    assert consume(broker.bootstrap, "boundary") == acked  # served while uploads happen

    broker.kill()  # a crash: what was not uploaded is replayed from the WAL
    broker.start()
    assert consume(broker.bootstrap, "boundary") == acked

    broker.stop()  # a clean stop uploads everything: the WAL is empty afterwards
    broker.start()
    assert replayed(broker)[-1] == 0
    uploads = re.findall(r"storage engine: \d+ streams, (\d+) objects", broker.log())
    assert int(uploads[-1]) >= 4, "expected several uploads"
    assert consume(broker.bootstrap, "boundary") == acked  # every byte from objects
