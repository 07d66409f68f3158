"""The balancer evens out produce bytes per second, not only partition counts: two hot
partitions on one broker are parted by a swap (counts stay even), and then left alone."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from tests.integration.cluster import Cluster, wait_for
from tests.integration.load import Load
from tests.integration.test_failover import create, leaders, verify
from tidelog.tools.local_postgres import LocalPostgres

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    dsn = postgres.create_database(f"bal_{uuid.uuid4().hex[:10]}")
    c = Cluster(tmp_path_factory.mktemp("balance-bytes"), dsn, settings={
        "leader.imbalance.check.interval.seconds": "2",
    })
    try:
        yield c.start()
    finally:
        c.stop()


class Hot:
    """About `mib_per_s` MiB/s into each of `partitions`, acks=all."""

    def __init__(self, bootstrap: str, topic: str, partitions: list[int],
                 mib_per_s: float) -> None:
        self.acked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(bootstrap, topic, partitions, mib_per_s))
        self._thread.start()

    def _run(self, bootstrap: str, topic: str, partitions: list[int], mib_per_s: float
             ) -> None:
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        value = b"filler" + b"h" * (64 * 1024 - 6)
        per_tick = max(1, int(mib_per_s * 16 * 0.05))  # 64 KiB values, 50 ms ticks

        def done(err: object, _m: object) -> None:
            if err is None:
                self.acked += 1

        while not self._stop.is_set():
            tick = time.monotonic()
            for part in partitions:
                for _ in range(per_tick):
                    try:
                        p.produce(topic, value=value, partition=part, on_delivery=done)
                    except BufferError:
                        p.poll(0.01)
            p.poll(0)
            self._stop.wait(max(0.0, 0.05 - (time.monotonic() - tick)))  # the rate
        p.flush(60)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)


def test_two_hot_partitions_on_one_broker_are_parted(cluster: Cluster) -> None:
    boot = cluster.bootstrap
    topic = "hot-and-cold"
    create(boot, topic)  # 12 partitions, 4 per broker
    owners = leaders(boot, topic)
    busy = owners[0]
    hot = [p for p, o in sorted(owners.items()) if o == busy][:2]
    load = Load(boot, topic)  # numbered records everywhere, to verify nothing is lost
    heat = Hot(boot, topic, hot, mib_per_s=4)
    try:
        def per_broker() -> dict[int, int]:
            counts: dict[int, int] = {}
            for o in leaders(boot, topic).values():
                counts[o] = counts.get(o, 0) + 1
            return counts

        # a swap is two moves, each done on its own: wait for both legs
        wait_for(lambda: len({leaders(boot, topic)[p] for p in hot}) == 2
                 and sorted(per_broker().values()) == [4, 4, 4], timeout=60,
                 what="the hot partitions on two brokers, counts even (a swap, not a move)")
        placed = {p: leaders(boot, topic)[p] for p in hot}
        seen = len(load.acked)
        wait_for(lambda: len(load.acked) > seen + 2000, timeout=60, what="load after")
        heated = heat.acked
        wait_for(lambda: heat.acked > heated + 200, timeout=60, what="more heat")
        assert {p: leaders(boot, topic)[p] for p in hot} == placed  # left alone since
    finally:
        heat.stop()
        load.stop()
    verify(load, boot, topic)
    controller_logs = "".join(b.log() for b in cluster.brokers.values())
    assert "balancing produce bytes/s per broker" in controller_logs
    asked = 0.0
    for b in cluster.brokers.values():
        with urllib.request.urlopen(b.metrics_url, timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith('tidelog_balancer_moves_total{reason="bytes"}'):
                    asked += float(line.split()[-1])
    assert asked >= 2  # one trade: two moves
    print(f"\nhot partitions {hot} of broker {busy} parted: now on {placed}")
