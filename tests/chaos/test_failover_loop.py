"""kill -9 one broker of three again and again under an acks=all producer of numbered
records to 12 partitions and a consumer group: a partition owner, then the controller,
in turn. After each kill the dead broker's WAL is taken over and its partitions served by
the others; it is started again and the balancer moves its share back to it (so the
next kill hits an owner). Every acknowledged record is read back, once, in order per partition.

`make test` runs a few kills; `make chaos` runs 20 (`TIDELOG_CHAOS_KILLS`). The time from
each kill to the first acknowledgement of a record produced after it, on every partition
the dead broker led, is printed per kill with the P50 and P99."""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer

from tests.integration.cluster import Cluster, wait_for
from tests.integration.load import Load
from tests.integration.test_failover import (
    controller,
    create,
    leaders,
    verify,
)
from tidelog.tools.local_postgres import LocalPostgres

KILLS = int(os.environ.get("TIDELOG_CHAOS_KILLS", "3"))

pytestmark = pytest.mark.timeout(300 + 60 * KILLS)


@pytest.fixture(scope="module")
def cluster(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    dsn = postgres.create_database(f"chaos_{uuid.uuid4().hex[:10]}")
    c = Cluster(tmp_path_factory.mktemp("chaos-failover"), dsn, settings={
        "broker.session.timeout.ms": "2000",
        "broker.heartbeat.interval.ms": "400",
        "upload.interval.ms": "1000",
    })
    try:
        yield c.start()
    finally:
        c.stop()


class GroupMember:
    """A consumer group member reading the topic and committing as it goes."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.read = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(bootstrap, topic))
        self._thread.start()

    def _run(self, bootstrap: str, topic: str) -> None:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-group",
                      "auto.offset.reset": "earliest", "enable.auto.commit": True,
                      "auto.commit.interval.ms": 500})
        c.subscribe([topic])
        try:
            while not self._stop.is_set():
                m = c.poll(0.2)
                if m is not None and not m.error():
                    self.read += 1
        finally:
            c.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def rejoined_with_its_share(cluster: Cluster, topic: str, victim: int) -> None:
    """The restarted broker joins and the balancer moves its share back to it (so the
    next kill hits an owner): partition moves under load."""
    survivor = next(b.bootstrap for n, b in cluster.brokers.items() if n != victim)
    wait_for(lambda: list(leaders(survivor, topic).values()).count(victim) >= 2,
             timeout=30, what=f"broker {victim} to get its share back from the balancer")


def test_repeated_kill_9_of_owners_and_the_controller_loses_nothing(cluster: Cluster) -> None:
    topic = "chaos"
    boot = cluster.bootstrap
    create(boot, topic)
    load = Load(boot, topic)
    group = GroupMember(boot, topic)
    times: list[float] = []
    try:
        wait_for(lambda: len(load.acked) > 2000, timeout=60, what="load")
        for kill in range(KILLS):
            lead = leaders(boot, topic)
            ctl = controller(boot)
            if kill % 2:
                victim = ctl
            else:
                counts = {n: sum(1 for o in lead.values() if o == n) for n in cluster.brokers}
                victim = max((n for n in cluster.brokers if n != ctl),
                             key=lambda n: counts[n])
            led = [p for p, o in lead.items() if o == victim]
            killed = time.monotonic()
            cluster.brokers[victim].kill()
            seen = len(load.acked)

            def resumed(led: list[int] = led, seen: int = seen,
                        killed: float = killed) -> bool:
                after = {p for p, n, _t in load.acked[seen:] if load.sent_at[n] > killed}
                return set(led) <= after

            wait_for(resumed, timeout=60, what=f"kill {kill}: the partitions to resume")
            took = max(min(t for q, n, t in load.acked if q == p and load.sent_at[n] > killed)
                       for p in led) - killed if led else 0.0
            times.append(took)
            print(f"\nkill {kill + 1}/{KILLS}: broker {victim}"
                  f"{' (controller)' if victim == ctl else ''}, {len(led)} partitions, "
                  f"first acknowledgement on all of them after {took:.2f}s")
            cluster.brokers[victim].start(timeout=60)
            rejoined_with_its_share(cluster, topic, victim)
            read = group.read  # the group's coordinator may have moved twice: it goes on
            wait_for(lambda read=read: group.read > read + 500, timeout=60,
                     what=f"kill {kill}: the group to go on consuming")
    finally:
        load.stop()
        group.stop()
    verify(load, boot, topic)
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"\n{KILLS} kills, kill -9 to first acknowledgement (2 s lease): "
          f"{[round(t, 2) for t in times]} s; P50 {statistics.median(times):.2f} s, "
          f"P99 {p99:.2f} s")
    assert max(times) < 15
