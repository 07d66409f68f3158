"""kill -9 in the middle of a classic consumer group: commits acknowledged before the kill
are intact, the group carries on after the restart, nothing is skipped."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import BrokerProcess

PARTITIONS = 4
N = 2000


def test_group_and_commits_survive_sigkill(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "b", {"group.initial.rebalance.delay.ms": "0",
                                            "group.min.session.timeout.ms": "1000"}).start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("gk", PARTITIONS, 1)])["gk"].result(10)
        p = Producer({"bootstrap.servers": broker.bootstrap})
        for i in range(N):
            p.produce("gk", str(i).encode(), partition=i % PARTITIONS)
        assert p.flush(10) == 0

        conf = {"bootstrap.servers": broker.bootstrap, "group.id": "gk-group",
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000, "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 500}
        c = Consumer(conf)
        c.subscribe(["gk"])
        seen: set[int] = set()
        acked: dict[int, int] = {}

        def consume_until(count: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while len(seen) < count and time.monotonic() < deadline:
                m = c.poll(0.2)
                if m is None or m.error() is not None:
                    continue
                seen.add(int(m.value()))
                if len(seen) % 50 == 0:
                    try:
                        for tp in c.commit(asynchronous=False) or []:
                            if tp.error is None and tp.offset >= 0:
                                acked[tp.partition] = max(acked.get(tp.partition, 0),
                                                          tp.offset)
                    except Exception:  # the broker may be down: only acks count
                        pass

        consume_until(N // 2, 30)
        assert len(seen) >= N // 2 and acked
        broker.kill()
        broker.start()

        probe = Consumer({**conf, "group.id": "gk-group"})
        committed = probe.committed([TopicPartition("gk", i) for i in range(PARTITIONS)],
                                    timeout=20)
        probe.close()
        for tp in committed:  # every acknowledged commit is intact
            if tp.partition in acked:
                assert tp.offset >= acked[tp.partition], (tp, acked)

        consume_until(N, 60)  # the same member carries on after the restart
        assert seen == set(range(N)), f"{N - len(seen)} messages never consumed"
        with contextlib.suppress(KafkaException):  # _NO_OFFSET: all committed already
            c.commit(asynchronous=False)
        final = c.committed([TopicPartition("gk", i) for i in range(PARTITIONS)], timeout=20)
        assert sum(tp.offset for tp in final) == N
        c.close()
    finally:
        broker.stop()
