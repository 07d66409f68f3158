"""Scaling under load and a big partition's move: a 3-broker cluster grows to 5 while an
acks=all producer runs (the balancer gives the newcomers their share), shrinks back to 3
(SIGTERM: each leaver hands its partitions over first); then a partition holding
`TIDELOG_CHAOS_MOVE_MB` (1 GiB in `make chaos`, less in `make test`) moves between brokers
in about the time one upload takes, whatever it holds. Every acknowledged record is read
back once, in order."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from kafka import TopicPartition as KTopicPartition
from kafka.admin import KafkaAdminClient

from tests.integration.cluster import Cluster, wait_for
from tests.integration.load import Load
from tests.integration.test_failover import create, leaders, verify
from tidelog.tools.local_postgres import LocalPostgres

MOVE_MB = int(os.environ.get("TIDELOG_CHAOS_MOVE_MB", "128"))

pytestmark = pytest.mark.timeout(600 + MOVE_MB // 2)


@pytest.fixture(scope="module")
def cluster(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    dsn = postgres.create_database(f"scale_{uuid.uuid4().hex[:10]}")
    c = Cluster(tmp_path_factory.mktemp("scaling"), dsn, brokers=5, settings={
        "broker.session.timeout.ms": "2000",
        "broker.heartbeat.interval.ms": "400",
        "upload.interval.ms": "1000",
        "wal.capacity": str(256 << 20),
    })
    try:
        for node in (1, 2, 3):
            c.brokers[node].start()
        yield c
    finally:
        c.stop()


def owned_by(boot: str, topic: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for leader in leaders(boot, topic).values():
        counts[leader] = counts.get(leader, 0) + 1
    return counts


def test_three_to_five_to_three_under_load(cluster: Cluster) -> None:
    boot = cluster.brokers[1].bootstrap
    topic = "scaling"
    create(boot, topic)
    load = Load(cluster.bootstrap, topic)
    try:
        wait_for(lambda: len(load.acked) > 2000, timeout=60, what="load on three brokers")
        grow = time.monotonic()
        for node in (4, 5):
            cluster.brokers[node].start()
        # 12 partitions over 5 brokers: each gets 2 or 3
        wait_for(lambda: all(owned_by(boot, topic).get(n, 0) >= 2 for n in range(1, 6)),
                 timeout=60, what="the newcomers' share")
        grown = time.monotonic() - grow
        seen = len(load.acked)
        wait_for(lambda: len(load.acked) > seen + 2000, timeout=60, what="load on five")
        shrink = time.monotonic()
        for node in (5, 4):
            assert cluster.brokers[node].stop() == 0  # controlled shutdown: drained first
        wait_for(lambda: set(owned_by(boot, topic)) <= {1, 2, 3}, timeout=30,
                 what="the leavers' partitions on the three")
        shrunk = time.monotonic() - shrink
        seen = len(load.acked)
        wait_for(lambda: len(load.acked) > seen + 2000, timeout=60, what="load on three")
    finally:
        load.stop()
    verify(load, boot, topic)
    print(f"\n3 -> 5 brokers: partitions spread over five {grown:.1f}s after the start; "
          f"5 -> 3: the leavers drained in {shrunk:.1f}s; {len(load.acked)} records "
          "acknowledged, none lost")


def test_a_big_partition_moves_in_about_an_upload(cluster: Cluster) -> None:
    boot = cluster.brokers[1].bootstrap
    topic = "big-move"
    create(boot, topic)
    value = b"filler" + b"x" * (100_000 - 6)
    big = Producer({"bootstrap.servers": boot, "acks": "all", "linger.ms": 20,
                    "batch.size": 1_000_000, "queue.buffering.max.kbytes": 256 * 1024})
    filled = time.monotonic()
    for _ in range(MOVE_MB * 1_048_576 // len(value)):
        while True:
            try:
                big.produce(topic, value=value, partition=0)
                break
            except BufferError:
                big.poll(0.05)
        big.poll(0)
    assert big.flush(300) == 0
    filled = time.monotonic() - filled
    owner = leaders(boot, topic)[0]
    target = next(n for n in (1, 2, 3) if n != owner)
    load = Load(boot, topic)
    try:
        wait_for(lambda: len(load.acked) > 1000, timeout=60, what="load before the move")
        kadmin = KafkaAdminClient(bootstrap_servers=boot)
        try:
            started = time.monotonic()
            kadmin.alter_partition_reassignments({KTopicPartition(topic, 0): [target]})
            wait_for(lambda: leaders(boot, topic)[0] == target, timeout=30, what="the move")
            took = time.monotonic() - started
        finally:
            kadmin.close()
        seen = len(load.acked)
        wait_for(lambda: any(p == 0 for p, _n, _t in load.acked[seen:]), timeout=30,
                 what="produce to the moved partition")
    finally:
        load.stop()
    log = cluster.brokers[owner].log()
    line = next(ln for ln in reversed(log.splitlines()) if f"moved {topic}-0 to broker" in ln)
    print(f"\nmoved {topic}-0 holding {MOVE_MB} MiB (filled in {filled:.1f}s) under load from "
          f"broker {owner} to {target}: {took:.2f}s as a client sees it; the owner: "
          f"{line.split('in ')[-1]}")
    assert took < 10
    verify(load, boot, topic)
